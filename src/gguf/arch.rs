//! A GGUF file's model as the families in `arch` read it: the metadata llama.cpp's converter
//! wrote (`qwen3moe.embedding_length`, ...) turned back into the config.json fields it came
//! from, so that one parser per family serves both formats, and the tensors under llama.cpp's
//! names (`blk.N.ffn_gate_exps.weight`).

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

use super::Gguf;
use crate::arch::{self, Architecture, ExpertNames, TensorNames};
use crate::error::Result;

/// llama.cpp's tensor names (its `tensor_mapping.py`), for every family it shares them in.
pub const GGUF_NAMES: TensorNames = TensorNames {
    embed: "token_embd.weight",
    final_norm: "output_norm.weight",
    lm_head: "output.weight",
    layers: "blk",
    attn_norm: "attn_norm.weight",
    ffn_norm: "ffn_norm.weight",
    q: "attn_q",
    k: "attn_k",
    v: "attn_v",
    o: "attn_output",
    q_norm: "attn_q_norm.weight",
    k_norm: "attn_k_norm.weight",
    sinks: "attn_sinks.weight",
    moe: "",
    router: "ffn_gate_inp.weight",
    router_bias: "ffn_gate_inp.bias",
    router_correction_bias: "exp_probs_b.bias",
    experts: ExpertNames::Separate {
        gate: "ffn_gate_exps.weight",
        up: "ffn_up_exps.weight",
        down: "ffn_down_exps.weight",
    },
    expert_biases: None,
    shared_expert: "",
    shared_expert_gate: "ffn_gate_inp_shexp.weight",
    shared_expert_projs: Some(["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]),
    dense_mlp: "",
    mlp_gate: "ffn_gate",
    mlp_up: "ffn_up",
    mlp_down: "ffn_down",
    // No GGUF architecture read here has linear attention (FAMILIES); unused.
    linear_attn: arch::LLAMA_NAMES.linear_attn,
    latent: arch::LLAMA_NAMES.latent,
    branches: arch::LLAMA_NAMES.branches,
};

/// The GGUF architectures read, with the config.json `model_type` each came from.
const FAMILIES: &[(&str, &str)] = &[
    ("qwen3moe", "qwen3_moe"),
    ("qwen2moe", "qwen2_moe"),
    ("olmoe", "olmoe"),
    ("llama", "mixtral"),
    ("granitemoe", "granitemoe"),
    ("gpt-oss", "gpt_oss"),
];

/// The model in `gguf`, and the tensors whose rows to restore to HF's order (with their head
/// count): llama.cpp permutes q and k of the families it converts as Llama.
pub fn architecture(gguf: &Gguf) -> Result<(Architecture, HashMap<String, usize>)> {
    let name = gguf.architecture()?;
    let Some(&(_, model_type)) = FAMILIES.iter().find(|(a, _)| *a == name) else {
        let known: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
        return Err(gguf.error(format!(
            "general.architecture `{name}` is not supported (supported: {})",
            known.join(", ")
        )));
    };
    let config = config(gguf, name, model_type)?;
    let mut arch = arch::parse(gguf.path(), Json::Object(config))?;
    arch.names = GGUF_NAMES;
    if name == "gpt-oss" {
        arch.names.ffn_norm = "post_attention_norm.weight";
    }
    let mut unpermute = HashMap::new();
    if matches!(name, "llama" | "granitemoe") {
        let a = &arch.config.attention;
        for i in 0..arch.config.num_layers() {
            for (proj, heads) in [("attn_q", a.num_heads), ("attn_k", a.num_kv_heads)] {
                for part in ["weight", "bias"] {
                    unpermute.insert(format!("blk.{i}.{proj}.{part}"), heads);
                }
            }
        }
    }
    Ok((arch, unpermute))
}

/// The config.json of the checkpoint `gguf` was converted from, as far as a forward pass
/// needs it.
fn config(gguf: &Gguf, arch: &str, model_type: &str) -> Result<Map<String, Json>> {
    let key = |k: &str| format!("{arch}.{k}");
    let required = |k: &str| -> Result<u64> {
        gguf.u64(&key(k))?
            .ok_or_else(|| gguf.error(format!("metadata `{}` is missing", key(k))))
    };
    let embed = gguf
        .tensor(GGUF_NAMES.embed)
        .ok_or_else(|| gguf.error(format!("tensor `{}` is missing", GGUF_NAMES.embed)))?;
    let layers = required("block_count")?;
    let heads = required("attention.head_count")?;
    let mut c = Map::new();
    let mut set = |field: &str, value: Json| {
        c.insert(field.to_string(), value);
    };
    set("model_type", json!(model_type));
    set("hidden_size", json!(required("embedding_length")?));
    set("num_hidden_layers", json!(layers));
    set("num_attention_heads", json!(heads));
    set(
        "num_key_value_heads",
        json!(gguf.u64(&key("attention.head_count_kv"))?.unwrap_or(heads)),
    );
    if let Some(d) = gguf.u64(&key("attention.key_length"))? {
        set("head_dim", json!(d));
    }
    set(
        "max_position_embeddings",
        json!(required("context_length")?),
    );
    let eps = gguf.f64(&key("attention.layer_norm_rms_epsilon"))?;
    set(
        "rms_norm_eps",
        json!(eps.ok_or_else(|| gguf.error(format!(
            "metadata `{}` is missing",
            key("attention.layer_norm_rms_epsilon")
        )))?),
    );
    if let Some(theta) = gguf.f64(&key("rope.freq_base"))? {
        set("rope_theta", json!(theta));
    }
    set("vocab_size", json!(embed.dims.get(1).copied().unwrap_or(0)));
    set(
        "tie_word_embeddings",
        json!(gguf.tensor(GGUF_NAMES.lm_head).is_none()),
    );
    if gguf.u64(&key("expert_count"))?.unwrap_or(0) == 0 {
        return Err(gguf.error(format!(
            "a dense {arch} model (no `{}`): moe-runtime runs mixture-of-experts models",
            key("expert_count")
        )));
    }
    let experts = required("expert_count")?;
    let used = required("expert_used_count")?;
    set("num_experts_per_tok", json!(used));
    let expert_ffn = gguf.u64(&key("expert_feed_forward_length"))?;
    let ffn = gguf.u64(&key("feed_forward_length"))?;
    let norm_topk = gguf
        .get(&key("expert_weights_norm"))
        .and_then(|v| v.as_bool());
    // Layers without a router are dense (Qwen2-MoE's `mlp_only_layers`).
    let dense: Vec<u64> = (0..layers)
        .filter(|i| {
            gguf.tensor(&format!("blk.{i}.ffn_gate_inp.weight"))
                .is_none()
        })
        .collect();
    let has = |name: &str| gguf.tensor(name).is_some();
    match model_type {
        "qwen3_moe" => {
            set("num_experts", json!(experts));
            set("moe_intermediate_size", json!(expert_ffn.or(ffn)));
            set("intermediate_size", json!(ffn.unwrap_or(0)));
            // llama.cpp's qwen3moe graph renormalises the chosen experts' weights.
            set("norm_topk_prob", json!(norm_topk.unwrap_or(true)));
            set("mlp_only_layers", json!(dense));
        }
        "qwen2_moe" => {
            set("num_experts", json!(experts));
            set("moe_intermediate_size", json!(expert_ffn.or(ffn)));
            set("intermediate_size", json!(ffn.unwrap_or(0)));
            set(
                "shared_expert_intermediate_size",
                json!(required("expert_shared_feed_forward_length")?),
            );
            set("norm_topk_prob", json!(norm_topk.unwrap_or(false)));
            set("mlp_only_layers", json!(dense));
            set("qkv_bias", json!(has("blk.0.attn_q.bias")));
        }
        "olmoe" => {
            set("num_experts", json!(experts));
            set("intermediate_size", json!(expert_ffn.or(ffn)));
            set("norm_topk_prob", json!(norm_topk.unwrap_or(false)));
            if let Some(clip) = gguf.f64(&key("attention.clamp_kqv"))? {
                set("clip_qkv", json!(clip));
            }
        }
        "mixtral" | "granitemoe" | "gpt_oss" => {
            set("num_local_experts", json!(experts));
            set("intermediate_size", json!(expert_ffn.or(ffn)));
        }
        _ => {}
    }
    if model_type == "gpt_oss" {
        // llama.cpp's gpt-oss: every other layer slides, the first one included; the
        // clamped SwiGLU's limit is not stored (gpt-oss's 7 is the default either way).
        let window = required("attention.sliding_window")?;
        let types: Vec<&str> = (0..layers)
            .map(|i| match i % 2 {
                0 => "sliding_attention",
                _ => "full_attention",
            })
            .collect();
        set("sliding_window", json!(window));
        set("layer_types", json!(types));
        set("attention_bias", json!(has("blk.0.attn_q.bias")));
    }
    if let Some(kind) = gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
        if kind != "none" {
            let mut scaling = Map::new();
            scaling.insert("rope_type".into(), json!(kind));
            for (field, k) in [
                ("factor", "rope.scaling.factor"),
                (
                    "original_max_position_embeddings",
                    "rope.scaling.original_context_length",
                ),
                ("beta_fast", "rope.scaling.yarn_beta_fast"),
                ("beta_slow", "rope.scaling.yarn_beta_slow"),
            ] {
                if let Some(v) = gguf.f64(&key(k))? {
                    scaling.insert(field.into(), json!(v));
                }
            }
            if kind == "yarn" {
                // Not stored: llama.cpp always rounds YaRN's correction range to whole dims
                // (HF's `truncate`), and its output is what a GGUF file means.
                scaling.insert("truncate".into(), json!(true));
            }
            set("rope_scaling", Json::Object(scaling));
        }
    }
    if model_type == "granitemoe" {
        for (field, k) in [
            ("attention_multiplier", "attention.scale"),
            ("embedding_multiplier", "embedding_scale"),
            ("residual_multiplier", "residual_scale"),
            ("logits_scaling", "logit_scale"),
        ] {
            if let Some(v) = gguf.f64(&key(k))? {
                set(field, json!(v));
            }
        }
    }
    Ok(c)
}
