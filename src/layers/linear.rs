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
