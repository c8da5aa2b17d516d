//! Borrowing a candle tensor's CPU buffer as a typed slice, for kernels that work on slices.

use candle_core::{CpuStorage, Storage, Tensor};
use half::{bf16, f16};

use crate::error::{Error, Result};

fn msg(m: String) -> Error {
    Error::Candle(candle_core::Error::Msg(m))
}

/// The contiguous CPU data of a weight tensor, in whichever dtype the weights are kept.
#[derive(Clone, Copy)]
pub enum WeightSlice<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> WeightSlice<'a> {
    /// Rows `first..first + count` of a row-major matrix with rows of `k` elements.
    pub fn rows(&self, first: usize, count: usize, k: usize) -> WeightSlice<'a> {
        let r = first * k..(first + count) * k;
        match *self {
            WeightSlice::F32(w) => WeightSlice::F32(&w[r]),
            WeightSlice::BF16(w) => WeightSlice::BF16(&w[r]),
            WeightSlice::F16(w) => WeightSlice::F16(&w[r]),
        }
    }
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
