//! Rotary position embedding (the original, non-interleaved "rotate half" form HF uses), with
//! YaRN's frequencies and attention factor when the config asks for them.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::spec::{RopeConfig, Yarn};

/// The inverse frequencies of a head's rotating dimensions (all of them, the first
/// `partial_rotary_factor` of them, or all with only that share turning: `proportional`);
/// cos/sin are made per forward call for the positions it covers, so nothing grows with the
/// context length.
#[derive(Debug, Clone)]
pub struct Rope {
    /// (rotary_dim / 2,)
    inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    scale: f32,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, head_dim: usize) -> Self {
        // f32 throughout, as HF computes it, so that f32 logits agree to the last bits we test.
        let theta = cfg.theta as f32;
        if cfg.proportional {
            // The whole head's frequencies for the turning pairs, zero for the others.
            let turning = cfg.turning_pairs(head_dim);
            let inv_freq = (0..head_dim / 2)
                .map(|i| match i < turning {
                    true => 1.0 / theta.powf((2 * i) as f32 / head_dim as f32),
                    false => 0.0,
                })
                .collect();
            return Rope {
                inv_freq,
                scale: 1.0,
            };
        }
        // The frequencies of the rotating dimensions alone, as if they were the whole head.
        let head_dim = cfg.rotary_dim(head_dim);
        let pos_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        match &cfg.yarn {
            None => Rope {
                inv_freq: pos_freq.iter().map(|p| 1.0 / p).collect(),
                scale: 1.0,
            },
            Some(y) => Rope {
                inv_freq: yarn_inv_freq(y, cfg.theta, head_dim, &pos_freq),
                scale: y.attention_factor as f32,
            },
        }
    }

    /// cos and sin for positions `start..start + len`, each (len, rotary_dim / 2) in `dtype`.
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
                cos.push(angle.cos() * self.scale);
                sin.push(angle.sin() * self.scale);
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}

/// HF's `_compute_yarn_parameters`: each dimension's frequency blended between the original
/// (extrapolation, the fast-rotating dimensions) and one slowed by `factor` (interpolation, the
/// slow ones), by a linear ramp between the dimensions that make `beta_fast` and `beta_slow`
/// rotations over the original context. The range in f64 as Python computes it, the rest in
/// f32 as torch does.
fn yarn_inv_freq(y: &Yarn, theta: f64, dim: usize, pos_freq: &[f32]) -> Vec<f32> {
    let original = y.original_max_position_embeddings as f64;
    let correction_dim = |rotations: f64| {
        dim as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001; // HF's guard against a zero-width ramp
    }
    let factor = y.factor as f32;
    pos_freq
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
            let extrapolation = 1.0 - ramp;
            let (extra, inter) = (1.0 / p, 1.0 / (factor * p));
            inter * (1.0 - extrapolation) + extra * extrapolation
        })
        .collect()
}

/// Rotates `xs: (heads, tokens, head_dim)` by the positions whose cos/sin are given: its first
/// 2 · cos's width dimensions, the rest passing through (partial rotary embeddings).
pub fn apply(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (head_dim, rotary) = (xs.dim(2)?, 2 * cos.dim(1)?);
    let rotate = |xs: &Tensor| -> Result<Tensor> {
        let xs = xs.unsqueeze(0)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope(&xs, cos, sin)?.squeeze(0)?)
    };
    if rotary == head_dim {
        return rotate(xs);
    }
    let turned = rotate(&xs.narrow(2, 0, rotary)?)?;
    let rest = xs.narrow(2, rotary, head_dim - rotary)?;
    Ok(Tensor::cat(&[turned, rest.contiguous()?], 2)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HF's `_compute_proportional_rope_parameters` for Gemma 4 26B-A4B's global layers
    /// (transformers 5.24: head_dim 512, theta 1e6, factor 0.25): 64 turning pairs at the whole
    /// head's frequencies, then 192 at zero; the whole head is rotated.
    #[test]
    fn proportional_frequencies_are_hfs() {
        let cfg = RopeConfig {
            partial_rotary_factor: 0.25,
            proportional: true,
            ..RopeConfig::plain(1e6)
        };
        let rope = Rope::new(&cfg, 512);
        assert_eq!(rope.inv_freq.len(), 256);
        for (i, hf) in [
            (0, 1.0),
            (1, 0.947_463_5),
            (16, 0.421_696_5),
            (63, 0.033_376_25),
        ] {
            let ours = rope.inv_freq[i];
            assert!((ours - hf).abs() <= 2e-6 * hf, "{i}: {ours} vs {hf}");
        }
        assert!(rope.inv_freq[64..].iter().all(|&f| f == 0.0));
        assert_eq!(cfg.rotary_dim(512), 512);
    }

    /// HF's `ROPE_INIT_FUNCTIONS["yarn"]` for gpt-oss-20b's settings (transformers 5.23:
    /// head_dim 64, theta 150000, factor 32, original context 4096, betas 32/1, no truncation)
    /// and for Qwen3's documented long-context setting (head_dim 128, theta 1e6, factor 4,
    /// original 32768, truncated), every eighth frequency of the latter.
    #[test]
    fn yarn_frequencies_and_attention_factor_are_hfs() {
        let gpt_oss = RopeConfig {
            partial_rotary_factor: 1.0,
            proportional: false,
            theta: 150000.0,
            yarn: Some(Yarn {
                factor: 32.0,
                original_max_position_embeddings: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: false,
                attention_factor: 0.1 * 32f64.ln() + 1.0,
                mscale_all_dim: None,
            }),
        };
        let hf: [f32; 32] = [
            1.0,
            0.6890443,
            0.47478205,
            0.32714587,
            0.225418,
            0.15532298,
            0.107024424,
            0.073744565,
            0.050813273,
            0.031705696,
            0.019335,
            0.011592049,
            0.0067949593,
            0.003860359,
            0.0020937927,
            0.0010526022,
            0.00045648392,
            0.0001293187,
            3.830881e-5,
            2.6396468e-5,
            1.8188337e-5,
            1.253257e-5,
            8.635496e-6,
            5.9502395e-6,
            4.0999785e-6,
            2.8250668e-6,
            1.9465963e-6,
            1.341291e-6,
            9.24209e-7,
            6.368209e-7,
            4.3879785e-7,
            3.0235114e-7,
        ];
        let rope = Rope::new(&gpt_oss, 64);
        assert!((rope.scale - 1.3465736).abs() < 1e-6);
        for (i, (ours, hf)) in rope.inv_freq.iter().zip(hf).enumerate() {
            assert!((ours - hf).abs() <= 2e-6 * hf, "{i}: {ours} vs {hf}");
        }
        let qwen = RopeConfig {
            partial_rotary_factor: 1.0,
            proportional: false,
            theta: 1e6,
            yarn: Some(Yarn {
                factor: 4.0,
                original_max_position_embeddings: 32768,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true,
                attention_factor: 0.1 * 4f64.ln() + 1.0,
                mscale_all_dim: None,
            }),
        };
        let hf = [
            1.0,
            0.17782794,
            0.03162278,
            0.0053753215,
            0.00060294115,
            4.4456985e-5,
            7.905_694e-6,
            1.4058534e-6,
        ];
        let rope = Rope::new(&qwen, 128);
        assert!((rope.scale - 1.1386294).abs() < 1e-6);
        for (i, hf) in hf.iter().enumerate() {
            let ours = rope.inv_freq[8 * i];
            assert!((ours - hf).abs() <= 2e-6 * hf, "{}: {ours} vs {hf}", 8 * i);
        }
    }
}
