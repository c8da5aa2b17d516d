//! `Linear`: y = x · Wᵀ (+ b). On the CPU it runs the SIMD kernels of `ops::cpu` (one pass over
//! the weights at decode, the weights' own format read directly); elsewhere candle's matmul,
//! which is also the slow twin the kernels are tested against (on dequantized weights).

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::ops::cpu::{linear, Isa, PreparedLhs};
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
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !self.weight.cpu_kernels_read() {
            return self.forward_slow(xs);
        }
        self.add_bias(self.forward_cpu(xs)?)
    }

    /// The slow twin: candle's matmul, as candle_nn::Linear computes it, over the weights
    /// dequantized to the dtype of xs.
    pub fn forward_slow(&self, xs: &Tensor) -> Result<Tensor> {
        let w = self.weight.dense(xs.dtype())?.to_device(xs.device())?;
        self.add_bias(xs.matmul(&w.t()?)?)
    }

    fn add_bias(&self, ys: Tensor) -> Result<Tensor> {
        match &self.bias {
            None => Ok(ys),
            Some(b) => Ok(ys.broadcast_add(b)?),
        }
    }

    fn forward_cpu(&self, xs: &Tensor) -> Result<Tensor> {
        let (m, k) = xs.dims2()?;
        let (n, k_w) = (self.weight.dims()[0], self.weight.dims()[1]);
        if k != k_w {
            return Err(Error::Input(format!(
                "linear layer of {k_w} inputs given rows of {k}"
            )));
        }
        let x = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let isa = Isa::selected();
        let mut out = vec![0f32; m * n];
        self.weight.with_slice(|w| {
            let prepared = PreparedLhs::new(isa, &w, &x, k);
            linear(isa, prepared.rows(&x, 0, m, k), &w, (m, n, k), &mut out);
            Ok(())
        })?;
        Ok(Tensor::from_vec(out, (m, n), xs.device())?.to_dtype(xs.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

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
                let fast = lin.forward(&xs).unwrap().to_dtype(DType::F32).unwrap();
                let slow = lin.forward_slow(&xs).unwrap().to_dtype(DType::F32).unwrap();
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
