//! Qwen3-Next and Qwen3.5-MoE (its text model): most layers Gated DeltaNet linear attention
//! (`layer_types`, or every `full_attention_interval`-th layer full), the full ones with an
//! output gate in the q projection, per-head q/k RMSNorm and RoPE on the first
//! `partial_rotary_factor` of each head; RMSNorm weights stored as offsets from one; MoE
//! blocks as Qwen2-MoE's (softmax router, a shared expert behind a sigmoid gate).
//!
//! `qwen3_next` is a flat config with grouped input projections (`in_proj_qkvz`,
//! `in_proj_ba`). `qwen3_5_moe` is the multimodal wrapper as published: the text model's
//! config in `text_config`, its tensors under `model.language_model.`, split projections, a
//! vision tower and multi-token-prediction layers that a text engine does not load
//! (`Architecture::skipped` names them).

use super::{
    attention_bias, common, layer_types, qwen_layer_plan, Defaults, Fields, LinearAttnNames,
    LinearProjections, TensorNames, LLAMA_NAMES,
};
use crate::error::Result;
use crate::spec::{
    AttentionKind, FfnKind, LayerSpec, LinearAttentionConfig, ModelConfig, MoeConfig, QkNorm,
    RouterSpec, SharedExpertConfig,
};

/// Qwen3.5-MoE's text tensors, and its split projections.
const QWEN3_5_NAMES: TensorNames = TensorNames {
    embed: "model.language_model.embed_tokens.weight",
    final_norm: "model.language_model.norm.weight",
    layers: "model.language_model.layers",
    linear_attn: LinearAttnNames {
        projections: LinearProjections::Split {
            qkv: "in_proj_qkv",
            z: "in_proj_z",
            b: "in_proj_b",
            a: "in_proj_a",
        },
        ..LLAMA_NAMES.linear_attn
    },
    ..LLAMA_NAMES
};

/// Tensors of a `qwen3_5_moe` checkpoint outside the text model, by name prefix.
pub const QWEN3_5_SKIPPED: &[(&str, &str)] = &[
    ("model.visual.", "the vision tower"),
    ("mtp.", "the multi-token-prediction layers"),
];

/// `qwen3_next`: the flat config.
pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = text_model(f)?;
    cfg.layers = qwen_layer_plan(f, cfg.layers.len())?
        .into_iter()
        .zip(&cfg.layers)
        .map(|(plan, hybrid)| LayerSpec {
            attention: hybrid.attention,
            ffn: plan.ffn,
        })
        .collect();
    cfg.moe.router =
        RouterSpec::softmax_top_k(cfg.moe.router.top_k, f.bool_or("norm_topk_prob", true)?);
    if cfg.layers.iter().any(|l| l.ffn == FfnKind::Dense) {
        cfg.dense_intermediate_size = f.usize("intermediate_size")?;
    } else {
        f.irrelevant(&["intermediate_size"]);
    }
    Ok((cfg, LLAMA_NAMES))
}

/// `qwen3_5_moe`: the wrapper's `text_config`, read as a config of its own (its fields named
/// `text_config.*` in errors and in the list of unread ones), every layer sparse.
pub fn parse_multimodal(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut text = f.nested("text_config")?;
    text.irrelevant(super::IRRELEVANT);
    match text.opt_str("model_type")?.as_deref() {
        None | Some("qwen3_5_moe_text") => {}
        Some(other) => {
            return Err(text.error(
                "model_type",
                format!("`{other}` is not Qwen3.5-MoE's text model (qwen3_5_moe_text)"),
            ))
        }
    }
    let mut cfg = text_model(&mut text)?;
    // Qwen3.5's blocks are all sparse and always renormalise the top-k weights; the fields
    // that say otherwise in Qwen3-Next are not read by its model.
    text.irrelevant(&[
        "norm_topk_prob",
        "mlp_only_layers",
        "decoder_sparse_step",
        "intermediate_size",
    ]);
    cfg.moe.router = RouterSpec::softmax_top_k(cfg.moe.router.top_k, true);
    // The state's dtype of other engines' kernels (ours is f32) and the multi-token-prediction
    // layers, which generation here does not use.
    text.irrelevant(&[
        "mamba_ssm_dtype",
        "mtp_num_hidden_layers",
        "mtp_use_dedicated_embeddings",
    ]);
    // HF ties the head of the wrapper by the wrapper's own field (false when absent).
    cfg.tie_word_embeddings = f.bool_or("tie_word_embeddings", false)?;
    cfg.model_type = "qwen3_5_moe".into();
    // The vision tower and the ids of image and video tokens: text-only inference.
    f.irrelevant(&[
        "vision_config",
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
    ]);
    f.absorb(text);
    Ok((cfg, QWEN3_5_NAMES))
}

/// What both layouts share: the hybrid layer plan, linear and gated full attention, the
/// norms' offset and the MoE block (layers sparse, the router renormalising).
fn text_model(f: &mut Fields) -> Result<ModelConfig> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            head_dim: Some(256),
            partial_rotary_factor: Some(0.25),
            ..Defaults::LLAMA
        },
    )?;
    attention_bias(f, &mut cfg)?;
    cfg.attention.qk_norm = QkNorm::PerHead;
    cfg.attention.output_gate = true;
    // Published Qwen3.5 configs say so; HF's model gates whatever the field says.
    if !f.bool_or("attn_output_gate", true)? {
        return Err(f.error(
            "attn_output_gate",
            "false is not supported: the model's q projection always carries the gate",
        ));
    }
    cfg.norm_weight_offset = 1.0;
    hybrid_layers(f, &mut cfg.layers)?;
    cfg.linear_attention = Some(LinearAttentionConfig {
        key_heads: f.opt_usize("linear_num_key_heads")?.unwrap_or(16),
        value_heads: f.opt_usize("linear_num_value_heads")?.unwrap_or(32),
        key_head_dim: f.opt_usize("linear_key_head_dim")?.unwrap_or(128),
        value_head_dim: f.opt_usize("linear_value_head_dim")?.unwrap_or(128),
        conv_kernel: f.opt_usize("linear_conv_kernel_dim")?.unwrap_or(4),
    });
    cfg.moe = MoeConfig {
        num_experts: f.usize_any(&["num_experts", "num_local_experts"])?,
        expert_intermediate_size: f.usize("moe_intermediate_size")?,
        router: RouterSpec::softmax_top_k(f.usize("num_experts_per_tok")?, true),
        expert_bias: false,
        shared_expert: Some(SharedExpertConfig {
            intermediate_size: f.usize("shared_expert_intermediate_size")?,
            gated: true,
        }),
        router_input_scale: false,
        per_expert_scale: false,
    };
    Ok(cfg)
}

/// Each layer's attention from `layer_types` (`linear_attention` or `full_attention`), or,
/// where the config lists none, HF's rule: every `full_attention_interval`-th layer (4 when
/// absent) full, the others linear.
fn hybrid_layers(f: &mut Fields, layers: &mut [LayerSpec]) -> Result<()> {
    let interval = f.opt_usize("full_attention_interval")?;
    if layer_types(f, layers, None, true)? {
        return Ok(());
    }
    let interval = interval.unwrap_or(4);
    if interval == 0 {
        return Err(f.error("full_attention_interval", "must be at least 1"));
    }
    for (i, layer) in layers.iter_mut().enumerate() {
        layer.attention = match (i + 1).is_multiple_of(interval) {
            true => AttentionKind::Full,
            false => AttentionKind::Linear,
        };
    }
    Ok(())
}
