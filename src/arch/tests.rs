//! Config translation: both config.json styles, every family's special fields, and the
//! errors for values we cannot honour.

use std::path::Path;

use serde_json::{json, Value};

use super::{parse, Architecture, ExpertNames};
use crate::spec::{AttentionKind, FfnKind, LayerSpec, QkNorm};

pub(super) fn arch(value: Value) -> Architecture {
    parse(Path::new("config.json"), value).unwrap()
}

pub(super) fn error(value: Value) -> String {
    parse(Path::new("config.json"), value)
        .unwrap_err()
        .to_string()
}

/// A config in the style the published Mixtral checkpoints use.
fn mixtral() -> Value {
    json!({
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": 100, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "num_local_experts": 4, "num_experts_per_tok": 2,
        "rope_theta": 1e6, "rope_scaling": null, "sliding_window": null,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "router_aux_loss_coef": 0.02, "output_router_logits": false
    })
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() && k.starts_with('-') {
            base.as_object_mut().unwrap().remove(&k[1..]);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

#[test]
fn published_mixtral_config_translates() {
    let a = arch(mixtral());
    let c = &a.config;
    assert_eq!(c.attention.head_dim, 8);
    assert_eq!(c.rope.theta, 1e6);
    assert_eq!((c.moe.num_experts, c.moe.router.top_k), (4, 2));
    assert!(c.moe.router.renormalise);
    assert_eq!(c.layers, vec![LayerSpec::SPARSE; 2]);
    assert_eq!(a.names.moe, "block_sparse_moe");
    assert!(
        a.unrecognized_fields.is_empty(),
        "{:?}",
        a.unrecognized_fields
    );
}

#[test]
fn transformers_5_style_gives_the_same_config() {
    let v5 = with(
        mixtral(),
        json!({"-rope_theta": null, "-rope_scaling": null, "-torch_dtype": null,
               "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
               "dtype": "bfloat16", "head_dim": null}),
    );
    assert_eq!(arch(v5).config, arch(mixtral()).config);
}

#[test]
fn expert_count_is_read_under_either_name() {
    let v = with(
        mixtral(),
        json!({"-num_local_experts": null, "num_experts": 4}),
    );
    assert_eq!(arch(v).config.moe.num_experts, 4);
}

#[test]
fn unimplemented_rope_is_refused_by_name_and_yarn_takes_hfs_defaults() {
    let e = error(with(
        mixtral(),
        json!({"rope_scaling": {"type": "dynamic", "factor": 4.0}}),
    ));
    assert!(
        e.contains("rope_scaling.type") && e.contains("dynamic"),
        "{e}"
    );
    // YaRN: the original context defaults to max_position_embeddings (64 here), betas to
    // 32 and 1, truncation on, the attention factor to 0.1 ln(factor) + 1.
    let c = arch(with(
        mixtral(),
        json!({"rope_scaling": {"type": "yarn", "factor": 4.0}}),
    ))
    .config;
    let y = c.rope.yarn.unwrap();
    assert_eq!((y.original_max_position_embeddings, y.truncate), (64, true));
    assert_eq!((y.factor, y.beta_fast, y.beta_slow), (4.0, 32.0, 1.0));
    assert!((y.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
    // Fields YaRN does not have, and a bad truncate, are refused by name.
    let e = error(with(
        mixtral(),
        json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "low_freq_factor": 1.0}}),
    ));
    assert!(e.contains("rope_scaling.low_freq_factor"), "{e}");
    let e = error(with(
        mixtral(),
        json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "truncate": "no"}}),
    ));
    assert!(e.contains("rope_parameters.truncate"), "{e}");
    let e = error(with(
        mixtral(),
        json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}),
    ));
    assert!(e.contains("rope_parameters.rope_type"), "{e}");
}

fn windows(c: &crate::spec::ModelConfig) -> Vec<Option<usize>> {
    c.layers
        .iter()
        .map(|l| match l.attention {
            AttentionKind::Full | AttentionKind::Linear | AttentionKind::Latent => None,
            AttentionKind::Sliding { window } => Some(window),
        })
        .collect()
}

#[test]
fn mixtral_slides_every_layer_when_it_has_a_window() {
    let c = arch(with(mixtral(), json!({"sliding_window": 4096}))).config;
    assert_eq!(windows(&c), vec![Some(4096); 2]);
    assert_eq!(windows(&arch(mixtral()).config), vec![None; 2]);
    let e = error(with(mixtral(), json!({"sliding_window": 0})));
    assert!(e.contains("sliding_window"), "{e}");
}

