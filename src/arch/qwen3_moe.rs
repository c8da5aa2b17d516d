//! Qwen3-MoE: per-head q/k RMSNorm, an explicit `head_dim`, optional top-k renormalisation,
//! and dense layers chosen by `mlp_only_layers` and `decoder_sparse_step`.

use super::{
    attention_bias, common, qwen_layer_plan, refuse_qwen_sliding_window, Defaults, Fields,
    TensorNames, LLAMA_NAMES,
};
use crate::error::Result;
use crate::spec::{ModelConfig, MoeConfig, QkNorm, RouterSpec};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
        },
    )?;
    refuse_qwen_sliding_window(f)?;
    attention_bias(f, &mut cfg)?;
    cfg.attention.qk_norm = QkNorm::PerHead;
    cfg.layers = qwen_layer_plan(f, cfg.layers.len())?;
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
    };
    Ok((cfg, LLAMA_NAMES))
}
