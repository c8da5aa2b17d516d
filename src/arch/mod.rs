//! Model families as data: each file translates one `model_type`'s config.json into a
//! `ModelConfig` and names its hub tensors. No family has tensor math of its own.

mod deepseek;
mod fields;
mod gemma4;
mod gpt_oss;
mod granitemoe;
mod mixtral;
mod olmoe;
mod qwen2_moe;
mod qwen3;
mod qwen3_moe;
mod qwen3_next;
mod rope;

use std::path::Path;

use serde_json::Value;

pub use fields::Fields;

use crate::error::{Error, Result};
use crate::spec::{
    Activation, AttentionConfig, AttentionKind, FfnKind, LayerSpec, ModelConfig, MoeConfig,
    RouterSpec, Scales,
};
use rope::rope;

/// The `model_type` values we load, with the family that reads each.
pub const SUPPORTED: &[&str] = &[
    "mixtral",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "olmoe",
    "granitemoe",
    "gpt_oss",
    "qwen3_next",
    "qwen3_5_moe",
    "deepseek_v3",
    "kimi_k2",
    "glm4_moe_lite",
    "glm4_moe",
    "gemma4",
    "gemma4_text",
];

/// A parsed config.json: the blueprint, where its tensors live, and what went unread.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub config: ModelConfig,
    pub names: TensorNames,
    /// config.json fields that no part of the parser read; the caller should report them.
    pub unrecognized_fields: Vec<String>,
    /// The checkpoint's experts are stored quantized (`quantization_config`: gpt-oss's MXFP4).
    pub quantized_experts: bool,
    /// The checkpoint's FP8 weights are scaled per block of these (rows, columns)
    /// (`quantization_config.weight_block_size`, DeepSeek's and GLM's FP8 releases): each
    /// F8_E4M3 `*.weight` is read with its `*.weight_scale_inv`.
    pub fp8_block: Option<[usize; 2]>,
    /// Tensors the checkpoint holds that a text model does not load, by name prefix, with
    /// what they are (a multimodal checkpoint's vision tower, multi-token-prediction layers).
    pub skipped: Vec<(String, &'static str)>,
}

/// Hub tensor names of one family. Layer tensors are `{layers}.{i}.{name}`; MoE tensors are
/// under `{layers}.{i}.{moe}.` (or directly under the layer where `moe` is empty, as in GGUF
/// files; likewise `dense_mlp` and `shared_expert`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorNames {
    pub embed: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
    pub layers: &'static str,
    pub attn_norm: &'static str,
    pub ffn_norm: &'static str,
    /// Projections, without the `.weight` / `.bias` suffix.
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    /// Attention sinks, (heads), read when the config has them.
    pub sinks: &'static str,
    /// The sparse block's prefix inside a layer.
    pub moe: &'static str,
    pub router: &'static str,
    /// The router's bias and its selection-only bias, read when the router spec has them.
    pub router_bias: &'static str,
    pub router_correction_bias: &'static str,
    pub experts: ExpertNames,
    /// Stacked expert biases; `None` where a family has none (or keeps them per expert).
    pub expert_biases: Option<ExpertBiasNames>,
    pub shared_expert: &'static str,
    pub shared_expert_gate: &'static str,
    /// The shared expert's projections when they are not named as the MLP's (`None`).
    pub shared_expert_projs: Option<[&'static str; 3]>,
    /// The dense MLP's prefix inside a layer, and the projections of any SiLU-gated MLP
    /// (dense layers and shared experts).
    pub dense_mlp: &'static str,
    pub mlp_gate: &'static str,
    pub mlp_up: &'static str,
    pub mlp_down: &'static str,
    /// Linear attention's tensors, read for the layers that have it.
    pub linear_attn: LinearAttnNames,
    /// Latent attention's tensors (the query is `q` without a low-rank path, the output `o`).
    pub latent: LatentNames,
    /// The post-norms, router scales and layer scalar of Gemma-style layers.
    pub branches: BranchNames,
}

