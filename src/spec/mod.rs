//! `ModelConfig`: the architecture-free blueprint every family translates into, and its checks.
//!
//! A difference between families is a named field here, never a branch on the family name:
//! the layers and ops read only these types. The router and the activation have files of their
//! own.

mod activation;
mod cost;
mod latent;
mod router;

use std::path::Path;

pub use activation::Activation;
pub use latent::LatentAttentionConfig;
pub use router::{GroupLimit, RouterSpec, Scoring, Selection};

use crate::error::{Error, Result};

/// Everything the forward pass needs to know about a model's shape and arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The `model_type` it was read from, for display only.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub attention: AttentionConfig,
    pub rope: RopeConfig,
    pub moe: MoeConfig,
    /// Feed-forward width of the dense layers (those with `FfnKind::Dense`).
    pub dense_intermediate_size: usize,
    /// How every gated feed-forward network (dense MLPs, shared and routed experts) combines
    /// its gate and up projections.
    pub activation: Activation,
    /// One entry per decoder layer, in order.
    pub layers: Vec<LayerSpec>,
    /// The linear-attention layers' shape, present when some layer is `AttentionKind::Linear`
    /// (and always for the families that have such layers).
    pub linear_attention: Option<LinearAttentionConfig>,
    /// Multi-head latent attention's shape, present exactly when the layers are
    /// `AttentionKind::Latent` (DeepSeek-V3, GLM-4.7-Flash).
    pub latent_attention: Option<LatentAttentionConfig>,
    /// Added to every RMSNorm weight of the residual stream and of q/k (not the gated norm
    /// of linear attention): 1 where checkpoints store the weights as an offset from one
    /// (Qwen3-Next, Qwen3.5: `x̂ · (1 + w)`), else 0.
    pub norm_weight_offset: f64,
    /// The full-attention layers' own attention shape and RoPE, where they differ from the
    /// other layers' (`attention`, `rope`): Gemma 4's global layers, with wider heads, fewer
    /// key/value heads, keys that double as values and proportional RoPE.
    pub global_attention: Option<GlobalAttention>,
    /// Each branch's output (attention, feed-forward) is RMS-normed before it joins the
    /// residual stream, beside the usual pre-norms (Gemma's `post_attention_layernorm` and
    /// `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// Each layer's output, the residual stream included, is multiplied by a stored scalar
    /// of that layer (Gemma 4's `layer_scalar`).
    pub layer_scalar: bool,
    /// Token ids the embedding reads as another's row: a multimodal model's media
    /// placeholders, embedded as the pad token (Gemma 4's image, audio and video tokens).
    pub embedded_as: Option<EmbeddedAs>,
    pub scales: Scales,
    /// The head reuses the embedding table (also assumed when `lm_head.weight` is absent).
    pub tie_word_embeddings: bool,
}

/// One decoder layer's plan: which attention, which feed-forward network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    pub attention: AttentionKind,
    pub ffn: FfnKind,
}

impl LayerSpec {
    pub const SPARSE: LayerSpec = LayerSpec {
        attention: AttentionKind::Full,
        ffn: FfnKind::Sparse,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// Causal attention over every earlier position.
    Full,
    /// Causal attention over the last `window` positions, the query's own included (HF's
    /// `sliding_attention`: key j is seen from query i when i - window < j <= i).
    Sliding { window: usize },
    /// Gated DeltaNet linear attention (`ModelConfig::linear_attention` gives its shape): a
    /// recurrent state per sequence instead of keys and values.
    Linear,
    /// Multi-head latent attention over every earlier position (`ModelConfig::latent_attention`
    /// gives its shape): one compressed latent and one shared rotary key cached per position,
    /// expanded to per-head keys and values by `kv_b_proj`.
    Latent,
}

/// The shape of Gated DeltaNet layers (Qwen3-Next, Qwen3.5): a causal depthwise convolution
/// over the q, k and v projections, then the gated delta rule with `value_heads` heads, each
/// reading key head h / (value_heads / key_heads).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearAttentionConfig {
    pub key_heads: usize,
    pub value_heads: usize,
    pub key_head_dim: usize,
    pub value_head_dim: usize,
    /// The convolution's width in tokens (the current one and kernel - 1 before it).
    pub conv_kernel: usize,
}

