//! Qwen2-MoE: q/k/v biases, a shared expert behind a sigmoid gate, optional top-k
//! renormalisation, dense layers chosen by `mlp_only_layers` and `decoder_sparse_step`, and
//! sliding-window layers chosen by `layer_types` or `use_sliding_window` and `max_window_layers`.

use super::{
    common, layer_types, qwen_layer_plan, qwen_window, Defaults, Fields, TensorNames, LLAMA_NAMES,
};
use crate::error::Result;
use crate::spec::{AttentionKind, ModelConfig, MoeConfig, RouterSpec, SharedExpertConfig};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            ..Defaults::LLAMA
        },
    )?;
    let window = qwen_window(f)?;
    // Published Qwen2-MoE configs predate `qkv_bias`; their q/k/v projections always have one.
    cfg.attention.qkv_bias = f.bool_or("qkv_bias", true)?;
    cfg.layers = qwen_layer_plan(f, cfg.layers.len())?;
    // HF's rule when the config lists no layer types: with the window on, the even layers
    // below `max_window_layers` slide.
    let below = f.opt_usize("max_window_layers")?.unwrap_or(28);
    if let Some(window) = window {
        for (i, layer) in cfg.layers.iter_mut().enumerate() {
            if i % 2 == 0 && i < below {
                layer.attention = AttentionKind::Sliding { window };
            }
        }
    }
    layer_types(f, &mut cfg.layers, window, false)?;
    cfg.dense_intermediate_size = f.usize("intermediate_size")?;
    cfg.moe = MoeConfig {
        num_experts: f.usize_any(&["num_experts", "num_local_experts"])?,
        expert_intermediate_size: f.usize("moe_intermediate_size")?,
        router: RouterSpec::softmax_top_k(
            f.usize("num_experts_per_tok")?,
            f.bool_or("norm_topk_prob", false)?,
        ),
        expert_bias: false,
        shared_expert: Some(SharedExpertConfig {
            intermediate_size: f.usize("shared_expert_intermediate_size")?,
            gated: true,
        }),
        router_input_scale: false,
        per_expert_scale: false,
    };
    Ok((cfg, LLAMA_NAMES))
}