/// Tensors of layers whose branches are normed on the way out (`ModelConfig::sandwich_norms`,
/// `FfnKind::DenseAndSparse`), whose router scales its input and its experts
/// (`MoeConfig::router_input_scale`, `per_expert_scale`) and whose output is scaled
/// (`ModelConfig::layer_scalar`): each read where the config asks for it, under the layer
/// (`router_input_scale` and `per_expert_scale` under the sparse block's prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct BranchNames {
    pub post_attn_norm: &'static str,
    pub post_ffn_norm: &'static str,
    /// Beside the experts: the dense MLP's post-norm, the experts' pre- and post-norm.
    pub dense_post_norm: &'static str,
    pub experts_pre_norm: &'static str,
    pub experts_post_norm: &'static str,
    /// (hidden) and (experts).
    pub router_input_scale: &'static str,
    pub per_expert_scale: &'static str,
    /// (1).
    pub layer_scalar: &'static str,
}

/// Multi-head latent attention's projections (without `.weight` / `.bias`) and norms.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentNames {
    pub q_a: &'static str,
    pub q_a_norm: &'static str,
    pub q_b: &'static str,
    pub kv_a: &'static str,
    pub kv_a_norm: &'static str,
    pub kv_b: &'static str,
}

/// Gated DeltaNet's tensors, under `{layers}.{i}.{prefix}`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearAttnNames {
    pub prefix: &'static str,
    pub projections: LinearProjections,
    /// (conv_dim, 1, kernel), over the q, k and v channels.
    pub conv: &'static str,
    pub a_log: &'static str,
    pub dt_bias: &'static str,
    /// The gated norm's weight (value_head_dim), used as it is stored (no offset).
    pub norm: &'static str,
    /// The output projection, without `.weight`.
    pub out: &'static str,
}

/// How a checkpoint stores linear attention's input projections (without `.weight`).
#[derive(Debug, Clone, PartialEq)]
pub enum LinearProjections {
    /// Qwen3-Next: `qkvz` grouped by key head (each group: its q rows, its k rows, then the
    /// v rows and the z rows of its value heads) and `ba` likewise (the b rows of the group's
    /// value heads, then their a rows).
    Grouped {
        qkvz: &'static str,
        ba: &'static str,
    },
    /// Qwen3.5: `qkv` (all q rows, all k rows, all v rows), `z`, `b` and `a`.
    Split {
        qkv: &'static str,
        z: &'static str,
        b: &'static str,
        a: &'static str,
    },
}

/// How a checkpoint stores its routed experts.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpertNames {
    /// One tensor per expert and projection: `{moe}.experts.{e}.{gate|up|down}.weight`.
    PerExpert {
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// Already stacked: `{moe}.{gate_up}` as [E, 2I, H] (gate rows first) and
    /// `{moe}.{down}` as [E, H, I].
    Stacked {
        gate_up: &'static str,
        down: &'static str,
    },
    /// Stacked per projection, as GGUF files hold them: `{moe}.{gate}` and `{moe}.{up}` as
    /// [E, I, H], `{moe}.{down}` as [E, H, I].
    Separate {
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// gpt-oss: stacked as (E, in, out) with gate and up columns alternating, `{gate_up}` [E, H,
    /// 2I] and `{down}` [E, I, H], biases `{gate_up}_bias` [E, 2I] (alternating too) and
    /// `{down}_bias` [E, H]; or in MXFP4 as published, `{name}_blocks` and `{name}_scales` laid
    /// out (E, out, in / 32, ..) with gate and up rows alternating.
    Interleaved {
        gate_up: &'static str,
        down: &'static str,
    },
}

/// Where stacked expert biases live when the config says there are some: `{moe}.{gate_up}`
/// as [E, 2I] (gate entries first: a family that stores them otherwise, as gpt-oss
/// interleaves gate and up, reorders them at load) and `{moe}.{down}` as [E, H]. Per-expert
/// checkpoints keep them beside their weights (`{gate|up|down}.bias`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertBiasNames {
    pub gate_up: &'static str,
    pub down: &'static str,
}

