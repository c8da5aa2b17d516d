//! Qwen3-Next and Qwen3.5-MoE beyond the parity table: decode against HF's own recurrent
//! path, the experts stored stacked, a conversation going on after its recurrent state could
//! not be truncated, and the bad inputs of this family.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{copy_fixture, edit_config, edit_tensors, fixture, load, reference, relative_error};
use moe_runtime::{Kernels, LoadOptions, Model};

const FAMILY: &[&str] = &[
    "qwen3_next-a",
    "qwen3_next-b",
    "qwen3_5_moe-a",
    "qwen3_next-c",
];

fn load_dir(dir: &Path) -> moe_runtime::Result<Model> {
    Model::load(dir, &LoadOptions::default())
}

/// One token at a time through the recurrent form of the delta rule and the rolling
/// convolution state, against HF's logits fed the same way (its `torch_recurrent_gated_delta_rule`
/// and `causal_conv1d_update`), on both backends.
#[test]
fn decode_steps_match_hfs_recurrent_path() {
    for name in FAMILY {
        common::assert_decode_matches_hf(name);
    }
}

/// A prompt fed in two calls, the first shorter than the convolution's reach (1 to 3 tokens)
/// or longer, then the rest in the chunked form (across its 64-token chunks), equals the
/// prompt in one call: the rolling convolution state and the recurrent state carry over.
#[test]
fn a_prompt_split_anywhere_equals_it_whole() {
    let name = "qwen3_next-a";
    let r = reference(name);
    let model = load(name, DType::F32, Kernels::Fast);
    let whole = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
    for split in 1..=5 {
        let mut cache = model.new_cache();
        let first = model.forward(&r.tokens[..split], &mut cache).unwrap();
        let rest = model.forward(&r.tokens[split..], &mut cache).unwrap();
        let got = Tensor::cat(&[first, rest], 0).unwrap();
        let err = relative_error(&got, &whole);
        assert!(err <= 1e-5, "split at {split}: {err:e}");
    }
}

/// Experts kept stacked as transformers 5 holds them (`experts.gate_up_proj` [E, 2I, H], gate
/// rows first, and `experts.down_proj` [E, H, I]) load as the per-expert tensors do.
#[test]
fn stacked_experts_load_as_per_expert_ones() {
    let name = "qwen3_5_moe-a";
    let dir = copy_fixture(name);
    edit_tensors(dir.path(), |t| {
        let prefixes: Vec<String> = t
            .keys()
            .filter_map(|k| k.strip_suffix(".experts.0.gate_proj.weight"))
            .map(str::to_string)
            .collect();
        assert!(!prefixes.is_empty());
        for p in prefixes {
            let mut gate_up = Vec::new();
            let mut down = Vec::new();
            for e in 0.. {
                let key = |proj: &str| format!("{p}.experts.{e}.{proj}.weight");
                let Some(g) = t.remove(&key("gate_proj")) else {
                    break;
                };
                let u = t.remove(&key("up_proj")).unwrap();
                gate_up.push(Tensor::cat(&[g, u], 0).unwrap());
                down.push(t.remove(&key("down_proj")).unwrap());
            }
            let gate_up = Tensor::stack(&gate_up, 0).unwrap();
            t.insert(format!("{p}.experts.gate_up_proj"), gate_up);
            t.insert(
                format!("{p}.experts.down_proj"),
                Tensor::stack(&down, 0).unwrap(),
            );
        }
    });
    let r = reference(name);
    let model = load_dir(dir.path()).unwrap();
    let logits = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
    let err = relative_error(&logits, &r.logits);
    assert!(err <= 1e-4, "{err:e}");
}

