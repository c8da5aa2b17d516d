//! Multi-head latent attention's shape (DeepSeek-V2/V3, GLM-4.7-Flash): its fields, their
//! checks, and the parameters they imply.

use std::path::Path;

use super::{AttentionKind, ModelConfig, MAX_HEAD_DIM, MAX_HIDDEN};
use crate::error::{Error, Result};

/// Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash). Queries: `q_proj`, or
/// `q_a_proj` -> RMSNorm -> `q_b_proj` when `q_lora_rank` is set, each head's `nope_dim` values
/// then `rope_dim` rotated ones. Keys and values: `kv_a_proj_with_mqa` gives a latent of
/// `kv_lora_rank` (RMS-normed) and one rotary key of `rope_dim` that every head shares;
/// `kv_b_proj` expands the latent to each head's `nope_dim` key values and `v_dim` values.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentAttentionConfig {
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub nope_dim: usize,
    pub rope_dim: usize,
    pub v_dim: usize,
    /// The checkpoint's rotary dimensions rotate in adjacent pairs (x0, x1), (x2, x3), ...
    /// (`rope_interleave`, DeepSeek's layout), not as the two halves HF's default RoPE pairs;
    /// the loader reorders their projection rows once so that one RoPE serves both.
    pub rope_interleave: bool,
    /// Epsilon of the RMSNorms on the query and key-value latents.
    pub norm_eps: f64,
}

impl LatentAttentionConfig {
    /// Each head's query and key width: the part without position, then the rotary part.
    pub fn qk_dim(&self) -> usize {
        self.nope_dim + self.rope_dim
    }

    /// Numbers cached per position and layer: the latent and the shared rotary key.
    pub fn cached_per_position(&self) -> usize {
        self.kv_lora_rank + self.rope_dim
    }
}

impl LatentAttentionConfig {
    /// (weights of matrix products, all parameters) of one layer's latent attention with
    /// `heads` heads over a hidden state of `hidden`: the query path (one matrix, or two
    /// around a norm), the latent's projection, its expansion, the output, and the norms.
    pub fn parameters(&self, hidden: usize, heads: usize) -> (u128, u128) {
        let (h, nh) = (hidden as u128, heads as u128);
        let (r, kvr) = (self.rope_dim as u128, self.kv_lora_rank as u128);
        let q_out = nh * self.qk_dim() as u128;
        let q = match self.q_lora_rank.map(|q| q as u128) {
            Some(qr) => h * qr + qr * q_out,
            None => h * q_out,
        };
        let expand = kvr * nh * (self.nope_dim + self.v_dim) as u128;
        let matrices = q + h * (kvr + r) + expand + nh * self.v_dim as u128 * h;
        let norms = kvr + self.q_lora_rank.unwrap_or(0) as u128;
        (matrices, matrices + norms)
    }
}

impl ModelConfig {
    /// The latent-attention shape, present exactly where the layers have latent attention.
    pub(super) fn validate_latent_attention(&self, path: &Path) -> Result<()> {
        let latent_layers = self
            .layers
            .iter()
            .any(|l| l.attention == AttentionKind::Latent);
        let l = match (&self.latent_attention, latent_layers) {
            (None, false) => return Ok(()),
            (Some(l), true) => l,
            (None, true) => {
                return Err(Error::config(
                    path,
                    "kv_lora_rank",
                    "the layers have latent attention, but the config gives no latent shape",
                ))
            }
            (Some(_), false) => {
                return Err(Error::config(
                    path,
                    "kv_lora_rank",
                    "a latent attention shape for a model whose layers do not use it",
                ))
            }
        };
        for (field, v, max) in [
            ("q_lora_rank", l.q_lora_rank.unwrap_or(1), MAX_HIDDEN),
            ("kv_lora_rank", l.kv_lora_rank, MAX_HIDDEN),
            ("qk_nope_head_dim", l.nope_dim, MAX_HEAD_DIM),
            ("qk_rope_head_dim", l.rope_dim, MAX_HEAD_DIM),
            ("v_head_dim", l.v_dim, MAX_HEAD_DIM),
        ] {
            if v == 0 || v > max {
                return Err(Error::config(
                    path,
                    field,
                    format!("{v} is out of range 1..={max}"),
                ));
            }
        }
        if !l.rope_dim.is_multiple_of(2) {
            return Err(Error::config(
                path,
                "qk_rope_head_dim",
                format!("{} is odd; rotary embeddings rotate pairs", l.rope_dim),
            ));
        }
        Ok(())
    }
}
