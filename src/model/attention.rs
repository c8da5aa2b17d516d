//! Grouped-query self-attention with RoPE, optional q/k RMSNorm and q/k/v clipping, over the
//! caller's KV cache.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::RmsNorm;

use super::cache::Cache;
use super::linear::Linear;
use super::rope;
use crate::config::{AttentionConfig, QkNorm};
use crate::error::Result;
use crate::ops::cpu::{causal_attention, with_kv_rows, AttentionDims, Isa};

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
        if q.device().is_cpu() {
            attend_cpu(&q, &k, &v, c)
        } else {
            attend_slow(&q, &k, &v, c)
        }
    }
}

/// q: (nh, t, hd), k and v: (nkv, s, hd), all f32, the last t positions of k and v those of
/// the queries -> (t, nh * hd): the CPU kernel over the cache's buffers in place.
fn attend_cpu(q: &Tensor, k: &Tensor, v: &Tensor, c: &AttentionConfig) -> Result<Tensor> {
    let (nh, t, hd) = q.dims3()?;
    let s = k.dim(1)?;
    let dims = AttentionDims {
        heads: nh,
        kv_heads: c.num_kv_heads,
        head_dim: hd,
        tokens: t,
        cached: s - t,
    };
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; q.len()];
    with_kv_rows(k, |k| {
        with_kv_rows(v, |v| {
            causal_attention(Isa::selected(), &q, k, v, dims, c.scale as f32, &mut out)
        })
    })??;
    Ok(Tensor::from_vec(out, (t, nh * hd), &Device::Cpu)?)
}

/// The slow twin of `attend_cpu`, and the path on other devices: candle's ops with the mask
/// written out.
fn attend_slow(q: &Tensor, k: &Tensor, v: &Tensor, c: &AttentionConfig) -> Result<Tensor> {
    let (nh, t, hd) = q.dims3()?;
    let (nkv, s) = (c.num_kv_heads, k.dim(1)?);
    // Grouped-query attention without copying keys: the n_rep query heads that share a kv
    // head are consecutive, so q regroups as (nkv, n_rep * t, hd).
    let n_rep = nh / nkv;
    let q = q.reshape((nkv, n_rep * t, hd))?;
    let scores = (q.matmul(&k.t()?)? * c.scale)?; // (nkv, n_rep * t, s)
    let mut scores = scores.reshape((nkv, n_rep, t, s))?;
    if t > 1 {
        scores = scores.broadcast_add(&causal_mask(t, s - t, q.device())?)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.reshape((nkv, n_rep * t, s))?.matmul(v)?; // (nkv, n_rep * t, hd)
    Ok(out
        .reshape((nh, t, hd))?
        .transpose(0, 1)?
        .reshape((t, nh * hd))?)
}

/// The causal mask for `t` new tokens after `cached` ones: (t, cached + t) f32, -inf above the
/// diagonal.
fn causal_mask(t: usize, cached: usize, device: &candle_core::Device) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU kernel against candle's ops, through a real cache (its buffers are wider than
    /// the valid positions): a prompt, then one decode step, then a chunk.
    #[test]
    fn the_cpu_kernel_matches_candles_ops_over_a_cache() {
        let c = AttentionConfig {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 24,
            qkv_bias: false,
            o_bias: false,
            qk_norm: QkNorm::None,
            clip_qkv: None,
            scale: 0.3,
        };
        let dev = Device::Cpu;
        let mut cache = Cache::new(1, 4096);
        for t in [7usize, 1, 5] {
            let q = Tensor::randn(0f32, 1.0, (c.num_heads, t, c.head_dim), &dev).unwrap();
            let kv = || Tensor::randn(0f32, 1.0, (c.num_kv_heads, t, c.head_dim), &dev).unwrap();
            let (k, v) = cache.append(0, kv(), kv()).unwrap();
            cache.advance(t);
            let fast = attend_cpu(&q, &k, &v, &c).unwrap();
            let slow = attend_slow(&q, &k, &v, &c).unwrap();
            assert_eq!(fast.dims(), &[t, c.num_heads * c.head_dim]);
            let diff = (fast - slow).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(
                diff < 1e-5,
                "{t} tokens after {}: {diff}",
                cache.position() - t
            );
        }
    }
}
