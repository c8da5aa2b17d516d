//! The gated feed-forward network of dense layers and shared experts.

use candle_core::Tensor;

use super::linear::Linear;
use crate::error::Result;
use crate::ops::Backend;
use crate::spec::Activation;

#[derive(Debug, Clone)]
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Mlp {
    /// `gate, up: (intermediate, hidden)`, `down: (hidden, intermediate)`.
    pub fn new(gate: Linear, up: Linear, down: Linear, act: Activation) -> Self {
        Mlp {
            gate,
            up,
            down,
            act,
        }
    }

    /// xs: (tokens, hidden) -> (tokens, hidden)
    pub fn forward(&self, xs: &Tensor, be: &Backend) -> Result<Tensor> {
        let g = self.gate.forward(xs, be)?;
        let u = self.up.forward(xs, be)?;
        self.down.forward(&be.gated(&g, &u, self.act)?, be)
    }
}
