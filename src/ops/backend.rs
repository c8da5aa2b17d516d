//! `Backend`: which implementation runs the ops, chosen once when a model is loaded and carried
//! by it, so that no layer asks which device it is on. This file and ops/mod.rs are where the
//! `cuda` feature shows in the ops; the CUDA arms below hand over to `ops::cuda`.

use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use super::reference::{self, HostDispatch, HostRouting};
use super::{cpu, AttentionShape, Dispatch, DispatchData, ExpertRows, Experts, Routing};
use super::{RoutingData, RowsData};
use crate::error::{Error, Result};
use crate::ops::cpu::Isa;
use crate::quant::Weight;
use crate::spec::{Activation, RouterSpec};

/// Passes of up to this many tokens keep the CPU pool's workers awake (see `Backend::run`).
const AWAKE_MAX_TOKENS: usize = 32;

/// Which kernels a model runs: the device's fast ones, or the reference backend's slow twins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The CPU's SIMD kernels on the CPU, the CUDA kernels (and candle's) on a GPU.
    #[default]
    Fast,
    /// Every op's slow twin: candle's tensor ops on whichever device, host routing.
    Reference,
}

impl FromStr for Kernels {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(Kernels::Fast),
            "reference" => Ok(Kernels::Reference),
            other => Err(Error::Input(format!(
                "unknown kernels `{other}` (expected fast or reference)"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Backend {
    /// The slow twins (ops/reference), on the tensors' own device.
    Reference,
    /// The CPU kernels, capped at an instruction set this CPU has.
    Cpu(Isa),
    /// Our CUDA kernels for the MoE ops, candle's for the rest.
    #[cfg(feature = "cuda")]
    Cuda(candle_core::CudaDevice),
}

impl Backend {
    /// The backend for a model in `dtype` on `device`. The CPU kernels read f32, bf16 and f16;
    /// other dtypes, and devices without kernels of ours, get the reference backend.
    pub fn new(device: &Device, dtype: DType, kernels: Kernels) -> Backend {
        let kernel_dtype = matches!(dtype, DType::F32 | DType::BF16 | DType::F16);
        match (kernels, device) {
            (Kernels::Fast, Device::Cpu) if kernel_dtype => Backend::cpu(),
            #[cfg(feature = "cuda")]
            (Kernels::Fast, Device::Cuda(dev)) if kernel_dtype => Backend::Cuda(dev.clone()),
            _ => Backend::Reference,
        }
    }

    /// The CPU kernels at the instruction set `MOE_CPU_KERNELS` and the CPU allow.
    pub fn cpu() -> Backend {
        Backend::Cpu(Isa::selected())
    }

    /// Every fast backend this build and machine have, with its device, for the op table: the
    /// CPU at each instruction set it has, and a GPU where the `cuda` feature is built and one
    /// opens (under `MOE_REQUIRE_CUDA=1`, a GPU that does not open fails the tests).
    #[cfg(test)]
    pub(crate) fn present() -> Vec<(Backend, Device)> {
        #[allow(unused_mut)] // pushed to with feature `cuda`
        let mut all: Vec<(Backend, Device)> = Isa::available()
            .into_iter()
            .map(|isa| (Backend::Cpu(isa), Device::Cpu))
            .collect();
        #[cfg(feature = "cuda")]
        if let Some(Device::Cuda(dev)) = crate::device::gpu_for_tests() {
            all.push((Backend::Cuda(dev.clone()), Device::Cuda(dev)));
        }
        all
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Reference => "reference",
            Backend::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => "cuda",
        }
    }

    /// The backend a sparse layer with these experts runs on: this one, or the reference on
    /// the same device where this one has no kernel for them (the CUDA kernels take dense
    /// experts without biases and the SiLU-gated activation).
    pub fn for_experts(&self, experts: &Experts, act: Activation) -> Backend {
        match self {
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) if !super::cuda::moe::runs_experts(experts, act) => Backend::Reference,
            _ => {
                let _ = (experts, act);
                self.clone()
            }
        }
    }

    /// Runs `f`, a pass over `tokens` tokens, where this backend's ops want their caller.
    /// CPU: on a thread of rayon's pool. Called from outside it, each of the kernels' parallel
    /// loops (about ten per layer) would be handed to the pool while the caller sleeps, two
    /// thread wake-ups each (~10 µs on the dev VM; a decode step of q3-mini's structure with
    /// tiny weights took 1.6 ms instead of 0.8); from inside, the caller works in the loop
    /// itself, and a loop too small to split runs in place. Passes of up to AWAKE_MAX_TOKENS
    /// (decode, batched decode) also keep the other workers awake (cpu/awake.rs); longer ones
    /// have loops long enough that a wake-up is lost in them, and spinning cost bf16 prefill
    /// 7% (q3-mini, 128 tokens, Intel Xeon without AMX: 501 -> 466 tokens/s).
    /// Elsewhere the caller's thread launches: a hop to a worker buys nothing.
    pub fn run<R: Send>(&self, tokens: usize, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Backend::Cpu(_) if tokens <= AWAKE_MAX_TOKENS => super::cpu::run_awake(f),
            Backend::Cpu(_) => rayon::scope(|_| f()),
            _ => f(),
        }
    }

    /// y = x · Wᵀ (+ b). xs: (tokens, in) -> (tokens, out), in the dtype of xs.
    pub fn linear(&self, xs: &Tensor, w: &Weight, bias: Option<&Tensor>) -> Result<Tensor> {
        let (_, k) = xs.dims2()?;
        let (n, k_w) = match w.dims() {
            &[n, k_w] => (n, k_w),
            dims => return Err(Error::Input(format!("a linear layer's weight is {dims:?}"))),
        };
        if k != k_w || bias.is_some_and(|b| b.dims() != [n]) {
            return Err(Error::Input(format!(
                "a linear layer of ({n}, {k_w}) weights and bias {:?} given rows of {k}",
                bias.map(|b| b.dims().to_vec())
            )));
        }
        match self {
            Backend::Cpu(isa) => cpu::tensors::linear(*isa, xs, w, bias),
            _ => reference::linear(xs, w, bias),
        }
    }

    /// act(g, u) element by element: candle's ops on every backend (an element-wise op over
    /// one layer's activations is far from any limit that matters here).
    pub fn gated(&self, g: &Tensor, u: &Tensor, act: Activation) -> Result<Tensor> {
        reference::gated(g, u, act)
    }

    /// The gated delta rule (Gated DeltaNet's linear attention) over one sequence's t new
    /// tokens: q and k (t, nk, dk) as projected (L2-normalised in the op, q also scaled by
    /// dk^-1/2), v (t, nv, dv), g the log decay and beta the write strength (t, nv), all f32;
    /// value head h reads key head h / (nv / nk). `state` (nv, dk, dv) f32 holds what the
    /// sequence's earlier tokens wrote and is updated. Returns (t, nv, dv), f32.
    pub fn gated_delta(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (g, beta): (&Tensor, &Tensor),
        state: &mut Tensor,
    ) -> Result<Tensor> {
        let (t, nk, dk) = q.dims3()?;
        let (tv, nv, dv) = v.dims3()?;
        let fits = k.dims() == [t, nk, dk]
            && tv == t
            && nk > 0
            && nv.is_multiple_of(nk)
            && g.dims() == [t, nv]
            && beta.dims() == [t, nv]
            && state.dims() == [nv, dk, dv]
            && [q, k, v, g, beta, &*state]
                .iter()
                .all(|x| x.dtype() == DType::F32);
        if !fits {
            return Err(Error::Input(format!(
                "gated delta rule: q {:?}, k {:?}, v {:?}, g {:?}, beta {:?} and state {:?} \
                 (f32 all) do not fit together",
                q.dims(),
                k.dims(),
                v.dims(),
                g.dims(),
                beta.dims(),
                state.dims()
            )));
        }
        match self {
            Backend::Cpu(isa) => cpu::tensors::gated_delta(*isa, (q, k, v), (g, beta), state),
            _ => reference::gated_delta((q, k, v), (g, beta), state),
        }
    }

    /// Causal attention: q (nh, t, hd), k (nkv, s, hd) and v (nkv, s, dv), all f32, the last t
    /// positions of k and v those of the queries -> (t, nh · dv), f32. v may be a narrowing of
    /// wider rows (latent attention reads its values as the first columns of its keys).
    pub fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        shape: &AttentionShape,
    ) -> Result<Tensor> {
        check_attention(q, k, v, shape)?;
        match self {
            Backend::Cpu(isa) => cpu::tensors::attention(*isa, q, k, v, shape),
            _ => reference::attention(q, k, v, shape),
        }
    }

