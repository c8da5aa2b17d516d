//! The weighted combine back to token order (kernels/moe_combine.cu).

use candle_core::cuda_backend::cudarc::driver::{
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{DType, Tensor};
use half::{bf16, f16};

use super::{cuda_device, ptx, tensor, unsupported, with_view, zeros, THREADS};
use crate::error::{Error, Result};

/// out[t] = Σ_j weights[t, j] · y[slot_position[t k + j]], accumulated in f32.
/// y: (rows, hidden) of f32/bf16/f16 in aligned order; weights: (tokens, k) f32;
/// slot_position: (tokens k) u32 -> (tokens, hidden) of y's dtype.
pub fn combine(y: &Tensor, weights: &Tensor, slot_position: &Tensor) -> Result<Tensor> {
    let (rows, hidden) = y.dims2()?;
    let (tokens, k) = weights.dims2()?;
    if weights.dtype() != DType::F32
        || slot_position.dtype() != DType::U32
        || slot_position.dims() != [tokens * k]
        || (tokens * k > 0 && rows == 0)
    {
        return Err(Error::Input(format!(
            "combine: weights {:?} {:?} and positions {:?} {:?} do not fit rows of {:?}",
            weights.dtype(),
            weights.dims(),
            slot_position.dtype(),
            slot_position.dims(),
            y.dims()
        )));
    }
    let dev = cuda_device(y)?;
    let (n_tokens, n_k, n_hidden) = (tokens as i32, k as i32, hidden as i32);
    let cfg = LaunchConfig {
        grid_dim: ((hidden as u32).div_ceil(THREADS), tokens as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    fn run<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        name: &str,
        y: &Tensor,
        weights: &Tensor,
        positions: &Tensor,
        dev: &CudaDevice,
        cfg: LaunchConfig,
        dims: (i32, i32, i32),
    ) -> Result<Tensor> {
        let (tokens, k, hidden) = dims;
        let out = zeros::<T>(dev, (tokens * hidden) as usize)?;
        if tokens > 0 && hidden > 0 {
            with_view::<T, _>(y, |y| {
                with_view::<f32, _>(weights, |w| {
                    with_view::<u32, _>(positions, |p| {
                        let func =
                            dev.get_or_load_custom_func(name, "moe_combine", ptx::COMBINE)?;
                        let mut b = func.builder();
                        b.arg(&y)
                            .arg(&w)
                            .arg(&p)
                            .arg(&out)
                            .arg(&tokens)
                            .arg(&k)
                            .arg(&hidden);
                        // SAFETY: positions index rows of y (the alignment made both); the
                        // output is tokens x hidden as allocated.
                        unsafe { b.launch(cfg) }.w()?;
                        Ok(())
                    })
                })
            })?;
        }
        Ok(tensor(out, dev, (tokens as usize, hidden as usize)))
    }
    let dims = (n_tokens, n_k, n_hidden);
    match y.dtype() {
        DType::F32 => run::<f32>(
            "moe_combine_f32",
            y,
            weights,
            slot_position,
            &dev,
            cfg,
            dims,
        ),
        DType::BF16 => run::<bf16>(
            "moe_combine_bf16",
            y,
            weights,
            slot_position,
            &dev,
            cfg,
            dims,
        ),
        DType::F16 => run::<f16>(
            "moe_combine_f16",
            y,
            weights,
            slot_position,
            &dev,
            cfg,
            dims,
        ),
        other => Err(unsupported("expert outputs", other)),
    }
}