impl LinearAttentionConfig {
    /// Channels of the convolution: q, k and v side by side.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_heads * self.key_head_dim + self.value_heads * self.value_head_dim
    }

    /// Rows of the joined input projection: q, k, v, then z (the output gate), b (the write
    /// strength) and a (the decay), one value each per value head for the last two.
    pub fn projection_rows(&self) -> usize {
        self.conv_dim() + self.value_heads * self.value_head_dim + 2 * self.value_heads
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// A plain gated MLP.
    Dense,
    /// A sparse Mixture-of-Experts block.
    Sparse,
    /// A dense gated MLP and a sparse block side by side on the same residual stream, their
    /// outputs summed (Gemma 4's MoE layers): the MLP reads the pre-FFN norm's output, the
    /// router the residual stream itself, the experts a second pre-norm's; each branch's output
    /// has a norm of its own before the sum.
    DenseAndSparse,
}

impl FfnKind {
    /// The layer routes tokens to experts.
    pub fn routes(self) -> bool {
        matches!(self, FfnKind::Sparse | FfnKind::DenseAndSparse)
    }

    /// The layer runs a dense MLP (of `dense_intermediate_size`).
    pub fn has_mlp(self) -> bool {
        matches!(self, FfnKind::Dense | FfnKind::DenseAndSparse)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttentionConfig {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// A bias on the output projection.
    pub o_bias: bool,
    pub qk_norm: QkNorm,
    /// Clamp q, k and v to [-c, c] after projection (and q/k norm).
    pub clip_qkv: Option<f64>,
    /// Multiplies q·k before the softmax: 1/sqrt(head_dim) unless the family says otherwise.
    pub scale: f64,
    /// A learned sink logit per head joins every softmax (gpt-oss).
    pub sinks: bool,
    /// The q projection also yields a gate per query value: each head's rows are its
    /// head_dim query rows, then head_dim gate rows, and the attention output is multiplied
    /// by sigmoid(gate) before the output projection (Qwen3-Next's full-attention layers).
    pub output_gate: bool,
    /// No v projection: the values are the keys as projected, before the keys' norm and RoPE
    /// (Gemma 4's global layers, `attention_k_eq_v`).
    pub k_eq_v: bool,
    /// The values go through an RMSNorm without weights over each head (Gemma 4).
    pub v_norm: bool,
}

impl AttentionConfig {
    /// The attention of most families: no biases, norms, clipping, sinks or gates; scaled by
    /// 1/sqrt(head_dim).
    pub fn plain(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> AttentionConfig {
        AttentionConfig {
            num_heads,
            num_kv_heads,
            head_dim,
            qkv_bias: false,
            o_bias: false,
            qk_norm: QkNorm::None,
            clip_qkv: None,
            scale: 1.0 / (head_dim as f64).sqrt(),
            sinks: false,
            output_gate: false,
            k_eq_v: false,
            v_norm: false,
        }
    }
}

/// Placeholder ids and the id whose embedding row they take.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedAs {
    pub ids: Vec<u32>,
    pub row: u32,
}

/// The full-attention layers' attention and RoPE, where they differ from the other layers'.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalAttention {
    pub attention: AttentionConfig,
    pub rope: RopeConfig,
}

/// Where RMSNorm is applied to queries and keys, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Over each head's `head_dim` values, one weight vector shared by all heads (Qwen3).
    PerHead,
    /// Over the whole q (or k) projection output (OLMoE).
    Projection,
}

/// Rotary position embedding: the original ("default") RoPE, or YaRN's scaled form; configs
/// asking for another variant are refused at parse time.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub yarn: Option<Yarn>,
    /// The share of each head's dimensions that rotates (the first ones); the rest pass
    /// through (`partial_rotary_factor`, 1 for most families).
    pub partial_rotary_factor: f64,
    /// HF's `proportional` RoPE (Gemma 4's global layers): the whole head rotates, each
    /// dimension i paired with i + head_dim / 2, at the frequencies θ^(-2i / head_dim) of the
    /// whole head for the first `partial_rotary_factor` share of the pairs and at zero (no
    /// rotation) for the rest, instead of rotating the first dimensions as a head of their own.
    pub proportional: bool,
}

impl RopeConfig {
    /// The original RoPE over whole heads.
    pub fn plain(theta: f64) -> RopeConfig {
        RopeConfig {
            theta,
            yarn: None,
            partial_rotary_factor: 1.0,
            proportional: false,
        }
    }

