//! Mixtral: softmax router with renormalised top-k, experts `w1` (gate), `w3` (up), `w2` (down),
//! sliding-window attention in every layer when `sliding_window` is set.

use super::{common, Defaults, ExpertNames, Fields, TensorNames, LLAMA_NAMES};
use crate::error::Result;
use crate::spec::{AttentionKind, ModelConfig, MoeConfig, RouterSpec};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 1e6,
            rms_norm_eps: 1e-5,
            ..Defaults::LLAMA
        },
    )?;
    // Every layer attends over the window when there is one (HF's Mixtral masks them all).
    if let Some(window) = f.opt_usize("sliding_window")? {
        if window == 0 {
            return Err(f.error("sliding_window", "must be at least 1 (or null)"));
        }
        for layer in &mut cfg.layers {
            layer.attention = AttentionKind::Sliding { window };
        }
    }
    cfg.moe = MoeConfig {
        num_experts: f.usize_any(&["num_local_experts", "num_experts"])?,
        expert_intermediate_size: f.usize("intermediate_size")?,
        router: RouterSpec::softmax_top_k(f.usize("num_experts_per_tok")?, true),
        expert_bias: false,
        shared_expert: None,
        router_input_scale: false,
        per_expert_scale: false,
    };
    let names = TensorNames {
        moe: "block_sparse_moe",
        experts: ExpertNames::PerExpert {
            gate: "w1",
            up: "w3",
            down: "w2",
        },
        ..LLAMA_NAMES
    };
    Ok((cfg, names))
}
