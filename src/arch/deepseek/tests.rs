//! The published configs of the lineage, as their hub repositories write them, and the errors
//! for router and quantization settings that cannot be honoured.

use serde_json::{json, Value};

use crate::arch::tests::{arch, error};
use crate::spec::{AttentionKind, FfnKind, GroupLimit, Scoring};

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

/// deepseek-ai/DeepSeek-V3's config.json (the `auto_map` entries shortened).
fn deepseek_v3() -> Value {
    serde_json::from_str(
        r#"{
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
        "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
        "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
        "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
        "max_position_embeddings": 163840, "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8,
        "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true,
        "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
        "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "weight_block_size": [128, 128]},
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                         "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "seq_aux": true, "tie_word_embeddings": false, "topk_group": 4,
        "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.33.1",
        "use_cache": true, "v_head_dim": 128, "vocab_size": 129280
    }"#,
    )
    .unwrap()
}

/// zai-org/GLM-4.7-Flash's config.json.
fn glm4_7_flash() -> Value {
    serde_json::from_str(
        r#"{
        "architectures": ["Glm4MoeLiteForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "pad_token_id": 154820,
        "eos_token_id": [154820, 154827, 154829], "first_k_dense_replace": 1,
        "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 10240,
        "kv_lora_rank": 512, "max_position_embeddings": 202752,
        "moe_intermediate_size": 1536, "n_group": 1, "n_routed_experts": 64,
        "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 20,
        "num_experts_per_tok": 4, "num_hidden_layers": 47, "num_key_value_heads": 20,
        "num_nextn_predict_layers": 1, "partial_rotary_factor": 1.0, "q_lora_rank": 768,
        "qk_nope_head_dim": 192, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-05,
        "rope_interleave": true, "rope_scaling": null, "rope_theta": 1000000,
        "routed_scaling_factor": 1.8, "topk_group": 1, "topk_method": "noaux_tc",
        "tie_word_embeddings": false, "dtype": "bfloat16",
        "transformers_version": "5.0.0.dev0", "v_head_dim": 256, "vocab_size": 154880,
        "model_type": "glm4_moe_lite"
    }"#,
    )
    .unwrap()
}

/// zai-org/GLM-4.5-Air's config.json.
fn glm4_5_air() -> Value {
    serde_json::from_str(
        r#"{
        "architectures": ["Glm4MoeForCausalLM"], "attention_bias": true,
        "attention_dropout": 0.0, "pad_token_id": 151329,
        "eos_token_id": [151329, 151336, 151338], "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 4096, "partial_rotary_factor": 0.5, "initializer_range": 0.02,
        "intermediate_size": 10944, "max_position_embeddings": 131072,
        "model_type": "glm4_moe", "moe_intermediate_size": 1408, "norm_topk_prob": true,
        "num_attention_heads": 96, "n_group": 1, "topk_group": 1, "n_routed_experts": 128,
        "n_shared_experts": 1, "routed_scaling_factor": 1.0, "num_experts_per_tok": 8,
        "first_k_dense_replace": 1, "num_hidden_layers": 46, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 1000000,
        "num_nextn_predict_layers": 1, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "transformers_version": "4.54.0", "use_cache": true,
        "use_qk_norm": false, "vocab_size": 151552
    }"#,
    )
    .unwrap()
}

/// The published sizes, from the shapes alone: DeepSeek-V3 671B parameters with 37B active
/// (its paper, without the 14B multi-token-prediction module the checkpoint adds, the
/// embedding table and head counted); GLM-4.7-Flash 30B-A3B and GLM-4.5-Air 106B-A12B (their
/// active counts leave out the embedding table and head). Ours: 671.0B and 37.6B, 29.9B and
/// 3.26B, 106.9B and 12.2B.
#[test]
fn published_configs_have_their_published_sizes() {
    for (value, total, active, with_embeddings) in [
        (deepseek_v3(), 671e9, 37e9, true),
        (glm4_7_flash(), 30e9, 3e9, false),
        (glm4_5_air(), 106e9, 12e9, false),
    ] {
        let a = arch(value);
        assert!(
            a.unrecognized_fields.is_empty(),
            "{:?}",
            a.unrecognized_fields
        );
        let c = &a.config;
        let (t, mut act) = c.parameter_counts();
        if !with_embeddings {
            act -= 2 * (c.vocab_size * c.hidden_size) as u128;
        }
        let (t, act) = (t as f64, act as f64);
        let name = &c.model_type;
        // Published sizes are rounded, "A3B" to a whole billion.
        assert!((t / total - 1.0).abs() < 0.01, "{name}: {t:e} parameters");
        assert!((act / active - 1.0).abs() < 0.1, "{name}: {act:e} active");
    }
}