    /// The dimensions of a head of `head_dim` that the rotation covers (HF: `int(head_dim *
    /// factor)`; all of them for proportional RoPE, whose unrotated pairs turn at frequency 0).
    pub fn rotary_dim(&self, head_dim: usize) -> usize {
        match self.proportional {
            true => head_dim,
            false => (head_dim as f64 * self.partial_rotary_factor) as usize,
        }
    }

    /// The pairs of a head that turn at a nonzero frequency: (HF's `rope_angles`,
    /// `int(factor * head_dim // 2)`) for proportional RoPE, half the rotary dimensions
    /// otherwise.
    pub fn turning_pairs(&self, head_dim: usize) -> usize {
        match self.proportional {
            true => (self.partial_rotary_factor * head_dim as f64 / 2.0).floor() as usize,
            false => self.rotary_dim(head_dim) / 2,
        }
    }
}

/// YaRN (HF's `rope_type: yarn`): frequencies blended between the original ones and ones
/// slowed by `factor`, by a ramp over the dimensions between the correction range of
/// `beta_fast` and `beta_slow` rotations in `original_max_position_embeddings` positions;
/// cos and sin multiplied by `attention_factor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Round the correction range out to whole dimensions.
    pub truncate: bool,
    pub attention_factor: f64,
    /// DeepSeek's `mscale_all_dim`, where the config gives it: besides its share of
    /// `attention_factor`, latent attention's softmax scale is multiplied by the square of
    /// `0.1 · mscale_all_dim · ln(factor) + 1`.
    pub mscale_all_dim: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Feed-forward width of one routed expert.
    pub expert_intermediate_size: usize,
    pub router: RouterSpec,
    /// Biases on the experts' gate/up ([E, 2I]) and down ([E, H]) projections (gpt-oss).
    pub expert_bias: bool,
    pub shared_expert: Option<SharedExpertConfig>,
    /// The router reads the residual stream entering the FFN RMS-normed without weights, times
    /// a learned per-channel `scale` and hidden^-0.5 (Gemma 4's `router.scale`), instead of the
    /// FFN's pre-normed input.
    pub router_input_scale: bool,
    /// The chosen experts' weights are multiplied by a learned scale per expert, after any
    /// renormalisation (Gemma 4's `router.per_expert_scale`).
    pub per_expert_scale: bool,
}

/// An always-on expert added to the routed ones (Qwen2-MoE).
#[derive(Debug, Clone, PartialEq)]
pub struct SharedExpertConfig {
    pub intermediate_size: usize,
    /// Its output is multiplied by sigmoid(x · w) of a learned one-row gate.
    pub gated: bool,
}

/// Constant multipliers some families put on the residual stream (Granite).
#[derive(Debug, Clone, PartialEq)]
pub struct Scales {
    /// Multiplies the token embeddings.
    pub embedding: f64,
    /// `embedding` is first rounded to the compute dtype (Gemma: a buffer cast to the
    /// embedding table's dtype; sqrt(2816) = 53.07 becomes 53.0 in bf16).
    pub embedding_in_dtype: bool,
    /// Multiplies each block's output before it is added to the residual.
    pub residual: f64,
    /// Divides the final logits.
    pub logits_divisor: f64,
    /// Soft-caps the final logits at ±c: tanh(x / c) · c (Gemma's `final_logit_softcapping`).
    pub logit_softcap: Option<f64>,
}

impl Default for Scales {
    fn default() -> Self {
        Scales {
            embedding: 1.0,
            embedding_in_dtype: false,
            residual: 1.0,
            logits_divisor: 1.0,
            logit_softcap: None,
        }
    }
}

/// Upper bounds that no real checkpoint reaches; anything above is refused before a single
/// byte is allocated for it.
const MAX_VOCAB: usize = 1 << 24;
const MAX_HIDDEN: usize = 1 << 16;
const MAX_INTERMEDIATE: usize = 1 << 18;
pub(crate) const MAX_LAYERS: usize = 1 << 10;
const MAX_HEADS: usize = 1 << 10;
const MAX_HEAD_DIM: usize = 1 << 10;
const MAX_EXPERTS: usize = 1 << 12;
const MAX_CONV_KERNEL: usize = 64;
/// Qwen3-Next-80B's state is about 72 MiB per sequence; 4 GiB is far past any published model.
const MAX_STATE_BYTES: u128 = 1 << 32;
const MAX_POSITIONS: usize = 1 << 24;
/// 2^42 parameters (16 TiB in f32) is far past any published MoE.
const MAX_PARAMETERS: u128 = 1 << 42;

