//! The DeepSeek-V3 lineage: `deepseek_v3` (DeepSeek-V3, R1, V3.1; Kimi K2 publishes the same
//! model as `kimi_k2`), `glm4_moe_lite` (GLM-4.7-Flash) with multi-head latent attention, and
//! `glm4_moe` (GLM-4.5/4.6/4.7 and Air) with grouped-query attention, partial RoPE and optional
//! q/k norms. All share the router: sigmoid scores, a selection-only correction bias, the best
//! `topk_group` of `n_group` groups, renormalised and scaled by `routed_scaling_factor`; ungated
//! shared experts; the first `first_k_dense_replace` layers dense. Defaults as transformers'
//! configs. Checkpoints may hold FP8 weights in 128x128 blocks (`quantization_config`, read by
//! `quantization`), and multi-token-prediction layers after the last decoder layer, which a
//! text engine does not load (`skipped`).

use serde_json::Value;

use super::{common, Defaults, Fields, TensorNames, LLAMA_NAMES};
use crate::error::Result;
use crate::spec::{
    AttentionKind, FfnKind, GroupLimit, LatentAttentionConfig, LayerSpec, ModelConfig, MoeConfig,
    QkNorm, RouterSpec, Scoring, Selection, SharedExpertConfig,
};

/// The lineage's names: Llama's (latent attention's projections among them), with
/// `shared_experts`.
const NAMES: TensorNames = TensorNames {
    shared_expert: "shared_experts",
    ..LLAMA_NAMES
};

/// The families' differences from DeepSeek-V3, as transformers' config classes default them.
struct Family {
    latent: bool,
    /// `q_lora_rank` when the config leaves it out (an explicit null means a plain `q_proj`).
    q_lora_rank: usize,
    /// The layer plan comes from `mlp_layer_types` (GLM-4.7-Flash, whose HF model reads only
    /// that), not `first_k_dense_replace`.
    mlp_layer_types: bool,
    /// The share of each head RoPE turns when the config does not say, for the families that
    /// read `partial_rotary_factor` (`None`: DeepSeek, which does not).
    partial_rotary_factor: Option<f64>,
    groups: (usize, usize),
    routed_scaling_factor: f64,
    first_dense: usize,
    rms_norm_eps: f64,
}

const DEEPSEEK_V3: Family = Family {
    latent: true,
    q_lora_rank: 1536,
    mlp_layer_types: false,
    partial_rotary_factor: None,
    groups: (8, 4),
    routed_scaling_factor: 2.5,
    first_dense: 3,
    rms_norm_eps: 1e-6,
};

const GLM4_MOE_LITE: Family = Family {
    latent: true,
    q_lora_rank: 768,
    mlp_layer_types: true,
    partial_rotary_factor: Some(1.0),
    groups: (1, 1),
    routed_scaling_factor: 1.8,
    first_dense: 1,
    rms_norm_eps: 1e-5,
};

const GLM4_MOE: Family = Family {
    latent: false,
    q_lora_rank: 0,
    mlp_layer_types: false,
    partial_rotary_factor: Some(0.5),
    groups: (1, 1),
    routed_scaling_factor: 1.0,
    first_dense: 1,
    rms_norm_eps: 1e-5,
};

/// RMSNorm's epsilon inside latent attention: HF builds `q_a_layernorm` and `kv_a_layernorm`
/// without the config's `rms_norm_eps`, as DeepSeek's own code does.
const LATENT_NORM_EPS: f64 = 1e-6;

/// `deepseek_v3` and `kimi_k2`.
pub fn parse_deepseek_v3(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    parse(f, DEEPSEEK_V3)
}

pub fn parse_glm4_moe_lite(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    parse(f, GLM4_MOE_LITE)
}

pub fn parse_glm4_moe(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    parse(f, GLM4_MOE)
}

