//! Gated DeltaNet: the linear attention of Qwen3-Next and Qwen3.5. One joined projection
//! gives q, k and v (through a causal depthwise convolution and SiLU), the output gate z, and
//! the write strength b and decay a of each value head; the gated delta rule
//! (`Backend::gated_delta`) runs over the sequence's recurrent state; each head's output is
//! RMS-normalised, times SiLU(z), and projected back.

use candle_core::{DType, Tensor, D};

use super::attention::{each_sequence, Sequence};
use super::cache::LinearState;
use super::linear::Linear;
use crate::error::Result;
use crate::ops::Backend;
use crate::spec::LinearAttentionConfig;

#[derive(Debug, Clone)]
pub struct LinearAttention {
    /// (projection_rows, hidden): q, k, v, z, b, a, each head-major.
    pub in_proj: Linear,
    /// (conv_kernel, conv_dim) f32: row j the weight of every channel for the input j
    /// tokens after the oldest one the convolution reads (the checkpoint's (conv_dim, 1,
    /// kernel) transposed at load, so that each tap is one contiguous row).
    pub conv: Tensor,
    /// (value_heads) f32: -exp(A_log), the decay rate's scale.
    pub neg_a: Tensor,
    /// (value_heads) f32.
    pub dt_bias: Tensor,
    /// (value_head_dim) f32: the gated norm's weight.
    pub norm: Tensor,
    /// (hidden, value_heads · value_head_dim).
    pub out_proj: Linear,
    pub cfg: LinearAttentionConfig,
    pub eps: f64,
}

impl LinearAttention {
    /// xs: (tokens, hidden) -> (tokens, hidden), the rows of every sequence in `seqs` one
    /// after another, each continuing its own state in the cache.
    pub fn forward(
        &self,
        xs: &Tensor,
        seqs: &mut [Sequence],
        layer: usize,
        be: &Backend,
    ) -> Result<Tensor> {
        // (tokens, projection_rows) in f32: the state and the rule run in f32.
        let proj = self.in_proj.forward(xs, be)?.to_dtype(DType::F32)?;
        let out = each_sequence(seqs, |row, seq| {
            let rows = proj.narrow(0, row, seq.tokens)?;
            let state = seq.cache.linear_state(layer, || self.initial_state(xs))?;
            self.mix(&rows, state, be)
        })?;
        self.out_proj.forward(&out.to_dtype(xs.dtype())?, be)
    }

    fn initial_state(&self, like: &Tensor) -> Result<LinearState> {
        let c = &self.cfg;
        let dev = like.device();
        Ok(LinearState {
            conv: Tensor::zeros((c.conv_kernel - 1, c.conv_dim()), DType::F32, dev)?,
            recurrent: Tensor::zeros(
                (c.value_heads, c.key_head_dim, c.value_head_dim),
                DType::F32,
                dev,
            )?,
        })
    }

    /// One sequence's projections (t, projection_rows) f32 -> its gated, normalised output
    /// (t, value_heads · value_head_dim) f32; its state moves on by t tokens.
    fn mix(&self, proj: &Tensor, state: &mut LinearState, be: &Backend) -> Result<Tensor> {
        let c = &self.cfg;
        let t = proj.dim(0)?;
        let (nk, nv, dk, dv) = (c.key_heads, c.value_heads, c.key_head_dim, c.value_head_dim);
        let conv_dim = c.conv_dim();
        let mixed = proj.narrow(1, 0, conv_dim)?;
        let z = proj.narrow(1, conv_dim, nv * dv)?;
        let b = proj.narrow(1, conv_dim + nv * dv, nv)?;
        let a = proj.narrow(1, conv_dim + nv * dv + nv, nv)?;

        // The causal convolution over the kernel - 1 inputs before these and these:
        // out[i] = Σ_j w[:, j] · input[i + j] over (kernel - 1 + t, conv_dim).
        let inputs = Tensor::cat(&[&state.conv, &mixed.contiguous()?], 0)?;
        let kernel = c.conv_kernel;
        let tap = |j: usize| -> Result<Tensor> {
            Ok(inputs
                .narrow(0, j, t)?
                .broadcast_mul(&self.conv.narrow(0, j, 1)?)?)
        };
        let mut conv = tap(0)?;
        for j in 1..kernel {
            conv = (conv + tap(j)?)?;
        }
        state.conv = inputs.narrow(0, t, kernel - 1)?.contiguous()?;
        let conv = conv.silu()?;

        let q = conv.narrow(1, 0, nk * dk)?.reshape((t, nk, dk))?;
        let k = conv.narrow(1, nk * dk, nk * dk)?.reshape((t, nk, dk))?;
        let v = conv.narrow(1, 2 * nk * dk, nv * dv)?.reshape((t, nv, dv))?;
        let beta = candle_nn::ops::sigmoid(&b.contiguous()?)?;
        // g = -exp(A_log) · softplus(a + dt_bias), softplus(x) = max(x, 0) + ln(1 + e^-|x|).
        let x = a.broadcast_add(&self.dt_bias)?;
        let softplus = (x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
        let g = softplus.broadcast_mul(&self.neg_a)?;
        let out = be.gated_delta(
            (&q.contiguous()?, &k.contiguous()?, &v.contiguous()?),
            (&g, &beta),
            &mut state.recurrent,
        )?;

        // The gated RMSNorm over each head's dv values: x / rms(x) · w · SiLU(z).
        let rms = (out.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        let normed = out.broadcast_div(&rms)?.broadcast_mul(&self.norm)?;
        let gate = z.reshape((t, nv, dv))?.silu()?;
        Ok((normed * gate)?.reshape((t, nv * dv))?)
    }
}
