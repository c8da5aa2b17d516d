//! Qwen2-MoE: q/k/v biases, a shared expert behind a sigmoid gate, optional top-k
//! renormalisation, and dense layers chosen by `mlp_only_layers` and `decoder_sparse_step`.

use super::{
    common, qwen_layer_plan, refuse_qwen_sliding_window, Defaults, Fields, TensorNames, LLAMA_NAMES,
};
use crate::error::Result;
use crate::spec::{ModelConfig, MoeConfig, RouterSpec, SharedExpertConfig};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
        },
    )?;
    refuse_qwen_sliding_window(f)?;
    // Published Qwen2-MoE configs predate `qkv_bias`; their q/k/v projections always have one.
    cfg.attention.qkv_bias = f.bool_or("qkv_bias", true)?;
    cfg.layers = qwen_layer_plan(f, cfg.layers.len())?;
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
    };
    Ok((cfg, LLAMA_NAMES))
}
