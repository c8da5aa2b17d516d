//! The MoE pipeline's CUDA steps, as the backend calls them: routing, alignment (the dispatch),
//! the experts' FFN and the combine run as kernels on the device's stream, with no host copy
//! in between. Their slow twins are the reference backend's, compared in ops/tests.rs.

use candle_core::Tensor;

use super::route::{Choice, MAX_GROUPS, MAX_ROUTED_EXPERTS, MAX_TOP_K};
use super::{align, combine as combine_kernel, expert_ffn as ffn_kernel, route, Alignment};
use super::{FfnPath, Scoring as KernelScoring};
use crate::error::{Error, Result};
use crate::ops::Experts;
use crate::quant::Weight;
use crate::spec::{Activation, RouterSpec, Scoring, Selection};

/// The slots grouped by expert on the device, with what the FFN and the combine need.
pub struct DeviceDispatch {
    alignment: Alignment,
    /// (tokens, k) f32
    weights: Tensor,
    top_k: usize,
    path: FfnPath,
}

/// Whether the CUDA kernels run these experts: dense weights, gate and up joined, no biases,
/// SiLU-gated.
pub fn runs_experts(experts: &Experts, act: Activation) -> bool {
    let dense = |w: &Weight| matches!(w, Weight::Dense(_));
    act == Activation::SiluGated
        && !experts.has_bias()
        && experts.up.is_none()
        && dense(&experts.gate_up)
        && dense(&experts.down)
}

/// The route kernel's form of `spec`, where it has one: softmax or sigmoid scores, a selection
/// bias, a group limit of up to MAX_GROUPS groups, top-k, renormalise, scale, over at most
/// MAX_ROUTED_EXPERTS experts and MAX_TOP_K choices. A softmax over the k best logits is the
/// renormalised softmax of all of them (the same choice unless a chosen logit is some 87 below
/// the best, where f32's exp underflows and ties go to the lower index: no trained router is
/// that far apart among its top k). Everything else routes on the host (`None`): a sigmoid of
/// the k best logits (sigmoid saturates at 1 from a logit of about 17, where the kernel's
/// choice would tie), more groups than a warp has lanes.
pub fn route_spec(
    logits: &Tensor,
    spec: &RouterSpec,
    correction: Option<&Tensor>,
) -> Result<Option<(Tensor, Tensor)>> {
    let e = logits.dims2()?.1;
    let groups = spec.group_limit.map(|g| (g.groups, g.keep));
    let fits = e <= MAX_ROUTED_EXPERTS
        && spec.top_k <= MAX_TOP_K
        && groups.is_none_or(|(g, _)| g <= MAX_GROUPS)
        && spec.correction_bias == correction.is_some();
    if !fits {
        return Ok(None);
    }
    let (scoring, renormalise) = match (spec.scoring, spec.selection) {
        (Scoring::Softmax, Selection::TopKThenScore) => (KernelScoring::Softmax, true),
        (Scoring::Softmax, Selection::ScoreThenTopK) => (KernelScoring::Softmax, spec.renormalise),
        (Scoring::Sigmoid, Selection::ScoreThenTopK) => (KernelScoring::Sigmoid, spec.renormalise),
        (Scoring::Sigmoid, Selection::TopKThenScore) => return Ok(None),
    };
    let logits = logits.contiguous()?;
    let choice = Choice {
        bias: correction,
        groups,
    };
    let (ids, weights) = route(
        &logits,
        spec.top_k,
        scoring,
        renormalise,
        spec.scale as f32,
        choice,
    )?;
    Ok(Some((ids, weights)))
}

/// ids, weights: (tokens, k) on the device; xs: (tokens, hidden).
pub fn dispatch(
    ids: &Tensor,
    weights: &Tensor,
    xs: &Tensor,
    experts: &Experts,
) -> Result<DeviceDispatch> {
    let (tokens, top_k) = ids.dims2()?;
    let (gate_up, down) = (dense(&experts.gate_up)?, dense(&experts.down)?);
    let xs = xs.contiguous()?;
    let path = FfnPath::choose(tokens * top_k, &xs, gate_up, down)?;
    let alignment = align(ids, experts.num_experts(), path.tile())?;
    Ok(DeviceDispatch {
        alignment,
        weights: weights.clone(),
        top_k,
        path,
    })
}

/// xs: (tokens, hidden) -> one output row per aligned slot, (rows, hidden).
pub fn expert_ffn(xs: &Tensor, experts: &Experts, d: &DeviceDispatch) -> Result<Tensor> {
    let (gate_up, down) = (dense(&experts.gate_up)?, dense(&experts.down)?);
    let xs = xs.contiguous()?;
    ffn_kernel(&xs, gate_up, down, &d.alignment, d.top_k, d.path)
}

/// rows: (rows, hidden) -> (tokens, hidden), each token's slots weighted and summed.
pub fn combine(rows: &Tensor, d: &DeviceDispatch) -> Result<Tensor> {
    combine_kernel(rows, &d.weights, &d.alignment.slot_position)
}

fn dense(w: &Weight) -> Result<&Tensor> {
    match w {
        Weight::Dense(t) => Ok(t),
        Weight::Quantized(_) => Err(Error::Input("quantized experts run on the CPU only".into())),
        Weight::Panels(_) => Err(Error::Input("bf16 panels are read on the CPU only".into())),
    }
}