    /// logits: (tokens, E) -> each token's experts and weights as `spec` says; `correction`:
    /// the selection bias (E) f32, exactly when the spec has one.
    pub fn route(
        &self,
        logits: &Tensor,
        spec: &RouterSpec,
        correction: Option<&Tensor>,
    ) -> Result<Routing> {
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(_) = self {
            if let Some((experts, weights)) =
                super::cuda::moe::route_spec(logits, spec, correction)?
            {
                return Ok(Routing(RoutingData::Device { experts, weights }));
            }
        }
        let (_, e) = logits.dims2()?;
        let host = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let correction = correction.map(host).transpose()?;
        let r = HostRouting::route(&host(logits)?, e, spec, correction.as_deref())?;
        Ok(Routing(RoutingData::Host(r)))
    }

    /// Groups the routing's slots by expert, for `xs: (tokens, hidden)` going to `experts`.
    pub fn dispatch(&self, routing: &Routing, xs: &Tensor, experts: &Experts) -> Result<Dispatch> {
        experts.check()?;
        let tokens = xs.dims2()?.0;
        let e = experts.num_experts();
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(_) = self {
            let d = match &routing.0 {
                RoutingData::Device {
                    experts: ids,
                    weights,
                } => super::cuda::moe::dispatch(ids, weights, xs, experts)?,
                RoutingData::Host(r) => {
                    r.check(tokens, e)?;
                    let shape = (tokens, r.top_k);
                    let ids = Tensor::from_slice(&r.experts, shape, xs.device())?;
                    let weights = Tensor::from_slice(&r.weights, shape, xs.device())?;
                    super::cuda::moe::dispatch(&ids, &weights, xs, experts)?
                }
            };
            return Ok(Dispatch(DispatchData::Cuda(d)));
        }
        let r = routing.host()?;
        r.check(tokens, e)?;
        let d = HostDispatch::new(&r.experts, &r.weights, e, r.top_k);
        Ok(Dispatch(DispatchData::Host(d)))
    }

