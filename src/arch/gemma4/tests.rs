//! Gemma 4's config as Google publishes it (26B-A4B), HF's defaults for what it leaves out, and
//! a clear refusal for each part not built or each field out of range.

use serde_json::{json, Value};

use crate::arch::tests::{arch, error};
use crate::spec::{Activation, AttentionKind, FfnKind, QkNorm};

/// google/gemma-4-26B-A4B-it's config.json, its layer list cut to 6 and the vision config to a
/// stub (what the text engine reads is all there).
fn gemma4_26b() -> Value {
    let mut types = vec!["sliding_attention"; 5];
    types.push("full_attention");
    // In parts: one json! of it all passes the macro's recursion limit.
    let mut text = json!({
        "model_type": "gemma4_text",
        "attention_bias": false, "attention_dropout": 0.0, "attention_k_eq_v": true,
        "enable_moe_block": true, "final_logit_softcapping": 30.0,
        "global_head_dim": 512, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 2816, "hidden_size_per_layer_input": 0, "intermediate_size": 2112,
        "layer_types": types, "max_position_embeddings": 262144,
        "moe_intermediate_size": 704, "num_attention_heads": 16, "num_experts": 128,
        "num_global_key_value_heads": 2, "num_hidden_layers": 6, "num_key_value_heads": 8
    });
    let rest = json!({
        "num_kv_shared_layers": 0, "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                               "rope_type": "proportional"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}
        },
        "sliding_window": 1024, "tie_word_embeddings": true, "top_k_experts": 8,
        "use_bidirectional_attention": "vision", "use_double_wide_mlp": false,
        "vocab_size": 262144, "vocab_size_per_layer_input": 262144,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0
    });
    for (k, v) in rest.as_object().unwrap() {
        text[k] = v.clone();
    }
    json!({
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "boi_token_id": 255999, "eoi_token_id": 258882, "image_token_id": 258880,
        "audio_token_id": 258881, "video_token_id": 258884, "initializer_range": 0.02,
        "boa_token_id": 256000, "eoa_token_id": 258883, "eoa_token_index": 258883,
        "vision_soft_tokens_per_image": 280,
        "tie_word_embeddings": true, "transformers_version": "5.24.0", "dtype": "bfloat16",
        "vision_config": {"hidden_size": 1152, "model_type": "gemma4_vision"},
        "audio_config": null,
        "text_config": text
    })
}

fn with_text(mut base: Value, key: &str, value: Value) -> Value {
    let text = base["text_config"].as_object_mut().unwrap();
    match value {
        Value::Null if key.starts_with('-') => {
            text.remove(&key[1..]);
        }
        v => {
            text.insert(key.into(), v);
        }
    }
    base
}

#[test]
fn published_26b_a4b_config_translates() {
    let a = arch(gemma4_26b());
    let c = &a.config;
    assert!(
        a.unrecognized_fields.is_empty(),
        "{:?}",
        a.unrecognized_fields
    );
    assert_eq!(c.model_type, "gemma4");
    assert_eq!(a.names.layers, "model.language_model.layers");
    assert!(a.skipped.iter().any(|(p, _)| p == "model.vision_tower."));
    // Sliding layers: 8 kv heads of 256, default RoPE; the sixth global: 2 kv heads of 512,
    // keys as values, proportional RoPE turning a quarter of its pairs.
    assert_eq!(
        c.layers[0].attention,
        AttentionKind::Sliding { window: 1024 }
    );
    assert_eq!(c.layers[5].attention, AttentionKind::Full);
    let (s, s_rope) = c.attention_of(c.layers[0].attention);
    assert_eq!((s.num_kv_heads, s.head_dim, s.k_eq_v), (8, 256, false));
    assert_eq!((s_rope.theta, s_rope.proportional), (10000.0, false));
    let (g, g_rope) = c.attention_of(AttentionKind::Full);
    assert_eq!(
        (g.num_heads, g.num_kv_heads, g.head_dim, g.k_eq_v),
        (16, 2, 512, true)
    );
    assert_eq!((g_rope.theta, g_rope.proportional), (1e6, true));
    assert_eq!(g_rope.turning_pairs(512), 64);
    for a in [s, g] {
        assert_eq!((a.qk_norm, a.v_norm, a.scale), (QkNorm::PerHead, true, 1.0));
    }
    assert!(c.layers.iter().all(|l| l.ffn == FfnKind::DenseAndSparse));
    assert_eq!(c.dense_intermediate_size, 2112);
    let m = &c.moe;
    assert_eq!(
        (m.num_experts, m.router.top_k, m.expert_intermediate_size),
        (128, 8, 704)
    );
    assert!(m.router.renormalise && m.router_input_scale && m.per_expert_scale);
    assert_eq!(c.activation, Activation::GeluTanhGated);
    assert!(c.sandwich_norms && c.layer_scalar && c.tie_word_embeddings);
    assert_eq!(c.norm_weight_offset, 0.0);
    assert_eq!(c.scales.embedding, 2816f64.sqrt());
    assert!(c.scales.embedding_in_dtype);
    assert_eq!(c.scales.logit_softcap, Some(30.0));
    let placeholders = c.embedded_as.as_ref().unwrap();
    assert_eq!(placeholders.ids, [258880, 258881, 258884]);
    assert_eq!(placeholders.row, 0);
    // The 26B at 30 layers: 25.2 B parameters, 3.8 B active (HF counts 25.2 B in the text
    // model, the vision tower aside).
    let mut full = gemma4_26b();
    let mut types = Vec::new();
    for _ in 0..5 {
        types.extend(["sliding_attention"; 5]);
        types.push("full_attention");
    }
    full["text_config"]["num_hidden_layers"] = 30.into();
    full["text_config"]["layer_types"] = json!(types);
    let (total, active) = arch(full).config.parameter_counts();
    assert_eq!((total / 100_000_000, active / 100_000_000), (252, 38));
}

