//! Arithmetic of one decode step: what a token costs in floating-point operations, beside the
//! bytes it reads (`ModelConfig::decode_reads`), so that models of different shapes can be
//! weighed against each other on the same scale.

use super::{AttentionKind, ModelConfig};

impl ModelConfig {
    /// Floating-point operations (a multiply and an add are two) of one decode step of one
    /// sequence whose cache holds `context` positions: every weight of the matrix products a
    /// token uses once (attention projections, the active and shared experts or the dense MLP,
    /// the router, the head), and the mixing over the cache: scores and weighted values over
    /// each attention layer's positions (its window where it slides), the delta rule's update
    /// of its recurrent state in a linear-attention layer. Norms, activations and softmaxes
    /// are left out: a few operations per number, next to a dot product per weight.
    pub fn decode_flops(&self, context: usize) -> f64 {
        let reads = self.decode_reads();
        let routers: u128 = if self.has_experts() {
            let sparse = self.layers.iter().filter(|l| l.ffn.routes());
            sparse.count() as u128 * (self.hidden_size * self.moe.num_experts) as u128
        } else {
            0
        };
        let weights = 2.0 * (reads.matrices + reads.head + routers) as f64;
        let a = &self.attention;
        let mixing: f64 = self
            .layers
            .iter()
            .map(
                |l| match (l.attention, &self.latent_attention, &self.linear_attention) {
                    (AttentionKind::Full, ..) => {
                        let g = self.attention_of(AttentionKind::Full).0;
                        4.0 * (g.num_heads * g.head_dim) as f64 * context as f64
                    }
                    (AttentionKind::Sliding { window }, ..) => {
                        4.0 * (a.num_heads * a.head_dim) as f64 * context.min(window) as f64
                    }
                    // Absorbed: each head scores the cached latent and shared rotary key, then
                    // weighs the latents (its values are the latent's first columns).
                    (AttentionKind::Latent, Some(m), _) => {
                        let per_position = (2 * m.kv_lora_rank + m.rope_dim) as f64;
                        2.0 * a.num_heads as f64 * per_position * context as f64
                    }
                    // Decay, read k·S, write the outer product, read q·S: about four
                    // operations per state number.
                    (AttentionKind::Linear, _, Some(l)) => {
                        8.0 * (l.value_heads * l.key_head_dim * l.value_head_dim) as f64
                    }
                    _ => 0.0,
                },
            )
            .sum();
        weights + mixing
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::tests::tiny;
    use crate::spec::{AttentionKind, FfnKind};

    #[test]
    fn a_dense_twin_of_the_active_width_costs_the_moe_less_its_routers() {
        let moe = tiny();
        let mut dense = tiny();
        for layer in &mut dense.layers {
            layer.ffn = FfnKind::Dense;
        }
        let k = moe.moe.router.top_k;
        dense.dense_intermediate_size = k * moe.moe.expert_intermediate_size;
        let routers = 2 * moe.layers.len() * moe.hidden_size * moe.moe.num_experts;
        for context in [0, 1, 37] {
            assert_eq!(
                dense.decode_flops(context) + routers as f64,
                moe.decode_flops(context)
            );
        }
        // Attention over the cache grows by 2 x 2 x heads x head_dim per position and layer.
        let a = &moe.attention;
        let per_position = 4 * a.num_heads * a.head_dim * moe.layers.len();
        assert_eq!(
            moe.decode_flops(11) - moe.decode_flops(1),
            (10 * per_position) as f64
        );
    }

    #[test]
    fn a_sliding_layer_attends_to_its_window_at_most() {
        let full = tiny();
        let mut sliding = tiny();
        for layer in &mut sliding.layers {
            layer.attention = AttentionKind::Sliding { window: 4 };
        }
        assert_eq!(sliding.decode_flops(3), full.decode_flops(3));
        assert_eq!(sliding.decode_flops(100), full.decode_flops(4));
    }
}