fn parse(f: &mut Fields, family: Family) -> Result<(ModelConfig, TensorNames)> {
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 10000.0,
            rms_norm_eps: family.rms_norm_eps,
            quant_methods: &["fp8"],
            partial_rotary_factor: family.partial_rotary_factor,
            ..Defaults::LLAMA
        },
    )?;
    match family.latent {
        true => latent_attention(f, &mut cfg, family.q_lora_rank)?,
        false => {
            // q, k and v have biases; o_proj never does.
            cfg.attention.qkv_bias = f.bool_or("attention_bias", false)?;
            if f.bool_or("use_qk_norm", false)? {
                cfg.attention.qk_norm = QkNorm::PerHead;
            }
        }
    }
    cfg.layers = layer_plan(f, cfg.layers.len(), &family)?;
    if cfg.layers.iter().any(|l| l.ffn == FfnKind::Dense) {
        cfg.dense_intermediate_size = f.usize("intermediate_size")?;
    } else {
        f.irrelevant(&["intermediate_size"]);
    }
    cfg.moe = moe(f, &family)?;
    // Read by the original code for training or for other routers, not by the forward pass:
    // the load-balancing loss, expert parallelism, the remote-code pointer, a tensor-parallel
    // split that computes the same products.
    f.irrelevant(&[
        "aux_loss_alpha",
        "seq_aux",
        "ep_size",
        "auto_map",
        "pretraining_tp",
        "num_nextn_predict_layers",
        "num_mtp_layers",
    ]);
    Ok((cfg, NAMES))
}

/// Multi-head latent attention's shape, and the attention fields it implies: the softmax scale
/// from the q·k width (with YaRN, times the square of `mscale_all_dim`'s scaling, as
/// DeepSeek computes it) and every head its own keys (`num_key_value_heads`, which `common`
/// reads, describes the expanded form: it is overwritten). RoPE turns the whole rotary part:
/// a `partial_rotary_factor` below one has no meaning here (HF's interleaved rotation cannot
/// run with one) and is refused.
fn latent_attention(f: &mut Fields, cfg: &mut ModelConfig, default_q_rank: usize) -> Result<()> {
    let q_lora_rank = match (f.present("q_lora_rank"), f.opt_usize("q_lora_rank")?) {
        (false, _) => Some(default_q_rank),
        (true, rank) => rank,
    };
    let latent = LatentAttentionConfig {
        q_lora_rank,
        kv_lora_rank: f.usize("kv_lora_rank")?,
        nope_dim: f.usize("qk_nope_head_dim")?,
        rope_dim: f.usize("qk_rope_head_dim")?,
        v_dim: f.usize("v_head_dim")?,
        rope_interleave: f.bool_or("rope_interleave", true)?,
        norm_eps: LATENT_NORM_EPS,
    };
    if cfg.rope.partial_rotary_factor != 1.0 {
        return Err(f.error(
            "partial_rotary_factor",
            format!(
                "{} is not supported with latent attention (its rotary part turns whole)",
                cfg.rope.partial_rotary_factor
            ),
        ));
    }
    let a = &mut cfg.attention;
    a.num_kv_heads = a.num_heads;
    a.head_dim = latent.qk_dim();
    // Biases on the two projections from the hidden state and on the output.
    let bias = f.bool_or("attention_bias", false)?;
    a.qkv_bias = bias;
    a.o_bias = bias;
    a.scale = 1.0 / (latent.qk_dim() as f64).sqrt();
    if let Some(y) = &cfg.rope.yarn {
        if let Some(all) = y.mscale_all_dim.filter(|&m| m != 0.0 && y.factor > 1.0) {
            let m = 0.1 * all * y.factor.ln() + 1.0;
            a.scale *= m * m;
        }
    }
    cfg.latent_attention = Some(latent);
    Ok(())
}

/// Dense layers first, then sparse, as the family's HF model reads the plan: DeepSeek-V3 and
/// GLM-4.5 the first `first_k_dense_replace` layers dense; GLM-4.7-Flash `mlp_layer_types`
/// (one dense layer when absent), its `first_k_dense_replace` accepted only where it says
/// the same. DeepSeek's `moe_layer_freq` (sparse layers only every n-th) is 1 in every
/// published config; another value is refused rather than guessed at.
fn layer_plan(f: &mut Fields, layers: usize, family: &Family) -> Result<Vec<LayerSpec>> {
    let freq = f.opt_usize("moe_layer_freq")?.unwrap_or(1);
    if freq != 1 {
        return Err(f.error(
            "moe_layer_freq",
            format!("{freq} is not supported (every published checkpoint has 1)"),
        ));
    }
    let first_dense = f.opt_usize("first_k_dense_replace")?;
    let attention = match family.latent {
        true => AttentionKind::Latent,
        false => AttentionKind::Full,
    };
    let spec = |dense: bool| LayerSpec {
        attention,
        ffn: if dense {
            FfnKind::Dense
        } else {
            FfnKind::Sparse
        },
    };
    let types = match family.mlp_layer_types {
        true => f.value("mlp_layer_types"),
        false => None,
    };
    let Some(types) = types else {
        let first_dense = match (family.mlp_layer_types, first_dense) {
            (true, Some(n)) if n != family.first_dense => {
                return Err(f.error(
                    "first_k_dense_replace",
                    format!(
                        "{n} disagrees with the one dense layer this family's model builds \
                         without mlp_layer_types; give mlp_layer_types"
                    ),
                ))
            }
            (_, n) => n.unwrap_or(family.first_dense),
        };
        if first_dense > layers {
            return Err(f.error(
                "first_k_dense_replace",
                format!("{first_dense} is more than the {layers} layers (num_hidden_layers)"),
            ));
        }
        return Ok((0..layers).map(|i| spec(i < first_dense)).collect());
    };
    let Value::Array(types) = types else {
        return Err(f.error("mlp_layer_types", format!("expected a list, got {types}")));
    };
    if types.len() != layers {
        let n = types.len();
        return Err(f.error(
            "mlp_layer_types",
            format!("{n} entries for {layers} layers (num_hidden_layers)"),
        ));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("dense") => Ok(spec(true)),
            Some("sparse") => Ok(spec(false)),
            _ => Err(f.error(
                "mlp_layer_types",
                format!("{t} is neither \"dense\" nor \"sparse\""),
            )),
        })
        .collect()
}