/// The config fields an attention shape is read from, for errors.
struct AttentionFields {
    kv_heads: &'static str,
    head_dim: &'static str,
    rope_theta: &'static str,
    partial_rotary_factor: &'static str,
}

const ATTENTION_FIELDS: AttentionFields = AttentionFields {
    kv_heads: "num_key_value_heads",
    head_dim: "head_dim",
    rope_theta: "rope_theta",
    partial_rotary_factor: "partial_rotary_factor",
};

/// Gemma 4's sliding layers, whose RoPE is keyed by layer type.
const SLIDING_ATTENTION_FIELDS: AttentionFields = AttentionFields {
    rope_theta: "rope_parameters.sliding_attention.rope_theta",
    partial_rotary_factor: "rope_parameters.sliding_attention.partial_rotary_factor",
    ..ATTENTION_FIELDS
};

/// Gemma 4's full-attention layers.
const GLOBAL_ATTENTION_FIELDS: AttentionFields = AttentionFields {
    kv_heads: "num_global_key_value_heads",
    head_dim: "global_head_dim",
    rope_theta: "rope_parameters.full_attention.rope_theta",
    partial_rotary_factor: "rope_parameters.full_attention.partial_rotary_factor",
};

/// One attention shape and its RoPE: head counts and width, their grouping, the rotating share
/// and the scales. `heads`: whether the head width is this shape's own (latent attention's is
/// checked with its shape).
fn validate_attention(
    path: &Path,
    names: &AttentionFields,
    a: &AttentionConfig,
    rope: &RopeConfig,
    heads: bool,
) -> Result<()> {
    let err = |field: &str, msg: String| Err(Error::config(path, field, msg));
    let range = |field: &str, v: usize, max: usize| match v == 0 || v > max {
        true => err(field, format!("{v} is out of range 1..={max}")),
        false => Ok(()),
    };
    let positive = |field: &str, v: f64| match v.is_finite() && v > 0.0 {
        true => Ok(()),
        false => err(field, format!("{v} must be finite and > 0")),
    };
    range("num_attention_heads", a.num_heads, MAX_HEADS)?;
    range(names.kv_heads, a.num_kv_heads, MAX_HEADS)?;
    if !a.num_heads.is_multiple_of(a.num_kv_heads) {
        return err(
            names.kv_heads,
            format!(
                "{} does not divide num_attention_heads = {}",
                a.num_kv_heads, a.num_heads
            ),
        );
    }
    positive(names.rope_theta, rope.theta)?;
    positive("attention scale", a.scale)?;
    if let Some(c) = a.clip_qkv {
        positive("clip_qkv", c)?;
    }
    if !heads {
        return Ok(());
    }
    range(names.head_dim, a.head_dim, MAX_HEAD_DIM)?;
    if !a.head_dim.is_multiple_of(2) {
        return err(
            names.head_dim,
            format!(
                "{} is odd; rotary embeddings need an even head_dim",
                a.head_dim
            ),
        );
    }
    let p = rope.partial_rotary_factor;
    let rotary = rope.rotary_dim(a.head_dim);
    let field = names.partial_rotary_factor;
    // (A whole head rotates unless the config says otherwise: head_dim was checked above.)
    if rope.proportional && !(p > 0.0 && p <= 1.0 && rope.turning_pairs(a.head_dim) >= 1) {
        return err(
            field,
            format!(
                "{p} of head_dim {} turns no pair of dimensions; it must be in (0, 1] and turn \
                 at least one",
                a.head_dim
            ),
        );
    }
    if !rope.proportional
        && p != 1.0
        && (!(p > 0.0 && p < 1.0) || rotary < 2 || !rotary.is_multiple_of(2))
    {
        return err(
            field,
            format!(
                "{p} of head_dim {} rotates {rotary} dimensions; it must be in (0, 1] and \
                 rotate an even number of them, at least 2",
                a.head_dim
            ),
        );
    }
    Ok(())
}

