//! `Block`: one decoder layer: pre-norm token mixing (attention, latent or linear attention) and
//! pre-norm feed-forward (dense or sparse), each added back to the residual stream.

use candle_core::Tensor;

use super::attention::{Attention, Sequence};
use super::latent_attention::LatentAttention;
use super::linear_attention::LinearAttention;
use super::mlp::Mlp;
use super::moe::SparseMoe;
use super::norm::Norm;
use crate::error::Result;
use crate::ops::Backend;

#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Sparse(Box<SparseMoe>),
}

/// How a layer mixes information between positions.
#[derive(Debug, Clone)]
pub enum Mixer {
    Attention(Attention),
    Linear(LinearAttention),
    Latent(Box<LatentAttention>),
}

#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Mixer,
    pub ffn_norm: Norm,
    pub ffn: FeedForward,
}

impl Block {
    /// xs: (tokens, hidden) -> (tokens, hidden), the rows of the sequences in `seqs` one after
    /// another. `residual_scale` multiplies each branch's output before it joins the residual
    /// (1 except for Granite).
    pub fn forward(
        &self,
        xs: &Tensor,
        seqs: &mut [Sequence],
        layer: usize,
        residual_scale: f64,
        be: &Backend,
    ) -> Result<Tensor> {
        let normed = self.attn_norm.forward(xs)?;
        let h = match &self.attn {
            Mixer::Attention(a) => a.forward(&normed, seqs, layer, be)?,
            Mixer::Linear(l) => l.forward(&normed, seqs, layer, be)?,
            Mixer::Latent(l) => l.forward(&normed, seqs, layer, be)?,
        };
        let xs = (xs + scaled(h, residual_scale)?)?;
        let normed = self.ffn_norm.forward(&xs)?;
        let h = match &self.ffn {
            FeedForward::Dense(mlp) => mlp.forward(&normed, be)?,
            FeedForward::Sparse(moe) => moe.forward(&normed, be)?,
        };
        Ok((xs + scaled(h, residual_scale)?)?)
    }
}

/// `xs * scale`, skipping the op when the scale is exactly one.
pub(crate) fn scaled(xs: Tensor, scale: f64) -> Result<Tensor> {
    if scale == 1.0 {
        Ok(xs)
    } else {
        Ok((xs * scale)?)
    }
}
