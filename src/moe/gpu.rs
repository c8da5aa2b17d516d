//! The routed experts on CUDA, without a host copy: routing, alignment, the experts' FFN and
//! the combine all run as kernels of `ops::cuda` on the device's stream (the CPU path copies
//! each layer's logits to the host to route them).
//!
//! Slow twin: the reference loop over experts (`--moe-impl reference`: host routing, then
//! candle's ops on the same device), compared in tests/cuda.rs with the CPU.

use candle_core::Tensor;

use super::{Experts, RouterConfig};
use crate::error::{Error, Result};
use crate::ops::cuda::{self, FfnPath, Scoring};
use crate::quant::Weight;

/// xs: (tokens, hidden), logits: (tokens, E) -> (tokens, hidden)
pub fn forward(
    xs: &Tensor,
    logits: &Tensor,
    cfg: RouterConfig,
    experts: &Experts,
) -> Result<Tensor> {
    let (tokens, _) = xs.dims2()?;
    let xs = xs.contiguous()?;
    let gate_up = dense(&experts.gate_up)?; // (E, 2I, H)
    let down = dense(&experts.down)?; // (E, H, I)
                                      // Softmax, top-k, ties to the lower index, optional renormalisation: the CPU router's rule.
    let (ids, weights) = cuda::route(
        &logits.contiguous()?,
        cfg.top_k,
        Scoring::Softmax,
        cfg.norm_topk_prob,
        1.0,
    )?; // (tokens, k) each
    let path = FfnPath::choose(tokens * cfg.top_k, &xs, gate_up, down)?;
    let alignment = cuda::align(&ids, experts.num_experts(), path.tile())?;
    let ys = cuda::expert_ffn(&xs, gate_up, down, &alignment, cfg.top_k, path)?; // (rows, H)
    cuda::combine(&ys, &weights, &alignment.slot_position)
}

fn dense(w: &Weight) -> Result<&Tensor> {
    match w {
        Weight::Dense(t) => Ok(t),
        Weight::Quantized(_) => Err(Error::Input("quantized experts run on the CPU only".into())),
    }
}
