//! The backend boundary. Layers call ops through a [`Backend`] chosen once at load; each op has
//! its slow twin in `reference/` (plain tensor ops, any device), its fast form in `cpu/` (SIMD
//! and AMX kernels over slices, parallel with rayon) and, under feature `cuda`, in `cuda/`
//! (kernels/*.cu on candle's device). ops/tests.rs runs every op on every backend present
//! against the reference.
//!
//! The MoE layer is one pipeline on every backend, through the types here:
//! route (logits -> [`Routing`]) -> dispatch (slots grouped per expert: [`Dispatch`]) -> expert
//! FFN ([`ExpertRows`], one row per slot) -> combine (weighted sum per token). Each type holds
//! the backend's own form of its data (host vectors, or device tensors); only the backend that
//! made one reads it.

mod backend;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod reference;
#[cfg(test)]
mod tests;

use candle_core::Tensor;

pub use backend::{Backend, Kernels};
pub use cpu::Isa;
use reference::HostDispatch;
pub use reference::HostRouting;

use crate::error::{Error, Result};
use crate::quant::Weight;

/// The routed experts of one layer, stacked at load.
#[derive(Debug, Clone)]
pub struct Experts {
    /// [E, 2I, H]: for each expert the I gate rows, then the I up rows; or, where `up` is
    /// given, [E, I, H] of gate rows alone.
    pub gate_up: Weight,
    /// [E, I, H]: the up rows in a stack of their own, as GGUF files keep them (read in place
    /// from the file rather than joined into `gate_up`).
    pub up: Option<Weight>,
    /// [E, H, I]
    pub down: Weight,
    /// [E, 2I] and [E, H], f32 whatever the compute dtype (small, and read as f32 by the
    /// kernels); `None` for the families without expert biases.
    pub gate_up_bias: Option<Tensor>,
    pub down_bias: Option<Tensor>,
}

impl Experts {
    /// Experts without biases.
    pub fn new(gate_up: Weight, down: Weight) -> Experts {
        Experts {
            gate_up,
            up: None,
            down,
            gate_up_bias: None,
            down_bias: None,
        }
    }

    /// Experts without biases whose gate and up rows lie in stacks of their own.
    pub fn separate(gate: Weight, up: Weight, down: Weight) -> Experts {
        Experts {
            up: Some(up),
            ..Experts::new(gate, down)
        }
    }

    /// Expert e's gate rows, then its up rows, as one (2I, H) tensor in `dtype`.
    pub fn gate_up_entry(&self, e: usize, dtype: candle_core::DType) -> Result<Tensor> {
        let gate = self.gate_up.entry(e, dtype)?;
        match &self.up {
            None => Ok(gate),
            Some(up) => Ok(Tensor::cat(&[gate, up.entry(e, dtype)?], 0)?),
        }
    }

    pub fn num_experts(&self) -> usize {
        self.gate_up.dims()[0]
    }

    pub fn intermediate(&self) -> usize {
        self.down.dims()[2]
    }

    pub fn hidden(&self) -> usize {
        self.down.dims()[1]
    }

    /// Checks that the stacks and biases agree: gate_up [E, 2I, H] (or gate and up [E, I, H]
    /// each), down [E, H, I], biases [E, 2I] and [E, H] (experts built by hand are checked
    /// before any kernel reads them).
    pub fn check(&self) -> Result<()> {
        let (gu, d) = (self.gate_up.dims(), self.down.dims());
        let parts = if self.up.is_some() { 1 } else { 2 };
        let up_fits = self.up.as_ref().is_none_or(|u| u.dims() == gu);
        let fits = gu.len() == 3
            && d.len() == 3
            && gu[0] == d[0]
            && gu[1] == parts * d[2]
            && gu[2] == d[1]
            && up_fits;
        let bias_fits =
            |b: &Option<Tensor>, shape: &[usize]| b.as_ref().is_none_or(|b| b.dims() == shape);
        if !fits
            || !bias_fits(&self.gate_up_bias, &[d[0], 2 * d[2]])
            || !bias_fits(&self.down_bias, &[d[0], d[1]])
        {
            return Err(Error::Input(format!(
                "experts of gate_up {gu:?}, up {:?}, down {d:?} and biases {:?}, {:?} do not fit \
                 together",
                self.up.as_ref().map(|u| u.dims().to_vec()),
                self.gate_up_bias.as_ref().map(|b| b.dims().to_vec()),
                self.down_bias.as_ref().map(|b| b.dims().to_vec()),
            )));
        }
        Ok(())
    }

