//! The reference backend: the one slow twin of every op, written plainly with candle's tensor
//! ops (or a host loop where that is plainer). It runs on any device, is selected with
//! `Kernels::Reference`, and is what the op table (ops/tests.rs) checks the other backends
//! against. Routing and dispatch are host code that the CPU backend uses as they are.

mod attention;
mod delta;
mod dispatch;
mod moe;
mod route;

use candle_core::Tensor;

pub use attention::attention;
pub use delta::gated_delta;
pub use dispatch::HostDispatch;
pub use moe::{combine, expert_ffn};
pub use route::HostRouting;

use crate::error::Result;
use crate::quant::Weight;
use crate::spec::Activation;

/// y = x · Wᵀ (+ b) with candle's matmul, as candle_nn::Linear computes it, over the weights
/// dequantized to the dtype of xs. xs: (tokens, in) -> (tokens, out).
pub fn linear(xs: &Tensor, w: &Weight, bias: Option<&Tensor>) -> Result<Tensor> {
    let w = w.dense(xs.dtype())?.to_device(xs.device())?;
    let ys = xs.matmul(&w.t()?)?;
    match bias {
        None => Ok(ys),
        Some(b) => Ok(ys.broadcast_add(b)?),
    }
}

/// act(g, u) element by element, as `Activation::apply` defines it, in the dtype of g.
pub fn gated(g: &Tensor, u: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::SiluGated => (g.silu()? * u)?,
        Activation::GeluTanhGated => (g.gelu()? * u)?,
        Activation::SwigluClamped { alpha, limit } => {
            let (alpha, limit) = (alpha as f64, limit as f64);
            let g = g.minimum(limit)?;
            let u = u.clamp(-limit, limit)?;
            let glu = (&g * candle_nn::ops::sigmoid(&(&g * alpha)?)?)?;
            ((u + 1.0)? * glu)?
        }
    })
}
