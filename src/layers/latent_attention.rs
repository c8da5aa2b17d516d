//! Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash). Each position caches one
//! normalised latent of `kv_lora_rank` values and one rotary key of `rope_dim` that all heads
//! share, not per-head keys and values: DeepSeek-V3 keeps 576 numbers per position and layer
//! where its expanded keys and values would be 40,960.
//!
//! Two forms compute the same attention:
//! - expanded (the reference twin, HF's): `kv_b_proj` turns every cached latent into each
//!   head's keys (their non-rotary part) and values, then ordinary attention;
//! - absorbed (decode, as production engines run it): head h's key matrix K_h (nope, kvr) moves
//!   to the query side, q_nope · (K_h c) = (K_hᵀ q_nope) · c, and its value matrix V_h (v, kvr)
//!   to the output side, Σ p V_h c = V_h Σ p c; attention then runs over the cached rows
//!   themselves, one kv head of `kv_lora_rank + rope_dim` for every query head, the latent part
//!   doubling as the values.
//!
//! The fast backends take whichever form costs fewer multiply-adds for the call (absorbed for
//! decode, expanded for a prompt from scratch, whose attention over wide latent rows would cost
//! more than expanding them); the reference backend always expands.

use candle_core::{DType, Tensor};

use super::attention::{each_sequence, Sequence, Step};
use super::cache::Cache;
use super::linear::Linear;
use super::norm::Norm;
use super::rope;
use crate::error::Result;
use crate::ops::{AttentionShape, Backend};
use crate::spec::LatentAttentionConfig;

/// Where queries come from.
#[derive(Debug, Clone)]
pub enum QueryPath {
    /// `q_proj`: (heads · qk_dim, hidden).
    Direct(Linear),
    /// `q_a_proj` (q_lora_rank, hidden), its RMSNorm, `q_b_proj` (heads · qk_dim, q_lora_rank).
    LowRank { a: Linear, norm: Norm, b: Linear },
}

/// One layer's latent attention. The rotary rows of the query and key projections are in the
/// half-split order RoPE pairs (the loader reorders interleaved checkpoints).
#[derive(Debug, Clone)]
pub struct LatentAttention {
    pub q: QueryPath,
    /// (kv_lora_rank + rope_dim, hidden): the latent, then the shared rotary key.
    pub kv_a: Linear,
    pub kv_norm: Norm,
    /// (heads · (nope + v), kv_lora_rank): per head, its key rows then its value rows.
    pub kv_b: Linear,
    /// Per head, K_hᵀ as (kv_lora_rank, nope): a query's non-rotary part into latent space.
    pub absorb_k: Vec<Linear>,
    /// Per head, V_h (v, kv_lora_rank): a latent-space output into the head's values.
    pub absorb_v: Vec<Linear>,
    /// (hidden, heads · v)
    pub o: Linear,
    pub cfg: LatentAttentionConfig,
    pub heads: usize,
    /// Multiplies q·k before the softmax.
    pub scale: f64,
}

/// Which algebra a call runs (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Expanded,
    Absorbed,
}

impl LatentAttention {
    /// xs: (tokens, hidden) -> (tokens, hidden), the rows of every sequence in `seqs` one
    /// after another; appends each position's latent and rotary key to its sequence's cache.
    pub fn forward(
        &self,
        xs: &Tensor,
        seqs: &mut [Sequence],
        layer: usize,
        be: &Backend,
    ) -> Result<Tensor> {
        self.forward_as(xs, seqs, layer, be, None)
    }

    /// `forward`, in `form` where given (tests compare the two), else the cheaper one.
    pub(crate) fn forward_as(
        &self,
        xs: &Tensor,
        seqs: &mut [Sequence],
        layer: usize,
        be: &Backend,
        form: Option<Form>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let q = match &self.q {
            QueryPath::Direct(q) => q.forward(xs, be)?,
            QueryPath::LowRank { a, norm, b } => {
                b.forward(&norm.forward(&a.forward(xs, be)?)?, be)?
            }
        }; // (tokens, heads · qk_dim)
        let kv = self.kv_a.forward(xs, be)?; // (tokens, kvr + rope)
        let latent = self.kv_norm.forward(&kv.narrow(1, 0, c.kv_lora_rank)?)?;
        let k_rope = kv.narrow(1, c.kv_lora_rank, c.rope_dim)?;
        let out = each_sequence(seqs, |row, seq| {
            let rows = |t: &Tensor| t.narrow(0, row, seq.tokens);
            let parts = (rows(&q)?, rows(&latent)?, rows(&k_rope)?);
            let form = form.unwrap_or_else(|| self.cheaper(be, seq.tokens, seq.cache.position()));
            let at = (layer, form, xs.dtype());
            self.attend(parts, &seq.step, seq.cache, at, be)
        })?; // (tokens, heads · v), f32
        self.o.forward(&out.to_dtype(xs.dtype())?, be)
    }