#[test]
fn unknown_model_type_is_refused_by_name() {
    let e = error(with(mixtral(), json!({"model_type": "jamba"})));
    assert!(e.contains("model_type") && e.contains("jamba"), "{e}");
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    let e = error(with(mixtral(), json!({"-hidden_size": null})));
    assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
    let e = error(with(mixtral(), json!({"hidden_size": "big"})));
    assert!(e.contains("hidden_size") && e.contains("integer"), "{e}");
    let e = error(with(mixtral(), json!({"hidden_act": "gelu"})));
    assert!(e.contains("hidden_act"), "{e}");
}

#[test]
fn pre_quantized_checkpoints_are_refused_by_name() {
    let e = error(with(
        mixtral(),
        json!({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}),
    ));
    assert!(
        e.contains("quantization_config") && e.contains("fp8"),
        "{e}"
    );
}

#[test]
fn absurd_vocab_is_refused_before_anything_is_allocated() {
    let e = error(with(mixtral(), json!({"vocab_size": 1_000_000_000_000u64})));
    assert!(
        e.contains("vocab_size") && e.contains("out of range"),
        "{e}"
    );
}

#[test]
fn unknown_fields_are_reported_not_dropped() {
    let a = arch(with(mixtral(), json!({"partial_rotary_factor": 0.5})));
    assert_eq!(
        a.unrecognized_fields,
        vec!["partial_rotary_factor".to_string()]
    );
}

fn qwen2_moe() -> Value {
    json!({
        "model_type": "qwen2_moe",
        "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 64, "num_experts": 8, "num_experts_per_tok": 2,
        "moe_intermediate_size": 16, "shared_expert_intermediate_size": 40,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": false,
        "use_sliding_window": false, "sliding_window": 4096, "max_window_layers": 21,
        "rope_theta": 1e6, "rope_scaling": null
    })
}

#[test]
fn qwen2_moe_has_biases_a_gated_shared_expert_and_a_layer_plan() {
    let c = arch(with(
        qwen2_moe(),
        json!({"mlp_only_layers": [2], "decoder_sparse_step": 2}),
    ))
    .config;
    assert!(c.attention.qkv_bias && !c.attention.o_bias);
    let shared = c.moe.shared_expert.unwrap();
    assert_eq!((shared.intermediate_size, shared.gated), (40, true));
    use FfnKind::{Dense, Sparse};
    // Step 2 makes layers 1 and 3 sparse; layer 2 is dense either way.
    let ffn: Vec<FfnKind> = c.layers.iter().map(|l| l.ffn).collect();
    assert_eq!(ffn, vec![Dense, Sparse, Dense, Sparse]);
    assert!(!c.moe.router.renormalise);
}

#[test]
fn qwen_sliding_windows_follow_hf() {
    // Qwen2-MoE (transformers 5.23): with the window on, even layers below max_window_layers.
    let on = json!({"use_sliding_window": true, "sliding_window": 16, "max_window_layers": 3});
    let c = arch(with(qwen2_moe(), on.clone())).config;
    assert_eq!(windows(&c), vec![Some(16), None, Some(16), None]);
    // Off: full attention everywhere, whatever sliding_window says.
    assert_eq!(windows(&arch(qwen2_moe()).config), vec![None; 4]);
    // layer_types, when given, decides.
    let types = json!({"use_sliding_window": true, "sliding_window": 16, "layer_types":
        ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]});
    let c = arch(with(qwen2_moe(), types)).config;
    assert_eq!(windows(&c), vec![None, Some(16), Some(16), None]);
    // Sliding layers without a window, a window of 0, a wrong count: refused by name.
    let no_window = json!({"layer_types": ["sliding_attention", "full_attention",
        "full_attention", "full_attention"]});
    for bad in [
        no_window,
        json!({"use_sliding_window": true, "sliding_window": 0}),
        json!({"layer_types": ["full_attention"]}),
    ] {
        let e = error(with(qwen2_moe(), bad));
        assert!(
            e.contains("layer_types") || e.contains("sliding_window"),
            "{e}"
        );
    }
    let e = error(with(qwen2_moe(), json!({"mlp_only_layers": [7]})));
    assert!(e.contains("mlp_only_layers"), "{e}");
}

