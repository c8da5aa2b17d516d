//! Gemma 4 (its text model), as Google publishes it: the multimodal
//! `Gemma4ForConditionalGeneration` with the text config in `text_config` and the text tensors
//! under `model.language_model.`, a vision (and audio) tower beside it that a text engine skips.
//!
//! Its layers alternate sliding-window and global attention, the global ones with their own
//! head width, key/value heads, keys that double as values (`attention_k_eq_v`) and
//! proportional RoPE; q and k have per-head norms and v one without weights; the attention is
//! unscaled. Every branch is normed on the way in and out (sandwich norms), each layer's output
//! is multiplied by a stored scalar, the embedding by sqrt(hidden), and the logits are
//! soft-capped. With `enable_moe_block` (26B-A4B) each layer runs a GeGLU MLP and the routed
//! experts side by side: the router reads the residual stream through a weightless norm, a
//! learned scale and hidden^-0.5, and scales each chosen expert's weight by a learned factor.
//! Without it (31B) the layers are dense. A bare text model (`gemma4_text`, `Gemma4ForCausalLM`)
//! is the same model with its config flat and its tensors under `model.`.

use serde_json::{Map, Value};

use super::{common, Defaults, ExpertNames, Fields, TensorNames, IRRELEVANT, LLAMA_NAMES};
use crate::error::Result;
use crate::spec::{
    Activation, AttentionKind, EmbeddedAs, FfnKind, GlobalAttention, LayerSpec, ModelConfig,
    MoeConfig, QkNorm, RopeConfig, RouterSpec,
};

/// A bare text model's tensors (`Gemma4ForCausalLM`, under `model.`).
const TEXT_NAMES: TensorNames = TensorNames {
    ffn_norm: "pre_feedforward_layernorm.weight",
    // Router and experts sit directly under the layer.
    moe: "",
    router: "router.proj.weight",
    experts: ExpertNames::Stacked {
        gate_up: "experts.gate_up_proj",
        down: "experts.down_proj",
    },
    // Its post-norms, router scales and layer scalar are named as `LLAMA_NAMES.branches`.
    ..LLAMA_NAMES
};

/// The multimodal wrapper's text tensors, under `model.language_model.`.
const NAMES: TensorNames = TensorNames {
    embed: "model.language_model.embed_tokens.weight",
    final_norm: "model.language_model.norm.weight",
    layers: "model.language_model.layers",
    ..TEXT_NAMES
};

/// Tensors of a `gemma4` checkpoint outside the text model, by name prefix.
pub const SKIPPED: &[(&str, &str)] = &[
    ("model.vision_tower.", "the vision tower"),
    ("model.embed_vision.", "the vision embedder"),
    ("model.audio_tower.", "the audio tower"),
    ("model.embed_audio.", "the audio embedder"),
];

/// The spec's field names that Gemma 4's config calls otherwise.
pub const RENAMED: &[(&str, &str)] = &[("num_experts_per_tok", "top_k_experts")];

/// HF's defaults for the two layer types' RoPE (`Gemma4TextConfig.__post_init__`).
const SLIDING_THETA: f64 = 10_000.0;
const GLOBAL_THETA: f64 = 1_000_000.0;
const GLOBAL_PARTIAL: f64 = 0.25;

/// `gemma4`: the wrapper's `text_config`, read as a config of its own (its fields named
/// `text_config.*` in errors and in the list of unread ones).
pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut text = f.nested("text_config")?;
    text.irrelevant(IRRELEVANT);
    match text.opt_str("model_type")?.as_deref() {
        None | Some("gemma4_text") => {}
        Some(other) => {
            return Err(text.error(
                "model_type",
                format!("`{other}` is not Gemma 4's text model (gemma4_text)"),
            ))
        }
    }
    let mut cfg = text_model(&mut text)?;
    // HF ties the head of the wrapper by the wrapper's own field (true when absent); the text
    // config's is read by a bare text model alone.
    cfg.tie_word_embeddings = f.bool_or("tie_word_embeddings", true)?;
    // HF embeds the image, audio and video placeholders as the pad token (HF's defaults for
    // the ids), a text prompt that holds one included.
    let mut ids = Vec::new();
    for (key, default) in [
        ("image_token_id", 258_880),
        ("audio_token_id", 258_881),
        ("video_token_id", 258_884),
    ] {
        let id = f.opt_usize(key)?.unwrap_or(default);
        ids.extend(u32::try_from(id).ok());
    }
    let pad = text.opt_usize("pad_token_id")?.unwrap_or(0);
    let row = u32::try_from(pad).map_err(|_| text.error("pad_token_id", "is out of range"))?;
    cfg.embedded_as = Some(EmbeddedAs { ids, row });
    // The towers and the ids of their tokens: text-only inference.
    f.irrelevant(&[
        "vision_config",
        "audio_config",
        "boi_token_id",
        "eoi_token_id",
        "boa_token_id",
        "eoa_token_id",
        "eoa_token_index",
        "vision_soft_tokens_per_image",
        "initializer_range",
    ]);
    f.absorb(text);
    Ok((cfg, NAMES))
}

