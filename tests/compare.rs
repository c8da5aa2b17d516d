//! `moe compare` on fixture models: a dense model beside sparse ones, each at its own settings;
//! perplexity is HF's on the same tokens; every token after the first is predicted once however
//! the text is cut into sequences; the files say what their figures are.

mod common;

use candle_core::{DType, D};
use moe_runtime::bench::BenchOptions;
use moe_runtime::energy::EnergyMeter;
use moe_runtime::explore::compare::{self, CompareOptions, Comparison, Contender};
use moe_runtime::explore::Format;
use moe_runtime::{LoadOptions, Model};

/// Any ids in the vocabulary make a held-out text for models without a tokenizer.
fn text(len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + 5) % vocab as u32)
        .collect()
}

fn run_on(fixtures: &[&str], formats: Vec<Format>) -> Comparison {
    let mut contenders: Vec<Contender> = fixtures
        .iter()
        .map(|&name| {
            let dir = common::fixture(name);
            let vocab = Model::load(&dir, &LoadOptions::default())
                .unwrap()
                .config()
                .vocab_size;
            Contender {
                name: name.to_string(),
                load: Box::new(move |opts: &LoadOptions| Model::load(&dir, opts)),
                held_out: text(150, vocab),
            }
        })
        .collect();
    let opts = CompareOptions {
        formats,
        bench: BenchOptions {
            prompt_len: 4,
            gen_len: 2,
            repeats: 1,
            batch: 2,
            idle_seconds: 0.0,
        },
        rounds: 2,
    };
    let mut meter = EnergyMeter::new(Vec::new(), Vec::new());
    compare::run(
        &mut contenders,
        &LoadOptions::default(),
        600,
        &opts,
        &mut meter,
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn dense_and_sparse_models_side_by_side_each_at_its_own_settings() {
    let c = run_on(&["qwen3-a", "qwen3_moe-a"], vec![Format::F32, Format::Bf16]);
    assert_eq!(c.entries.len(), 4);
    let find = |model: &str, format: &str| {
        c.entries
            .iter()
            .find(|e| e.model == model && e.format == format)
            .unwrap()
    };
    let (dense, sparse) = (find("qwen3-a", "f32"), find("qwen3_moe-a", "f32"));
    assert!(dense.profile.experts.is_none());
    assert_eq!(dense.sparsity(), "dense");
    let experts = sparse.profile.experts.unwrap();
    assert_eq!((experts.num_experts, experts.per_token), (8, 2));
    assert_eq!(sparse.sparsity(), "8 experts, top-2");
    assert_eq!(
        dense.profile.active_parameters,
        dense.profile.total_parameters
    );
    assert!(sparse.profile.active_parameters < sparse.profile.total_parameters);
    // Two rounds of one timed run each.
    for e in &c.entries {
        assert_eq!(e.decode_runs.len(), 2, "{e:?}");
        assert_eq!(e.energy.decode.tokens, 2 * 2 * 2, "{e:?}");
        assert!(e.decode_tokens_per_s > 0.0 && e.efficiency() > 0.0);
        assert_eq!(e.profile.held_out_tokens, 149);
        let p = &e.profile;
        assert!(p.perplexity > 1.0 && p.perplexity.is_finite(), "{e:?}");
        // Bits per byte are the same log-likelihood over the text's 600 bytes.
        let bits = 149.0 * p.perplexity.ln() / std::f64::consts::LN_2 / 600.0;
        assert!((p.bits_per_byte - bits).abs() < 1e-9 * bits, "{e:?}");
        assert!(p.flops_per_token > 2.0 * p.active_parameters as f64 * 0.5);
    }
    // bf16 halves the bytes of the weights; FLOPs do not change with the format.
    let bf16 = find("qwen3_moe-a", "bf16");
    assert_eq!(
        bf16.profile.bytes_per_token * 2.0,
        sparse.profile.bytes_per_token
    );
    assert_eq!(bf16.profile.flops_per_token, sparse.profile.flops_per_token);
    assert!(c.one_tokenizer());

    let out = tempfile::tempdir().unwrap();
    c.write(out.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("compare.json")).unwrap())
            .unwrap();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    for key in [
        "model",
        "format",
        "total_parameters",
        "active_parameters",
        "decode_tokens_per_s",
        "bytes_per_token",
        "flops_per_token",
        "perplexity",
        "bits_per_byte",
        "energy",
    ] {
        assert!(entries.iter().all(|e| !e[key].is_null()), "{key}");
    }
    assert!(entries[0]["experts"].is_null() && !entries[2]["experts"].is_null());
    let md = std::fs::read_to_string(out.path().join("compare.md")).unwrap();
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        5,
        "{md}"
    );
    // The reading sets each sparse model against each dense one in the same format.
    assert!(md.contains("**qwen3_moe-a** (8 experts, top-2) against **qwen3-a** (dense), f32"));
    assert!(md.contains("**qwen3_moe-a** (8 experts, top-2) against **qwen3-a** (dense), bf16"));
    let svg = std::fs::read_to_string(out.path().join("quality_vs_cost.svg")).unwrap();
    assert!(svg.contains("MFLOPs per token") && svg.contains("qwen3_moe-a"));
}