#[test]
fn qwen3_moe_norms_each_head_and_honours_head_dim() {
    let v = with(
        qwen2_moe(),
        json!({"model_type": "qwen3_moe", "head_dim": 12, "attention_bias": false,
               "norm_topk_prob": true, "-shared_expert_intermediate_size": null}),
    );
    let c = arch(v.clone()).config;
    assert_eq!(c.attention.qk_norm, QkNorm::PerHead);
    assert_eq!(c.attention.head_dim, 12);
    assert!((c.attention.scale - 12f64.powf(-0.5)).abs() < 1e-12);
    assert!(c.moe.router.renormalise && c.moe.shared_expert.is_none());
    assert_eq!(windows(&c), vec![None; 4]);
    // With the window on, Qwen3-MoE slides every layer (max_window_layers is not read).
    let c = arch(with(
        v.clone(),
        json!({"use_sliding_window": true, "sliding_window": 16}),
    ))
    .config;
    assert_eq!(windows(&c), vec![Some(16); 4]);
    // HF's default window when the config switches it on without one.
    let on = json!({"use_sliding_window": true, "-sliding_window": null});
    assert_eq!(windows(&arch(with(v, on)).config), vec![Some(4096); 4]);
}

#[test]
fn olmoe_norms_the_whole_projection_and_clips() {
    let v = json!({
        "model_type": "olmoe", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 64,
        "num_experts": 8, "num_experts_per_tok": 2, "clip_qkv": 8.0, "rope_theta": 1e4
    });
    let c = arch(v).config;
    assert_eq!(c.attention.qk_norm, QkNorm::Projection);
    assert_eq!(c.attention.clip_qkv, Some(8.0));
    assert_eq!(c.attention.num_kv_heads, 4);
    assert_eq!(c.moe.expert_intermediate_size, 16);
}

#[test]
fn granitemoe_multipliers_and_stacked_experts() {
    let v = json!({
        "model_type": "granitemoe", "vocab_size": 100, "hidden_size": 32,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 1, "max_position_embeddings": 64, "num_local_experts": 8,
        "num_experts_per_tok": 2, "embedding_multiplier": 12.0, "attention_multiplier": 0.015625,
        "residual_multiplier": 0.22, "logits_scaling": 6.0, "tie_word_embeddings": true,
        "rope_theta": 1e4
    });
    let a = arch(v);
    let c = &a.config;
    assert_eq!(c.attention.scale, 0.015625);
    assert_eq!(
        (
            c.scales.embedding,
            c.scales.residual,
            c.scales.logits_divisor
        ),
        (12.0, 0.22, 6.0)
    );
    assert!(
        c.tie_word_embeddings && c.moe.router.selection == crate::spec::Selection::TopKThenScore
    );
    assert_eq!(a.names.router, "router.layer.weight");
    assert!(matches!(a.names.experts, ExpertNames::Stacked { .. }));
}

/// gpt-oss with transformers' defaults where the config is silent: head_dim 64, a window of
/// 128 on the even layers, gpt-oss's YaRN, biases everywhere, sinks, the clamped SwiGLU.
#[test]
fn gpt_oss_takes_hfs_defaults() {
    let v = json!({
        "model_type": "gpt_oss", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 32,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "num_local_experts": 4, "num_experts_per_tok": 2,
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": []}
    });
    let a = arch(v.clone());
    let c = a.config;
    assert!(a.quantized_experts);
    assert_eq!(c.attention.head_dim, 64);
    assert_eq!(windows(&c), vec![Some(128), None, Some(128)]);
    assert!(c.attention.sinks && c.attention.qkv_bias && c.attention.o_bias);
    let y = c.rope.yarn.unwrap();
    assert_eq!(
        (y.factor, y.original_max_position_embeddings, y.truncate),
        (32.0, 4096, false)
    );
    assert_eq!(c.rope.theta, 150000.0);
    let r = c.moe.router;
    assert!(r.logit_bias && r.selection == crate::spec::Selection::TopKThenScore && !r.renormalise);
    assert!(c.moe.expert_bias);
    assert_eq!(
        c.activation,
        crate::spec::Activation::SwigluClamped {
            alpha: 1.702,
            limit: 7.0
        }
    );
    // Explicit layer types win; a window of 0 is refused.
    let c = arch(with(
        v.clone(),
        json!({"layer_types": ["full_attention", "full_attention", "sliding_attention"],
               "sliding_window": 16}),
    ))
    .config;
    assert_eq!(windows(&c), vec![None, None, Some(16)]);
    let e = error(with(v, json!({"sliding_window": 0})));
    assert!(e.contains("sliding_window"), "{e}");
}
