//! Dispatch on the host: the routing's (token, choice) slots sorted by expert, so that each
//! expert's tokens are contiguous. The CPU backend uses it as it is; it is the slow twin of the
//! CUDA alignment.

/// Routing assignments sorted by expert (a counting sort, so tokens stay in order within an
/// expert). A slot is one (token, choice) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDispatch {
    /// Slots of expert e are `offsets[e]..offsets[e + 1]`; length E + 1.
    pub offsets: Vec<usize>,
    /// Token of each slot.
    pub slot_token: Vec<u32>,
    /// Routing weight of each slot.
    pub slot_weight: Vec<f32>,
    /// Slot of assignment `t * top_k + j`.
    pub token_slot: Vec<u32>,
    pub top_k: usize,
}

impl HostDispatch {
    /// `experts` and `weights` are row-major (tokens, top_k); every id is below `num_experts`.
    pub fn new(experts: &[u32], weights: &[f32], num_experts: usize, top_k: usize) -> Self {
        let mut offsets = vec![0usize; num_experts + 1];
        for &e in experts {
            offsets[e as usize + 1] += 1;
        }
        for e in 0..num_experts {
            offsets[e + 1] += offsets[e];
        }
        let mut next = offsets.clone();
        let slots = experts.len();
        let mut slot_token = vec![0u32; slots];
        let mut slot_weight = vec![0f32; slots];
        let mut token_slot = vec![0u32; slots];
        for (a, (&e, &w)) in experts.iter().zip(weights).enumerate() {
            let s = next[e as usize];
            next[e as usize] += 1;
            slot_token[s] = (a / top_k.max(1)) as u32;
            slot_weight[s] = w;
            token_slot[a] = s as u32;
        }
        HostDispatch {
            offsets,
            slot_token,
            slot_weight,
            token_slot,
            top_k,
        }
    }

    pub fn tokens(&self) -> usize {
        self.token_slot.len() / self.top_k.max(1)
    }

    pub fn num_experts(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn count(&self, e: usize) -> usize {
        self.offsets[e + 1] - self.offsets[e]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sort_by_expert_and_keep_token_order() {
        // 3 tokens, top-2, 4 experts; expert 3 gets nothing.
        let experts = [2, 0, 0, 1, 2, 0];
        let weights = [0.6, 0.4, 0.7, 0.3, 0.9, 0.1];
        let g = HostDispatch::new(&experts, &weights, 4, 2);
        assert_eq!(g.offsets, vec![0, 3, 4, 6, 6]);
        assert_eq!(g.slot_token, vec![0, 1, 2, 1, 0, 2]);
        assert_eq!(g.slot_weight, vec![0.4, 0.7, 0.1, 0.3, 0.6, 0.9]);
        for (a, &s) in g.token_slot.iter().enumerate() {
            assert_eq!(g.slot_weight[s as usize], weights[a]);
        }
        assert_eq!((g.tokens(), g.num_experts(), g.count(3)), (3, 4, 0));
    }
}
