//! gpt-oss: attention sinks and biases on every projection, sliding and full layers
//! alternating, YaRN RoPE, a router with a bias that softmaxes its k best logits, and experts
//! with biases and a clamped SwiGLU, stored with gate and up interleaved (bf16, or MXFP4 as
//! published). Defaults as transformers' `GptOssConfig`.

use super::{common, layer_types, Defaults, ExpertNames, Fields, TensorNames, LLAMA_NAMES};
use crate::error::Result;
use crate::spec::{Activation, AttentionKind, ModelConfig, MoeConfig, RouterSpec, Selection, Yarn};

pub fn parse(f: &mut Fields) -> Result<(ModelConfig, TensorNames)> {
    // HF's config makes YaRN the RoPE when the config names none.
    let rope_given = f.has("rope_scaling") || f.has("rope_parameters");
    let mut cfg = common(
        f,
        Defaults {
            rope_theta: 150000.0,
            rms_norm_eps: 1e-5,
            head_dim: Some(64),
            quant_methods: &["mxfp4"],
            ..Defaults::LLAMA
        },
    )?;
    if !rope_given {
        cfg.rope.yarn = Some(Yarn {
            factor: 32.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: false,
            attention_factor: 0.1 * 32f64.ln() + 1.0,
            mscale_all_dim: None,
        });
    }
    let bias = f.bool_or("attention_bias", true)?;
    cfg.attention.qkv_bias = bias;
    cfg.attention.o_bias = bias;
    cfg.attention.sinks = true;
    // Even layers slide over 128 positions unless the config says otherwise.
    let window = f.opt_usize("sliding_window")?.unwrap_or(128);
    if window == 0 {
        return Err(f.error("sliding_window", "must be at least 1"));
    }
    if !f.has("layer_types") {
        for layer in cfg.layers.iter_mut().step_by(2) {
            layer.attention = AttentionKind::Sliding { window };
        }
    }
    layer_types(f, &mut cfg.layers, Some(window), false)?;
    let top_k = f.usize_any(&["num_experts_per_tok", "experts_per_token"])?;
    // Published configs carry both names; they must agree.
    if let Some(other) = f.opt_usize("experts_per_token")? {
        if other != top_k {
            return Err(f.error(
                "experts_per_token",
                format!("{other} disagrees with num_experts_per_tok = {top_k}"),
            ));
        }
    }
    cfg.moe = MoeConfig {
        num_experts: f.usize_any(&["num_local_experts", "num_experts"])?,
        expert_intermediate_size: f.usize("intermediate_size")?,
        router: RouterSpec {
            selection: Selection::TopKThenScore,
            logit_bias: true,
            ..RouterSpec::softmax_top_k(top_k, false)
        },
        expert_bias: true,
        shared_expert: None,
        router_input_scale: false,
        per_expert_scale: false,
    };
    cfg.activation = Activation::SwigluClamped {
        alpha: f.f64_or("swiglu_alpha", 1.702)? as f32,
        limit: f.f64_or("swiglu_limit", 7.0)? as f32,
    };
    // The context the released weights were trained at; YaRN's fields already say it.
    f.irrelevant(&["initial_context_length"]);
    let names = TensorNames {
        moe: "mlp",
        router: "router.weight",
        router_bias: "router.bias",
        experts: ExpertNames::Interleaved {
            gate_up: "experts.gate_up_proj",
            down: "experts.down_proj",
        },
        ..LLAMA_NAMES
    };
    Ok((cfg, names))
}
