//! The CPU backend's ops on candle tensors: borrow the tensors' data (weights and the KV cache
//! in place; activations as one f32 copy), run the kernels over slices, wrap the result.

use candle_core::{DType, Device, Tensor};

use super::delta::{gated_delta as gated_delta_kernel, DeltaDims, DeltaForm, DeltaInputs};
use super::expert_ffn::{self, ExpertBlocks, ExpertRows, ExpertWeights};
use super::PreparedLhs;
use super::{causal_attention, linear as linear_kernel, with_kv_rows, AttentionDims, Isa};
use crate::error::{Error, Result};
use crate::ops::reference::HostDispatch;
use crate::ops::{AttentionShape, Experts};
use crate::quant::{with_weight_slice, Weight, WeightSlice};
use crate::spec::Activation;

fn host_f32(xs: &Tensor) -> Result<Vec<f32>> {
    Ok(xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// xs: (tokens, in) -> (tokens, out) = xs · Wᵀ (+ b), in the dtype of xs. The shapes are
/// those `Backend::linear` checked: w (out, in), in matching xs.
pub fn linear(isa: Isa, xs: &Tensor, w: &Weight, bias: Option<&Tensor>) -> Result<Tensor> {
    let (m, k) = xs.dims2()?;
    let n = w.dims()[0];
    let x = host_f32(xs)?;
    let mut out = vec![0f32; m * n];
    w.with_slice(|w| {
        let prepared = PreparedLhs::new(isa, &w, &x, k);
        linear_kernel(isa, prepared.rows(&x, 0, m, k), &w, (m, n, k), &mut out);
        Ok(())
    })?;
    let ys = Tensor::from_vec(out, (m, n), xs.device())?.to_dtype(xs.dtype())?;
    match bias {
        None => Ok(ys),
        Some(b) => Ok(ys.broadcast_add(b)?),
    }
}

/// q: (nh, t, hd), k (nkv, s, hd) and v (nkv, s, dv), all f32 -> (t, nh * dv): the kernel over
/// the cache's buffers in place. Latent attention's values are a narrowing of its keys: the
/// two read guards below are then on one storage, which is safe because nothing writes a
/// cache's buffers while attention reads them (a cache belongs to one sequence, and its
/// appends run on the calling thread before this).
pub fn attention(
    isa: Isa,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: &AttentionShape,
) -> Result<Tensor> {
    let (nh, t, hd) = q.dims3()?;
    let (s, dv) = (k.dim(1)?, v.dim(2)?);
    let dims = AttentionDims {
        heads: nh,
        kv_heads: shape.kv_heads,
        head_dim: hd,
        value_dim: dv,
        tokens: t,
        cached: s - t,
        window: shape.window,
        scale: shape.scale as f32,
    };
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; t * nh * dv];
    let sinks = shape.sinks.as_deref();
    with_kv_rows(k, |k| {
        with_kv_rows(v, |v| {
            causal_attention(isa, &q, k, v, dims, sinks, &mut out)
        })
    })??;
    Ok(Tensor::from_vec(out, (t, nh * dv), &Device::Cpu)?)
}

/// xs: (tokens, hidden) -> every slot's expert output, in the kernels' blocks.
pub fn expert_ffn(
    isa: Isa,
    xs: &Tensor,
    experts: &Experts,
    d: &HostDispatch,
    act: Activation,
) -> Result<ExpertBlocks> {
    let (_, h) = xs.dims2()?;
    let x = host_f32(xs)?;
    with_bias(&experts.gate_up_bias, |gate_up_bias| {
        with_bias(&experts.down_bias, |down_bias| {
            experts.gate_up.with_slice(|gate_up| {
                with_optional_slice(&experts.up, |up| {
                    experts.down.with_slice(|down| {
                        let i = experts.intermediate();
                        let [gate, up] = match up {
                            None => ExpertRows::joined(gate_up, i),
                            Some(up) => [
                                ExpertRows::separate(gate_up, i),
                                ExpertRows::separate(up, i),
                            ],
                        };
                        let w = ExpertWeights {
                            gate,
                            up,
                            down,
                            gate_up_bias,
                            down_bias,
                            hidden: h,
                            intermediate: i,
                            activation: act,
                        };
                        expert_ffn::expert_ffn_checked(isa, &x, d, &w)
                    })
                })
            })
        })
    })
}

/// Runs `f` over an optional weight's data in place.
fn with_optional_slice<R>(
    w: &Option<Weight>,
    f: impl FnOnce(Option<WeightSlice<'_>>) -> Result<R>,
) -> Result<R> {
    match w {
        None => f(None),
        Some(w) => w.with_slice(|s| f(Some(s))),
    }
}

/// Runs `f` over an f32 bias tensor's data in place (`None` when there is no bias).
fn with_bias<R>(b: &Option<Tensor>, f: impl FnOnce(Option<&[f32]>) -> Result<R>) -> Result<R> {
    let Some(b) = b else { return f(None) };
    with_weight_slice(b, |s| match s {
        WeightSlice::F32(v) => f(Some(v)),
        _ => Err(Error::Input(format!(
            "expert biases are kept in f32, got {:?}",
            b.dtype()
        ))),
    })
}

/// The weighted sum per token: (tokens, hidden) in the dtype and on the device of `xs`.
pub fn combine(rows: &ExpertBlocks, d: &HostDispatch, xs: &Tensor) -> Result<Tensor> {
    let (t, h) = xs.dims2()?;
    let mut out = vec![0f32; t * h];
    expert_ffn::combine(rows, d, &mut out);
    Ok(Tensor::from_vec(out, (t, h), xs.device())?.to_dtype(xs.dtype())?)
}

/// See `Backend::gated_delta` (shapes checked there): the host kernels over the state in
/// place.
pub fn gated_delta(
    isa: Isa,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    (g, beta): (&Tensor, &Tensor),
    state: &mut Tensor,
) -> Result<Tensor> {
    let (t, nk, dk) = q.dims3()?;
    let (_, nv, dv) = v.dims3()?;
    let dims = DeltaDims { t, nk, nv, dk, dv };
    let (q, k, v, g, beta) = (
        host_f32(q)?,
        host_f32(k)?,
        host_f32(v)?,
        host_f32(g)?,
        host_f32(beta)?,
    );
    let step = DeltaStep {
        isa,
        dims,
        inputs: DeltaInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        },
        out: std::sync::Mutex::new(vec![0f32; t * nv * dv]),
    };
    if !state.is_contiguous() {
        *state = state.contiguous()?;
    }
    state.inplace_op1(&step)?;
    let out = step.out.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(Tensor::from_vec(out, (t, nv, dv), &Device::Cpu)?)
}

/// One call of the rule, run on the state's own storage (no copy of the state in or out).
struct DeltaStep<'a> {
    isa: Isa,
    dims: DeltaDims,
    inputs: DeltaInputs<'a>,
    out: std::sync::Mutex<Vec<f32>>,
}

impl candle_core::InplaceOp1 for DeltaStep<'_> {
    fn name(&self) -> &'static str {
        "gated-delta"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("the recurrent state is not f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("the recurrent state is not contiguous");
        };
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let form = DeltaForm::for_tokens(self.dims.t);
        let state = &mut data[start..end];
        gated_delta_kernel(self.isa, self.dims, &self.inputs, state, &mut out, form);
        Ok(())
    }
}
