//! What the benches share: the named shapes, one config.json read by both engines, and the
//! baseline, candle-transformers 0.11's Qwen3-MoE, built on the same random tensors as ours.

// Each bench compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod energy;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3_moe::{Config, ModelForCausalLM};
use moe_runtime::arch::LLAMA_NAMES;
use moe_runtime::layers::{Linear, Router, SparseMoe};
use moe_runtime::ops::{Backend, Experts};
use moe_runtime::quant::Weight;
use moe_runtime::spec::{Activation, RouterSpec};
use moe_runtime::weights::Weights;
use serde_json::{json, Value};

/// The attention and MoE dimensions of a Qwen3-MoE layer.
pub struct Shape {
    pub name: &'static str,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Width of one expert's FFN (`moe_intermediate_size`).
    pub expert_ffn: usize,
}

/// DESIGN.md section 5: the q3-mini benchmark model (8 such layers, vocabulary 32000).
pub const Q3_MINI: Shape = Shape {
    name: "q3-mini",
    hidden: 1024,
    heads: 16,
    kv_heads: 4,
    head_dim: 64,
    experts: 64,
    top_k: 8,
    expert_ffn: 512,
};

/// One layer of Qwen3-30B-A3B (its published config.json).
pub const QWEN3_30B_A3B: Shape = Shape {
    name: "qwen3-30b-a3b",
    hidden: 2048,
    heads: 32,
    kv_heads: 4,
    head_dim: 128,
    experts: 128,
    top_k: 8,
    expert_ffn: 768,
};

/// Seed of every `Weights::random` source in the benches.
pub const SEED: u64 = 4;

/// A published-style qwen3_moe config.json: `layers` layers of `s`, all sparse.
pub fn config_json(s: &Shape, layers: usize, vocab: usize) -> Value {
    json!({
        "model_type": "qwen3_moe",
        "architectures": ["Qwen3MoeForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": s.hidden,
        // Dense layers only; with every layer sparse it sizes nothing.
        "intermediate_size": 3072,
        "num_hidden_layers": layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "attention_bias": false,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "tie_word_embeddings": false,
        "use_sliding_window": false,
        "sliding_window": null,
        "max_window_layers": layers,
        "num_experts": s.experts,
        "num_experts_per_tok": s.top_k,
        "moe_intermediate_size": s.expert_ffn,
        "norm_topk_prob": true,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    })
}

/// Hub prefix of the one layer the layer benches build.
pub const LAYER_PREFIX: &str = "model.layers.0.mlp";

/// Our sparse block of shape `s` on `weights`' tensors for layer 0 (router and stacked experts,
/// top-k renormalised as Qwen3-MoE does), its routed part run by `backend`.
pub fn sparse_moe(s: &Shape, weights: &Weights, backend: Backend) -> SparseMoe {
    let router = weights
        .get(
            &format!("{LAYER_PREFIX}.gate.weight"),
            &[s.experts, s.hidden],
        )
        .expect("router weights");
    let (gate_up, down) = weights
        .experts(
            &LLAMA_NAMES,
            LAYER_PREFIX,
            (s.experts, s.expert_ffn, s.hidden),
        )
        .expect("stacked experts");
    SparseMoe {
        router: Router {
            linear: Linear::new(router, None),
            spec: RouterSpec::softmax_top_k(s.top_k, true),
            correction: None,
            input_norm: None,
            expert_scale: None,
        },
        experts: Experts::new(Weight::Dense(gate_up), Weight::Dense(down)),
        activation: Activation::SiluGated,
        shared: None,
        backend,
    }
}

/// candle-transformers' reading of a config.json.
pub fn ct_config(json: &Value) -> Config {
    serde_json::from_value(json.clone()).expect("candle-transformers reads the config")
}

/// candle-transformers' model on the tensors `weights` gives for each hub name, which are the
/// ones our loader asks for: with the same CPU `Weights::random` source both engines hold the
/// same values (on a GPU a name read twice gives new values; see `Weights::random`). Each tensor gets storage of its own, as a checkpoint's would: candle 0.11's CPU bf16
/// matmul widens the whole storage of both operands to f32 on every call, so views into one
/// stacked tensor would time that widening rather than the model.
pub fn ct_model(cfg: &Config, weights: &Weights) -> ModelForCausalLM {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![v, h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = |name: &str| format!("model.layers.{l}.{name}");
        shapes.extend([
            (p("input_layernorm.weight"), vec![h]),
            (p("post_attention_layernorm.weight"), vec![h]),
            (p("self_attn.q_proj.weight"), vec![q, h]),
            (p("self_attn.k_proj.weight"), vec![kv, h]),
            (p("self_attn.v_proj.weight"), vec![kv, h]),
            (p("self_attn.o_proj.weight"), vec![h, q]),
            (p("self_attn.q_norm.weight"), vec![cfg.head_dim]),
            (p("self_attn.k_norm.weight"), vec![cfg.head_dim]),
        ]);
        // candle-transformers' rule for which layers are sparse.
        if cfg.num_experts > 0 && (l + 1).is_multiple_of(cfg.decoder_sparse_step) {
            let i = cfg.moe_intermediate_size;
            shapes.push((p("mlp.gate.weight"), vec![cfg.num_experts, h]));
            for e in 0..cfg.num_experts {
                let x = |proj: &str| p(&format!("mlp.experts.{e}.{proj}.weight"));
                shapes.extend([
                    (x("gate_proj"), vec![i, h]),
                    (x("up_proj"), vec![i, h]),
                    (x("down_proj"), vec![h, i]),
                ]);
            }
        } else {
            let f = cfg.intermediate_size;
            shapes.extend([
                (p("mlp.gate_proj.weight"), vec![f, h]),
                (p("mlp.up_proj.weight"), vec![f, h]),
                (p("mlp.down_proj.weight"), vec![h, f]),
            ]);
        }
    }
    let tensors: HashMap<String, Tensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let t = weights.get(&name, &shape).expect("a random tensor");
            (name, t)
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, weights.dtype(), weights.device());
    ModelForCausalLM::new(cfg, vb).expect("candle-transformers builds its model")
}

/// Random token ids in `0..vocab`, as candle-transformers takes them: (1, len).
pub fn ct_ids(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("an id tensor")
}

/// `len` random token ids below `vocab` from a small fixed-seed generator.
pub fn random_ids(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect()
}

/// The sampling every group uses: few samples, short windows (the runs are long and the
/// machines shared), throughput in tokens.
pub fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tokens: usize,
) {
    group
        .sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .throughput(criterion::Throughput::Elements(tokens as u64));
}
