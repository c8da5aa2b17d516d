//! `Linear`: y = x · Wᵀ (+ b), run by the model's backend (on the CPU the SIMD kernels read the
//! weights' own format in one pass; the reference is candle's matmul over dequantized weights).

use candle_core::Tensor;

use crate::error::Result;
use crate::ops::Backend;
use crate::quant::Weight;

#[derive(Debug, Clone)]
pub struct Linear {
    /// (out, in)
    weight: Weight,
    /// (out,)
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    /// A linear layer over weights in any format.
    pub fn from_weight(weight: Weight, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// (out, in)
    pub fn weight(&self) -> &Weight {
        &self.weight
    }

    /// xs: (tokens, in) -> (tokens, out), in the dtype of xs.
    pub fn forward(&self, xs: &Tensor, be: &Backend) -> Result<Tensor> {
        be.linear(xs, &self.weight, self.bias.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn the_cpu_kernels_match_candles_matmul_in_every_weight_dtype() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            for (m, n, k) in [(1, 40, 96), (3, 17, 33), (9, 64, 128)] {
                let w = Tensor::randn(0f32, 0.1, (n, k), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let b = Tensor::randn(0f32, 0.1, n, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let xs = Tensor::randn(0f32, 1.0, (m, k), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let lin = Linear::new(w, Some(b));
                let run = |be: &Backend| lin.forward(&xs, be).unwrap().to_dtype(DType::F32);
                let (fast, slow) = (
                    run(&Backend::cpu()).unwrap(),
                    run(&Backend::Reference).unwrap(),
                );
                assert_eq!(fast.dims(), &[m, n]);
                let diff = (fast - &slow).unwrap().abs().unwrap().max_all().unwrap();
                let scale = slow.abs().unwrap().max_all().unwrap();
                let (diff, scale) = (
                    diff.to_scalar::<f32>().unwrap(),
                    scale.to_scalar::<f32>().unwrap(),
                );
                // f32: summation order only. Half types: both round the result to the dtype
                // (8 bits of mantissa for bf16), and may round partial sums differently.
                let bound = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
                assert!(
                    diff <= bound * scale,
                    "{dtype:?} {m}x{n}x{k}: {diff} of {scale}"
                );
            }
        }
    }
}
