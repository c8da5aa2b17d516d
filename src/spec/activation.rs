//! `Activation`: how a gated feed-forward network combines its gate and up projections. The
//! scalar `apply` here is the one definition; every backend's FFN applies it element by element
//! (the reference backend through candle's ops, checked against it in the op tests).

/// act(g, u) for a gate value g and an up value u.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// silu(g) · u (Llama, Mixtral, Qwen, OLMoE, Granite, DeepSeek).
    SiluGated,
    /// gpt-oss: g clamped above at `limit`, u to ±`limit`, then g · sigmoid(alpha · g) · (u + 1).
    SwigluClamped { alpha: f32, limit: f32 },
    /// gelu_tanh(g) · u (Gemma's `gelu_pytorch_tanh`).
    GeluTanhGated,
}

impl Activation {
    #[inline(always)]
    pub fn apply(self, g: f32, u: f32) -> f32 {
        match self {
            Activation::SiluGated => g / (1.0 + (-g).exp()) * u,
            Activation::SwigluClamped { alpha, limit } => {
                let g = g.min(limit);
                let u = u.clamp(-limit, limit);
                g / (1.0 + (-alpha * g).exp()) * (u + 1.0)
            }
            Activation::GeluTanhGated => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                let inner = SQRT_2_OVER_PI * (g + 0.044_715 * g * g * g);
                0.5 * g * (1.0 + inner.tanh()) * u
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_activation_matches_its_textbook_formula_in_f64() {
        let silu = |g: f64| g / (1.0 + (-g).exp());
        let gelu = |g: f64| {
            0.5 * g
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g.powi(3))).tanh())
        };
        let clamped = |g: f64, u: f64| {
            let (g, u) = (g.min(7.0), u.clamp(-7.0, 7.0));
            g * (1.0 / (1.0 + (-1.702 * g).exp())) * (u + 1.0)
        };
        for g in [-9.0f32, -1.5, -0.1, 0.0, 0.3, 2.0, 8.5] {
            for u in [-8.0f32, -0.7, 0.0, 1.25, 7.5] {
                let (gd, ud) = (g as f64, u as f64);
                let cases = [
                    (Activation::SiluGated, silu(gd) * ud),
                    (Activation::GeluTanhGated, gelu(gd) * ud),
                    (
                        Activation::SwigluClamped {
                            alpha: 1.702,
                            limit: 7.0,
                        },
                        clamped(gd, ud),
                    ),
                ];
                for (act, want) in cases {
                    let got = act.apply(g, u) as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{act:?}({g}, {u}) = {got}, want {want}"
                    );
                }
            }
        }
    }
}
