//! `SparseMoe`: a router, the routed experts and an optional gated shared expert. The routed part
//! is the ops' one pipeline: route -> dispatch -> expert FFN -> combine.

use candle_core::{DType, Tensor};

use super::linear::Linear;
use super::mlp::Mlp;
use super::norm::Norm;
use crate::error::Result;
use crate::ops::{Backend, Experts};
use crate::spec::{Activation, RouterSpec};

/// The router: logits from a linear layer, then the spec's choice of experts.
#[derive(Debug, Clone)]
pub struct Router {
    /// (E, hidden), with a bias when the spec has `logit_bias`.
    pub linear: Linear,
    pub spec: RouterSpec,
    /// (E) f32: the selection-only bias, when the spec has `correction_bias`.
    pub correction: Option<Tensor>,
    /// Normalises the router's input first (`MoeConfig::router_input_scale`): an RMSNorm whose
    /// weight is the learned scale times hidden^-0.5.
    pub input_norm: Option<Norm>,
    /// (E) f32: multiplies each chosen expert's weight (`MoeConfig::per_expert_scale`).
    pub expert_scale: Option<Tensor>,
}

/// An always-on expert whose output is scaled by sigmoid(x · gate).
#[derive(Debug, Clone)]
pub struct SharedExpert {
    pub mlp: Mlp,
    /// (1, hidden); `None` for an ungated shared expert.
    pub gate: Option<Linear>,
}

#[derive(Debug, Clone)]
pub struct SparseMoe {
    pub router: Router,
    pub experts: Experts,
    pub activation: Activation,
    pub shared: Option<SharedExpert>,
    /// The backend of the routed part, chosen at load: the model's, or the reference where
    /// the model's has no kernel for these experts (`Backend::for_experts`).
    pub backend: Backend,
}

impl SparseMoe {
    /// xs: (tokens, hidden) -> (tokens, hidden). `be` runs the router's and the shared
    /// expert's products.
    pub fn forward(&self, xs: &Tensor, be: &Backend) -> Result<Tensor> {
        self.forward_routed(xs, xs, be)
    }

    /// As `forward`, the router reading `route_from` (tokens, hidden) instead of the experts'
    /// input `xs` (the residual stream where experts sit beside a dense MLP).
    pub fn forward_routed(&self, route_from: &Tensor, xs: &Tensor, be: &Backend) -> Result<Tensor> {
        let normed;
        let route_from = match &self.router.input_norm {
            Some(norm) => {
                normed = norm.forward(route_from)?;
                &normed
            }
            None => route_from,
        };
        let logits = match self.router.spec.f32_logits {
            true => self
                .router
                .linear
                .forward(&route_from.to_dtype(DType::F32)?, be)?,
            false => self.router.linear.forward(route_from, be)?,
        }; // (tokens, E)
        let ys = self.routed(xs, &logits)?;
        match &self.shared {
            None => Ok(ys),
            Some(shared) => {
                let mut s = shared.mlp.forward(xs, be)?;
                if let Some(gate) = &shared.gate {
                    let g = candle_nn::ops::sigmoid(&gate.forward(xs, be)?)?; // (tokens, 1)
                    s = s.broadcast_mul(&g)?;
                }
                Ok((ys + s)?)
            }
        }
    }

    /// The routed experts' weighted sum. xs: (tokens, hidden), logits: (tokens, E).
    fn routed(&self, xs: &Tensor, logits: &Tensor) -> Result<Tensor> {
        let be = &self.backend;
        let r = &self.router;
        let mut routing = be.route(logits, &r.spec, r.correction.as_ref())?;
        if let Some(scale) = &r.expert_scale {
            routing.scale_by_expert(scale)?;
        }
        let dispatch = be.dispatch(&routing, xs, &self.experts)?;
        let rows = be.expert_ffn(xs, &self.experts, &dispatch, self.activation)?;
        be.combine(&rows, &dispatch, xs)
    }
}
