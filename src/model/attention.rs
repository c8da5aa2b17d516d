//! Grouped-query self-attention with RoPE, optional q/k RMSNorm and q/k/v clipping, over the
//! caller's KV cache.

use candle_core::{DType, Module, Tensor};
use candle_nn::RmsNorm;

use super::cache::Cache;
use super::linear::Linear;
use super::rope;
use crate::config::{AttentionConfig, QkNorm};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Present unless `cfg.qk_norm` is `QkNorm::None`.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    cfg: AttentionConfig,
}

/// The attention weights of one layer, as loaded.
pub struct AttentionWeights {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
}

/// What every layer's attention needs for one forward call.
pub struct Step<'a> {
    /// Each (tokens, head_dim / 2).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// (tokens, cached + tokens) of 0 and -inf, f32; `None` for a single token.
    pub mask: Option<&'a Tensor>,
}

impl Attention {
    pub fn new(w: AttentionWeights, cfg: &AttentionConfig) -> Self {
        Attention {
            q: w.q,
            k: w.k,
            v: w.v,
            o: w.o,
            qk_norm: w.qk_norm,
            cfg: cfg.clone(),
        }
    }

    /// xs: (tokens, hidden) -> (tokens, hidden); appends this layer's keys and values to `cache`.
    pub fn forward(
        &self,
        xs: &Tensor,
        step: &Step,
        cache: &mut Cache,
        layer: usize,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (t, _) = xs.dims2()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        // q: (t, nh * hd), k and v: (t, nkv * hd)
        let mut q = self.q.forward(xs)?;
        let mut k = self.k.forward(xs)?;
        let mut v = self.v.forward(xs)?;
        if let (QkNorm::Projection, Some((qn, kn))) = (c.qk_norm, &self.qk_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let mut q = q.reshape((t, nh, hd))?;
        let mut k = k.reshape((t, nkv, hd))?;
        if let (QkNorm::PerHead, Some((qn, kn))) = (c.qk_norm, &self.qk_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        if let Some(clip) = c.clip_qkv {
            q = q.clamp(-clip, clip)?;
            k = k.clamp(-clip, clip)?;
            v = v.clamp(-clip, clip)?;
        }
        // (heads, t, hd), rotated by position. Attention itself runs in f32 whatever the
        // compute dtype: candle's CPU matmul converts half-precision inputs to f32 on every
        // call (the whole cache buffer, each step), and the cache is small next to the
        // weights; it also keeps the scores as exact as HF's f32-accumulated ones.
        let q = rope::apply(&q.transpose(0, 1)?, step.cos, step.sin)?.to_dtype(DType::F32)?;
        let k = rope::apply(&k.transpose(0, 1)?, step.cos, step.sin)?.to_dtype(DType::F32)?;
        let v = v.reshape((t, nkv, hd))?.transpose(0, 1)?;
        let v = v.to_dtype(DType::F32)?.contiguous()?;
        // k, v: (nkv, s, hd) with s = cached + t, f32
        let (k, v) = cache.append(layer, k, v)?;
        let s = k.dim(1)?;

        // Grouped-query attention without copying keys: the n_rep query heads that share a kv
        // head are consecutive, so q regroups as (nkv, n_rep * t, hd).
        let n_rep = nh / nkv;
        let q = q.reshape((nkv, n_rep * t, hd))?;
        let scores = (q.matmul(&k.t()?)? * c.scale)?; // (nkv, n_rep * t, s)
        let mut scores = scores.reshape((nkv, n_rep, t, s))?;
        if let Some(mask) = step.mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.reshape((nkv, n_rep * t, s))?.matmul(&v)?; // (nkv, n_rep * t, hd)
        let out = out
            .reshape((nh, t, hd))?
            .transpose(0, 1)?
            .reshape((t, nh * hd))?;
        self.o.forward(&out.to_dtype(xs.dtype())?)
    }
}

/// The causal mask for `t` new tokens after `cached` ones: (t, cached + t) f32, -inf above the
/// diagonal.
pub fn causal_mask(t: usize, cached: usize, device: &candle_core::Device) -> Result<Tensor> {
    let s = cached + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..s).map(move |j| {
                if j > cached + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, s), device)?)
}
