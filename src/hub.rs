//! Naming a model: a local folder, or a HuggingFace hub id (`org/name`) found in the standard
//! HF cache or downloaded into it (with a progress bar on a terminal) when a network is there.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use crate::error::{Error, Result};
use crate::weights::index_shards;

/// The files of a checkpoint the engine reads; everything else in a repository (other weight
/// formats, READMEs, images) is left on the hub.
const WANTED: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// The folder of the model named `model`: a path when one exists there, else a hub id looked
/// up in the HF cache (`HF_HUB_CACHE`, else `HF_HOME`/hub, else ~/.cache/huggingface/hub).
pub fn resolve(model: &str) -> Result<PathBuf> {
    resolve_in(model, &default_cache())
}

/// As [`resolve`], with the hub cache at `cache`.
pub fn resolve_in(model: &str, cache: &Path) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() || !is_hub_id(model) {
        if !crate::gguf::is_gguf(path) || !path.is_file() {
            Error::check_model_dir(path)?;
        }
        return Ok(path.to_path_buf());
    }
    if let Some(dir) = cached_snapshot(model, cache) {
        return Ok(dir);
    }
    download(model, cache).map_err(|message| Error::Hub {
        id: model.to_string(),
        cache: cache.to_path_buf(),
        message,
    })
}

fn default_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Cache::from_env().path().clone(),
    }
}

/// `org/name`: two parts of the characters the hub allows.
fn is_hub_id(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    matches!(s.split('/').collect::<Vec<_>>().as_slice(), [org, name] if ok(org) && ok(name))
}

/// The snapshot of `id` in the cache, if it holds a whole checkpoint: config.json and either
/// model.safetensors or an index with every shard it lists.
fn cached_snapshot(id: &str, cache: &Path) -> Option<PathBuf> {
    let repo = Cache::new(cache.to_path_buf()).model(id.to_string());
    let dir = repo.get("config.json")?.parent()?.to_path_buf();
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    let index = repo.get("model.safetensors.index.json")?;
    let shards = index_shards(&index).ok()?;
    shards.iter().all(|s| dir.join(s).exists()).then_some(dir)
}

/// Downloads what the engine reads of `id` into the cache; returns the snapshot folder.
fn download(id: &str, cache: &Path) -> std::result::Result<PathBuf, String> {
    let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.model(id.to_string());
    let info = repo.info().map_err(|e| {
        format!(
            "no folder of that name here, not in the HF cache, and the hub cannot be asked: {e}"
        )
    })?;
    let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let get = |name: &str| {
        repo.get(name)
            .map_err(|e| format!("downloading {name}: {e}"))
    };
    let config = get("config.json")?;
    let mut wanted: Vec<String> = WANTED
        .iter()
        .filter(|f| files.contains(f))
        .map(|f| f.to_string())
        .collect();
    if files.contains(&"model.safetensors.index.json") {
        let index = get("model.safetensors.index.json")?;
        wanted.extend(index_shards(&index).map_err(|e| e.to_string())?);
    } else if files.contains(&"model.safetensors") {
        wanted.push("model.safetensors".into());
    } else {
        return Err("the repository has no model.safetensors and no index of shards".into());
    }
    for name in &wanted {
        get(name)?;
    }
    Ok(config
        .parent()
        .expect("a cached file lies in its snapshot folder")
        .to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(is_hub_id("Qwen/Qwen3-30B-A3B"));
        assert!(is_hub_id("allenai/OLMoE-1B-7B-0924.v2"));
        for s in [
            "models/a/b",
            "./x/y",
            "x",
            "/abs/path",
            "a/",
            "../a",
            "a b/c",
        ] {
            assert!(!is_hub_id(s), "{s}");
        }
    }
}