    /// The form with fewer multiply-adds for `t` new tokens after `cached` ones: expanding
    /// costs a pass of `kv_b` over every position and attention at the heads' own widths;
    /// absorbing costs a pass of `kv_b` over the new tokens only and attention at the latent's
    /// width. The reference backend always expands (it is the twin the other is tested
    /// against).
    fn cheaper(&self, be: &Backend, t: usize, cached: usize) -> Form {
        if matches!(be, Backend::Reference) {
            return Form::Expanded;
        }
        let c = &self.cfg;
        // (u128: a long prompt of a wide model passes u64 in these products.)
        let n = |x: usize| x as u128;
        let (t, cached, heads) = (n(t), n(cached), n(self.heads));
        let s = cached + t;
        let per_position = heads * n(c.nope_dim + c.v_dim) * n(c.kv_lora_rank);
        // Query-key pairs a causal call scores.
        let pairs = t * cached + t * (t + 1) / 2;
        let expanded = s * per_position + pairs * heads * n(c.qk_dim() + c.v_dim);
        let absorbed =
            t * per_position + pairs * heads * n(c.cached_per_position() + c.kv_lora_rank);
        match absorbed < expanded {
            true => Form::Absorbed,
            false => Form::Expanded,
        }
    }

    /// One sequence's t new rows: queries (t, heads · qk_dim), normed latents (t, kvr) and
    /// rotary keys (t, rope), in the compute dtype `dtype` -> attention output (t, heads · v),
    /// f32.
    fn attend(
        &self,
        (q, latent, k_rope): (Tensor, Tensor, Tensor),
        step: &Step,
        cache: &mut Cache,
        (layer, form, dtype): (usize, Form, DType),
        be: &Backend,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (t, nh) = (q.dim(0)?, self.heads);
        // (heads, t, qk_dim): each head's non-rotary part, then its rotary part rotated.
        let q = q.reshape((t, nh, c.qk_dim()))?.transpose(0, 1)?;
        let q_nope = q
            .narrow(2, 0, c.nope_dim)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let q_rope = rope::apply(&q.narrow(2, c.nope_dim, c.rope_dim)?, step.cos, step.sin)?
            .to_dtype(DType::F32)?;
        let k_rope = rope::apply(&k_rope.unsqueeze(0)?, step.cos, step.sin)?.squeeze(0)?;
        // (1, s, kvr + rope) f32: every position's latent and rotary key, the new ones last.
        let rows = Tensor::cat(&[latent, k_rope], 1)?.to_dtype(DType::F32)?;
        let cached = cache.append_rows(layer, rows.unsqueeze(0)?)?;
        match form {
            Form::Absorbed => self.absorbed(&q_nope, &q_rope, &cached, be),
            Form::Expanded => self.expanded(&q_nope, &q_rope, &cached, dtype, be),
        }
    }

    /// Attention over the cached rows themselves: q_nope (heads, t, nope) and q_rope (heads,
    /// t, rope), f32; cached (1, s, kvr + rope) f32 -> (t, heads · v) f32.
    fn absorbed(
        &self,
        q_nope: &Tensor,
        q_rope: &Tensor,
        cached: &Tensor,
        be: &Backend,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (nh, t, _) = q_nope.dims3()?;
        // (heads, t, kvr): each head's query in latent space
        let q_latent = (0..nh)
            .map(|h| self.absorb_k[h].forward(&q_nope.get(h)?, be))
            .collect::<Result<Vec<_>>>()?;
        let q = Tensor::cat(&[Tensor::stack(&q_latent, 0)?, q_rope.clone()], 2)?;
        let shape = AttentionShape {
            kv_heads: 1,
            scale: self.scale,
            window: None,
            sinks: None,
        };
        let values = cached.narrow(2, 0, c.kv_lora_rank)?;
        // (t, heads, kvr): each head's output in latent space
        let out = be.attention(&q, cached, &values, &shape)?;
        let out = out.reshape((t, nh, c.kv_lora_rank))?;
        let heads = (0..nh)
            .map(|h| {
                let head = out.narrow(1, h, 1)?.squeeze(1)?.contiguous()?;
                self.absorb_v[h].forward(&head, be)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&heads, 1)?) // (t, heads · v)
    }