    /// Every slot's expert output: y = down(act(gate·x (+b), up·x (+b))) (+b).
    pub fn expert_ffn(
        &self,
        xs: &Tensor,
        experts: &Experts,
        dispatch: &Dispatch,
        act: Activation,
    ) -> Result<ExpertRows> {
        experts.check()?;
        let hidden = xs.dims2()?.1;
        if hidden != experts.hidden() {
            return Err(Error::Input(format!(
                "experts of hidden size {} given rows of {hidden}",
                experts.hidden()
            )));
        }
        let rows = match self {
            Backend::Reference => {
                RowsData::Tensor(reference::expert_ffn(xs, experts, dispatch.host()?, act)?)
            }
            Backend::Cpu(isa) => RowsData::Blocks(cpu::tensors::expert_ffn(
                *isa,
                xs,
                experts,
                dispatch.host()?,
                act,
            )?),
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => {
                if !super::cuda::moe::runs_experts(experts, act) {
                    return Err(Error::Input(format!(
                        "the CUDA kernels run dense SiLU-gated experts without biases, gate and \
                         up joined, not {act:?} ones with biases {}, gate and up apart {}: run \
                         these on `Backend::for_experts`",
                        experts.has_bias(),
                        experts.up.is_some()
                    )));
                }
                let DispatchData::Cuda(d) = &dispatch.0 else {
                    return Err(super::mismatch("dispatch"));
                };
                RowsData::Tensor(super::cuda::moe::expert_ffn(xs, experts, d)?)
            }
        };
        Ok(ExpertRows(rows))
    }

    /// The weighted sum of each token's expert rows: (tokens, hidden) in the dtype of xs.
    pub fn combine(&self, rows: &ExpertRows, dispatch: &Dispatch, xs: &Tensor) -> Result<Tensor> {
        match (self, &rows.0) {
            (Backend::Reference, RowsData::Tensor(t)) => {
                reference::combine(t, dispatch.host()?, xs)
            }
            (Backend::Cpu(_), RowsData::Blocks(b)) => {
                cpu::tensors::combine(b, dispatch.host()?, xs)
            }
            #[cfg(feature = "cuda")]
            (Backend::Cuda(_), RowsData::Tensor(t)) => {
                let DispatchData::Cuda(d) = &dispatch.0 else {
                    return Err(super::mismatch("dispatch"));
                };
                super::cuda::moe::combine(t, d)
            }
            _ => Err(super::mismatch("set of expert rows")),
        }
    }
}

/// The shapes attention needs, checked before a kernel indexes by them: q (nh, t, hd), k (nkv,
/// s, hd) and v (nkv, s, dv) with nkv dividing nh and at least t positions, a window of at
/// least one key.
fn check_attention(q: &Tensor, k: &Tensor, v: &Tensor, a: &AttentionShape) -> Result<()> {
    let (nh, t, hd) = q.dims3()?;
    let (nkv, s, hd_k) = k.dims3()?;
    let (nkv_v, s_v, dv) = v.dims3()?;
    let fits = nkv == a.kv_heads
        && nkv > 0
        && nh > 0
        && nh.is_multiple_of(nkv)
        && s >= t
        && hd_k == hd
        && (nkv_v, s_v) == (nkv, s)
        && dv > 0
        && a.window != Some(0)
        && a.sinks.as_ref().is_none_or(|s| s.len() == nh);
    if !fits {
        return Err(Error::Input(format!(
            "attention of q {:?}, k {:?}, v {:?} over {} kv heads with window {:?} and {:?} \
             sinks does not fit",
            q.dims(),
            k.dims(),
            v.dims(),
            a.kv_heads,
            a.window,
            a.sinks.as_ref().map(Vec::len)
        )));
    }
    Ok(())
}