/// The names most families share (the Llama lineage); each family overrides what differs.
pub const LLAMA_NAMES: TensorNames = TensorNames {
    embed: "model.embed_tokens.weight",
    final_norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    layers: "model.layers",
    attn_norm: "input_layernorm.weight",
    ffn_norm: "post_attention_layernorm.weight",
    q: "self_attn.q_proj",
    k: "self_attn.k_proj",
    v: "self_attn.v_proj",
    o: "self_attn.o_proj",
    q_norm: "self_attn.q_norm.weight",
    k_norm: "self_attn.k_norm.weight",
    sinks: "self_attn.sinks",
    moe: "mlp",
    router: "gate.weight",
    router_bias: "gate.bias",
    router_correction_bias: "gate.e_score_correction_bias",
    experts: ExpertNames::PerExpert {
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
    },
    expert_biases: None,
    shared_expert: "shared_expert",
    shared_expert_gate: "shared_expert_gate.weight",
    shared_expert_projs: None,
    dense_mlp: "mlp",
    mlp_gate: "gate_proj",
    mlp_up: "up_proj",
    mlp_down: "down_proj",
    linear_attn: LinearAttnNames {
        prefix: "linear_attn",
        projections: LinearProjections::Grouped {
            qkvz: "in_proj_qkvz",
            ba: "in_proj_ba",
        },
        conv: "conv1d.weight",
        a_log: "A_log",
        dt_bias: "dt_bias",
        norm: "norm.weight",
        out: "out_proj",
    },
    latent: LatentNames {
        q_a: "self_attn.q_a_proj",
        q_a_norm: "self_attn.q_a_layernorm.weight",
        q_b: "self_attn.q_b_proj",
        kv_a: "self_attn.kv_a_proj_with_mqa",
        kv_a_norm: "self_attn.kv_a_layernorm.weight",
        kv_b: "self_attn.kv_b_proj",
    },
    branches: BranchNames {
        post_attn_norm: "post_attention_layernorm.weight",
        post_ffn_norm: "post_feedforward_layernorm.weight",
        dense_post_norm: "post_feedforward_layernorm_1.weight",
        experts_pre_norm: "pre_feedforward_layernorm_2.weight",
        experts_post_norm: "post_feedforward_layernorm_2.weight",
        router_input_scale: "router.scale",
        per_expert_scale: "router.per_expert_scale",
        layer_scalar: "layer_scalar",
    },
};

/// `parent.name`, leaving out an empty part (GGUF's layer tensors have no MoE or MLP level).
pub fn join(parent: &str, name: &str) -> String {
    match (parent.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => parent.to_string(),
        _ => format!("{parent}.{name}"),
    }
}

/// Reads `dir/config.json` and translates it for the family its `model_type` names.
pub fn load(dir: &Path) -> Result<Architecture> {
    Error::check_model_dir(dir)?;
    let path = dir.join("config.json");
    parse(&path, crate::json::read(&path)?)
}

