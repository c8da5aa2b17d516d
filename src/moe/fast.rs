//! The fast CPU path for the routed experts: one host copy of the routing, then the grouped
//! kernel of `ops::cpu` over the stacked weights, without a tensor op per expert.

use candle_core::{DType, Tensor};

use super::{Experts, Routing};
use crate::error::Result;
use crate::ops::cpu::{grouped_ffn_weights, ExpertGroups, ExpertWeights};

/// xs: (tokens, hidden) -> (tokens, hidden)
pub fn forward(xs: &Tensor, experts: &Experts, routing: &Routing) -> Result<Tensor> {
    let (t, h) = xs.dims2()?;
    let i = experts.intermediate();
    let x = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let groups = ExpertGroups::new(
        &routing.experts,
        &routing.weights,
        experts.num_experts(),
        routing.top_k,
    );
    let mut out = vec![0f32; t * h];
    experts.gate_up.with_slice(|gate_up| {
        experts.down.with_slice(|down| {
            let w = ExpertWeights {
                gate_up,
                down,
                hidden: h,
                intermediate: i,
            };
            grouped_ffn_weights(&x, &groups, &w, &mut out)
        })
    })?;
    Ok(Tensor::from_vec(out, (t, h), xs.device())?.to_dtype(xs.dtype())?)
}