#[test]
fn deepseek_v3_translates_with_its_router_latent_shape_and_fp8_blocks() {
    let a = arch(deepseek_v3());
    let c = &a.config;
    let l = c.latent_attention.as_ref().unwrap();
    assert_eq!(
        (
            l.q_lora_rank,
            l.kv_lora_rank,
            l.nope_dim,
            l.rope_dim,
            l.v_dim
        ),
        (Some(1536), 512, 128, 64, 128)
    );
    assert!(l.rope_interleave);
    assert_eq!(c.rope_head_dim(), 64);
    assert!(c
        .layers
        .iter()
        .all(|x| x.attention == AttentionKind::Latent));
    let dense = c.layers.iter().filter(|x| x.ffn == FfnKind::Dense).count();
    assert_eq!(dense, 3);
    assert!(c.layers[..3].iter().all(|x| x.ffn == FfnKind::Dense));
    let r = &c.moe.router;
    assert_eq!(r.scoring, Scoring::Sigmoid);
    assert_eq!(r.group_limit, Some(GroupLimit { groups: 8, keep: 4 }));
    assert!(r.correction_bias && r.renormalise && r.f32_logits);
    assert_eq!((r.top_k, r.scale), (8, 2.5));
    let shared = c.moe.shared_expert.as_ref().unwrap();
    assert_eq!((shared.intermediate_size, shared.gated), (2048, false));
    // YaRN x40: 1/sqrt(192), times (0.1 ln 40 + 1)^2 from mscale_all_dim; cos and sin keep
    // mscale / mscale_all_dim = 1.
    let m = 0.1 * 40f64.ln() + 1.0;
    assert!((c.attention.scale - m * m / 192f64.sqrt()).abs() < 1e-12);
    assert_eq!(c.rope.yarn.as_ref().unwrap().attention_factor, 1.0);
    assert_eq!(a.fp8_block, Some([128, 128]));
    assert_eq!(a.skipped[0].0, "model.layers.61.");
    // Per position: 61 layers of one 512 latent and one 64 rotary key.
    assert_eq!(c.cached_numbers_per_position(), 61 * 576);
}

#[test]
fn glm_flash_and_air_translate() {
    let a = arch(glm4_7_flash());
    let c = &a.config;
    assert_eq!(c.cached_numbers_per_position(), 47 * 576);
    assert_eq!(c.moe.router.group_limit, None);
    assert_eq!(c.moe.router.scale, 1.8);
    assert_eq!(c.layers[0].ffn, FfnKind::Dense);
    assert!(c.layers[1..].iter().all(|x| x.ffn == FfnKind::Sparse));
    assert_eq!(c.attention.scale, 1.0 / 256f64.sqrt());
    assert_eq!(c.latent_attention.as_ref().unwrap().norm_eps, 1e-6);
    let a = arch(glm4_5_air());
    let c = &a.config;
    assert!(c.latent_attention.is_none());
    assert!(c.attention.qkv_bias && !c.attention.o_bias);
    assert_eq!((c.attention.head_dim, c.rope.rotary_dim(128)), (128, 64));
    assert_eq!(c.cached_numbers_per_position(), 46 * 2 * 8 * 128);
    assert!(a.fp8_block.is_none());
}

/// Null and absent differ: `q_lora_rank: null` is a plain `q_proj`, its absence transformers'
/// default rank. Each family reads its own layer plan: GLM-4.7-Flash's `mlp_layer_types`
/// (its `first_k_dense_replace` only where it agrees), DeepSeek's `first_k_dense_replace`.
#[test]
fn defaults_and_layer_plans_follow_each_familys_hf_model() {
    let mut no_rank = deepseek_v3();
    no_rank.as_object_mut().unwrap().remove("q_lora_rank");
    let rank = |v: Value| arch(v).config.latent_attention.unwrap().q_lora_rank;
    assert_eq!(rank(no_rank), Some(1536));
    assert_eq!(
        rank(with(deepseek_v3(), json!({"q_lora_rank": null}))),
        None
    );
    let types = json!(["dense", "sparse", "dense"]);
    let flash = with(
        glm4_7_flash(),
        json!({"num_hidden_layers": 3, "mlp_layer_types": types}),
    );
    let dense: Vec<bool> = (arch(flash).config.layers.iter())
        .map(|l| l.ffn == FfnKind::Dense)
        .collect();
    assert_eq!(dense, [true, false, true]);
    let e = error(with(glm4_7_flash(), json!({"first_k_dense_replace": 2})));
    assert!(e.contains("first_k_dense_replace"), "{e}");
    let e = error(with(glm4_7_flash(), json!({"partial_rotary_factor": 0.5})));
    assert!(e.contains("partial_rotary_factor"), "{e}");
    let a = arch(with(deepseek_v3(), json!({"mlp_layer_types": ["dense"]})));
    assert_eq!(a.unrecognized_fields, ["mlp_layer_types"]);
}

/// One clear line each, naming the field.
#[test]
fn router_and_quantization_settings_that_cannot_hold_are_refused() {
    let cases = [
        (json!({"topk_group": 9}), "topk_group"),
        (json!({"n_group": 7}), "n_group"),
        (json!({"scoring_func": "softmax"}), "scoring_func"),
        (json!({"topk_method": "greedy"}), "topk_method"),
        (json!({"moe_layer_freq": 2}), "moe_layer_freq"),
        (
            json!({"first_k_dense_replace": 62}),
            "first_k_dense_replace",
        ),
        (json!({"qk_rope_head_dim": 63}), "qk_rope_head_dim"),
        (json!({"kv_lora_rank": 0}), "kv_lora_rank"),
        (
            json!({"num_hidden_layers": 1u64 << 40}),
            "num_hidden_layers",
        ),
        (
            json!({"num_nextn_predict_layers": 1u64 << 40}),
            "num_nextn_predict_layers",
        ),
        (
            json!({"quantization_config": {"quant_method": "fp8", "activation_scheme": "static",
                                           "weight_block_size": [128, 128]}}),
            "activation_scheme",
        ),
        (
            json!({"quantization_config": {"quant_method": "fp8"}}),
            "weight_block_size",
        ),
        (
            json!({"quantization_config": {"quant_method": "fp8", "fmt": "e5m2",
                                           "weight_block_size": [128, 128]}}),
            "fmt",
        ),
        (
            json!({"quantization_config": {"quant_method": "gptq"}}),
            "quantization_config",
        ),
    ];
    for (patch, field) in cases {
        let e = error(with(deepseek_v3(), patch.clone()));
        assert!(e.contains(field), "{patch}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
