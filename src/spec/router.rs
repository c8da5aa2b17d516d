//! `RouterSpec`: how a sparse layer turns router logits into each token's experts and weights.
//! Every published router is a choice of these fields (see each field for the family that
//! needs it); the host router in `ops::reference::route` is their one definition.

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    /// Softmax over the experts (or over the chosen k, with `Selection::TopKThenScore`).
    Softmax,
    /// An independent sigmoid per expert (DeepSeek-V3, GLM-4.5).
    Sigmoid,
}

/// Which values the top-k is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Score every expert, choose the k best scores, weight by those scores (Qwen, OLMoE,
    /// DeepSeek).
    ScoreThenTopK,
    /// Choose the k largest logits, then score only those (gpt-oss, Granite: a softmax over
    /// the k chosen logits).
    TopKThenScore,
}

/// Group-limited choice (DeepSeek-V3): experts form `groups` equal groups; a group's rank is the
/// sum of its two best selection scores, and only the best `keep` groups' experts may be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimit {
    pub groups: usize,
    pub keep: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterSpec {
    /// Experts per token.
    pub top_k: usize,
    pub scoring: Scoring,
    pub selection: Selection,
    /// The router projection has a bias (`router.bias`, gpt-oss).
    pub logit_bias: bool,
    /// A per-expert bias added to the scores for choosing only, never to the weights
    /// (`e_score_correction_bias`, DeepSeek-V3).
    pub correction_bias: bool,
    pub group_limit: Option<GroupLimit>,
    /// Divide the chosen weights by their sum (`norm_topk_prob`).
    pub renormalise: bool,
    /// Multiplies the final weights (`routed_scaling_factor`).
    pub scale: f64,
    /// The logits are computed in f32 whatever the compute dtype (DeepSeek-V3 and GLM cast the
    /// hidden state and the router's weight to f32): sigmoid scores of nearby experts differ
    /// by less than bf16 resolves, and the correction bias then decides between them.
    pub f32_logits: bool,
}

impl RouterSpec {
    /// Softmax over all experts, the k best, optionally renormalised: the Mixtral / Qwen /
    /// OLMoE router.
    pub fn softmax_top_k(top_k: usize, renormalise: bool) -> RouterSpec {
        RouterSpec {
            top_k,
            scoring: Scoring::Softmax,
            selection: Selection::ScoreThenTopK,
            logit_bias: false,
            correction_bias: false,
            group_limit: None,
            renormalise,
            scale: 1.0,
            f32_logits: false,
        }
    }
}