impl ModelConfig {
    /// Checks ranges and internal consistency; `path` names the config file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let range = |field: &str, v: usize, max: usize| -> Result<()> {
            if v == 0 || v > max {
                return Err(Error::config(
                    path,
                    field,
                    format!("{v} is out of range 1..={max}"),
                ));
            }
            Ok(())
        };
        let positive = |field: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    path,
                    field,
                    format!("{v} must be finite and > 0"),
                ));
            }
            Ok(())
        };
        range("vocab_size", self.vocab_size, MAX_VOCAB)?;
        range("hidden_size", self.hidden_size, MAX_HIDDEN)?;
        range("num_hidden_layers", self.layers.len(), MAX_LAYERS)?;
        range(
            "max_position_embeddings",
            self.max_position_embeddings,
            MAX_POSITIONS,
        )?;
        // A dense model (no layer routes) has no experts to check.
        if self.has_experts() {
            range("num_experts", self.moe.num_experts, MAX_EXPERTS)?;
            self.validate_router(path)?;
            range(
                "moe_intermediate_size",
                self.moe.expert_intermediate_size,
                MAX_INTERMEDIATE,
            )?;
        }
        for layer in &self.layers {
            if let AttentionKind::Sliding { window } = layer.attention {
                range("sliding_window", window, MAX_POSITIONS)?;
            }
        }
        if let Activation::SwigluClamped { alpha, limit } = self.activation {
            positive("swiglu alpha", alpha as f64)?;
            positive("swiglu_limit", limit as f64)?;
        }
        if self.layers.iter().any(|l| l.ffn.has_mlp()) {
            range(
                "intermediate_size",
                self.dense_intermediate_size,
                MAX_INTERMEDIATE,
            )?;
        }
        if let Some(shared) = &self.moe.shared_expert {
            range(
                "shared_expert_intermediate_size",
                shared.intermediate_size,
                MAX_INTERMEDIATE,
            )?;
        }
        // (Latent attention's head width is the sum of two fields, each checked with its
        // shape, and it rotates only its shared rotary part.)
        let heads = self.latent_attention.is_none();
        let fields = match self.global_attention {
            Some(_) => &SLIDING_ATTENTION_FIELDS,
            None => &ATTENTION_FIELDS,
        };
        validate_attention(path, fields, &self.attention, &self.rope, heads)?;
        if let Some(EmbeddedAs { row, .. }) = self.embedded_as {
            if row as usize >= self.vocab_size {
                return Err(Error::config(
                    path,
                    "pad_token_id",
                    format!("{row} is past the vocabulary ({})", self.vocab_size),
                ));
            }
        }
        if let Some(g) = &self.global_attention {
            validate_attention(path, &GLOBAL_ATTENTION_FIELDS, &g.attention, &g.rope, true)?;
        }
        self.validate_linear_attention(path)?;
        self.validate_latent_attention(path)?;
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("embedding_multiplier", self.scales.embedding)?;
        positive("residual_multiplier", self.scales.residual)?;
        positive("logits_scaling", self.scales.logits_divisor)?;
        if let Some(c) = self.scales.logit_softcap {
            positive("final_logit_softcapping", c)?;
        }
        let (total, _) = self.parameter_counts();
        if total > MAX_PARAMETERS {
            return Err(Error::config(
                path,
                "(model size)",
                format!("{total} parameters is beyond any supported model"),
            ));
        }
        Ok(())
    }

    /// The linear-attention shape, where some layer has linear attention.
    fn validate_linear_attention(&self, path: &Path) -> Result<()> {
        let linear_layers = self
            .layers
            .iter()
            .any(|l| l.attention == AttentionKind::Linear);
        let Some(l) = &self.linear_attention else {
            return match linear_layers {
                true => Err(Error::config(
                    path,
                    "layer_types",
                    "has linear_attention layers, but the config gives no linear attention shape",
                )),
                false => Ok(()),
            };
        };
        for (field, v, max) in [
            ("linear_num_key_heads", l.key_heads, MAX_HEADS),
            ("linear_num_value_heads", l.value_heads, MAX_HEADS),
            ("linear_key_head_dim", l.key_head_dim, MAX_HEAD_DIM),
            ("linear_value_head_dim", l.value_head_dim, MAX_HEAD_DIM),
            ("linear_conv_kernel_dim", l.conv_kernel, MAX_CONV_KERNEL),
        ] {
            // A kernel of one token would keep no state; published models use 4.
            let min = if field == "linear_conv_kernel_dim" {
                2
            } else {
                1
            };
            if v < min || v > max {
                return Err(Error::config(
                    path,
                    field,
                    format!("{v} is out of range {min}..={max}"),
                ));
            }
        }
        let state = self.recurrent_state_bytes();
        if state > MAX_STATE_BYTES {
            return Err(Error::config(
                path,
                "linear_num_value_heads",
                format!(
                    "with linear_key_head_dim and linear_value_head_dim, a recurrent state of \
                     {state} bytes per sequence is beyond any supported model"
                ),
            ));
        }
        if !l.value_heads.is_multiple_of(l.key_heads) {
            return Err(Error::config(
                path,
                "linear_num_value_heads",
                format!(
                    "{} is not a multiple of linear_num_key_heads = {}",
                    l.value_heads, l.key_heads
                ),
            ));
        }
        Ok(())
    }

    /// The head width RoPE rotates within: the shared rotary part for latent attention, the
    /// whole head otherwise (of which `partial_rotary_factor` rotates).
    pub fn rope_head_dim(&self) -> usize {
        match &self.latent_attention {
            Some(l) => l.rope_dim,
            None => self.attention.head_dim,
        }
    }

    /// Numbers one position adds to a sequence's cache, over all layers: keys and values of
    /// each attention head group, or the latent and its rotary key with latent attention
    /// (linear-attention layers keep a fixed state instead, `recurrent_state_bytes`).
    pub fn cached_numbers_per_position(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match (l.attention, &self.latent_attention) {
                (AttentionKind::Linear, _) => 0,
                (AttentionKind::Latent, Some(m)) => m.cached_per_position(),
                (kind, _) => {
                    let a = self.attention_of(kind).0;
                    2 * a.num_kv_heads * a.head_dim
                }
            })
            .sum()
    }

    /// The attention shape and RoPE of layers of `kind`: the full-attention layers' own where
    /// the config gives them (`global_attention`), else the model's.
    pub fn attention_of(&self, kind: AttentionKind) -> (&AttentionConfig, &RopeConfig) {
        match (kind, &self.global_attention) {
            (AttentionKind::Full, Some(g)) => (&g.attention, &g.rope),
            _ => (&self.attention, &self.rope),
        }
    }

    /// The router's fields against the experts they choose from.
    fn validate_router(&self, path: &Path) -> Result<()> {
        let (e, r) = (self.moe.num_experts, &self.moe.router);
        let err = |field: &str, msg: String| Err(Error::config(path, field, msg));
        if r.top_k == 0 || r.top_k > e {
            return err(
                "num_experts_per_tok",
                format!("{} is out of range 1..={e}", r.top_k),
            );
        }
        if !(r.scale.is_finite() && r.scale > 0.0) {
            return err(
                "routed_scaling_factor",
                format!("{} must be finite and > 0", r.scale),
            );
        }
        if let Some(GroupLimit { groups, keep }) = r.group_limit {
            if groups == 0 || !e.is_multiple_of(groups) {
                return err(
                    "n_group",
                    format!("{groups} groups do not divide {e} experts"),
                );
            }
            if keep == 0 || keep > groups {
                return err("topk_group", format!("{keep} is out of range 1..={groups}"));
            }
            if r.selection == Selection::TopKThenScore {
                return err(
                    "topk_group",
                    "a group limit needs scores to choose by, not top-k of the logits".into(),
                );
            }
            if r.top_k > keep * (e / groups) {
                return err(
                    "num_experts_per_tok",
                    format!(
                        "{} is more than the {keep} kept groups of {} experts hold",
                        r.top_k,
                        e / groups
                    ),
                );
            }
        }
        Ok(())
    }

    /// Some layer routes its tokens to experts: false for a dense model.
    pub fn has_experts(&self) -> bool {
        self.layers.iter().any(|l| l.ffn.routes())
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// (total, active per token) parameter counts, computed from the shapes alone.
    pub fn parameter_counts(&self) -> (u128, u128) {
        let (layers_total, layers_active, _) = self.layer_parameter_counts();
        let h = self.hidden_size as u128;
        let embed = self.vocab_size as u128 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        let rest = embed + head + h; // + the final norm
        (layers_total + rest, layers_active + rest)
    }

    /// Parameters one decode step of one sequence reads: every layer's active parameters
    /// (attention, norms, router, the top-k experts and any shared expert), one embedding row,
    /// the whole head (the embedding table again when tied) and the final norm. The KV cache is
    /// not counted: at the short contexts benchmarked it is small next to the weights.
    pub fn decode_read_parameters(&self) -> u128 {
        self.decode_reads().total()
    }

    /// Bytes of recurrent state a decode step of one sequence reads (and writes back): the
    /// delta rule's f32 state and the convolution's last inputs, of every linear-attention
    /// layer. Unlike a KV cache it does not grow with the context.
    pub fn recurrent_state_bytes(&self) -> u128 {
        let Some(l) = &self.linear_attention else {
            return 0;
        };
        let layers = self
            .layers
            .iter()
            .filter(|l| l.attention == AttentionKind::Linear)
            .count() as u128;
        let per_layer =
            l.value_heads * l.key_head_dim * l.value_head_dim + (l.conv_kernel - 1) * l.conv_dim();
        layers * per_layer as u128 * 4
    }

    /// `decode_read_parameters`, split by how `--quant` stores them.
    pub fn decode_reads(&self) -> DecodeReads {
        let h = self.hidden_size as u128;
        let (_, layers_active, matrices) = self.layer_parameter_counts();
        let m = &self.moe;
        let sparse = self.layers.iter().filter(|l| l.ffn.routes()).count() as u128;
        let experts = sparse * m.router.top_k as u128 * 3 * h * m.expert_intermediate_size as u128;
        DecodeReads {
            matrices,
            experts,
            head: self.vocab_size as u128 * h,
            // One embedding row and the final norm, beside the layers' norms, biases and
            // routers.
            other: layers_active - matrices + h + h,
        }
    }

    /// (total, active per token, active weights of matrix products) parameters of all decoder
    /// layers together.
    fn layer_parameter_counts(&self) -> (u128, u128, u128) {
        let h = self.hidden_size as u128;
        let (latent_matrices, latent) = self.latent_attention.as_ref().map_or((0, 0), |l| {
            l.parameters(self.hidden_size, self.attention.num_heads)
        });
        // Gated DeltaNet: the joined input projection and the output one; the convolution,
        // A_log, dt_bias and the gated norm's weight.
        let (linear_matrices, linear) = self.linear_attention.as_ref().map_or((0, 0), |l| {
            let matrices = h * (l.projection_rows() + l.value_heads * l.value_head_dim) as u128;
            let small = l.conv_dim() * l.conv_kernel + 2 * l.value_heads + l.value_head_dim;
            (matrices, matrices + small as u128)
        });
        // The pre-norms, and the post-norms of both branches with sandwich norms.
        let norms = match self.sandwich_norms {
            true => 4 * h,
            false => 2 * h,
        } + u128::from(self.layer_scalar);
        let m = &self.moe;
        let mi = m.expert_intermediate_size as u128;
        let expert_matrices = 3 * h * mi;
        let expert = expert_matrices + if m.expert_bias { 2 * mi + h } else { 0 };
        // A shared expert's three matrices, and its gate (a vector) when it has one.
        let (shared_matrices, shared_gate) = m.shared_expert.as_ref().map_or((0, 0), |s| {
            (
                3 * h * s.intermediate_size as u128,
                if s.gated { h } else { 0 },
            )
        });
        let shared = shared_matrices + shared_gate;
        let e = m.num_experts as u128;
        let router_biases = u128::from(m.router.logit_bias) + u128::from(m.router.correction_bias);
        let router = (h + router_biases) * e
            + if m.router_input_scale { h } else { 0 }
            + if m.per_expert_scale { e } else { 0 };
        let dense = 3 * h * self.dense_intermediate_size as u128;
        // Beside a dense MLP, the experts have a pre-norm and both branches a post-norm.
        let parallel_norms = 3 * h;
        let k = m.router.top_k as u128;
        let sparse = (
            router + shared + expert * e,
            router + shared + expert * k,
            shared_matrices + expert_matrices * k,
        );
        let (mut total, mut active, mut matrices) = (0u128, 0u128, 0u128);
        for layer in &self.layers {
            let (t, act, mat) = match layer.ffn {
                FfnKind::Dense => (dense, dense, dense),
                FfnKind::Sparse => sparse,
                FfnKind::DenseAndSparse => (
                    dense + parallel_norms + sparse.0,
                    dense + parallel_norms + sparse.1,
                    dense + sparse.2,
                ),
            };
            let (mixer, mixer_matrices) = match layer.attention {
                AttentionKind::Linear => (linear, linear_matrices),
                AttentionKind::Latent => (latent, latent_matrices),
                kind => attention_parameters(self.attention_of(kind).0, h),
            };
            total += mixer + norms + t;
            active += mixer + norms + act;
            matrices += mixer_matrices + mat;
        }
        (total, active, matrices)
    }
}

