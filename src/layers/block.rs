//! `Block`: one decoder layer: pre-norm token mixing (attention, latent or linear attention) and
//! pre-norm feed-forward (dense, sparse, or both side by side), each added back to the residual
//! stream, with post-norms on each branch and a scalar on the output where the model has them.

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
    DenseAndSparse(Box<DenseAndSparse>),
}

/// A dense MLP and routed experts on the same residual stream (`FfnKind::DenseAndSparse`).
#[derive(Debug, Clone)]
pub struct DenseAndSparse {
    /// Reads the block's FFN pre-norm output; its output is normed by `mlp_post_norm`.
    pub mlp: Mlp,
    pub mlp_post_norm: Norm,
    /// Routes the residual stream itself; its experts read `experts_pre_norm`'s output, and
    /// their sum is normed by `experts_post_norm`.
    pub moe: SparseMoe,
    pub experts_pre_norm: Norm,
    pub experts_post_norm: Norm,
}

impl DenseAndSparse {
    /// residual, normed: (tokens, hidden) -> the two branches' normed outputs summed.
    fn forward(&self, residual: &Tensor, normed: &Tensor, be: &Backend) -> Result<Tensor> {
        let dense = self.mlp_post_norm.forward(&self.mlp.forward(normed, be)?)?;
        let experts_in = self.experts_pre_norm.forward(residual)?;
        let experts = self.moe.forward_routed(residual, &experts_in, be)?;
        Ok((dense + self.experts_post_norm.forward(&experts)?)?)
    }
}

/// How a layer mixes information between positions.
#[derive(Debug, Clone)]
pub enum Mixer {
    Attention(Box<Attention>),
    Linear(LinearAttention),
    Latent(Box<LatentAttention>),
}

#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Mixer,
    pub ffn_norm: Norm,
    pub ffn: FeedForward,
    /// Each branch's output norm, with sandwich norms (`ModelConfig::sandwich_norms`).
    pub post_norms: Option<(Norm, Norm)>,
    /// Multiplies the layer's output (`ModelConfig::layer_scalar`).
    pub output_scale: Option<f64>,
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
        let h = match &self.post_norms {
            Some((after_attn, _)) => after_attn.forward(&h)?,
            None => h,
        };
        let xs = (xs + scaled(h, residual_scale)?)?;
        let normed = self.ffn_norm.forward(&xs)?;
        let h = match &self.ffn {
            FeedForward::Dense(mlp) => mlp.forward(&normed, be)?,
            FeedForward::Sparse(moe) => moe.forward(&normed, be)?,
            FeedForward::DenseAndSparse(both) => both.forward(&xs, &normed, be)?,
        };
        let h = match &self.post_norms {
            Some((_, after_ffn)) => after_ffn.forward(&h)?,
            None => h,
        };
        let xs = (xs + scaled(h, residual_scale)?)?;
        match self.output_scale {
            Some(s) => scaled(xs, s),
            None => Ok(xs),
        }
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
