//! The generator: stop conditions (stop id, token budget, full context, the callback) and
//! seeded sampling that repeats exactly.

mod common;

use candle_core::DType;
use moe_runtime::generate::{generate, Flow, GenerateOptions, StopReason};
use moe_runtime::sampling::SamplingConfig;
use moe_runtime::Kernels;

const FIXTURE: &str = "mixtral-a";

fn options(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        ..GenerateOptions::default()
    }
}

#[test]
fn stops_after_the_stop_id_and_keeps_it() {
    let r = common::reference(FIXTURE);
    let model = common::load(FIXTURE, DType::F32, Kernels::Fast);
    let stop = r.greedy[4];
    let first = r.greedy.iter().position(|&t| t == stop).unwrap();
    let opts = GenerateOptions {
        stop_tokens: vec![stop],
        ..options(12)
    };
    let gen = generate(&model, &r.tokens, &opts, |_| Flow::Continue).unwrap();
    assert_eq!(gen.tokens, r.greedy[..=first]);
    assert_eq!(gen.stop, StopReason::StopToken);
}

#[test]
fn the_callback_sees_every_token_and_can_stop() {
    let r = common::reference(FIXTURE);
    let model = common::load(FIXTURE, DType::F32, Kernels::Fast);
    let mut seen = Vec::new();
    let gen = generate(&model, &r.tokens, &options(12), |t| {
        seen.push(t);
        if seen.len() == 3 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })
    .unwrap();
    assert_eq!(gen.tokens, seen);
    assert_eq!(gen.tokens, r.greedy[..3]);
    assert_eq!(gen.stop, StopReason::Callback);
}

#[test]
fn a_full_context_ends_generation_without_an_error() {
    let model = common::load(FIXTURE, DType::F32, Kernels::Fast);
    let context = model.config().max_position_embeddings;
    let prompt = vec![3u32; context - 2];
    let gen = generate(&model, &prompt, &options(10), |_| Flow::Continue).unwrap();
    // Positions context-2 and context-1 are fed after the prompt: three new tokens in all.
    assert_eq!(gen.tokens.len(), 3);
    assert_eq!(gen.stop, StopReason::ContextFull);
    assert_eq!(gen.stats.generated_tokens, 3);
}

/// What the generator cannot continue is an error saying why, not zero tokens or token 0
/// forever: an empty prompt, a prompt past the context, a model whose logits are NaN (one NaN
/// in a router weight). A token budget of any size is bounded by the context.
#[test]
fn impossible_generations_are_errors_and_budgets_are_bounded() {
    let model = common::load(FIXTURE, DType::F32, Kernels::Fast);
    let context = model.config().max_position_embeddings;
    let run =
        |prompt: &[u32], budget| generate(&model, prompt, &options(budget), |_| Flow::Continue);
    let e = run(&[], 4).unwrap_err().to_string();
    assert!(e.contains("prompt is empty"), "{e}");
    let e = run(&vec![3u32; context + 1], 4).unwrap_err().to_string();
    assert!(e.contains("exceed the model's context"), "{e}");
    let gen = run(&[3, 4, 5], usize::MAX).unwrap();
    assert_eq!(gen.stop, StopReason::ContextFull);
    assert_eq!(gen.tokens.len(), context - 2);

    let dir = common::copy_fixture(FIXTURE);
    common::edit_tensors(dir.path(), |t| {
        let name = "model.layers.0.block_sparse_moe.gate.weight";
        let w = &t[name];
        let mut values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[0] = f32::NAN;
        let nan = candle_core::Tensor::from_vec(values, w.dims(), w.device()).unwrap();
        t.insert(name.to_string(), nan);
    });
    // Checked at load by default (a small checkpoint): the tensor is named.
    let e = moe_runtime::Model::load(dir.path(), &moe_runtime::LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.block_sparse_moe.gate.weight") && e.contains("NaN"),
        "{e}"
    );
    // Unchecked, generation stops at its first step and names the first broken layer.
    let unchecked = moe_runtime::LoadOptions {
        check_weights: moe_runtime::weights::CheckWeights::Off,
        ..moe_runtime::LoadOptions::default()
    };
    let broken = moe_runtime::Model::load(dir.path(), &unchecked).unwrap();
    let r = common::reference(FIXTURE);
    let e = generate(&broken, &r.tokens, &options(4), |_| Flow::Continue)
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 0") && e.contains("not finite"), "{e}");
    assert!(e.contains("is layer 0's"), "{e}");
    assert_eq!(
        broken.first_non_finite(&r.tokens).unwrap().as_deref(),
        Some("layer 0")
    );
    let model = common::load(FIXTURE, DType::F32, Kernels::Fast);
    assert_eq!(model.first_non_finite(&r.tokens).unwrap(), None);
}

#[test]
fn seeded_sampling_repeats_and_the_seed_matters() {
    let r = common::reference(FIXTURE);
    let model = common::load(FIXTURE, DType::F32, Kernels::Fast);
    let run = |seed| {
        let opts = GenerateOptions {
            sampling: SamplingConfig {
                temperature: 1.0,
                seed,
                ..SamplingConfig::default()
            },
            ..options(16)
        };
        generate(&model, &r.tokens, &opts, |_| Flow::Continue)
            .unwrap()
            .tokens
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    assert_eq!(run(5).len(), 16);
}

#[test]
fn the_command_line_generates_text_from_the_bundled_model_by_default() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args([
            "generate",
            "--prompt",
            "JULIET:",
            "--max-new-tokens",
            "8",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(report["tokens"].clone()).unwrap();
    let tok = moe_runtime::tokenizer::Tokenizer::load(moe_runtime::BUNDLED_MODEL.as_ref()).unwrap();
    // The text leaves out the end-of-sequence id, if one ended generation.
    let text_ids: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|t| !tok.eos_ids().contains(t))
        .collect();
    assert_eq!(report["text"], tok.decode(&text_ids).unwrap());
    assert_eq!(
        report["prompt_tokens"],
        tok.encode("JULIET:").unwrap().len()
    );
    assert!(!ids.is_empty() && ids.len() <= 8);
}

fn moe(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn moe_prompt_renders_as_hf_with_only_tokenizer_files() {
    let chat = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chat.join("cases.json")).unwrap()).unwrap();
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["style"] == "granite" && c["tools"].is_array() && c["add_generation_prompt"] == true
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conversation.json");
    let input = serde_json::json!({"messages": case["messages"], "tools": case["tools"]});
    std::fs::write(&file, input.to_string()).unwrap();
    let model = chat.join("granite");
    let (ok, stdout, stderr) = moe(&[
        "prompt",
        "--model",
        model.to_str().unwrap(),
        "--messages",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["text"], case["text"]);
    assert_eq!(report["tokens"], case["tokens"]);
}

#[test]
fn moe_chat_keeps_history_and_obeys_reset_and_exit() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(["chat", "--max-new-tokens", "6", "--temperature", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hail!\nWho goes there?\n/reset\nHail!\n/exit\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    // Three answers, each with its speed; the reset clears the history, so greedy decoding
    // answers the same first message the same way.
    let speeds: Vec<&str> = stderr.lines().filter(|l| l.contains("tokens/s")).collect();
    assert_eq!(speeds.len(), 3, "{stderr}");
    assert!(stderr.contains("conversation cleared"));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<&str> = stdout
        .split("> ")
        .filter(|a| !a.trim().is_empty())
        .collect();
    assert_eq!(answers.len(), 3, "{stdout:?}");
    assert_eq!(answers[0], answers[2], "{stdout:?}");
}
