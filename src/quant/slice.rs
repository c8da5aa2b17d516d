//! `WeightSlice`: a weight matrix's CPU data borrowed in whichever format it is kept, the form
//! the CPU kernels read.

use candle_core::{CpuStorage, Storage, Tensor};
use half::{bf16, f16};

use super::{
    BlockMxfp4, BlockMxfp4x8, BlockQ4K, BlockQ4Kx8, BlockQ4_0, BlockQ4_0x8, BlockQ5K, BlockQ5_0,
    BlockQ6K, BlockQ8_0, BlockQ8_0x8, PanelStep, BLOCK, GROUP_ROWS, K_BLOCK, PANEL_ROWS,
};
use crate::error::{Error, Result};

fn msg(m: String) -> Error {
    Error::Candle(candle_core::Error::Msg(m))
}

/// The contiguous CPU data of a weight matrix, in whichever format the weights are kept.
/// Quantized rows are k / BLOCK blocks each (k / K_BLOCK for the K-quants).
#[derive(Clone, Copy)]
pub enum WeightSlice<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    /// bf16 rows in panels of sixteen (quant/panels.rs): k / 2 steps per sixteen rows.
    BF16x16(&'a [PanelStep]),
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
    /// q8_0 rows interleaved in groups of eight: k / BLOCK groups per eight rows.
    Q8_0x8(&'a [BlockQ8_0x8]),
    Q4_0(&'a [BlockQ4_0]),
    /// q4_0 rows interleaved in groups of eight (quant/interleaved.rs): k / BLOCK groups per
    /// eight rows.
    Q4_0x8(&'a [BlockQ4_0x8]),
    Q5_0(&'a [BlockQ5_0]),
    Mxfp4(&'a [BlockMxfp4]),
    /// MXFP4 rows interleaved in groups of eight: k / BLOCK groups per eight rows.
    Mxfp4x8(&'a [BlockMxfp4x8]),
    Q4K(&'a [BlockQ4K]),
    /// q4_K rows interleaved in groups of eight: k / K_BLOCK groups per eight rows.
    Q4Kx8(&'a [BlockQ4Kx8]),
    Q5K(&'a [BlockQ5K]),
    Q6K(&'a [BlockQ6K]),
}

impl<'a> WeightSlice<'a> {
    /// Rows `first..first + count` of a row-major matrix with rows of `k` elements. Of
    /// interleaved rows and panels, whole groups of eight and panels of sixteen
    /// (`whole_units`).
    pub fn rows(&self, first: usize, count: usize, k: usize) -> WeightSlice<'a> {
        let r = first * k..(first + count) * k;
        let b = first * k / BLOCK..(first + count) * k / BLOCK;
        let kb = first * k / K_BLOCK..(first + count) * k / K_BLOCK;
        let groups = |blocks| whole_units(first, count, GROUP_ROWS, blocks);
        match *self {
            WeightSlice::F32(w) => WeightSlice::F32(&w[r]),
            WeightSlice::BF16(w) => WeightSlice::BF16(&w[r]),
            WeightSlice::BF16x16(w) => {
                WeightSlice::BF16x16(&w[whole_units(first, count, PANEL_ROWS, k / 2)])
            }
            WeightSlice::F16(w) => WeightSlice::F16(&w[r]),
            WeightSlice::Q8_0(w) => WeightSlice::Q8_0(&w[b]),
            WeightSlice::Q8_0x8(w) => WeightSlice::Q8_0x8(&w[groups(k / BLOCK)]),
            WeightSlice::Q4_0(w) => WeightSlice::Q4_0(&w[b]),
            WeightSlice::Q4_0x8(w) => WeightSlice::Q4_0x8(&w[groups(k / BLOCK)]),
            WeightSlice::Q5_0(w) => WeightSlice::Q5_0(&w[b]),
            WeightSlice::Mxfp4(w) => WeightSlice::Mxfp4(&w[b]),
            WeightSlice::Mxfp4x8(w) => WeightSlice::Mxfp4x8(&w[groups(k / BLOCK)]),
            WeightSlice::Q4K(w) => WeightSlice::Q4K(&w[kb]),
            WeightSlice::Q4Kx8(w) => WeightSlice::Q4Kx8(&w[groups(k / K_BLOCK)]),
            WeightSlice::Q5K(w) => WeightSlice::Q5K(&w[kb]),
            WeightSlice::Q6K(w) => WeightSlice::Q6K(&w[kb]),
        }
    }

    /// Whether the weights are K-quant super-blocks (their products take q8_K activations).
    pub fn is_k_quant(&self) -> bool {
        matches!(
            self,
            WeightSlice::Q4K(_) | WeightSlice::Q4Kx8(_) | WeightSlice::Q5K(_) | WeightSlice::Q6K(_)
        )
    }

    /// Whether the weights are rows interleaved in groups of eight (quant/interleaved.rs).
    pub fn is_interleaved(&self) -> bool {
        matches!(
            self,
            WeightSlice::Q8_0x8(_)
                | WeightSlice::Q4_0x8(_)
                | WeightSlice::Mxfp4x8(_)
                | WeightSlice::Q4Kx8(_)
        )
    }

    /// Whether the weights are quantized blocks (their products take q8_0 activations, or
    /// q8_K for the K-quants).
    pub fn is_quantized(&self) -> bool {
        !matches!(
            self,
            WeightSlice::F32(_)
                | WeightSlice::BF16(_)
                | WeightSlice::BF16x16(_)
                | WeightSlice::F16(_)
        )
    }
}

/// The units holding rows `first..first + count` of rows kept in units of `unit_rows` rows
/// with `per_unit` items each (interleaved groups, bf16 panels): whole units only (callers
/// split matrices whose row counts are, at multiples of the unit).
pub(super) fn whole_units(
    first: usize,
    count: usize,
    unit_rows: usize,
    per_unit: usize,
) -> std::ops::Range<usize> {
    assert!(
        first.is_multiple_of(unit_rows) && count.is_multiple_of(unit_rows),
        "interleaved groups and panels are taken whole"
    );
    first / unit_rows * per_unit..(first + count) / unit_rows * per_unit
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
