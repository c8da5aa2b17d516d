//! Borrowing a candle tensor's CPU buffer as a typed slice, for kernels that work on slices.

use candle_core::{CpuStorage, Storage, Tensor};
use half::{bf16, f16};

use super::attention::KvRows;
use crate::error::{Error, Result};
use crate::quant::{BlockQ4_0, BlockQ8_0, BLOCK};

fn msg(m: String) -> Error {
    Error::Candle(candle_core::Error::Msg(m))
}

/// The contiguous CPU data of a weight matrix, in whichever format the weights are kept.
/// Quantized rows are k / BLOCK blocks each.
#[derive(Clone, Copy)]
pub enum WeightSlice<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
}

impl<'a> WeightSlice<'a> {
    /// Rows `first..first + count` of a row-major matrix with rows of `k` elements.
    pub fn rows(&self, first: usize, count: usize, k: usize) -> WeightSlice<'a> {
        let r = first * k..(first + count) * k;
        let b = first * k / BLOCK..(first + count) * k / BLOCK;
        match *self {
            WeightSlice::F32(w) => WeightSlice::F32(&w[r]),
            WeightSlice::BF16(w) => WeightSlice::BF16(&w[r]),
            WeightSlice::F16(w) => WeightSlice::F16(&w[r]),
            WeightSlice::Q8_0(w) => WeightSlice::Q8_0(&w[b]),
            WeightSlice::Q4_0(w) => WeightSlice::Q4_0(&w[b]),
        }
    }

    /// Whether the weights are quantized blocks (their products take q8_0 activations).
    pub fn is_quantized(&self) -> bool {
        matches!(self, WeightSlice::Q8_0(_) | WeightSlice::Q4_0(_))
    }
}

/// Runs `f` over a (heads, positions, head_dim) f32 tensor on the CPU whose positions may be a
/// prefix of a larger buffer (a KV cache's valid part), without copying it.
pub fn with_kv_rows<R>(t: &Tensor, f: impl FnOnce(KvRows<'_>) -> R) -> Result<R> {
    let (heads, len, hd) = t.dims3()?;
    let (storage, layout) = t.storage_and_layout();
    let (start, stride) = (layout.start_offset(), layout.stride());
    let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        return Err(msg(format!(
            "attention reads f32 keys and values on the CPU, not {:?} on {:?}",
            t.dtype(),
            t.device().location()
        )));
    };
    let end = start + heads.saturating_sub(1) * stride[0] + len * hd;
    if stride[1] != hd || stride[2] != 1 || end > v.len() {
        return Err(msg(format!(
            "keys and values must be rows of head_dim {hd}, got strides {stride:?}"
        )));
    }
    Ok(f(KvRows {
        data: &v[start..end],
        head_stride: stride[0],
    }))
}

/// Runs `f` over the data of `t` without copying it. Fails for a tensor that is not on the
/// CPU, not contiguous, or not of a float dtype the kernels read.
pub fn with_weight_slice<R>(t: &Tensor, f: impl FnOnce(WeightSlice<'_>) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(msg("kernel weights must be contiguous".into()));
    };
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => f(WeightSlice::F32(&v[start..end])),
        Storage::Cpu(CpuStorage::BF16(v)) => f(WeightSlice::BF16(&v[start..end])),
        Storage::Cpu(CpuStorage::F16(v)) => f(WeightSlice::F16(&v[start..end])),
        _ => Err(msg(format!(
            "no CPU kernel for {:?} weights on {:?}",
            t.dtype(),
            t.device().location()
        ))),
    }
}