#[test]
fn hfs_defaults_fill_what_the_config_leaves_out() {
    let mut v = gemma4_26b();
    for key in [
        "rope_parameters",
        "layer_types",
        "global_head_dim",
        "sliding_window",
        "num_key_value_heads",
    ] {
        v = with_text(v, &format!("-{key}"), Value::Null);
    }
    v["text_config"]["num_hidden_layers"] = 7.into();
    let c = arch(v).config;
    // Every sixth layer global, and the last one whatever the pattern says.
    let full: Vec<usize> = (0..7)
        .filter(|&i| c.layers[i].attention == AttentionKind::Full)
        .collect();
    assert_eq!(full, [5, 6]);
    assert_eq!(
        c.layers[0].attention,
        AttentionKind::Sliding { window: 512 }
    );
    let (g, rope) = c.attention_of(AttentionKind::Full);
    assert_eq!(g.head_dim, 512);
    assert_eq!(
        (rope.theta, rope.partial_rotary_factor, rope.proportional),
        (1e6, 0.25, true)
    );
    assert_eq!(c.rope.theta, 10000.0);
    assert_eq!(c.attention.num_kv_heads, 4);
}

#[test]
fn without_keys_as_values_the_global_layers_keep_the_kv_heads() {
    // HF's rule: num_global_key_value_heads applies only with attention_k_eq_v.
    let v = with_text(gemma4_26b(), "attention_k_eq_v", false.into());
    let c = arch(v).config;
    let g = c.attention_of(AttentionKind::Full).0;
    assert_eq!((g.num_kv_heads, g.k_eq_v), (8, false));
}

#[test]
fn the_dense_model_has_no_experts() {
    let mut v = with_text(gemma4_26b(), "enable_moe_block", false.into());
    for key in ["num_experts", "top_k_experts", "moe_intermediate_size"] {
        v = with_text(v, &format!("-{key}"), Value::Null);
    }
    let c = arch(v).config;
    assert!(!c.has_experts());
    assert!(c.layers.iter().all(|l| l.ffn == FfnKind::Dense));
}

#[test]
fn each_bad_or_unbuilt_setting_is_refused_in_one_line_naming_its_field() {
    let cases = [
        ("-num_experts", Value::Null, "text_config.num_experts"),
        (
            "-moe_intermediate_size",
            Value::Null,
            "text_config.moe_intermediate_size",
        ),
        ("top_k_experts", 129.into(), "text_config.top_k_experts"),
        (
            "num_global_key_value_heads",
            3.into(),
            "text_config.num_global_key_value_heads",
        ),
        ("global_head_dim", 511.into(), "text_config.global_head_dim"),
        (
            "hidden_size_per_layer_input",
            256.into(),
            "per-layer input embeddings",
        ),
        (
            "-hidden_size_per_layer_input",
            Value::Null,
            "text_config.hidden_size_per_layer_input",
        ),
        (
            "num_kv_shared_layers",
            4.into(),
            "text_config.num_kv_shared_layers",
        ),
        (
            "use_bidirectional_attention",
            "all".into(),
            "text_config.use_bidirectional_attention",
        ),
        (
            "hidden_activation",
            "silu".into(),
            "text_config.hidden_activation",
        ),
        (
            "final_logit_softcapping",
            0.0.into(),
            "text_config.final_logit_softcapping",
        ),
        ("sliding_window", 0.into(), "text_config.sliding_window"),
        (
            "layer_types",
            json!(["sliding_attention"]),
            "text_config.layer_types",
        ),
    ];
    for (key, value, expected) in cases {
        let err = error(with_text(gemma4_26b(), key, value));
        assert!(err.contains(expected), "{key}: {err}");
        assert_eq!(err.lines().count(), 1, "{key}: {err}");
    }
    let mut v = gemma4_26b();
    v["text_config"]["rope_parameters"]["full_attention"]["rope_type"] = "yarn".into();
    let err = error(v);
    assert!(
        err.contains("rope_parameters.full_attention.rope_type"),
        "{err}"
    );
    let mut v = gemma4_26b();
    v["text_config"]["rope_parameters"]["full_attention"]["partial_rotary_factor"] = 0.001.into();
    let err = error(v);
    assert!(
        err.contains("rope_parameters.full_attention.partial_rotary_factor"),
        "{err}"
    );
    let mut v = gemma4_26b();
    v["text_config"]["rope_parameters"]["chunked_attention"] = json!({});
    assert!(error(v).contains("rope_parameters.chunked_attention"));
    let mut v = gemma4_26b();
    v["text_config"]["rope_parameters"]["sliding_attention"]["rope_theta"] = (-1.0).into();
    let err = error(v);
    assert!(
        err.contains("text_config.rope_parameters.sliding_attention.rope_theta"),
        "{err}"
    );
    let v = with_text(
        gemma4_26b(),
        "per_layer_config",
        json!({"5": {"head_dim": 512}}),
    );
    assert!(error(v).contains("text_config.per_layer_config"));
    let v = with_text(gemma4_26b(), "pad_token_id", 262144.into());
    assert!(error(v).contains("text_config.pad_token_id"));
}
