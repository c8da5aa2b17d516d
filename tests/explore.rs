//! `moe explore` on fixture models: the sweep has the shape the physics gives it (more experts
//! per token read more bytes per token; the reference setting agrees with itself exactly), and
//! every file it writes is there and says what its figures are.

mod common;

use std::path::Path;

use moe_runtime::bench::BenchOptions;
use moe_runtime::energy::{EnergyMeter, Estimate};
use moe_runtime::explore::{self, Exploration, ExploreOptions, Format};
use moe_runtime::{LoadOptions, Model};

/// A short sweep of `fixture` (8 experts, k = 2) in f32 and bf16 at batches 1 and 2.
fn sweep(fixture: &str, meter: &mut EnergyMeter) -> Exploration {
    let dir = common::fixture(fixture);
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    let vocab = model.config().vocab_size as u32;
    // Fixture models have no tokenizer: any ids in the vocabulary make a held-out text.
    let held_out: Vec<u32> = (0..40u32).map(|i| (i * 37 + 5) % vocab).collect();
    let opts = ExploreOptions {
        formats: vec![Format::F32, Format::Bf16],
        batches: vec![1, 2],
        bench: BenchOptions {
            prompt_len: 4,
            gen_len: 2,
            repeats: 1,
            batch: 1,
            idle_seconds: 0.0,
        },
        quality_tokens: 40,
        ..ExploreOptions::default()
    };
    let mut load = |opts: &LoadOptions| Model::load(&dir, opts);
    explore::run(
        &mut load,
        &LoadOptions::default(),
        &held_out,
        &opts,
        meter,
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn more_experts_read_more_bytes_and_the_reference_agrees_with_itself() {
    let ex = sweep("qwen3_moe-a", &mut EnergyMeter::new(Vec::new(), Vec::new()));
    assert_eq!((ex.model_experts_per_token, ex.num_experts), (2, 8));
    // 1 and 2 (the model's own), then 4 and every expert: the compute-matched dense run.
    let experts = [1, 2, 4, 8];
    assert_eq!(ex.runs.len(), experts.len() * 2 * 2);
    assert_eq!(ex.held_out_tokens, 40);
    for format in ["f32", "bf16"] {
        for batch in [1, 2] {
            let bytes: Vec<f64> = experts
                .iter()
                .map(|&k| ex.find(k, format, batch).unwrap().bytes_per_token)
                .collect();
            assert!(
                bytes.windows(2).all(|w| w[0] < w[1]),
                "{format} batch {batch}: {bytes:?}"
            );
        }
    }
    // bf16 weights are half the bytes of f32 ones; only norms and the like differ in neither.
    let (f32_bytes, bf16_bytes) = (
        ex.find(2, "f32", 1).unwrap().bytes_per_token,
        ex.find(2, "bf16", 1).unwrap().bytes_per_token,
    );
    assert_eq!(bf16_bytes * 2.0, f32_bytes);

    for run in &ex.runs {
        let is_reference = run.experts_per_token == 2 && run.format == "f32";
        assert_eq!(run.reference, is_reference, "{run:?}");
        if is_reference {
            // A fresh load of the same setting computes the same logits, bit for bit.
            assert_eq!(run.kl_divergence, 0.0, "{run:?}");
            assert_eq!(run.top1_agreement, 1.0);
        } else {
            assert!(run.kl_divergence > 0.0, "{run:?}");
        }
        assert!(
            run.perplexity.is_finite() && run.perplexity > 1.0,
            "{run:?}"
        );
        assert!(run.decode_tokens_per_s > 0.0 && run.prefill_tokens_per_s > 0.0);
        assert_eq!(run.decode_runs.len(), 1);
        assert_eq!(run.energy.decode.tokens, 2 * run.batch);
        assert_eq!(run.energy.tokens_per_joule, None);
        assert!(run.energy.tokens_per_core_second > 0.0);
        assert_eq!(run.efficiency(), run.energy.tokens_per_core_second);
    }
    // Quality does not depend on the batch the speed was measured at.
    let (a, b) = (
        ex.find(1, "bf16", 1).unwrap(),
        ex.find(1, "bf16", 2).unwrap(),
    );
    assert_eq!(
        (a.kl_divergence, a.perplexity),
        (b.kl_divergence, b.perplexity)
    );
    // One expert per token is a coarser model than the reference: visibly so on KL.
    assert!(ex.find(1, "f32", 1).unwrap().kl_divergence > 1e-4);
    assert_eq!(ex.energy.source, "none");
    assert_eq!(ex.energy.efficiency_unit, "tokens per core-second");
}

#[test]
fn the_files_say_what_their_figures_are() {
    // With only an estimate, every efficiency figure is labelled as one.
    let mut meter = EnergyMeter::new(vec![Box::new(Estimate::new(3.0).unwrap())], Vec::new());
    let mut ex = sweep("qwen2_moe-a", &mut meter);
    ex.model = "tests/fixtures/qwen2_moe-a".into();
    assert_eq!(ex.energy.efficiency_unit, "tokens per joule (ESTIMATE)");
    assert!(!ex.energy.measured);
    for run in &ex.runs {
        let tpj = run.energy.tokens_per_joule.unwrap();
        assert_eq!(run.efficiency(), tpj);
    }
    let out = tempfile::tempdir().unwrap();
    ex.write(out.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("explore.json")).unwrap())
            .unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), ex.runs.len());
    for key in [
        "experts_per_token",
        "format",
        "batch",
        "decode_tokens_per_s",
        "prefill_tokens_per_s",
        "energy",
        "kl_divergence",
        "top1_agreement",
        "perplexity",
        "bytes_per_token",
    ] {
        assert!(runs.iter().all(|r| !r[key].is_null()), "{key}");
    }
    assert_eq!(json["energy"]["source"], "estimate");
    let md = std::fs::read_to_string(out.path().join("explore.md")).unwrap();
    assert!(md.contains("decode tokens per joule (ESTIMATE)"), "{md}");
    assert!(md.contains("## Reading") && md.contains("ESTIMATE"), "{md}");
    // One table row per run.
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        ex.runs.len() + 1
    );
    // Points are labelled with their experts per token; lines have them in the legend.
    for (chart, label) in [
        ("efficiency_vs_quality.svg", "k=2"),
        ("throughput_vs_batch.svg", "k = 2"),
    ] {
        let svg = std::fs::read_to_string(out.path().join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains(label), "{chart}");
    }
}

