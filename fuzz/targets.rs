//! The fuzz targets' bodies: each feeds arbitrary bytes to one reader of untrusted input and
//! asks only that it returns (an error is the expected answer) without panicking, hanging or
//! allocating without bound. Shared by the libFuzzer binaries (fuzz/fuzz_targets/) and by the
//! replay of the committed corpora in the tests (tests/fuzz_corpus.rs), so CI runs every input
//! the fuzzers kept.

use std::path::{Path, PathBuf};

use moe_runtime::chat_template::{ChatTemplate, Message, RenderOptions};
use moe_runtime::{LoadOptions, Model};

/// A folder of this thread's own, made once, that each call rewrites.
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("a scratch folder");
    }
    DIR.with(|d| d.path().to_path_buf())
}

/// A small valid config (Qwen3-MoE's shape), for the targets that fuzz the weights.
const CONFIG: &str = r#"{"model_type": "qwen3_moe", "vocab_size": 32, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 4, "max_position_embeddings": 16,
    "num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 4}"#;

/// Writes `files` (name, contents) into the scratch folder, removing what an earlier call left.
fn folder(files: &[(&str, &[u8])]) -> PathBuf {
    let dir = scratch();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("a scratch file");
    }
    dir
}

/// A safetensors file (header and data) under a valid config.
pub fn safetensors(data: &[u8]) {
    let dir = folder(&[
        ("config.json", CONFIG.as_bytes()),
        ("model.safetensors", data),
    ]);
    let _ = Model::load(&dir, &LoadOptions::default());
}

/// A shard index under a valid config.
pub fn shard_index(data: &[u8]) {
    let dir = folder(&[
        ("config.json", CONFIG.as_bytes()),
        ("model.safetensors.index.json", data),
    ]);
    let _ = Model::load(&dir, &LoadOptions::default());
}

/// config.json: parsed, and where it parses, counted.
pub fn config(data: &[u8]) {
    let Ok(value) = serde_json::from_slice(data) else {
        return;
    };
    if let Ok(arch) = moe_runtime::arch::parse(Path::new("config.json"), value) {
        let c = &arch.config;
        let _ = (
            c.parameter_counts(),
            c.decode_reads(),
            c.cached_numbers_per_position(),
        );
    }
}

/// A chat template (the input's text) rendered for a short conversation, under the limits.
pub fn chat_template(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("tokenizer_config.json");
    let config = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"});
    let Ok(template) = ChatTemplate::from_source(path, source, &config) else {
        return;
    };
    let messages = [
        Message::new("system", "be brief"),
        Message::new("user", "hi"),
        Message::new("assistant", "hello"),
        Message::new("user", "and?"),
    ];
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..RenderOptions::default()
    };
    let _ = template.render(&messages, &opts);
}

/// generation_config.json.
pub fn generation_config(data: &[u8]) {
    let dir = folder(&[("generation_config.json", data)]);
    let _ = moe_runtime::sampling::SamplingConfig::from_generation_config(&dir);
}

/// A GGUF file: its header and metadata, and the model they describe.
pub fn gguf(data: &[u8]) {
    let dir = folder(&[("model.gguf", data)]);
    let path = dir.join("model.gguf");
    if let Ok(file) = moe_runtime::gguf::Gguf::open(&path) {
        let _ = moe_runtime::gguf::architecture(&file);
    }
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("shard_index", shard_index),
    ("config", config),
    ("chat_template", chat_template),
    ("generation_config", generation_config),
    ("gguf", gguf),
];
