//! Fused routing (kernels/moe_route.cu): scores, the selection bias and group limit, top-k,
//! renormalisation and scale in one pass per token.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{DType, Tensor};
use half::{bf16, f16};

use super::{cuda_device, output, ptx, tensor, unsupported, with_view};
use crate::error::{Error, Result};

/// Experts one routing warp can hold in registers (MAX_PER_LANE x 32 in moe_route.cu).
pub(super) const MAX_ROUTED_EXPERTS: usize = 512;
/// Choices one warp can hand out (one per lane).
pub(super) const MAX_TOP_K: usize = 32;
/// Tokens one routing block handles (a warp each); moe_route.cu sizes its shared rows by the
/// same number (and traps on a larger block).
const ROUTE_WARPS: u32 = 8;

/// How router logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    Softmax,
    Sigmoid,
}

/// DeepSeek-V3's choice rules, where a router has them: a selection bias added to the scores
/// that choose (never to the weights), and a group limit (groups, kept groups).
#[derive(Debug, Clone, Copy, Default)]
pub struct Choice<'a> {
    /// (E) f32 on the logits' device.
    pub bias: Option<&'a Tensor>,
    pub groups: Option<(usize, usize)>,
}

/// Groups one routing warp can rank (one per lane).
pub(super) const MAX_GROUPS: usize = 32;

/// logits: (tokens, E) f32/bf16/f16 -> (experts (tokens, k) u32, weights (tokens, k) f32): the
/// top `top_k` scores of each token (plus the selection bias, within the kept groups, as
/// `choice` says), best first, ties to the lower expert index; renormalised to sum to one when
/// asked, then multiplied by `scale`.
pub fn route(
    logits: &Tensor,
    top_k: usize,
    scoring: Scoring,
    renormalise: bool,
    scale: f32,
    choice: Choice,
) -> Result<(Tensor, Tensor)> {
    let (tokens, e) = logits.dims2()?;
    if e == 0 || e > MAX_ROUTED_EXPERTS || top_k == 0 || top_k > e.min(MAX_TOP_K) {
        return Err(Error::Input(format!(
            "the CUDA router takes up to {MAX_ROUTED_EXPERTS} experts and top-k up to \
             {MAX_TOP_K}, got top-{top_k} of {e}"
        )));
    }
    let (groups, keep) = choice.groups.unwrap_or((1, 1));
    let groups_fit = (1..=MAX_GROUPS).contains(&groups)
        && e.is_multiple_of(groups)
        && (1..=groups).contains(&keep)
        && top_k <= keep * (e / groups);
    if !groups_fit {
        return Err(Error::Input(format!(
            "the CUDA router keeps some of up to {MAX_GROUPS} equal groups that hold the \
             top-{top_k}, not {keep} of {groups} groups of {e} experts"
        )));
    }
    let bias = match choice.bias {
        Some(b) if b.dims() == [e] && b.dtype() == DType::F32 => Some(b.contiguous()?),
        Some(b) => {
            return Err(Error::Input(format!(
                "a selection bias of {:?} {:?} for {e} experts (expected f32)",
                b.dims(),
                b.dtype()
            )))
        }
        None => None,
    };
    let dev = cuda_device(logits)?;
    let experts = output::<u32>(&dev, tokens * top_k)?;
    let weights = output::<f32>(&dev, tokens * top_k)?;
    if tokens > 0 {
        let outputs = (&experts, &weights);
        let args = RouteArgs {
            tokens: tokens as i32,
            experts: e as i32,
            top_k: top_k as i32,
            sigmoid: i32::from(scoring == Scoring::Sigmoid),
            renormalise: i32::from(renormalise),
            scale,
            has_bias: i32::from(bias.is_some()),
            groups: groups as i32,
            keep: keep as i32,
        };
        let bias = bias.as_ref();
        match logits.dtype() {
            DType::F32 => launch_route::<f32>("moe_route_f32", logits, bias, outputs, &args, &dev)?,
            DType::BF16 => {
                launch_route::<bf16>("moe_route_bf16", logits, bias, outputs, &args, &dev)?
            }
            DType::F16 => launch_route::<f16>("moe_route_f16", logits, bias, outputs, &args, &dev)?,
            other => return Err(unsupported("router logits", other)),
        }
    }
    Ok((
        tensor(experts, &dev, (tokens, top_k)),
        tensor(weights, &dev, (tokens, top_k)),
    ))
}

/// The scalar arguments of the routing kernel, in its order.
struct RouteArgs {
    tokens: i32,
    experts: i32,
    top_k: i32,
    sigmoid: i32,
    renormalise: i32,
    scale: f32,
    has_bias: i32,
    groups: i32,
    keep: i32,
}

fn launch_route<T: CudaDType + DeviceRepr>(
    name: &str,
    logits: &Tensor,
    bias: Option<&Tensor>,
    (experts, weights): (&CudaSlice<u32>, &CudaSlice<f32>),
    a: &RouteArgs,
    dev: &CudaDevice,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: ((a.tokens as u32).div_ceil(ROUTE_WARPS), 1, 1),
        block_dim: (ROUTE_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let launch = |input: CudaView<'_, T>, bias: CudaView<'_, f32>| -> Result<()> {
        let func = dev.get_or_load_custom_func(name, "moe_route", ptx::ROUTE)?;
        let mut b = func.builder();
        b.arg(&input)
            .arg(&bias)
            .arg(experts)
            .arg(weights)
            .arg(&a.tokens)
            .arg(&a.experts)
            .arg(&a.top_k)
            .arg(&a.sigmoid)
            .arg(&a.renormalise)
            .arg(&a.scale)
            .arg(&a.has_bias)
            .arg(&a.groups)
            .arg(&a.keep);
        // SAFETY: the kernel reads tokens x E logits (and E biases when has_bias) and writes
        // tokens x k of each output, the sizes allocated by the caller; E, k and the groups are
        // within the kernel's register and shared-memory budget (checked by `route`).
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    };
    with_view::<T, _>(logits, |input| match bias {
        Some(bias) => with_view::<f32, _>(bias, |bias| launch(input, bias)),
        // Never read without has_bias: any device pointer will do.
        None => launch(input, weights.slice(..)),
    })
}