#[test]
fn the_command_line_writes_the_sweep_of_the_bundled_model() {
    let out = tempfile::tempdir().unwrap();
    let result = std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args([
            "explore",
            "--out",
            out.path().to_str().unwrap(),
            "--experts",
            "1,2",
            "--formats",
            "f32,q8_0",
            "--batches",
            "1",
            "--prompt-len",
            "4",
            "--gen-len",
            "2",
            "--repeats",
            "1",
            "--quality-tokens",
            "48",
            "--idle-seconds",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let stdout = String::from_utf8(result.stdout).unwrap();
    assert!(
        stdout.contains("| 2 (model's) | f32 (reference) | 1 |"),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(out.path()).join("explore.json")).unwrap(),
    )
    .unwrap();
    // The bundled model's held_out.txt, tokenized: 48 of its tokens scored.
    assert_eq!(json["held_out_tokens"], 48);
    let q8 = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["format"] == "q8_0" && r["experts_per_token"] == 2)
        .unwrap();
    let kl = q8["kl_divergence"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 0.05, "{q8}");
}

#[test]
fn a_dense_model_is_refused_with_where_to_go() {
    let dir = common::fixture("qwen3-a");
    let mut load = |opts: &LoadOptions| Model::load(&dir, opts);
    let mut meter = EnergyMeter::new(Vec::new(), Vec::new());
    let err = explore::run(
        &mut load,
        &LoadOptions::default(),
        &[1, 2, 3],
        &ExploreOptions::default(),
        &mut meter,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("dense") && err.contains("moe compare"),
        "{err}"
    );
}
