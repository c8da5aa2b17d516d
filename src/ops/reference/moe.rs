//! The slow twin of the experts' FFN and the combine: a plain loop over experts, each running
//! its slots' tokens through gate, up and down with ordinary tensor ops on the model's device.
//! Obviously correct; the op table checks every other backend against it.

use candle_core::{Tensor, D};

use super::{gated, HostDispatch};
use crate::error::Result;
use crate::ops::Experts;
use crate::spec::Activation;

/// xs: (tokens, hidden) -> each slot's expert output, (slots, hidden) in dispatch order
/// (expert by expert), in the dtype of xs.
pub fn expert_ffn(
    xs: &Tensor,
    experts: &Experts,
    d: &HostDispatch,
    act: Activation,
) -> Result<Tensor> {
    let device = xs.device();
    let i = experts.intermediate();
    let mut outs = Vec::new();
    for e in 0..d.num_experts() {
        let slots = d.offsets[e]..d.offsets[e + 1];
        if slots.is_empty() {
            continue;
        }
        let idx = Tensor::new(&d.slot_token[slots], device)?;
        let x = xs.index_select(&idx, 0)?; // (n, hidden)
        let mut gate_up = x.matmul(&experts.gate_up_entry(e, xs.dtype())?.t()?)?; // (n, 2I)
        if let Some(b) = &experts.gate_up_bias {
            gate_up = gate_up.broadcast_add(&b.get(e)?.to_dtype(xs.dtype())?)?;
        }
        let g = gate_up.narrow(D::Minus1, 0, i)?;
        let u = gate_up.narrow(D::Minus1, i, i)?;
        let a = gated(&g, &u, act)?; // (n, I)
        let mut y = a.matmul(&experts.down.entry(e, xs.dtype())?.t()?)?; // (n, hidden)
        if let Some(b) = &experts.down_bias {
            y = y.broadcast_add(&b.get(e)?.to_dtype(xs.dtype())?)?;
        }
        outs.push(y);
    }
    if outs.is_empty() {
        return Ok(xs.narrow(0, 0, 0)?);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// rows: (slots, hidden) in dispatch order -> (tokens, hidden): each token's slots weighted and
/// summed.
pub fn combine(rows: &Tensor, d: &HostDispatch, like: &Tensor) -> Result<Tensor> {
    let device = like.device();
    let out = like.zeros_like()?;
    if d.slot_token.is_empty() {
        return Ok(out);
    }
    let idx = Tensor::new(d.slot_token.as_slice(), device)?;
    let w = Tensor::new(d.slot_weight.as_slice(), device)?
        .to_dtype(rows.dtype())?
        .unsqueeze(1)?;
    Ok(out.index_add(&idx, &rows.broadcast_mul(&w)?, 0)?)
}
