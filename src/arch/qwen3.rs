//! Qwen3 (dense): Qwen3-MoE's attention (per-head q/k RMSNorm, an explicit `head_dim`) with one
//! SiLU-gated MLP in every layer and no experts. The baseline a sparse model is weighed
//! against: the bundled MoE's dense twins are Qwen3 checkpoints.

use super::{layer_types, Fields, TensorNames, LLAMA_NAMES};
use crate::error::Result;
use crate::spec::{AttentionKind, FfnKind, ModelConfig};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let (mut cfg, window) = super::qwen3_moe::attention(f)?;
    // HF's rule when the config lists no layer types: with the window on, the layers from
    // `max_window_layers` up slide (Qwen2-MoE's rule is the even layers below it).
    let from = f.opt_usize("max_window_layers")?.unwrap_or(28);
    for (i, layer) in cfg.layers.iter_mut().enumerate() {
        layer.ffn = FfnKind::Dense;
        if let Some(window) = window.filter(|_| i >= from) {
            layer.attention = AttentionKind::Sliding { window };
        }
    }
    layer_types(f, &mut cfg.layers, window, false)?;
    cfg.dense_intermediate_size = f.usize("intermediate_size")?;
    Ok((cfg, LLAMA_NAMES))
}
