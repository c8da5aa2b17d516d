//! Borrowing a KV cache's CPU buffer as rows, for the attention kernel.

use candle_core::{CpuStorage, Storage, Tensor};

use super::attention::KvRows;
use crate::error::{Error, Result};

fn msg(m: String) -> Error {
    Error::Candle(candle_core::Error::Msg(m))
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