/// `gemma4_text`: a bare text model (`Gemma4ForCausalLM`, as fine-tunes may publish it), its
/// config flat and its head tied by its own `tie_word_embeddings` (true when absent).
pub fn parse_text(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = text_model(f)?;
    cfg.model_type = "gemma4_text".into();
    cfg.tie_word_embeddings = f.bool_or("tie_word_embeddings", true)?;
    Ok((cfg, TEXT_NAMES))
}

fn text_model(f: &mut Fields) -> Result<ModelConfig> {
    refuse_unbuilt(f)?;
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: SLIDING_THETA,
            head_dim: Some(256),
            rope_by_layer_type: true,
            ..Defaults::LLAMA
        },
    )?;
    cfg.model_type = "gemma4".into();
    // HF's default, where `common` takes one key/value head per head.
    if !f.has("num_key_value_heads") {
        cfg.attention.num_kv_heads = 4;
    }
    match f.opt_str("hidden_activation")?.as_deref() {
        None | Some("gelu_pytorch_tanh") => cfg.activation = Activation::GeluTanhGated,
        Some(other) => {
            return Err(f.error(
                "hidden_activation",
                format!("`{other}` is not supported (only gelu_pytorch_tanh)"),
            ))
        }
    }
    let bias = f.bool_or("attention_bias", false)?;
    let a = &mut cfg.attention;
    (a.qkv_bias, a.o_bias) = (bias, bias);
    // q and k normed per head (so the attention is unscaled), v normed without weights.
    (a.qk_norm, a.v_norm, a.scale) = (QkNorm::PerHead, true, 1.0);
    let k_eq_v = f.bool_or("attention_k_eq_v", false)?;
    let mut global = cfg.attention.clone();
    global.head_dim = f.opt_usize("global_head_dim")?.unwrap_or(512);
    global.k_eq_v = k_eq_v;
    // HF gives the global layers their own key/value heads only with keys as values.
    let global_kv = f.opt_usize("num_global_key_value_heads")?;
    if let (true, Some(kv)) = (k_eq_v, global_kv) {
        global.num_kv_heads = kv;
    }
    let (sliding_rope, global_rope) = ropes(f)?;
    cfg.rope = sliding_rope;
    cfg.global_attention = Some(GlobalAttention {
        attention: global,
        rope: global_rope,
    });
    let moe = f.bool_or("enable_moe_block", false)?;
    let ffn = match moe {
        true => FfnKind::DenseAndSparse,
        false => FfnKind::Dense,
    };
    cfg.layers = layer_plan(f, cfg.layers.len(), ffn)?;
    cfg.dense_intermediate_size = f.usize("intermediate_size")?;
    if moe {
        cfg.moe = MoeConfig {
            num_experts: f.usize("num_experts")?,
            expert_intermediate_size: f.usize("moe_intermediate_size")?,
            router: RouterSpec::softmax_top_k(f.usize("top_k_experts")?, true),
            expert_bias: false,
            shared_expert: None,
            router_input_scale: true,
            per_expert_scale: true,
        };
    } else {
        // Read by HF's MoE block alone.
        f.irrelevant(&["num_experts", "top_k_experts", "moe_intermediate_size"]);
    }
    cfg.sandwich_norms = true;
    cfg.layer_scalar = true;
    cfg.scales.embedding = (cfg.hidden_size as f64).sqrt();
    cfg.scales.embedding_in_dtype = true;
    cfg.scales.logit_softcap = f.opt_f64("final_logit_softcapping")?;
    Ok(cfg)
}

/// The parts of Gemma 4 that the smaller models use and that are not built here, refused by
/// name; and the fields that only they read.
fn refuse_unbuilt(f: &mut Fields) -> Result<()> {
    // HF's default is 256: only a config that says 0 (or null) has no per-layer embeddings.
    let per_layer = match f.present("hidden_size_per_layer_input") {
        true => f.opt_usize("hidden_size_per_layer_input")?.unwrap_or(0),
        false => 256,
    };
    if per_layer != 0 {
        return Err(f.error(
            "hidden_size_per_layer_input",
            format!(
                "{per_layer}: per-layer input embeddings (Gemma 4 E2B/E4B) are not supported; \
                 a config without them says 0"
            ),
        ));
    }
    f.irrelevant(&["vocab_size_per_layer_input"]);
    // What transformers 5.24 derives from global_head_dim and num_global_key_value_heads and
    // writes in their place; a published config says those two.
    if f.has("per_layer_config") {
        return Err(f.error(
            "per_layer_config",
            "is not read: give the global layers' shape as global_head_dim and \
             num_global_key_value_heads, as published configs do",
        ));
    }
    f.irrelevant(&["per_layer_config"]);
    let shared = f.opt_usize("num_kv_shared_layers")?.unwrap_or(0);
    if shared != 0 {
        return Err(f.error(
            "num_kv_shared_layers",
            format!(
                "{shared}: layers that reuse earlier layers' keys and values are not supported"
            ),
        ));
    }
    // Widens the MLP of the key/value-sharing layers alone, of which there are none.
    f.irrelevant(&["use_double_wide_mlp"]);
    match f.opt_str("use_bidirectional_attention")?.as_deref() {
        // Bidirectional among image tokens only: a text prompt is causal throughout.
        None | Some("vision") => Ok(()),
        Some(other) => Err(f.error(
            "use_bidirectional_attention",
            format!("`{other}` is not supported (a causal language model: null or vision)"),
        )),
    }
}

