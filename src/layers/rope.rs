//! Rotary position embedding (the original, non-interleaved "rotate half" form HF uses).

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::spec::RopeConfig;

/// The inverse frequencies of one head dimension; cos/sin are made per forward call for the
/// positions it covers, so nothing grows with the context length.
#[derive(Debug, Clone)]
pub struct Rope {
    /// (head_dim / 2,)
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, head_dim: usize) -> Self {
        // f32 throughout, as HF computes it, so that f32 logits agree to the last bits we test.
        let theta = cfg.theta as f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Rope { inv_freq }
    }

    /// cos and sin for positions `start..start + len`, each (len, head_dim / 2) in `dtype`.
    pub fn cos_sin(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in start..start + len {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// Rotates `xs: (heads, tokens, head_dim)` by the positions whose cos/sin are given.
pub fn apply(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let xs = xs.unsqueeze(0)?.contiguous()?;
    Ok(candle_nn::rotary_emb::rope(&xs, cos, sin)?.squeeze(0)?)
}
