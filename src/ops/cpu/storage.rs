//! Borrowing a KV cache's CPU buffer as rows, for the attention kernel.

use candle_core::{CpuStorage, Storage, Tensor};

use super::attention::KvRows;
use crate::error::{Error, Result};

fn msg(m: String) -> Error {
    Error::Candle(candle_core::Error::Msg(m))
}

/// Runs `f` over a (heads, positions, width) f32 tensor on the CPU whose positions may be a
/// prefix of a larger buffer (a KV cache's valid part) and whose rows may be the first columns
/// of wider ones, without copying it.
pub fn with_kv_rows<R>(t: &Tensor, f: impl FnOnce(KvRows<'_>) -> R) -> Result<R> {
    let (heads, len, width) = t.dims3()?;
    let (storage, layout) = t.storage_and_layout();
    let (start, stride) = (layout.start_offset(), layout.stride());
    let Storage::Cpu(CpuStorage::F32(v)) = &*storage else {
        return Err(msg(format!(
            "attention reads f32 keys and values on the CPU, not {:?} on {:?}",
            t.dtype(),
            t.device().location()
        )));
    };
    let last = match (heads, len) {
        (0, _) | (_, 0) => 0,
        _ => (heads - 1) * stride[0] + (len - 1) * stride[1] + width,
    };
    let end = start + last;
    if stride[1] < width || stride[2] != 1 || (heads > 1 && stride[0] < len * stride[1]) {
        return Err(msg(format!(
            "keys and values must be rows of width {width}, got strides {stride:?}"
        )));
    }
    if end > v.len() {
        return Err(msg(format!(
            "keys and values of {heads}x{len}x{width} at strides {stride:?} run past their buffer"
        )));
    }
    Ok(f(KvRows {
        data: &v[start..end],
        head_stride: stride[0],
        row_stride: stride[1],
    }))
}