/// `layer_types` (`sliding_attention` or `full_attention` per layer), or HF's default pattern:
/// every sixth layer global. As HF, the last layer is global whatever the list says.
fn layer_plan(f: &mut Fields, num_layers: usize, ffn: FfnKind) -> Result<Vec<LayerSpec>> {
    let window = f.opt_usize("sliding_window")?.unwrap_or(512);
    if window == 0 {
        return Err(f.error("sliding_window", "must be at least 1"));
    }
    let sliding = AttentionKind::Sliding { window };
    let mut layers = vec![
        LayerSpec {
            attention: sliding,
            ffn
        };
        num_layers
    ];
    if !super::layer_types(f, &mut layers, Some(window), false)? {
        for (i, layer) in layers.iter_mut().enumerate() {
            if (i + 1) % 6 == 0 {
                layer.attention = AttentionKind::Full;
            }
        }
    }
    if let Some(last) = layers.last_mut() {
        last.attention = AttentionKind::Full;
    }
    Ok(layers)
}

/// The sliding and the global layers' RoPE from `rope_parameters`, keyed by layer type (HF's
/// defaults for a type it leaves out): `default` RoPE over the whole head, or `proportional`.
fn ropes(f: &mut Fields) -> Result<(RopeConfig, RopeConfig)> {
    let params = match f.value("rope_parameters") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(f.error(
                "rope_parameters",
                format!("expected an object keyed by layer type, got {v}"),
            ))
        }
    };
    if let Some(key) = params
        .keys()
        .find(|k| !["sliding_attention", "full_attention"].contains(&k.as_str()))
    {
        return Err(f.error(
            &format!("rope_parameters.{key}"),
            "is not a layer type (sliding_attention, full_attention)",
        ));
    }
    let sliding = layer_rope(
        f,
        &params,
        "sliding_attention",
        "default",
        SLIDING_THETA,
        1.0,
    )?;
    let global = layer_rope(
        f,
        &params,
        "full_attention",
        "proportional",
        GLOBAL_THETA,
        GLOBAL_PARTIAL,
    )?;
    Ok((sliding, global))
}

/// One layer type's RoPE; the defaults are HF's for a type the config does not list.
fn layer_rope(
    f: &Fields,
    params: &Map<String, Value>,
    layer_type: &str,
    default_type: &str,
    default_theta: f64,
    default_partial: f64,
) -> Result<RopeConfig> {
    let name = |key: &str| format!("rope_parameters.{layer_type}.{key}");
    let Some(p) = params.get(layer_type) else {
        return Ok(RopeConfig {
            partial_rotary_factor: default_partial,
            proportional: default_type == "proportional",
            ..RopeConfig::plain(default_theta)
        });
    };
    let Value::Object(p) = p else {
        let field = format!("rope_parameters.{layer_type}");
        return Err(f.error(&field, format!("expected an object, got {p}")));
    };
    let number = |key: &str| -> Result<Option<f64>> {
        match p.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| f.error(&name(key), format!("expected a number, got {v}"))),
        }
    };
    let proportional = match p.get("rope_type").map(|v| (v, v.as_str())) {
        None | Some((_, Some("default"))) => false,
        Some((_, Some("proportional"))) => true,
        Some((v, _)) => {
            return Err(f.error(
                &name("rope_type"),
                format!("{v} is not implemented (only default and proportional)"),
            ))
        }
    };
    for key in p.keys() {
        let known = ["rope_type", "rope_theta", "partial_rotary_factor", "factor"];
        if !known.contains(&key.as_str()) {
            return Err(f.error(&name(key), "is not supported"));
        }
    }
    if let Some(factor) = number("factor")?.filter(|&x| x != 1.0) {
        return Err(f.error(
            &name("factor"),
            format!("{factor}: scaled frequencies are not implemented (only 1)"),
        ));
    }
    let theta = number("rope_theta")?.unwrap_or(default_theta);
    // HF's default RoPE turns the whole head whatever the factor says; the proportional one
    // turns the factor's share of its pairs (1 when absent).
    let partial_rotary_factor = match proportional {
        true => number("partial_rotary_factor")?.unwrap_or(1.0),
        false => 1.0,
    };
    Ok(RopeConfig {
        partial_rotary_factor,
        proportional,
        ..RopeConfig::plain(theta)
    })
}

#[cfg(test)]
mod tests;
