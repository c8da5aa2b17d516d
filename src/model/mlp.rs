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
    pub fn new(gate: Tensor, up: Tensor, down: Tensor) -> Self {
        Mlp {
            gate: Linear::new(gate, None),
            up: Linear::new(up, None),
            down: Linear::new(down, None),
        }
    }

    /// xs: (tokens, hidden) -> (tokens, hidden)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gated = (self.gate.forward(xs)?.silu()? * self.up.forward(xs)?)?;
        self.down.forward(&gated)
    }
}