#[test]
fn perplexity_is_hf_s_on_the_same_tokens() {
    for name in ["qwen3-a", "qwen3_moe-b", "mixtral-a"] {
        let reference = common::reference(name);
        let model = Model::load(&common::fixture(name), &LoadOptions::default()).unwrap();
        let (nll, scored) = compare::held_out_nll(&model, &reference.tokens).unwrap();
        // HF's: -log_softmax of each position's logits at the next token.
        let log_probs = candle_nn::ops::log_softmax(&reference.logits, D::Minus1).unwrap();
        let rows = log_probs
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let hf: f64 = (rows.iter().zip(&reference.tokens[1..]))
            .map(|(row, &next)| -row[next as usize])
            .sum();
        assert_eq!(scored, reference.tokens.len() - 1);
        assert!(
            (nll - hf).abs() < 1e-4 * hf,
            "{name}: {nll} against HF's {hf}"
        );
    }
}

#[test]
fn every_token_after_the_first_is_predicted_once_however_the_text_is_cut() {
    // The fixtures' context is 128 positions: texts shorter, as long, and several times longer.
    let dir = common::fixture("qwen3-sliding");
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.config().max_position_embeddings, 128);
    let vocab = model.config().vocab_size;
    for len in [2, 3, 127, 128, 129, 254, 255, 256, 400] {
        let (nll, scored) = compare::held_out_nll(&model, &text(len, vocab)).unwrap();
        assert_eq!(scored, len - 1, "{len} tokens");
        assert!(nll > 0.0 && nll.is_finite());
    }
    // Each sequence starts on the last token of the one before: the first 128 tokens score
    // as they do alone, and the rest adds what its own sequence scores.
    let long = text(200, vocab);
    let (whole, _) = compare::held_out_nll(&model, &long).unwrap();
    let (first, _) = compare::held_out_nll(&model, &long[..128]).unwrap();
    let (rest, _) = compare::held_out_nll(&model, &long[127..]).unwrap();
    assert!((whole - (first + rest)).abs() < 1e-9 * whole);
}

#[test]
fn nothing_to_compare_is_refused() {
    let opts = CompareOptions {
        formats: vec![Format::F32],
        bench: BenchOptions::default(),
        rounds: 1,
    };
    let mut meter = EnergyMeter::new(Vec::new(), Vec::new());
    let err = compare::run(
        &mut [],
        &LoadOptions::default(),
        10,
        &opts,
        &mut meter,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("at least one model"), "{err}");
    let dir = common::fixture("qwen3-a");
    let mut short = [Contender {
        name: "qwen3-a".into(),
        load: Box::new(move |o: &LoadOptions| Model::load(&dir, o)),
        held_out: vec![5],
    }];
    let err = compare::run(
        &mut short,
        &LoadOptions::default(),
        10,
        &opts,
        &mut meter,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("1 tokens for qwen3-a"), "{err}");
}