    /// HF's form: every cached latent expanded to per-head keys and values (in `dtype`, the
    /// compute dtype, which the latents were computed in: the round trip through f32 is exact).
    fn expanded(
        &self,
        q_nope: &Tensor,
        q_rope: &Tensor,
        cached: &Tensor,
        dtype: DType,
        be: &Backend,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (nh, s) = (self.heads, cached.dim(1)?);
        let cached = cached.squeeze(0)?;
        let latent = cached.narrow(1, 0, c.kv_lora_rank)?.to_dtype(dtype)?;
        // (s, heads, nope + v) -> each (heads, s, ·) f32
        let kv = self
            .kv_b
            .forward(&latent, be)?
            .reshape((s, nh, c.nope_dim + c.v_dim))?
            .to_dtype(DType::F32)?
            .transpose(0, 1)?;
        let k_nope = kv.narrow(2, 0, c.nope_dim)?;
        let v = kv.narrow(2, c.nope_dim, c.v_dim)?.contiguous()?;
        let k_rope = cached
            .narrow(1, c.kv_lora_rank, c.rope_dim)?
            .unsqueeze(0)?
            .broadcast_as((nh, s, c.rope_dim))?;
        // (candle's cat of strided parts along the last dim leaves a strided result)
        let k = Tensor::cat(&[k_nope, k_rope.contiguous()?], 2)?.contiguous()?;
        let q = Tensor::cat(&[q_nope, q_rope], 2)?;
        let shape = AttentionShape {
            kv_heads: nh,
            scale: self.scale,
            window: None,
            sinks: None,
        };
        be.attention(&q, &k, &v, &shape)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::layers::block::Mixer;
    use crate::layers::{LoadOptions, Model};

    /// The absorbed form against the expanded one, for a chunk and a decode step after a
    /// cached prefix and for a prompt from empty, on the fast CPU backend and the reference.
    #[test]
    fn the_absorbed_form_equals_the_expanded_one() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in ["deepseek_v3-a", "deepseek_v3-b", "glm4_moe_lite-a"] {
            let model = Model::load(&dir.join(name), &LoadOptions::default()).unwrap();
            let Mixer::Latent(attn) = &model.blocks[1].attn else {
                panic!("{name}: layer 1 is not latent attention");
            };
            let h = model.cfg.hidden_size;
            for (cached, t) in [(5, 4), (7, 1), (0, 6)] {
                let xs = Tensor::randn(0f32, 1.0, (t, h), &Device::Cpu).unwrap();
                let (cos, sin) = model
                    .rope
                    .cos_sin(cached, t, DType::F32, &Device::Cpu)
                    .unwrap();
                for be in [Backend::cpu(), Backend::Reference] {
                    let run = |form| {
                        let mut cache = model.new_cache();
                        if cached > 0 {
                            let prefix: Vec<u32> = (3..3 + cached as u32).collect();
                            model.forward(&prefix, &mut cache).unwrap();
                        }
                        let mut seqs = [Sequence {
                            tokens: t,
                            step: Step {
                                cos: &cos,
                                sin: &sin,
                                global: None,
                            },
                            cache: &mut cache,
                        }];
                        let out = attn.forward_as(&xs, &mut seqs, 1, &be, Some(form));
                        out.unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                    };
                    let (a, e) = (run(Form::Absorbed), run(Form::Expanded));
                    let scale = e.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let diff = a
                        .iter()
                        .zip(&e)
                        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                    assert!(
                        diff <= 1e-5 * scale.max(1.0),
                        "{name} {} {t} after {cached}: {diff} of {scale}",
                        be.name()
                    );
                }
            }
        }
    }
}
