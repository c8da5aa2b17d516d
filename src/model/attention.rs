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

/// What every layer's attention needs for one sequence's tokens in one forward call.
pub struct Step<'a> {
    /// Each (tokens, head_dim / 2).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// (tokens, cached + tokens) of 0 and -inf, f32; `None` for a single token.
    pub mask: Option<&'a Tensor>,
}

/// One sequence's share of a forward call over several: its `tokens` consecutive rows of the
/// hidden states, their positions, and its cache.
pub struct Sequence<'a> {
    pub tokens: usize,
    pub step: Step<'a>,
    pub cache: &'a mut Cache,
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

    /// xs: (tokens, hidden) -> (tokens, hidden), the rows of every sequence in `seqs` one
    /// after another; appends this layer's keys and values to each sequence's cache. The
    /// projections run once over all rows (one pass over their weights for the whole batch);
    /// attention itself runs per sequence.
    pub fn forward(&self, xs: &Tensor, seqs: &mut [Sequence], layer: usize) -> Result<Tensor> {
        // q: (tokens, nh * hd), k and v: (tokens, nkv * hd)
        let q = self.q.forward(xs)?;
        let k = self.k.forward(xs)?;
        let v = self.v.forward(xs)?;
        let mut outs = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for seq in seqs.iter_mut() {
            let rows = |t: &Tensor| t.narrow(0, row, seq.tokens);
            outs.push(self.attend(
                (rows(&q)?, rows(&k)?, rows(&v)?),
                &seq.step,
                seq.cache,
                layer,
            )?);
            row += seq.tokens;
        }
        let out = if outs.len() == 1 {
            outs.pop().expect("one sequence")
        } else {
            Tensor::cat(&outs, 0)?
        };
        // (tokens, nh * hd) in f32 -> the compute dtype
        self.o.forward(&out.to_dtype(xs.dtype())?)
    }

    /// One sequence's projections (t rows each) -> its attention output (t, nh * hd), f32.
    fn attend(
        &self,
        (mut q, mut k, mut v): (Tensor, Tensor, Tensor),
        step: &Step,
        cache: &mut Cache,
        layer: usize,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (t, _) = q.dims2()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
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
        Ok(out
            .reshape((nh, t, hd))?
            .transpose(0, 1)?
            .reshape((t, nh * hd))?)
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