/// (all, those of matrix products) parameters of one attention layer of shape `a` over a
/// residual stream of `h`.
fn attention_parameters(a: &AttentionConfig, h: u128) -> (u128, u128) {
    let (nh, nkv, hd) = (
        a.num_heads as u128,
        a.num_kv_heads as u128,
        a.head_dim as u128,
    );
    // A gated q projection yields twice the rows; keys that double as values need no v.
    let q_rows = if a.output_gate { 2 * nh } else { nh };
    let kv_rows = if a.k_eq_v { nkv } else { 2 * nkv };
    let matrices = h * hd * (q_rows + nh + kv_rows);
    let mut all = matrices;
    if a.qkv_bias {
        all += hd * (q_rows + kv_rows);
    }
    if a.o_bias {
        all += h;
    }
    if a.sinks {
        all += nh;
    }
    all += match a.qk_norm {
        QkNorm::None => 0,
        QkNorm::PerHead => 2 * hd,
        QkNorm::Projection => hd * (nh + nkv),
    };
    (all, matrices)
}

/// The parameters a decode step reads, by kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeReads {
    /// Weights of the layers' matrix products: attention projections, the active and shared
    /// experts, dense MLPs.
    pub matrices: u128,
    /// The part of `matrices` that is the active routed experts (which a checkpoint may store
    /// in a format of their own, as gpt-oss's MXFP4).
    pub experts: u128,
    /// The head (vocab x hidden).
    pub head: u128,
    /// Everything else: norms, biases, routers, shared-expert gates, one embedding row.
    pub other: u128,
}

