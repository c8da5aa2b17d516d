//! The gated delta rule (Gated DeltaNet's linear attention) token by token, with candle's
//! tensor ops on any device: HF's `torch_recurrent_gated_delta_rule` with q and k
//! L2-normalised in the op, written as its loop is.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// HF's `l2norm`: x / sqrt(Σ x² + 1e-6) over the last dimension.
fn l2norm(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-6)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// See `Backend::gated_delta`: q, k (t, nk, dk), v (t, nv, dv), g and beta (t, nv), all f32;
/// `state` (nv, dk, dv) f32 replaced by the state after the t tokens. Returns (t, nv, dv).
pub fn gated_delta(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (g, beta): (&Tensor, &Tensor),
    state: &mut Tensor,
) -> Result<Tensor> {
    let (t, nk, dk) = q.dims3()?;
    let nv = v.dims3()?.1;
    let group = nv / nk;
    // (t, nv, dk): key head h / group serves value head h, as `repeat_interleave` does.
    let widen = |x: &Tensor| -> Result<Tensor> {
        let x = l2norm(&x.to_dtype(DType::F32)?)?;
        Ok(x.unsqueeze(2)?
            .repeat((1, 1, group, 1))?
            .reshape((t, nv, dk))?)
    };
    let q = (widen(q)? * (dk as f64).powf(-0.5))?;
    let k = widen(k)?;
    let mut s = state.clone();
    let mut outs = Vec::with_capacity(t);
    for i in 0..t {
        // (nv, dk, 1) and (nv, 1, dv) views of token i.
        let q_i = q.get(i)?.unsqueeze(2)?;
        let k_i = k.get(i)?.unsqueeze(2)?;
        let v_i = v.get(i)?.unsqueeze(1)?;
        let decay = g.get(i)?.exp()?.reshape((nv, 1, 1))?;
        let beta_i = beta.get(i)?.reshape((nv, 1, 1))?;
        s = s.broadcast_mul(&decay)?;
        // What the state already predicts for k, then the correction written back.
        let predicted = s.broadcast_mul(&k_i)?.sum_keepdim(1)?;
        let delta = (v_i - predicted)?.broadcast_mul(&beta_i)?;
        s = (s + k_i.broadcast_mul(&delta)?)?;
        outs.push(s.broadcast_mul(&q_i)?.sum(1)?);
    }
    *state = s;
    Ok(Tensor::stack(&outs, 0)?)
}
