//! OLMoE: q/k RMSNorm over the whole projection, `clip_qkv`, optional top-k renormalisation.

use super::{attention_bias, common, Defaults, Fields, TensorNames, LLAMA_NAMES};
use crate::error::Result;
use crate::spec::{ModelConfig, MoeConfig, QkNorm, RouterSpec};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            ..Defaults::LLAMA
        },
    )?;
    attention_bias(f, &mut cfg)?;
    cfg.attention.qk_norm = QkNorm::Projection;
    cfg.attention.clip_qkv = f.opt_f64("clip_qkv")?;
    cfg.moe = MoeConfig {
        num_experts: f.usize_any(&["num_experts", "num_local_experts"])?,
        expert_intermediate_size: f.usize("intermediate_size")?,
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