/// The sparse blocks: the grouped sigmoid router and the ungated shared experts.
fn moe(f: &mut Fields, family: &Family) -> Result<MoeConfig> {
    // The published configs name the router they were trained with; every one of this lineage
    // is the one built here.
    for (field, want) in [("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")] {
        if let Some(v) = f.opt_str(field)? {
            if v != want {
                return Err(f.error(
                    field,
                    format!("`{v}` is not supported (this family's router is `{want}`)"),
                ));
            }
        }
    }
    let num_experts = f.usize_any(&["n_routed_experts", "num_local_experts"])?;
    let intermediate = f.usize("moe_intermediate_size")?;
    let (groups, keep) = (
        f.opt_usize("n_group")?.unwrap_or(family.groups.0),
        f.opt_usize("topk_group")?.unwrap_or(family.groups.1),
    );
    let shared = f.opt_usize("n_shared_experts")?.unwrap_or(1);
    let shared_size = shared.checked_mul(intermediate).ok_or_else(|| {
        f.error(
            "n_shared_experts",
            format!("{shared} experts of {intermediate} overflow"),
        )
    })?;
    Ok(MoeConfig {
        num_experts,
        expert_intermediate_size: intermediate,
        router: RouterSpec {
            top_k: f.usize("num_experts_per_tok")?,
            scoring: Scoring::Sigmoid,
            selection: Selection::ScoreThenTopK,
            logit_bias: false,
            correction_bias: true,
            // One group is no limit: the experts form one group, and it is kept.
            group_limit: (groups != 1 || keep != 1).then_some(GroupLimit { groups, keep }),
            renormalise: f.bool_or("norm_topk_prob", true)?,
            scale: f.f64_or("routed_scaling_factor", family.routed_scaling_factor)?,
            f32_logits: true,
        },
        expert_bias: false,
        // Several shared experts are one MLP of their joined width, as HF builds them.
        shared_expert: (shared > 0).then_some(SharedExpertConfig {
            intermediate_size: shared_size,
            gated: false,
        }),
        router_input_scale: false,
        per_expert_scale: false,
    })
}

/// The multi-token-prediction layers a checkpoint holds after its decoder layers
/// (`num_nextn_predict_layers`, stored as `model.layers.{num_hidden_layers + i}.*`), by name
/// prefix: not loaded, since generation here predicts one token at a time.
pub fn mtp_layers(f: &mut Fields, layers: usize) -> Result<Vec<(String, &'static str)>> {
    let n = match f.opt_usize("num_nextn_predict_layers")? {
        Some(n) => n,
        None => f.opt_usize("num_mtp_layers")?.unwrap_or(0),
    };
    // Published checkpoints have one; a bound keeps a hostile count from listing billions.
    const MAX_MTP_LAYERS: usize = 16;
    if n > MAX_MTP_LAYERS {
        return Err(f.error(
            "num_nextn_predict_layers",
            format!("{n} is out of range 0..={MAX_MTP_LAYERS}"),
        ));
    }
    Ok((layers..layers + n)
        .map(|i| {
            (
                format!("model.layers.{i}."),
                "a multi-token-prediction layer",
            )
        })
        .collect())
}

#[cfg(test)]
mod tests;
