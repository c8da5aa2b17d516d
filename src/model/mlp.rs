//! The SiLU-gated feed-forward network of dense layers and shared experts.

use candle_core::Tensor;

use super::linear::Linear;

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// `gate, up: (intermediate, hidden)`, `down: (hidden, intermediate)`.
    pub fn new(gate: Linear, up: Linear, down: Linear) -> Self {
        Mlp { gate, up, down }
    }

    /// xs: (tokens, hidden) -> (tokens, hidden)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gated = (self.gate.forward(xs)?.silu()? * self.up.forward(xs)?)?;
        self.down.forward(&gated)
    }
}
