//! The MoE kernels of kernels/*.cu on candle's CUDA device: routing, alignment, the experts'
//! FFN (a grouped tensor-core GEMM for prefill, a weight-streaming path for decode) and the
//! weighted combine. Each takes and returns candle tensors on one CUDA device; launches go on
//! the device's stream, in order with candle's own work. `moe` strings them into the backend's
//! pipeline steps. The slow twins are the reference backend's router (`HostRouting`), dispatch
//! (`HostDispatch`) and expert FFN; tests.rs and the op table compare them.

mod align;
mod combine;
mod ffn;
pub mod moe;
mod route;
#[cfg(test)]
mod tests;

use candle_core::cuda_backend::cudarc::driver::result::memset_d8_async;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtrMut, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, StorageRef, Tensor};

use crate::error::{Error, Result};

pub use align::{align, Alignment};
pub use combine::combine;
pub use ffn::{expert_ffn, FfnPath};
pub use route::{route, Scoring};

/// PTX of each kernels/*.cu, compiled by build.rs.
mod ptx {
    pub const ROUTE: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_route.ptx"));
    pub const ALIGN: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_align.ptx"));
    pub const COMBINE: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_combine.ptx"));
    pub const EXPERT_FFN: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_expert_ffn.ptx"));
    pub const GROUPED_GEMM: &str = include_str!(concat!(env!("OUT_DIR"), "/moe_grouped_gemm.ptx"));
}

/// Threads per block of the one-thread-per-element kernels.
const THREADS: u32 = 256;

/// Device memory for `n` values that a kernel launched next writes before anything reads it
/// (each kernel's header says what it writes): no fill, which at batch 1 would be a driver call
/// per output for nothing. One value at least, since an empty allocation is an error to the
/// driver (tensors over it keep their own, possibly empty, shape).
///
/// Under test (and with `MOE_CUDA_POISON=1`, which the GPU run kit sets for the end-to-end
/// tests) the memory is filled with 0xff bytes first, NaN as floats and 0xffffffff as ids, so
/// that an element a kernel fails to write shows instead of whatever a freed buffer held.
fn output<T: CudaDType + DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: plain-old-data values, written by the caller's kernel before any read (above).
    let mut slice = unsafe { dev.alloc::<T>(n.max(1)) }?;
    if poison_outputs() {
        let stream = dev.cuda_stream();
        let bytes = slice.len() * std::mem::size_of::<T>();
        let (ptr, _record) = slice.device_ptr_mut(&stream);
        // SAFETY: `bytes` of a live allocation of this stream; any bit pattern is a value of
        // the plain types the kernels use.
        unsafe { memset_d8_async(ptr, 0xff, bytes, stream.cu_stream()) }.w()?;
    }
    Ok(slice)
}

fn poison_outputs() -> bool {
    static POISON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(test)
        || *POISON.get_or_init(|| std::env::var_os("MOE_CUDA_POISON").is_some_and(|v| v == "1"))
}

fn cuda_device(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(dev) => Ok(dev.clone()),
        other => Err(Error::Input(format!(
            "a CUDA kernel was given a tensor on {other:?}"
        ))),
    }
}

/// A contiguous tensor's device memory, borrowed for a launch.
struct Operand<'a> {
    storage: StorageRef<'a>,
    /// Element range of the tensor in its storage.
    start: usize,
    end: usize,
    dtype: DType,
}

fn operand(t: &Tensor) -> Result<Operand<'_>> {
    let (storage, layout) = t.storage_and_layout();
    if !matches!(&*storage, Storage::Cuda(_)) {
        return Err(Error::Input(
            "a CUDA kernel was given a tensor off the GPU".into(),
        ));
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(Error::Input(format!(
            "a CUDA kernel needs contiguous input, got strides {:?}",
            layout.stride()
        )));
    };
    Ok(Operand {
        storage,
        start,
        end,
        dtype: t.dtype(),
    })
}

impl Operand<'_> {
    fn view<T: CudaDType>(&self) -> Result<CudaView<'_, T>> {
        let Storage::Cuda(s) = &*self.storage else {
            unreachable!("operand() accepts CUDA storage only")
        };
        Ok(s.as_cuda_slice::<T>()?.slice(self.start..self.end))
    }

    /// Whether the data starts on a 16-byte boundary, as 16-byte vector loads need (candle's
    /// allocations do; a view narrowed from one may not).
    fn aligned16(&self) -> bool {
        (self.start * self.dtype.size_in_bytes()).is_multiple_of(16)
    }
}

/// Calls `f` with the device memory of contiguous `t`, viewed as T.
fn with_view<T: CudaDType, R>(
    t: &Tensor,
    f: impl FnOnce(CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let op = operand(t)?;
    f(op.view::<T>()?)
}

fn tensor<T: CudaDType>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<candle_core::Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}

fn unsupported(what: &str, dtype: DType) -> Error {
    Error::Input(format!(
        "{what} in {dtype:?}: the CUDA kernels take f32, bf16 or f16"
    ))
}
