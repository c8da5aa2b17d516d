//! Bad input (DESIGN.md section 7): each case gets one clear error naming the file, field or
//! tensor, from the library and from `moe` (non-zero exit, one line, no panic).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::{copy_fixture, edit_config, edit_tensors};
use moe_runtime::{LoadOptions, Model};

const FIXTURE: &str = "qwen3_moe-b";

fn load_error(dir: &Path) -> String {
    Model::load(dir, &LoadOptions::default())
        .unwrap_err()
        .to_string()
}

const SOME_TENSOR: &str = "model.layers.1.mlp.experts.3.up_proj.weight";

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = copy_fixture(FIXTURE);
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_safetensors_names_the_file() {
    let dir = copy_fixture(FIXTURE);
    std::fs::write(
        dir.path().join("model.safetensors"),
        "this is not a checkpoint",
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = copy_fixture(FIXTURE);
    edit_tensors(dir.path(), |t| {
        t.remove(SOME_TENSOR);
    });
    let e = load_error(dir.path());
    assert!(e.contains(SOME_TENSOR) && e.contains("missing"), "{e}");
}

#[test]
fn a_misshapen_tensor_is_named_with_both_shapes() {
    let dir = copy_fixture(FIXTURE);
    edit_tensors(dir.path(), |t| {
        t.insert(
            SOME_TENSOR.into(),
            Tensor::zeros((26, 35), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_error(dir.path());
    assert!(
        e.contains(SOME_TENSOR) && e.contains("[26, 35]") && e.contains("[26, 36]"),
        "{e}"
    );
}

#[test]
fn a_tensor_of_the_wrong_dtype_is_named() {
    let dir = copy_fixture(FIXTURE);
    edit_tensors(dir.path(), |t| {
        t.insert(
            SOME_TENSOR.into(),
            Tensor::zeros((26, 36), DType::I64, &Device::Cpu).unwrap(),
        );
    });
    let e = load_error(dir.path());
    assert!(e.contains(SOME_TENSOR) && e.contains("I64"), "{e}");
}

#[test]
fn a_missing_shard_is_named() {
    let dir = copy_fixture("mixtral-b");
    let shard = "model-00002-of-00003.safetensors";
    std::fs::remove_file(dir.path().join(shard)).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains(shard), "{e}");
}

#[test]
fn an_unknown_model_type_is_named() {
    let dir = copy_fixture(FIXTURE);
    edit_config(dir.path(), |c| c["model_type"] = "jamba".into());
    let e = load_error(dir.path());
    assert!(
        e.contains("config.json") && e.contains("model_type") && e.contains("jamba"),
        "{e}"
    );
}

#[test]
fn malformed_config_json_names_the_file() {
    let dir = copy_fixture(FIXTURE);
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"qwen3_moe\",",
    )
    .unwrap();
    let e = load_error(dir.path());
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn an_absurd_vocab_is_refused_before_allocation() {
    let dir = copy_fixture(FIXTURE);
    edit_config(dir.path(), |c| {
        c["vocab_size"] = 1_000_000_000_000u64.into()
    });
    let e = load_error(dir.path());
    assert!(
        e.contains("vocab_size") && e.contains("out of range"),
        "{e}"
    );
}

#[test]
fn a_missing_folder_is_named() {
    let e = load_error(Path::new("/nonexistent/model-dir"));
    assert!(e.contains("/nonexistent/model-dir"), "{e}");
}

#[test]
fn bad_tokens_are_refused_without_touching_the_cache() {
    let model = Model::load(&common::fixture(FIXTURE), &LoadOptions::default()).unwrap();
    let vocab = model.config().vocab_size as u32;
    let mut cache = model.new_cache();
    let e = model
        .forward(&[1, vocab], &mut cache)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("token id {vocab}")) && e.contains("vocab_size"),
        "{e}"
    );
    let e = model.forward(&[], &mut cache).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let too_long = vec![1u32; model.config().max_position_embeddings + 1];
    let e = model
        .forward(&too_long, &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_position_embeddings"), "{e}");
    assert_eq!(cache.position(), 0);
}

/// Runs `moe`; returns (exit success, stderr).
fn moe(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_command_line_answers_bad_input_with_one_line_and_a_failure_code() {
    let good = common::fixture(FIXTURE);
    let good = good.to_str().unwrap();
    let broken = copy_fixture(FIXTURE);
    std::fs::write(broken.path().join("model.safetensors"), "garbage").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["generate", "--model", good, "--tokens", "1,99999"],
            "token id 99999",
        ),
        (
            &[
                "logits",
                "--model",
                broken.path().to_str().unwrap(),
                "--tokens",
                "1",
                "--out",
                "/tmp/x",
            ],
            "model.safetensors",
        ),
        (&["inspect", "--model", "/nonexistent/m"], "/nonexistent/m"),
        (
            &[
                "generate", "--model", good, "--tokens", "1", "--dtype", "f8",
            ],
            "--dtype f8",
        ),
        (
            &[
                "generate",
                "--model",
                good,
                "--tokens",
                "1",
                "--experts-per-token",
                "9",
            ],
            "experts-per-token",
        ),
        (
            &[
                "generate", "--model", good, "--tokens", "1", "--device", "gpu",
            ],
            "unknown device `gpu`",
        ),
        (
            &[
                "generate", "--model", good, "--tokens", "1", "--quant", "q5",
            ],
            "--quant q5",
        ),
        (
            // The fixture's rows (hidden 36) are not whole blocks of 32: the first tensor
            // quantized is named.
            &[
                "generate", "--model", good, "--tokens", "1", "--quant", "q8_0",
            ],
            "lm_head.weight",
        ),
        (
            &["bench", "--model", good, "--estimate-watts-per-core", "0"],
            "--estimate-watts-per-core 0",
        ),
        (
            &[
                "bench",
                "--model",
                good,
                "--prompt-len",
                "4",
                "--idle-seconds",
                "1e9",
            ],
            "idle baseline",
        ),
        (
            // Fixtures have no held_out.txt (nor a tokenizer).
            &["explore", "--model", good, "--out", "/tmp/moe-explore-x"],
            "--text",
        ),
        (
            &[
                "explore",
                "--out",
                "/tmp/moe-explore-x",
                "--formats",
                "f32,q5",
            ],
            "format q5",
        ),
        (
            &["explore", "--out", "/tmp/moe-explore-x", "--experts", "1,9"],
            "9 experts per token",
        ),
        (
            &["explore", "--out", "/tmp/moe-explore-x", "--batches", "0"],
            "batch sizes",
        ),
        (
            &["compare", "--model", good, "--out", "/tmp/moe-compare-x"],
            "--text",
        ),
        (
            &[
                "compare",
                "--model",
                good,
                "--text",
                "README.md",
                "--out",
                "/tmp/moe-compare-x",
            ],
            "tokenizer",
        ),
        (
            &["compare", "--out", "/tmp/moe-compare-x", "--formats", "q5"],
            "format q5",
        ),
        (
            &["compare", "--out", "/tmp/moe-compare-x", "--batch", "0"],
            "--batch 0",
        ),
        (
            &[
                "compare",
                "--out",
                "/tmp/moe-compare-x",
                "--model",
                "/nonexistent/model",
            ],
            "/nonexistent/model",
        ),
    ];
    for (args, expected) in cases {
        let (ok, stderr) = moe(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

/// gpt-oss's MXFP4 fixture broken the ways a hand-converted or truncated checkpoint would be:
/// each is one error naming the tensor or field.
#[test]
fn broken_gpt_oss_checkpoints_are_named() {
    const BLOCKS: &str = "model.layers.1.mlp.experts.down_proj_blocks";
    const SCALES: &str = "model.layers.0.mlp.experts.gate_up_proj_scales";
    const SINKS: &str = "model.layers.0.self_attn.sinks";
    type Edit = Box<dyn Fn(&mut HashMap<String, Tensor>)>;
    let tensor_cases: [(&str, Edit, &[&str]); 5] = [
        (
            "blocks of the wrong shape",
            Box::new(|t| {
                let bad = Tensor::zeros((4, 64, 2, 8), DType::U8, &Device::Cpu).unwrap();
                t.insert(BLOCKS.into(), bad);
            }),
            &[BLOCKS, "[4, 64, 2, 8]"],
        ),
        (
            "scales of the wrong dtype",
            Box::new(|t| {
                let bad = Tensor::zeros((4, 64, 2), DType::F32, &Device::Cpu).unwrap();
                t.insert(SCALES.into(), bad);
            }),
            &[SCALES, "U8"],
        ),
        (
            "a scale of 255 (E8M0's NaN)",
            Box::new(|t| {
                let bad = Tensor::full(255u8, (4, 64, 2), &Device::Cpu).unwrap();
                t.insert(SCALES.into(), bad);
            }),
            &[SCALES, "255"],
        ),
        (
            "a missing scale tensor",
            Box::new(|t| {
                t.remove(SCALES);
            }),
            &[SCALES],
        ),
        (
            "a missing sink",
            Box::new(|t| {
                t.remove(SINKS);
            }),
            &[SINKS],
        ),
    ];
    for (case, edit, words) in tensor_cases {
        let dir = copy_fixture("gpt_oss-b");
        edit_tensors(dir.path(), edit);
        let e = load_error(dir.path());
        assert!(words.iter().all(|w| e.contains(w)), "{case}: {e}");
    }
    let config_cases: [(&str, serde_json::Value, &str); 3] = [
        (
            "layer_types shorter than the layers",
            serde_json::json!(["sliding_attention"]),
            "layer_types",
        ),
        (
            "an unknown quant_method",
            serde_json::json!({"quant_method": "awq"}),
            "quantization_config",
        ),
        (
            "experts_per_token disagreeing",
            serde_json::json!(3),
            "experts_per_token",
        ),
    ];
    for (case, value, field) in config_cases {
        let dir = copy_fixture("gpt_oss-b");
        edit_config(dir.path(), |c| {
            let key = match field {
                "quantization_config" => "quantization_config",
                "layer_types" => "layer_types",
                _ => "experts_per_token",
            };
            c[key] = value.clone();
        });
        let e = load_error(dir.path());
        assert!(e.contains(field), "{case}: {e}");
    }
}

/// Gemma 4's fixture broken the ways a hand-edited or mis-converted checkpoint would be: a MoE
/// block without its sizes, more experts per token than there are, a global layer without the
/// keys (or, without keys as values, the values) it needs, the router's and the layer's
/// scales missing: each is one error naming the field or tensor.
#[test]
fn broken_gemma4_checkpoints_are_named() {
    const LAYER: &str = "model.language_model.layers";
    let config_cases: [(&str, &str, serde_json::Value, String); 4] = [
        (
            "a MoE block without expert sizes",
            "-moe_intermediate_size",
            serde_json::Value::Null,
            "text_config.moe_intermediate_size".into(),
        ),
        (
            "more experts per token than experts",
            "top_k_experts",
            serde_json::json!(7),
            "text_config.top_k_experts".into(),
        ),
        // (Without keys as values HF gives the global layers the sliding ones' kv heads.)
        (
            "global layers without keys as values",
            "attention_k_eq_v",
            serde_json::json!(false),
            format!("{LAYER}.1.self_attn.k_proj.weight` has shape [16, 48], expected [32, 48]"),
        ),
        (
            "global key/value heads that do not divide the heads",
            "num_global_key_value_heads",
            serde_json::json!(3),
            "text_config.num_global_key_value_heads".into(),
        ),
    ];
    for (case, key, value, expected) in config_cases {
        let dir = copy_fixture("gemma4-a");
        edit_config(dir.path(), |c| {
            let text = c["text_config"].as_object_mut().unwrap();
            match key.strip_prefix('-') {
                Some(key) => text.remove(key),
                None => text.insert(key.into(), value.clone()),
            };
        });
        let e = load_error(dir.path());
        assert!(
            e.contains(&expected) && e.lines().count() == 1,
            "{case}: {e}"
        );
    }
    let global_keys = format!("{LAYER}.4.self_attn.k_proj.weight");
    let tensor_cases = [
        format!("{LAYER}.1.self_attn.k_proj.weight"),
        format!("{LAYER}.0.router.per_expert_scale"),
        format!("{LAYER}.3.router.scale"),
        format!("{LAYER}.2.layer_scalar"),
        format!("{LAYER}.2.post_feedforward_layernorm_2.weight"),
    ];
    for name in tensor_cases {
        let dir = copy_fixture("gemma4-a");
        edit_tensors(dir.path(), |t| {
            t.remove(&name);
        });
        let e = load_error(dir.path());
        assert!(e.contains(&name) && e.contains("missing"), "{e}");
    }
    // A global layer's keys in the sliding layers' shape (2 heads of 12, not 1 of 16).
    let dir = copy_fixture("gemma4-a");
    edit_tensors(dir.path(), |t| {
        let bad = Tensor::zeros((24, 48), DType::F32, &Device::Cpu).unwrap();
        t.insert(global_keys.clone(), bad);
    });
    let e = load_error(dir.path());
    assert!(e.contains(&global_keys) && e.contains("[16, 48]"), "{e}");
}
