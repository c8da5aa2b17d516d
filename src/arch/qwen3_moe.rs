//! Qwen3-MoE: per-head q/k RMSNorm, an explicit `head_dim`, optional top-k renormalisation,
//! and dense layers chosen by `mlp_only_layers` and `decoder_sparse_step`.

use super::{
    attention_bias, common, qwen_layer_plan, qwen_window, Defaults, Fields, TensorNames,
    LLAMA_NAMES,
};
use crate::error::Result;
use crate::spec::{AttentionKind, ModelConfig, MoeConfig, QkNorm, RouterSpec};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let (mut cfg, window) = attention(f)?;
    // With the window on, HF's Qwen3-MoE masks every layer with it; `max_window_layers` and
    // `layer_types` are not read by its model.
    f.irrelevant(&["max_window_layers", "layer_types"]);
    cfg.layers = qwen_layer_plan(f, cfg.layers.len())?;
    if let Some(window) = window {
        for layer in &mut cfg.layers {
            layer.attention = AttentionKind::Sliding { window };
        }
    }
    // Only dense layers use it, but published configs always carry it.
    cfg.dense_intermediate_size = f.opt_usize("intermediate_size")?.unwrap_or(0);
    cfg.moe = MoeConfig {
        num_experts: f.usize_any(&["num_experts", "num_local_experts"])?,
        expert_intermediate_size: f.usize("moe_intermediate_size")?,
        router: RouterSpec::softmax_top_k(
            f.usize("num_experts_per_tok")?,
            f.bool_or("norm_topk_prob", false)?,
        ),
        expert_bias: false,
        shared_expert: None,
        router_input_scale: false,
        per_expert_scale: false,
    };
    Ok((cfg, LLAMA_NAMES))
}

/// What Qwen3 and Qwen3-MoE share: the common fields at Qwen's defaults, attention biases from
/// `attention_bias`, per-head q/k norms, and the window `use_sliding_window` switches on (which
/// layers it covers is each family's rule).
pub(super) fn attention(f: &mut Fields) -> Result<(ModelConfig, Option<usize>)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            ..Defaults::LLAMA
        },
    )?;
    let window = qwen_window(f)?;
    attention_bias(f, &mut cfg)?;
    cfg.attention.qk_norm = QkNorm::PerHead;
    Ok((cfg, window))
}