/// A chat's next turn keeps the cached prefix. A recurrent state cannot go back to it: the
/// cache goes back to the copy it took at the end of the last prompt (`snapshot_at`) where
/// the prefix reaches that far, and starts over (the whole conversation run again) where it
/// does not. Either way the logits equal a fresh run's.
#[test]
fn a_conversation_goes_on_from_its_snapshot_or_from_the_start() {
    let name = "qwen3_next-a";
    let r = reference(name);
    let model = load(name, DType::F32, Kernels::Fast);
    let fresh = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
    // The first prompt ends at 20; the answer and more go on to 50.
    for (shared, restored) in [(40, 20), (20, 20), (15, 0)] {
        let mut cache = model.new_cache();
        cache.snapshot_at(20);
        model.forward(&r.tokens[..20], &mut cache).unwrap();
        model.forward(&r.tokens[20..50], &mut cache).unwrap();
        cache.truncate(shared).unwrap();
        assert_eq!(cache.position(), restored, "prefix of {shared}");
        let got = model.forward(&r.tokens[restored..], &mut cache).unwrap();
        let want = fresh
            .narrow(0, restored, r.tokens.len() - restored)
            .unwrap();
        assert!(relative_error(&got, &want) <= 1e-5, "prefix of {shared}");
    }
    // Truncating to where it is keeps everything; a snapshot is used once.
    let mut cache = model.new_cache();
    cache.snapshot_at(10);
    model.forward(&r.tokens[..30], &mut cache).unwrap();
    cache.truncate(30).unwrap();
    assert_eq!(cache.position(), 30);
    // The copy was asked for at 10, but no forward call ended there.
    cache.truncate(20).unwrap();
    assert_eq!(cache.position(), 0);
}

/// The vision tower and the multi-token-prediction layers of a Qwen3.5 checkpoint are named as
/// not loaded, and loading still succeeds.
#[test]
fn a_multimodal_checkpoint_names_what_it_does_not_load() {
    let arch = moe_runtime::arch::load(&fixture("qwen3_5_moe-a")).unwrap();
    let what: Vec<&str> = arch.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(what, ["model.visual.", "mtp."]);
    assert!(
        arch.unrecognized_fields.is_empty(),
        "{:?}",
        arch.unrecognized_fields
    );
}

#[test]
fn bad_layer_plans_and_shapes_are_one_clear_error() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 4] = [
        (
            "layer_types shorter than the layers",
            |c| c["layer_types"] = serde_json::json!(["linear_attention", "full_attention"]),
            "layer_types",
        ),
        (
            "an unknown layer type",
            |c| c["layer_types"][0] = serde_json::json!("mamba"),
            "layer_types",
        ),
        (
            "value heads that key heads do not divide",
            |c| c["linear_num_value_heads"] = serde_json::json!(3),
            "linear_num_value_heads",
        ),
        (
            "no interval",
            |c| c["full_attention_interval"] = serde_json::json!(0),
            "full_attention_interval",
        ),
    ];
    for (what, edit, field) in cases {
        let dir = copy_fixture("qwen3_next-b");
        edit_config(dir.path(), |c| {
            if what == "no interval" {
                c.as_object_mut().unwrap().remove("layer_types");
            }
            edit(c)
        });
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(field) && err.contains("config.json") && !err.contains('\n'),
            "{what}: {err}"
        );
    }
    // The nested config's fields are named with their place.
    let nested: [(Edit, &str); 4] = [
        (
            |c| c["linear_num_key_heads"] = serde_json::json!(0),
            "text_config.linear_num_key_heads",
        ),
        (
            |c| c["linear_conv_kernel_dim"] = serde_json::json!(1),
            "text_config.linear_conv_kernel_dim",
        ),
        // 1024 heads of 1024 by 1024: 4 GiB of state per layer and sequence, 12 GiB in all.
        (
            |c| {
                c["linear_num_value_heads"] = serde_json::json!(1024);
                c["linear_num_key_heads"] = serde_json::json!(1024);
                c["linear_key_head_dim"] = serde_json::json!(1024);
                c["linear_value_head_dim"] = serde_json::json!(1024);
            },
            "text_config.linear_num_value_heads",
        ),
        (
            |c| c["model_type"] = serde_json::json!("qwen3_vl_text"),
            "text_config.model_type",
        ),
    ];
    for (edit, field) in nested {
        let dir = copy_fixture("qwen3_5_moe-a");
        edit_config(dir.path(), |c| edit(&mut c["text_config"]));
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains(field) && !err.contains('\n'), "{field}: {err}");
    }
}

#[test]
fn a_missing_linear_attention_tensor_is_named() {
    for tensor in [
        "model.layers.0.linear_attn.conv1d.weight",
        "model.layers.2.linear_attn.A_log",
        "model.layers.0.linear_attn.in_proj_ba.weight",
    ] {
        let dir = copy_fixture("qwen3_next-a");
        edit_tensors(dir.path(), |t| {
            t.remove(tensor).unwrap();
        });
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains(tensor), "{tensor}: {err}");
    }
    // Of the wrong shape.
    let dir = copy_fixture("qwen3_next-a");
    let name = "model.layers.1.linear_attn.dt_bias";
    edit_tensors(dir.path(), |t| {
        t.insert(
            name.into(),
            Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(name), "{err}");
}
