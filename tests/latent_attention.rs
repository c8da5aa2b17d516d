//! DeepSeek-V3 and GLM beyond the parity table: latent attention's absorbed decode against
//! HF's cached path, the router's correction bias and groups at work, FP8 block-scaled weights,
//! and the bad inputs of this family.

mod common;

use std::path::Path;

use candle_core::{DType, Tensor};
use common::{copy_fixture, edit_config, edit_tensors, fixture, load, reference, relative_error};
use moe_runtime::{Kernels, LoadOptions, Model};

/// The fixtures with latent attention (the GLM-4.5 one, `glm4_moe-a`, has grouped-query
/// attention and only the router in common).
const LATENT: &[&str] = &["deepseek_v3-a", "deepseek_v3-b", "glm4_moe_lite-a"];

fn load_dir(dir: &Path) -> moe_runtime::Result<Model> {
    Model::load(dir, &LoadOptions::default())
}

/// One token at a time: the fast backend absorbs `kv_b_proj` into the query and the output
/// and attends over the cached latents; the reference backend expands them. Both against HF's
/// logits fed the same way through its cache.
#[test]
fn decode_steps_match_hfs_cached_path_in_both_forms() {
    for name in LATENT {
        common::assert_decode_matches_hf(name);
    }
}

/// A prompt in chunks after a cache (where the cheaper form may be either) equals it whole,
/// and batched decode steps equal single ones.
#[test]
fn chunks_and_batches_equal_the_whole_prompt() {
    for name in LATENT {
        let r = reference(name);
        let model = load(name, DType::F32, Kernels::Fast);
        let whole = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
        let n = r.tokens.len();
        for split in [1, n / 2, n - 1] {
            let mut cache = model.new_cache();
            let first = model.forward(&r.tokens[..split], &mut cache).unwrap();
            let rest = model.forward(&r.tokens[split..], &mut cache).unwrap();
            let got = Tensor::cat(&[first, rest], 0).unwrap();
            let err = relative_error(&got, &whole);
            assert!(err <= 1e-5, "{name} split at {split}: {err:e}");
        }
        // Two sequences of different lengths, one decode step each.
        let mut caches = [model.new_cache(), model.new_cache()];
        model.forward(&r.tokens[..n - 1], &mut caches[0]).unwrap();
        model.forward(&r.tokens[..3], &mut caches[1]).unwrap();
        let batch = model
            .forward_batch(&[r.tokens[n - 1], r.tokens[3]], &mut caches)
            .unwrap();
        let err = relative_error(&batch.get(0).unwrap(), &whole.get(n - 1).unwrap());
        assert!(err <= 1e-5, "{name} batched: {err:e}");
        let err = relative_error(&batch.get(1).unwrap(), &whole.get(3).unwrap());
        assert!(err <= 1e-5, "{name} batched: {err:e}");
    }
}

/// The correction bias chooses experts and nothing else: with it zeroed the fixtures' logits
/// move far from HF's (other experts run), with it they match.
#[test]
fn the_correction_bias_changes_the_chosen_experts() {
    for name in ["deepseek_v3-a", "glm4_moe_lite-a", "glm4_moe-a"] {
        let r = reference(name);
        let dir = copy_fixture(name);
        edit_tensors(dir.path(), |t| {
            for (k, v) in t.iter_mut() {
                if k.ends_with("e_score_correction_bias") {
                    *v = v.zeros_like().unwrap();
                }
            }
        });
        let model = load_dir(dir.path()).unwrap();
        let logits = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
        let err = relative_error(&logits, &r.logits);
        assert!(err > 1e-2, "{name}: the bias changed nothing ({err:e})");
    }
}

/// FP8 weights without their scales, or with scales of the wrong block count, or FP8 weights
/// in a checkpoint whose config does not say so: one line naming the tensor.
#[test]
fn broken_fp8_checkpoints_are_one_clear_error() {
    let name = "deepseek_v3-b";
    let scale = "model.layers.1.self_attn.kv_b_proj.weight_scale_inv";
    let weight = "model.layers.1.self_attn.kv_b_proj.weight";
    let dir = copy_fixture(name);
    edit_tensors(dir.path(), |t| {
        t.remove(scale).unwrap();
    });
    let err = load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(weight) && err.contains("scale"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let dir = copy_fixture(name);
    edit_tensors(dir.path(), |t| {
        let s = t[scale].clone();
        let wider = Tensor::cat(&[&s, &s], 1).unwrap();
        t.insert(scale.to_string(), wider);
    });
    let err = load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(scale) && err.contains("shape"), "{err}");

    let dir = copy_fixture(name);
    edit_config(dir.path(), |c| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    let err = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("F8") && err.contains("quantization_config"),
        "{err}"
    );
}

/// Router settings that cannot hold, in a real checkpoint's config: one line naming the field.
#[test]
fn impossible_groups_are_one_clear_error() {
    let cases = [
        (
            serde_json::json!({"topk_group": 5, "n_group": 4}),
            "topk_group",
        ),
        (serde_json::json!({"n_group": 3}), "n_group"),
    ];
    for (patch, field) in cases {
        let dir = copy_fixture("deepseek_v3-a");
        edit_config(dir.path(), |c| {
            for (k, v) in patch.as_object().unwrap() {
                c[k] = v.clone();
            }
        });
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(field) && err.contains("config.json") && !err.contains('\n'),
            "{patch}: {err}"
        );
    }
}

/// The multi-token-prediction layer stored after the decoder layers is named as not loaded.
#[test]
fn multi_token_prediction_layers_are_named_as_skipped() {
    for name in ["deepseek_v3-a", "glm4_moe_lite-a", "glm4_moe-a"] {
        let arch = moe_runtime::arch::load(&fixture(name)).unwrap();
        let layers = arch.config.num_layers();
        let what: Vec<&str> = arch.skipped.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(what, [format!("model.layers.{layers}.")], "{name}");
        assert!(
            arch.unrecognized_fields.is_empty(),
            "{name}: {:?}",
            arch.unrecognized_fields
        );
    }
}