/// Translates an already-read config.json; `path` names it in errors.
pub fn parse(path: &Path, value: Value) -> Result<Architecture> {
    let mut f = Fields::new(path, value)?;
    let model_type = f
        .opt_str("model_type")?
        .ok_or_else(|| f.error("model_type", "is required but missing"))?;
    // Families accept the quantization methods they read (common() refuses the others).
    let (quantized_experts, fp8_block) = quantization(&mut f)?;
    // What a multimodal wrapper holds besides its text model, and where the text model's
    // fields are.
    let (mut skipped, mut nested): (Vec<(String, &str)>, &str) = (Vec::new(), "");
    // Spec fields the family's config names otherwise, for the checks' errors.
    let mut renamed: &[(&str, &str)] = &[];
    let (config, names) = match model_type.as_str() {
        "mixtral" => mixtral::parse(&mut f)?,
        "qwen2_moe" => qwen2_moe::parse(&mut f)?,
        "qwen3" => qwen3::parse(&mut f)?,
        "qwen3_moe" => qwen3_moe::parse(&mut f)?,
        "olmoe" => olmoe::parse(&mut f)?,
        "granitemoe" => granitemoe::parse(&mut f)?,
        "gpt_oss" => gpt_oss::parse(&mut f)?,
        "qwen3_next" => qwen3_next::parse(&mut f)?,
        "qwen3_5_moe" => {
            nested = "text_config.";
            skipped = (qwen3_next::QWEN3_5_SKIPPED.iter())
                .map(|&(prefix, what)| (prefix.to_string(), what))
                .collect();
            qwen3_next::parse_multimodal(&mut f)?
        }
        "deepseek_v3" | "kimi_k2" => deepseek::parse_deepseek_v3(&mut f)?,
        "glm4_moe_lite" => deepseek::parse_glm4_moe_lite(&mut f)?,
        "glm4_moe" => deepseek::parse_glm4_moe(&mut f)?,
        "gemma4" => {
            nested = "text_config.";
            renamed = gemma4::RENAMED;
            skipped = (gemma4::SKIPPED.iter())
                .map(|&(prefix, what)| (prefix.to_string(), what))
                .collect();
            gemma4::parse(&mut f)?
        }
        "gemma4_text" => {
            renamed = gemma4::RENAMED;
            gemma4::parse_text(&mut f)?
        }
        other => {
            return Err(f.error(
                "model_type",
                format!(
                    "`{other}` is not supported (supported: {})",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    };
    if matches!(
        model_type.as_str(),
        "deepseek_v3" | "kimi_k2" | "glm4_moe_lite" | "glm4_moe"
    ) {
        skipped = deepseek::mtp_layers(&mut f, config.layers.len())?;
    }
    f.irrelevant(IRRELEVANT);
    // A multimodal checkpoint's text fields live in `text_config`, and a family may call a
    // field otherwise: its checks name them so.
    config.validate(path).map_err(|e| match e {
        Error::Config {
            path,
            field,
            message,
        } if !field.starts_with('(') => {
            let field = match renamed.iter().find(|(ours, _)| *ours == field) {
                Some((_, theirs)) => theirs.to_string(),
                None => field,
            };
            Error::Config {
                path,
                field: format!("{nested}{field}"),
                message,
            }
        }
        e => e,
    })?;
    Ok(Architecture {
        config,
        names,
        unrecognized_fields: f.unread(),
        quantized_experts,
        fp8_block,
        skipped,
    })
}

/// What `quantization_config` says about the stored weights: experts in MXFP4 (gpt-oss), or
/// FP8 weights with one scale per block of the given size (DeepSeek, GLM). Whether the family
/// reads the method is `common`'s check; the FP8 fields are checked here, as DeepSeek writes
/// them.
fn quantization(f: &mut Fields) -> Result<(bool, Option<[usize; 2]>)> {
    let Some(q) = f.value("quantization_config") else {
        return Ok((false, None));
    };
    let field = |key: &str| format!("quantization_config.{key}");
    let method = q.get("quant_method").and_then(Value::as_str);
    if method != Some("fp8") {
        return Ok((method == Some("mxfp4"), None));
    }
    // Static activation scales would come with tensors of input scales, not read here; every
    // published block-scaled checkpoint quantizes activations dynamically (or not at all).
    match q.get("activation_scheme").map(|v| (v, v.as_str())) {
        None | Some((_, Some("dynamic"))) => {}
        Some((v, _)) => {
            let message = format!("{v} is not supported (only dynamic)");
            return Err(f.error(&field("activation_scheme"), message));
        }
    }
    match q.get("fmt").map(|v| (v, v.as_str())) {
        None | Some((_, Some("e4m3"))) => {}
        Some((v, _)) => {
            let message = format!("{v} is not supported (FP8 weights are read as e4m3)");
            return Err(f.error(&field("fmt"), message));
        }
    }
    let block = match q.get("weight_block_size") {
        Some(Value::Array(b)) => b
            .iter()
            .map(|v| v.as_u64().filter(|&n| (1..=1 << 16).contains(&n)))
            .collect::<Option<Vec<u64>>>(),
        _ => None,
    };
    match block.as_deref() {
        Some(&[rows, cols]) => Ok((false, Some([rows as usize, cols as usize]))),
        _ => Err(f.error(
            &field("weight_block_size"),
            format!(
                "expected two block sizes in 1..=65536 (DeepSeek's [128, 128]), got {}; FP8 \
                 checkpoints without per-block scales are not supported",
                q.get("weight_block_size").unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// Bookkeeping and training-only knobs: none of them changes a forward pass.
const IRRELEVANT: &[&str] = &[
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "output_router_logits",
    "router_aux_loss_coef",
    "router_jitter_noise",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "_name_or_path",
    "_attn_implementation_autoset",
];

/// Family defaults for fields that published configs sometimes leave out.
struct Defaults {
    rope_theta: f64,
    rms_norm_eps: f64,
    /// `head_dim` when absent (`None`: hidden_size / num_attention_heads).
    head_dim: Option<usize>,
    /// The `quantization_config.quant_method`s whose checkpoints the family reads.
    quant_methods: &'static [&'static str],
    /// The share of each head that rotates when the config does not say, for the families
    /// that read `partial_rotary_factor` (`None` for the others).
    partial_rotary_factor: Option<f64>,
    /// `rope_parameters` is keyed by layer type and read by the family (Gemma 4); `rope` is
    /// then the original RoPE at `rope_theta` until the family sets it.
    rope_by_layer_type: bool,
}

impl Defaults {
    /// What the Llama lineage leaves to the family: nothing but the two numbers.
    const LLAMA: Defaults = Defaults {
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        head_dim: None,
        quant_methods: &[],
        partial_rotary_factor: None,
        rope_by_layer_type: false,
    };
}

/// The fields every family shares, as a config whose MoE part the family fills in.
fn common(f: &mut Fields, defaults: Defaults) -> Result<ModelConfig> {
    let model_type = f.opt_str("model_type")?.unwrap_or_default();
    let hidden_size = f.usize("hidden_size")?;
    let num_heads = f.usize("num_attention_heads")?;
    if num_heads == 0 {
        return Err(f.error("num_attention_heads", "must be at least 1"));
    }
    let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = f
        .opt_usize("head_dim")?
        .or(defaults.head_dim)
        .unwrap_or(hidden_size / num_heads);
    let num_layers = f.usize("num_hidden_layers")?;
    // Checked again with the whole config; here before the layer plan is allocated from it.
    if num_layers > crate::spec::MAX_LAYERS {
        return Err(f.error(
            "num_hidden_layers",
            format!(
                "{num_layers} is out of range 1..={}",
                crate::spec::MAX_LAYERS
            ),
        ));
    }
    if let Some(q) = f.value("quantization_config") {
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        if !defaults.quant_methods.contains(&method) {
            return Err(f.error(
                "quantization_config",
                format!(
                    "pre-quantized checkpoints ({method}) are not supported for this family; \
                     use f32, bf16 or f16 weights"
                ),
            ));
        }
    }
    let act = f
        .opt_str("hidden_act")?
        .unwrap_or_else(|| "silu".to_string());
    if act != "silu" {
        return Err(f.error(
            "hidden_act",
            format!("`{act}` is not supported (only silu)"),
        ));
    }
    Ok(ModelConfig {
        model_type,
        vocab_size: f.usize("vocab_size")?,
        hidden_size,
        max_position_embeddings: f.usize("max_position_embeddings")?,
        rms_norm_eps: f.f64_or("rms_norm_eps", defaults.rms_norm_eps)?,
        attention: AttentionConfig::plain(num_heads, num_kv_heads, head_dim),
        rope: match defaults.rope_by_layer_type {
            true => crate::spec::RopeConfig::plain(defaults.rope_theta),
            false => rope(f, defaults.rope_theta, defaults.partial_rotary_factor)?,
        },
        moe: MoeConfig {
            num_experts: 0,
            expert_intermediate_size: 0,
            router: RouterSpec::softmax_top_k(0, false),
            expert_bias: false,
            shared_expert: None,
            router_input_scale: false,
            per_expert_scale: false,
        },
        dense_intermediate_size: 0,
        activation: Activation::SiluGated,
        layers: vec![LayerSpec::SPARSE; num_layers],
        linear_attention: None,
        latent_attention: None,
        norm_weight_offset: 0.0,
        global_attention: None,
        sandwich_norms: false,
        layer_scalar: false,
        embedded_as: None,
        scales: Scales::default(),
        tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
    })
}

/// `attention_bias`: one switch for the biases of all four attention projections.
fn attention_bias(f: &mut Fields, cfg: &mut ModelConfig) -> Result<()> {
    let bias = f.bool_or("attention_bias", false)?;
    cfg.attention.qkv_bias = bias;
    cfg.attention.o_bias = bias;
    Ok(())
}

/// Layers are sparse unless listed in `mlp_only_layers` or off the `decoder_sparse_step`
/// grid (the Qwen rule).
fn qwen_layer_plan(f: &mut Fields, num_layers: usize) -> Result<Vec<LayerSpec>> {
    let dense = f.usize_list("mlp_only_layers")?;
    if let Some(&bad) = dense.iter().find(|&&i| i >= num_layers) {
        return Err(f.error(
            "mlp_only_layers",
            format!("layer {bad} does not exist (num_hidden_layers = {num_layers})"),
        ));
    }
    let step = f.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err(f.error("decoder_sparse_step", "must be at least 1"));
    }
    Ok((0..num_layers)
        .map(|i| {
            let ffn = if !dense.contains(&i) && (i + 1) % step == 0 {
                FfnKind::Sparse
            } else {
                FfnKind::Dense
            };
            LayerSpec {
                ffn,
                ..LayerSpec::SPARSE
            }
        })
        .collect())
}

/// `layer_types` as transformers 5 writes it: one `full_attention` or `sliding_attention` per
/// layer, `window` being the sliding layers' window (`None` where the config has none), or
/// `linear_attention` for the families with Gated DeltaNet layers (`linear`). Whether the
/// config lists them.
fn layer_types(
    f: &mut Fields,
    layers: &mut [LayerSpec],
    window: Option<usize>,
    linear: bool,
) -> Result<bool> {
    let Some(types) = f.value("layer_types") else {
        return Ok(false);
    };
    let Value::Array(types) = types else {
        return Err(f.error("layer_types", format!("expected a list, got {types}")));
    };
    if types.len() != layers.len() {
        return Err(f.error(
            "layer_types",
            format!(
                "{} entries for {} layers (num_hidden_layers)",
                types.len(),
                layers.len()
            ),
        ));
    }
    for (layer, t) in layers.iter_mut().zip(&types) {
        layer.attention = match (t.as_str(), window) {
            (Some("full_attention"), _) => AttentionKind::Full,
            (Some("linear_attention"), _) if linear => AttentionKind::Linear,
            (Some("sliding_attention"), Some(window)) => AttentionKind::Sliding { window },
            (Some("sliding_attention"), None) => {
                return Err(f.error(
                    "layer_types",
                    "asks for sliding attention, but the config sets no window (use_sliding_window or sliding_window)",
                ))
            }
            _ => return Err(f.error("layer_types", format!("{t} attention is not implemented"))),
        };
    }
    Ok(true)
}

/// `sliding_window` (4096 when absent, HF's default) when `use_sliding_window` switches it on
/// (the Qwen rule), else `None`.
fn qwen_window(f: &mut Fields) -> Result<Option<usize>> {
    let on = f.bool_or("use_sliding_window", false)?;
    let window = f.opt_usize("sliding_window")?;
    match (on, window) {
        (true, Some(0)) => Err(f.error(
            "sliding_window",
            "use_sliding_window is on, but the window is 0",
        )),
        (true, window) => Ok(Some(window.unwrap_or(4096))),
        (false, _) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
