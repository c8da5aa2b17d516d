//! `Norm`: RMSNorm over the last dimension, its weight in the compute dtype, or kept in f32 for
//! checkpoints that store it as an offset from one (Qwen3-Next, Qwen3.5): HF computes
//! `x̂ · (1 + w)` in f32 and rounds once, where rounding 1 + w to bf16 would put a fixed error
//! of up to 2^-8 on every channel.

use candle_core::{DType, Module, Tensor};
use candle_nn::RmsNorm;

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Norm {
    inner: RmsNorm,
    /// The weight is f32 whatever the compute dtype: inputs go to f32 and back.
    f32_weight: bool,
}

impl Norm {
    /// A norm whose weight is in the compute dtype.
    pub fn new(weight: Tensor, eps: f64) -> Norm {
        Norm {
            inner: RmsNorm::new(weight, eps),
            f32_weight: false,
        }
    }

    /// A norm whose f32 weight is applied in f32 to inputs of any dtype.
    pub fn in_f32(weight: Tensor, eps: f64) -> Norm {
        Norm {
            inner: RmsNorm::new(weight, eps),
            f32_weight: true,
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.f32_weight && xs.dtype() != DType::F32 {
            let ys = self.inner.forward(&xs.to_dtype(DType::F32)?)?;
            return Ok(ys.to_dtype(xs.dtype())?);
        }
        Ok(self.inner.forward(xs)?)
    }
}
