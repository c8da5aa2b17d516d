//! `SparseMoe`: router, routed experts (run by one of two implementations) and an optional
//! gated shared expert.

mod fast;
#[cfg(feature = "cuda")]
mod gpu;
pub mod reference;
mod router;

use std::str::FromStr;

use crate::quant::Weight;
use candle_core::Tensor;

pub use router::{RouterConfig, Routing};

use crate::error::{Error, Result};
use crate::model::{Linear, Mlp};

/// Which implementation runs the routed experts. Both give the same result up to float
/// summation order; `Reference` is the obviously correct slow twin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MoeImpl {
    /// Tokens grouped by expert, each expert's weights read once: on the CPU parallel over row
    /// blocks; on CUDA routed, aligned and run by our kernels without a host copy.
    #[default]
    Fast,
    /// A loop over experts with one tensor op chain each.
    Reference,
}

impl FromStr for MoeImpl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(MoeImpl::Fast),
            "reference" => Ok(MoeImpl::Reference),
            other => Err(Error::Input(format!(
                "unknown MoE implementation `{other}` (expected fast or reference)"
            ))),
        }
    }
}

/// The routed experts of one layer, stacked at load.
#[derive(Debug, Clone)]
pub struct Experts {
    /// [E, 2I, H]: for each expert the I gate rows, then the I up rows.
    pub gate_up: Weight,
    /// [E, H, I]
    pub down: Weight,
}

impl Experts {
    pub fn num_experts(&self) -> usize {
        self.gate_up.dims()[0]
    }

    pub fn intermediate(&self) -> usize {
        self.down.dims()[2]
    }

    /// Runs every token through its routed experts and sums the weighted outputs.
    /// xs: (tokens, hidden) -> (tokens, hidden)
    pub fn forward(&self, xs: &Tensor, routing: &Routing, imp: MoeImpl) -> Result<Tensor> {
        routing.check(xs.dims2()?.0, self.num_experts())?;
        match imp {
            MoeImpl::Fast => fast::forward(xs, self, routing),
            MoeImpl::Reference => reference::forward(xs, self, routing),
        }
    }
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
    /// (E, hidden), no bias.
    pub router: Linear,
    pub router_cfg: RouterConfig,
    pub experts: Experts,
    pub shared: Option<SharedExpert>,
    pub imp: MoeImpl,
}

impl SparseMoe {
    /// xs: (tokens, hidden) -> (tokens, hidden)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let logits = self.router.forward(xs)?; // (tokens, E)
        let ys = self.routed(xs, &logits)?;
        match &self.shared {
            None => Ok(ys),
            Some(shared) => {
                let mut s = shared.mlp.forward(xs)?;
                if let Some(gate) = &shared.gate {
                    let g = candle_nn::ops::sigmoid(&gate.forward(xs)?)?; // (tokens, 1)
                    s = s.broadcast_mul(&g)?;
                }
                Ok((ys + s)?)
            }
        }
    }

    /// The routed experts' weighted sum. xs: (tokens, hidden), logits: (tokens, E).
    fn routed(&self, xs: &Tensor, logits: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if xs.device().is_cuda() && self.imp == MoeImpl::Fast {
            return gpu::forward(xs, logits, self.router_cfg, &self.experts);
        }
        let routing = Routing::from_logits(logits, self.router_cfg)?;
        self.experts.forward(xs, &routing, self.imp)
    }
}
