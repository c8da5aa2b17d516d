//! Granite-MoE: embedding, residual and logit multipliers, `attention_multiplier` as the
//! attention scale, a `router.layer`, and experts stored stacked (`input_linear`,
//! `output_linear`). Its router softmaxes the top-k logits.

use super::{attention_bias, common, Defaults, ExpertNames, Fields, TensorNames, LLAMA_NAMES};
use crate::error::Result;
use crate::spec::{ModelConfig, MoeConfig, RouterSpec, Scales, Selection};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            ..Defaults::LLAMA
        },
    )?;
    attention_bias(f, &mut cfg)?;
    cfg.attention.scale = f.f64_or("attention_multiplier", 1.0)?;
    cfg.scales = Scales {
        embedding: f.f64_or("embedding_multiplier", 1.0)?,
        residual: f.f64_or("residual_multiplier", 1.0)?,
        logits_divisor: f.f64_or("logits_scaling", 1.0)?,
        ..Scales::default()
    };
    cfg.moe = MoeConfig {
        num_experts: f.usize_any(&["num_local_experts", "num_experts"])?,
        expert_intermediate_size: f.usize("intermediate_size")?,
        // The k largest logits, softmaxed among themselves.
        router: RouterSpec {
            selection: Selection::TopKThenScore,
            ..RouterSpec::softmax_top_k(f.usize("num_experts_per_tok")?, false)
        },
        expert_bias: false,
        shared_expert: None,
        router_input_scale: false,
        per_expert_scale: false,
    };
    let names = TensorNames {
        moe: "block_sparse_moe",
        router: "router.layer.weight",
        experts: ExpertNames::Stacked {
            gate_up: "input_linear.weight",
            down: "output_linear.weight",
        },
        ..LLAMA_NAMES
    };
    Ok((cfg, names))
}
