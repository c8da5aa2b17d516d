//! Grouped-query self-attention with RoPE, optional q/k RMSNorm, a weightless v RMSNorm, keys
//! as values and q/k/v clipping, over the caller's KV cache; full or over a sliding window.

use candle_core::{DType, Tensor};

use super::cache::Cache;
use super::linear::Linear;
use super::norm::Norm;
use super::rope;
use crate::error::Result;
use crate::ops::{AttentionShape, Backend};
use crate::spec::{AttentionConfig, AttentionKind, QkNorm};

#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    /// `None` where the keys double as values (`cfg.k_eq_v`).
    v: Option<Linear>,
    o: Linear,
    /// Present unless `cfg.qk_norm` is `QkNorm::None`.
    qk_norm: Option<(Norm, Norm)>,
    /// A weightless norm over each value head, where `cfg.v_norm`.
    v_norm: Option<Norm>,
    /// Rotates by the full-attention layers' own tables (`Step::global`).
    global_rope: bool,
    cfg: AttentionConfig,
    shape: AttentionShape,
}

/// The attention weights of one layer, as loaded.
pub struct AttentionWeights {
    pub q: Linear,
    pub k: Linear,
    pub v: Option<Linear>,
    pub o: Linear,
    pub qk_norm: Option<(Norm, Norm)>,
    pub v_norm: Option<Norm>,
    /// (heads) sink logits, f32.
    pub sinks: Option<Vec<f32>>,
}

/// What every layer's attention needs for one sequence's tokens in one forward call.
pub struct Step<'a> {
    /// Each (tokens, rotary_dim / 2).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// The full-attention layers' own cos and sin, where their RoPE differs
    /// (`ModelConfig::global_attention`).
    pub global: Option<(&'a Tensor, &'a Tensor)>,
}

impl<'a> Step<'a> {
    /// The tables a layer rotates by: the global ones for `global` layers where they exist.
    fn tables(&self, global: bool) -> (&'a Tensor, &'a Tensor) {
        match (global, self.global) {
            (true, Some(tables)) => tables,
            _ => (self.cos, self.sin),
        }
    }
}

/// One sequence's share of a forward call over several: its `tokens` consecutive rows of the
/// hidden states, their positions, and its cache.
pub struct Sequence<'a> {
    pub tokens: usize,
    pub step: Step<'a>,
    pub cache: &'a mut Cache,
}

/// `f` of each sequence in turn, given the first row of its tokens in the rows of all of them,
/// the results joined in order along dim 0.
pub fn each_sequence(
    seqs: &mut [Sequence],
    mut f: impl FnMut(usize, &mut Sequence) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut outs = Vec::with_capacity(seqs.len());
    let mut row = 0;
    for seq in seqs.iter_mut() {
        outs.push(f(row, seq)?);
        row += seq.tokens;
    }
    match outs.len() {
        1 => Ok(outs.pop().expect("one sequence")),
        _ => Ok(Tensor::cat(&outs, 0)?),
    }
}

impl Attention {
    /// `global_rope`: the layer rotates by `Step::global`.
    pub fn new(
        w: AttentionWeights,
        cfg: &AttentionConfig,
        kind: AttentionKind,
        global_rope: bool,
    ) -> Self {
        let window = match kind {
            AttentionKind::Sliding { window } => Some(window),
            AttentionKind::Full | AttentionKind::Linear | AttentionKind::Latent => None,
        };
        Attention {
            q: w.q,
            k: w.k,
            v: w.v,
            o: w.o,
            qk_norm: w.qk_norm,
            v_norm: w.v_norm,
            global_rope,
            cfg: cfg.clone(),
            shape: AttentionShape {
                kv_heads: cfg.num_kv_heads,
                scale: cfg.scale,
                window,
                sinks: w.sinks,
            },
        }
    }

    /// xs: (tokens, hidden) -> (tokens, hidden), the rows of every sequence in `seqs` one
    /// after another; appends this layer's keys and values to each sequence's cache. The
    /// projections run once over all rows (one pass over their weights for the whole batch);
    /// attention itself runs per sequence.
    pub fn forward(
        &self,
        xs: &Tensor,
        seqs: &mut [Sequence],
        layer: usize,
        be: &Backend,
    ) -> Result<Tensor> {
        // q: (tokens, nh * hd), k and v: (tokens, nkv * hd); v is k where keys double as values
        // (normed and rotated apart from it below).
        let q = self.q.forward(xs, be)?;
        let k = self.k.forward(xs, be)?;
        let v = match &self.v {
            Some(v) => v.forward(xs, be)?,
            None => k.clone(),
        };
        let out = each_sequence(seqs, |row, seq| {
            let rows = |t: &Tensor| t.narrow(0, row, seq.tokens);
            let qkv = (rows(&q)?, rows(&k)?, rows(&v)?);
            self.attend(qkv, &seq.step, seq.cache, layer, be)
        })?;
        // (tokens, nh * hd) in f32 -> the compute dtype
        self.o.forward(&out.to_dtype(xs.dtype())?, be)
    }

