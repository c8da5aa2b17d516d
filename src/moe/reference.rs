//! The slow twin of the routed experts: a plain loop over experts, each running its tokens
//! through gate, up and down with ordinary tensor ops. Obviously correct; used to check the
//! fast path and available at run time with `--moe-impl reference`.

use candle_core::{Tensor, D};

use super::{Experts, Routing};
use crate::error::Result;

/// xs: (tokens, hidden) -> (tokens, hidden)
pub fn forward(xs: &Tensor, experts: &Experts, routing: &Routing) -> Result<Tensor> {
    let device = xs.device();
    let i = experts.intermediate();
    let mut out = xs.zeros_like()?;
    for e in 0..experts.num_experts() {
        // The tokens that chose expert e, and the weight each gives it.
        let (tokens, weights): (Vec<u32>, Vec<f32>) = routing
            .experts
            .iter()
            .zip(&routing.weights)
            .enumerate()
            .filter(|(_, (&x, _))| x as usize == e)
            .map(|(a, (_, &w))| ((a / routing.top_k) as u32, w))
            .unzip();
        if tokens.is_empty() {
            continue;
        }
        let idx = Tensor::new(tokens.as_slice(), device)?;
        let x = xs.index_select(&idx, 0)?; // (n, hidden)
        let gate_up = x.matmul(&experts.gate_up.entry(e, xs.dtype())?.t()?)?; // (n, 2I)
        let gate = gate_up.narrow(D::Minus1, 0, i)?;
        let up = gate_up.narrow(D::Minus1, i, i)?;
        let act = (gate.silu()? * up)?; // (n, I)
        let y = act.matmul(&experts.down.entry(e, xs.dtype())?.t()?)?; // (n, hidden)
        let w = Tensor::new(weights.as_slice(), device)?
            .to_dtype(xs.dtype())?
            .unsqueeze(1)?;
        out = out.index_add(&idx, &y.broadcast_mul(&w)?, 0)?;
    }
    Ok(out)
}
