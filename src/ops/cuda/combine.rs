//! The weighted combine back to token order (kernels/moe_combine.cu).

use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{DType, Tensor};
use half::{bf16, f16};

use super::{cuda_device, output, ptx, tensor, unsupported, with_view, THREADS};
use crate::error::{Error, Result};

/// out[t] = Σ_j weights[t, j] · y[slot_position[t k + j]], accumulated in f32; a position of
/// `rows` or more (a slot the alignment dropped) adds nothing.
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
    let dims = Dims {
        rows: i32_of(rows, "rows")?,
        tokens: i32_of(tokens, "tokens")?,
        k: i32_of(k, "k")?,
        hidden: i32_of(hidden, "hidden")?,
    };
    let args = (y, weights, slot_position, &dev, &dims);
    match y.dtype() {
        DType::F32 => run::<f32>("moe_combine_f32", args),
        DType::BF16 => run::<bf16>("moe_combine_bf16", args),
        DType::F16 => run::<f16>("moe_combine_f16", args),
        other => Err(unsupported("expert outputs", other)),
    }
}

/// The kernel's scalar arguments, in its order.
struct Dims {
    rows: i32,
    tokens: i32,
    k: i32,
    hidden: i32,
}

fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Input(format!("combine: {n} {what} overflow the kernel")))
}

fn run<T: CudaDType + DeviceRepr>(
    name: &str,
    (y, weights, positions, dev, d): (&Tensor, &Tensor, &Tensor, &CudaDevice, &Dims),
) -> Result<Tensor> {
    let (tokens, hidden) = (d.tokens as usize, d.hidden as usize);
    let out = output::<T>(dev, tokens * hidden)?;
    if tokens > 0 && hidden > 0 {
        // Blocks step over tokens past the grid's y limit.
        let cfg = LaunchConfig {
            grid_dim: (
                (hidden as u32).div_ceil(THREADS),
                tokens.min(65535) as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        with_view::<T, _>(y, |y| {
            with_view::<f32, _>(weights, |w| {
                with_view::<u32, _>(positions, |p| {
                    let func = dev.get_or_load_custom_func(name, "moe_combine", ptx::COMBINE)?;
                    let mut b = func.builder();
                    b.arg(&y)
                        .arg(&w)
                        .arg(&p)
                        .arg(&out)
                        .arg(&d.rows)
                        .arg(&d.tokens)
                        .arg(&d.k)
                        .arg(&d.hidden);
                    // SAFETY: positions below `rows` index rows of y, others are skipped; the
                    // output is tokens x hidden as allocated, every element written.
                    unsafe { b.launch(cfg) }.w()?;
                    Ok(())
                })
            })
        })?;
    }
    Ok(tensor(out, dev, (tokens, hidden)))
}
