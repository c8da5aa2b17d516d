//! Helpers shared by the integration tests: fixture paths and HF reference outputs.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use moe_runtime::{Kernels, LoadOptions, Model};

/// Every committed fixture (tools/make_fixtures.py): two shapes per family, and the families
/// with sliding-window attention again with windows shorter than the test sequences.
pub const FIXTURES: &[&str] = &[
    "mixtral-a",
    "mixtral-b",
    "qwen2_moe-a",
    "qwen2_moe-b",
    "qwen3_moe-a",
    "qwen3_moe-b",
    "olmoe-a",
    "olmoe-b",
    "granitemoe-a",
    "granitemoe-b",
    "mixtral-sliding",
    "qwen2_moe-sliding",
    "qwen3_moe-sliding",
    "gpt_oss-a",
    "gpt_oss-b",
    "qwen3_next-a",
    "qwen3_next-b",
    "qwen3_5_moe-a",
    "qwen3_next-c",
    "deepseek_v3-a",
    "deepseek_v3-b",
    "glm4_moe_lite-a",
    "glm4_moe-a",
    "qwen3-a",
    "qwen3-sliding",
    "gemma4-a",
    "gemma4-b",
];

pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Whether the fixture's experts are quantized on disk (its config.json has a
/// `quantization_config`): the CPU kernels then read them as blocks and, at decode, round the
/// activations to q8_0 for integer dot products, as llama.cpp's do.
pub fn quantized_on_disk(name: &str) -> bool {
    let config = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config.get("quantization_config").is_some()
}

/// The committed fixtures, found when the test runs, not where it was built (test binaries
/// built here run from the repository root of the GPU machine): `$MOE_FIXTURES`, else
/// tests/fixtures under `$CARGO_MANIFEST_DIR` (cargo sets it when it runs a test), else under
/// the working directory.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MOE_FIXTURES") {
        return dir.into();
    }
    let root = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(PathBuf::new, PathBuf::from);
    root.join("tests/fixtures")
}

/// HF's outputs for a fixture: the prompt, f32 logits at every position, greedy continuation.
pub struct Reference {
    pub tokens: Vec<u32>,
    /// (T, vocab)
    pub logits: Tensor,
    pub greedy: Vec<u32>,
}

pub fn reference(name: &str) -> Reference {
    reference_file(&fixture(name).join("reference.safetensors"))
}

/// HF's outputs as tools/make_fixtures.py (and make_gguf_fixtures.py) store them.
pub fn reference_file(path: &std::path::Path) -> Reference {
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let ids =
        |k: &str| -> Vec<u32> { t[k].to_dtype(DType::U32).unwrap().to_vec1::<u32>().unwrap() };
    Reference {
        tokens: ids("tokens"),
        logits: t["logits"].clone(),
        greedy: ids("greedy"),
    }
}

pub fn load(name: &str, dtype: DType, kernels: Kernels) -> Model {
    let opts = LoadOptions {
        dtype,
        kernels,
        ..LoadOptions::default()
    };
    Model::load(&fixture(name), &opts).unwrap()
}

/// max |a - b| / max |b|: the error relative to the largest reference value.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    // On the host: candle's max skips a NaN that is not the first element, and a NaN must fail.
    let host = |t: &Tensor| -> Vec<f32> {
        let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        t.to_vec1::<f32>().unwrap()
    };
    let (a, b) = (host(a), host(b));
    assert_eq!(a.len(), b.len());
    let nan = |x: &f32| x.is_nan();
    if a.iter().any(nan) || b.iter().any(nan) {
        return f32::NAN;
    }
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    diff / scale
}

/// Per row of (T, vocab) logits: max |a - b| over the row, divided by the largest |b| anywhere.
pub fn position_errors(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let has_nan = |t: &Tensor| {
        let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        t.to_vec1::<f32>().unwrap().iter().any(|x| x.is_nan())
    };
    assert!(!has_nan(a) && !has_nan(b), "NaN in the logits compared");
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max(1).unwrap();
    diff.to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|d| d / scale)
        .collect()
}

/// A private copy of a fixture to break.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Rewrites the single weights file of `dir` after `edit` has changed its tensors.
pub fn edit_tensors(
    dir: &std::path::Path,
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

/// Rewrites `dir`'s config.json after `edit` has changed it.
pub fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

/// Feeds `name`'s prompt one token at a time on both backends and checks every position's f32
/// logits against HF's `decode_logits` (its cached or recurrent path) to 1e-4 of the largest.
pub fn assert_decode_matches_hf(name: &str) {
    let path = fixture(name).join("reference.safetensors");
    let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let want = &t["decode_logits"];
    let tokens = reference(name).tokens;
    for kernels in [Kernels::Fast, Kernels::Reference] {
        let model = load(name, DType::F32, kernels);
        let mut cache = model.new_cache();
        for (i, &tok) in tokens.iter().enumerate() {
            let got = model.forward(&[tok], &mut cache).unwrap();
            let err = relative_error(&got.get(0).unwrap(), &want.get(i).unwrap());
            assert!(err <= 1e-4, "{name} {kernels:?} position {i}: {err:e}");
        }
    }
}