impl DecodeReads {
    pub fn total(&self) -> u128 {
        self.matrices + self.head + self.other
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn decode_reads_the_active_parameters_but_the_embedding_table_and_with_the_head() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in [
            "mixtral-a",
            "mixtral-b",
            "qwen2_moe-a",
            "olmoe-a",
            "granitemoe-b",
        ] {
            let cfg = crate::arch::load(&fixtures.join(name)).unwrap().config;
            let (_, active) = cfg.parameter_counts();
            let (h, table) = (
                cfg.hidden_size as u128,
                (cfg.vocab_size * cfg.hidden_size) as u128,
            );
            // Active counts the embedding table (and the head when untied); a decode step
            // reads one row of the table, and the head in full even when it is the table.
            let expected = if cfg.tie_word_embeddings {
                active + h
            } else {
                active - table + h
            };
            assert_eq!(cfg.decode_read_parameters(), expected, "{name}");
        }
    }

    /// A small valid config for unit tests elsewhere in the crate.
    pub(crate) fn tiny() -> ModelConfig {
        ModelConfig {
            model_type: "test".into(),
            vocab_size: 64,
            hidden_size: 16,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-6,
            attention: AttentionConfig::plain(4, 2, 4),
            rope: RopeConfig::plain(10000.0),
            moe: MoeConfig {
                num_experts: 4,
                expert_intermediate_size: 8,
                router: RouterSpec::softmax_top_k(2, true),
                expert_bias: false,
                shared_expert: None,
                router_input_scale: false,
                per_expert_scale: false,
            },
            dense_intermediate_size: 0,
            activation: Activation::SiluGated,
            layers: vec![LayerSpec::SPARSE; 2],
            linear_attention: None,
            latent_attention: None,
            norm_weight_offset: 0.0,
            global_attention: None,
            sandwich_norms: false,
            layer_scalar: false,
            embedded_as: None,
            scales: Scales::default(),
            tie_word_embeddings: false,
        }
    }

    #[test]
    fn tiny_config_is_valid() {
        tiny().validate(Path::new("config.json")).unwrap();
    }

    #[test]
    fn absurd_vocab_is_refused_with_the_field_named() {
        let mut cfg = tiny();
        cfg.vocab_size = 1_000_000_000_000;
        let err = cfg
            .validate(Path::new("config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vocab_size") && err.contains("out of range"),
            "{err}"
        );
    }

    #[test]
    fn kv_heads_must_divide_heads() {
        let mut cfg = tiny();
        cfg.attention.num_kv_heads = 3;
        let err = cfg.validate(Path::new("c.json")).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }

    #[test]
    fn top_k_above_expert_count_is_refused() {
        let mut cfg = tiny();
        cfg.moe.router.top_k = 5;
        let err = cfg.validate(Path::new("c.json")).unwrap_err().to_string();
        assert!(err.contains("num_experts_per_tok"), "{err}");
    }

    #[test]
    fn active_parameters_count_only_top_k_experts() {
        let cfg = tiny();
        let (total, active) = cfg.parameter_counts();
        let per_expert = 3 * 16 * 8;
        // Two sparse layers, each with 4 experts of which 2 are active.
        assert_eq!(total - active, 2 * 2 * per_expert);
    }
}