    /// One sequence's projections (t rows each) -> its attention output (t, nh * hd), f32.
    fn attend(
        &self,
        (mut q, mut k, mut v): (Tensor, Tensor, Tensor),
        step: &Step,
        cache: &mut Cache,
        layer: usize,
        be: &Backend,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (t, _) = q.dims2()?;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        // A gated projection holds each head's queries, then its gate: (t, nh, 2 · hd).
        let gate = match c.output_gate {
            true => {
                let both = q.reshape((t, nh, 2 * hd))?;
                q = both.narrow(2, 0, hd)?.reshape((t, nh * hd))?;
                Some(both.narrow(2, hd, hd)?.reshape((t, nh * hd))?)
            }
            false => None,
        };
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
        let mut v = v.reshape((t, nkv, hd))?;
        if let Some(norm) = &self.v_norm {
            v = norm.forward(&v)?;
        }
        let (cos, sin) = step.tables(self.global_rope);
        // (heads, t, hd), rotated by position. Attention itself runs in f32 whatever the
        // compute dtype: candle's CPU matmul converts half-precision inputs to f32 on every
        // call (the whole cache buffer, each step), and the cache is small next to the
        // weights; it also keeps the scores as exact as HF's f32-accumulated ones.
        let q = rope::apply(&q.transpose(0, 1)?, cos, sin)?.to_dtype(DType::F32)?;
        let k = rope::apply(&k.transpose(0, 1)?, cos, sin)?.to_dtype(DType::F32)?;
        let v = v.transpose(0, 1)?;
        let v = v.to_dtype(DType::F32)?.contiguous()?;
        // k, v: (nkv, s, hd) with s = cached + t, f32
        let (k, v) = cache.append(layer, k, v)?;
        let out = be.attention(&q, &k, &v, &self.shape)?;
        match gate {
            // In f32 (HF: in the compute dtype); the caller rounds the product to it.
            Some(gate) => {
                let gate = candle_nn::ops::sigmoid(&gate.to_dtype(DType::F32)?)?;
                Ok((out * gate)?)
            }
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The CPU kernel against the reference ops, through a real cache (its buffers are wider
    /// than the valid positions): a prompt, then one decode step, then a chunk; full and over
    /// a window shorter than the context.
    #[test]
    fn the_cpu_kernel_matches_the_reference_over_a_cache() {
        let dev = Device::Cpu;
        let (heads, kv_heads, hd) = (8, 2, 24);
        for window in [None, Some(6)] {
            let shape = AttentionShape {
                kv_heads,
                scale: 0.3,
                window,
                sinks: window.map(|_| (0..heads).map(|h| h as f32 / 2.0 - 1.5).collect()),
            };
            let mut cache = Cache::new(1, 4096);
            for t in [7usize, 1, 5] {
                let q = Tensor::randn(0f32, 1.0, (heads, t, hd), &dev).unwrap();
                let kv = || Tensor::randn(0f32, 1.0, (kv_heads, t, hd), &dev).unwrap();
                let (k, v) = cache.append(0, kv(), kv()).unwrap();
                cache.advance(t).unwrap();
                let fast = Backend::cpu().attention(&q, &k, &v, &shape).unwrap();
                let slow = Backend::Reference.attention(&q, &k, &v, &shape).unwrap();
                assert_eq!(fast.dims(), &[t, heads * hd]);
                // On the host, so that a NaN fails (candle's max would skip it).
                let host = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let diffs: Vec<f32> = host(fast)
                    .iter()
                    .zip(host(slow))
                    .map(|(a, b)| (a - b).abs())
                    .collect();
                let diff = diffs.iter().fold(0f32, |m, &d| m.max(d));
                let nan = diffs.iter().any(|d| d.is_nan());
                assert!(!nan && diff < 1e-5, "{t} tokens, window {window:?}: {diff}");
            }
        }
    }
}
