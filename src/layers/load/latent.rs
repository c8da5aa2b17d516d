//! Latent attention's weights: the rotary rows reordered for RoPE's half-split pairs, and
//! `kv_b_proj` also split per head for the absorbed form.

use super::LayerReader;
use crate::error::Result;
use crate::layers::latent_attention::{LatentAttention, QueryPath};
use crate::layers::linear::Linear;
use crate::layers::norm::Norm;
use crate::quant::Weight;

impl LayerReader<'_> {
    /// Multi-head latent attention, its rotary rows in the half-split order RoPE pairs, and
    /// `kv_b_proj` also split per head for the absorbed form.
    pub(super) fn latent_attention(&self) -> Result<LatentAttention> {
        let Some(c) = self.cfg.latent_attention.clone() else {
            return Err(crate::error::Error::Input(
                "a latent-attention layer without a latent attention shape".into(),
            ));
        };
        let (a, n) = (&self.cfg.attention, &self.names.latent);
        let (h, nh) = (self.cfg.hidden_size, a.num_heads);
        let q_rows = nh * c.qk_dim();
        // Interleaved rotary pairs (x0, x1), (x2, x3), ... become halves (x0, x2, ..),
        // (x1, x3, ..), in the query's rows of every head and in the shared key's: rotating
        // q and k in the same new order leaves every q·k as it was.
        let rope_order = |first: usize| -> Vec<usize> {
            let r = c.rope_dim;
            (0..r)
                .map(|j| {
                    first
                        + if j < r / 2 {
                            2 * j
                        } else {
                            2 * (j - r / 2) + 1
                        }
                })
                .collect()
        };
        let q_order = c.rope_interleave.then(|| {
            (0..nh)
                .flat_map(|head| {
                    let base = head * c.qk_dim();
                    (base..base + c.nope_dim).chain(rope_order(base + c.nope_dim))
                })
                .collect::<Vec<_>>()
        });
        let kv_order = c.rope_interleave.then(|| {
            (0..c.kv_lora_rank)
                .chain(rope_order(c.kv_lora_rank))
                .collect::<Vec<_>>()
        });
        let q = match c.q_lora_rank {
            None => QueryPath::Direct(self.reordered_linear(
                self.names.q,
                (q_rows, h),
                false,
                q_order,
            )?),
            Some(rank) => QueryPath::LowRank {
                a: self.linear(n.q_a, (rank, h), a.qkv_bias)?,
                norm: Norm::new(self.get(n.q_a_norm, &[rank])?, c.norm_eps),
                b: self.reordered_linear(n.q_b, (q_rows, rank), false, q_order)?,
            },
        };
        let kv_rows = c.kv_lora_rank + c.rope_dim;
        let kv_a = self.reordered_linear(n.kv_a, (kv_rows, h), a.qkv_bias, kv_order)?;
        // (heads · (nope + v), kvr): per head its key rows, then its value rows.
        let per_head = c.nope_dim + c.v_dim;
        let kv_b_name = format!("{}.{}.weight", self.prefix, n.kv_b);
        let kv_b = self.get(
            &format!("{}.weight", n.kv_b),
            &[nh * per_head, c.kv_lora_rank],
        )?;
        // A block format where the rows are whole blocks; the compute dtype otherwise.
        let format = |cols: usize| self.quant.filter(|_| cols.is_multiple_of(32));
        let (mut absorb_k, mut absorb_v) = (Vec::with_capacity(nh), Vec::with_capacity(nh));
        for head in 0..nh {
            let rows = kv_b.narrow(0, head * per_head, per_head)?;
            let k = rows.narrow(0, 0, c.nope_dim)?.t()?.contiguous()?; // (kvr, nope)
            let v = rows.narrow(0, c.nope_dim, c.v_dim)?.contiguous()?; // (v, kvr)
            let name = format!("{kv_b_name} (head {head})");
            absorb_k.push(Linear::from_weight(
                Weight::new(k, format(c.nope_dim), &name)?,
                None,
            ));
            absorb_v.push(Linear::from_weight(
                Weight::new(v, format(c.kv_lora_rank), &name)?,
                None,
            ));
        }
        let kv_b = Weight::new(kv_b, self.quant, &kv_b_name)?;
        self.tally.add_other(&kv_b);
        Ok(LatentAttention {
            q,
            kv_a,
            kv_norm: Norm::new(self.get(n.kv_a_norm, &[c.kv_lora_rank])?, c.norm_eps),
            kv_b: Linear::from_weight(kv_b, None),
            absorb_k,
            absorb_v,
            o: self.linear(self.names.o, (h, nh * c.v_dim), a.o_bias)?,
            heads: nh,
            scale: a.scale,
            cfg: c,
        })
    }

    /// `{proj}.weight` (and `.bias`), its rows taken in `order` where given.
    fn reordered_linear(
        &self,
        proj: &str,
        (out, inp): (usize, usize),
        bias: bool,
        order: Option<Vec<usize>>,
    ) -> Result<Linear> {
        let Some(order) = order else {
            return self.linear(proj, (out, inp), bias);
        };
        let name = format!("{}.{proj}.weight", self.prefix);
        let w = self.get(&format!("{proj}.weight"), &[out, inp])?;
        let index: Vec<u32> = order.iter().map(|&r| r as u32).collect();
        let index = candle_core::Tensor::new(index.as_slice(), w.device())?;
        let weight = Weight::new(w.index_select(&index, 0)?, self.quant, &name)?;
        self.tally.add_other(&weight);
        let b = match bias {
            true => Some(
                self.get(&format!("{proj}.bias"), &[out])?
                    .index_select(&index, 0)?,
            ),
            false => None,
        };
        Ok(Linear::from_weight(weight, b))
    }
}