    pub fn has_bias(&self) -> bool {
        self.gate_up_bias.is_some() || self.down_bias.is_some()
    }
}

/// What attention needs besides q, k and v.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionShape {
    pub kv_heads: usize,
    /// Multiplies q·k before the softmax.
    pub scale: f64,
    /// Keys a query sees, its own included; `None` for all earlier ones.
    pub window: Option<usize>,
    /// One learned logit per query head that joins every softmax and is dropped after it
    /// (gpt-oss's attention sinks): the weight a query may give to nothing.
    pub sinks: Option<Vec<f32>>,
}

/// Each token's chosen experts, best first, and their weights.
#[derive(Debug)]
pub struct Routing(RoutingData);

#[derive(Debug)]
enum RoutingData {
    Host(HostRouting),
    /// (tokens, k) u32 ids and f32 weights on the GPU.
    #[cfg(feature = "cuda")]
    Device {
        experts: Tensor,
        weights: Tensor,
    },
}

impl Routing {
    /// A routing given on the host (for tests and tools that route by hand), checked against
    /// `tokens` and the routing's own `num_experts` (dispatch checks it against the experts).
    pub fn from_host(r: HostRouting, tokens: usize) -> Result<Routing> {
        r.check(tokens, r.num_experts)?;
        Ok(Routing(RoutingData::Host(r)))
    }

    fn host(&self) -> Result<&HostRouting> {
        match &self.0 {
            RoutingData::Host(r) => Ok(r),
            #[cfg(feature = "cuda")]
            RoutingData::Device { .. } => Err(mismatch("routing")),
        }
    }

    /// Multiplies each choice's weight by its expert's entry of `scale`, (E) f32 (Gemma 4's
    /// per-expert scale): on the host as `HostRouting::scale_by_expert`, on the GPU by a
    /// gather of the same numbers.
    pub fn scale_by_expert(&mut self, scale: &Tensor) -> Result<()> {
        match &mut self.0 {
            RoutingData::Host(r) => {
                let scale = scale.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                r.scale_by_expert(&scale)
            }
            #[cfg(feature = "cuda")]
            RoutingData::Device { experts, weights } => {
                let (tokens, k) = experts.dims2()?;
                let chosen = scale
                    .to_dtype(candle_core::DType::F32)?
                    .index_select(&experts.flatten_all()?, 0)?
                    .reshape((tokens, k))?;
                *weights = (&*weights * chosen)?;
                Ok(())
            }
        }
    }

    /// The routing on the host, wherever it was made (a copy from the GPU there).
    pub fn to_host(&self, num_experts: usize) -> Result<HostRouting> {
        match &self.0 {
            RoutingData::Host(r) => Ok(HostRouting {
                num_experts,
                ..r.clone()
            }),
            #[cfg(feature = "cuda")]
            RoutingData::Device { experts, weights } => {
                let (_, k) = experts.dims2()?;
                Ok(HostRouting {
                    num_experts,
                    top_k: k,
                    experts: experts.flatten_all()?.to_vec1()?,
                    weights: weights.flatten_all()?.to_vec1()?,
                })
            }
        }
    }
}

/// The routing's (token, choice) slots grouped by expert.
pub struct Dispatch(DispatchData);

enum DispatchData {
    Host(HostDispatch),
    #[cfg(feature = "cuda")]
    Cuda(cuda::moe::DeviceDispatch),
}

impl Dispatch {
    fn host(&self) -> Result<&HostDispatch> {
        match &self.0 {
            DispatchData::Host(d) => Ok(d),
            #[cfg(feature = "cuda")]
            DispatchData::Cuda(_) => Err(mismatch("dispatch")),
        }
    }
}

/// One expert output row per slot, in the dispatch's order and the backend's layout.
pub struct ExpertRows(RowsData);

enum RowsData {
    /// (slots, hidden), in the order of the dispatch that made them.
    Tensor(Tensor),
    /// The CPU kernels' expert-major blocks.
    Blocks(cpu::ExpertBlocks),
}

/// A value made by one backend given to another: a bug in the caller, reported, not a panic.
fn mismatch(what: &str) -> Error {
    Error::Input(format!("a {what} made by one backend was given to another"))
}
