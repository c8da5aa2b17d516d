//! Naming a model: a local folder, or a HuggingFace hub id (`org/name`) found in the standard
//! HF cache or downloaded into it (with a progress bar on a terminal) when a network is there
//! and the environment does not say offline. What the cache holds is checked before it is
//! followed: refs name commits, and every file read lies inside the cache folder.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;

use crate::error::{shortened, Error, Result};
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

/// The longest organisation or repository name HF accepts (huggingface_hub's `validate_repo_id`).
const MAX_ID_PART: usize = 96;

/// The environment variables that make HF's libraries stay off the network, in the order they
/// are named in messages.
const OFFLINE_VARS: [&str; 2] = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"];

/// Where hub ids are looked up and whether the hub may be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// The HF cache folder (the one holding `models--org--name`).
    pub cache: PathBuf,
    /// `Some(reason)`: never touch the network, resolve from the cache only; the reason (the
    /// variable that said so) is given when a model is not cached.
    pub offline: Option<String>,
}

impl Hub {
    /// The cache and offline switch HF's Python libraries would use: the cache at
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`; offline when `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` is
    /// 1, ON, YES or TRUE.
    pub fn from_env() -> Result<Hub> {
        Ok(Hub {
            cache: default_cache()?,
            offline: offline_from_env(),
        })
    }

    /// The folder of the model named `model`: a path when one exists there, else a hub id
    /// looked up in the cache, and downloaded into it unless offline.
    pub fn resolve(&self, model: &str) -> Result<PathBuf> {
        let path = Path::new(model);
        if model.is_empty() || path.exists() || !looks_like_hub_id(model) {
            if !crate::gguf::is_gguf(path) || !path.is_file() {
                Error::check_model_dir(path)?;
            }
            return Ok(path.to_path_buf());
        }
        if let Some(problem) = hub_id_problem(model) {
            return Err(Error::Input(format!(
                "{}: no folder of that name here, and not a hub id: {problem}",
                shortened(model)
            )));
        }
        let error = |message: String| Error::Hub {
            id: model.to_string(),
            cache: self.cache.clone(),
            message,
        };
        if let Some(dir) = cached_snapshot(model, &self.cache).map_err(error)? {
            return Ok(dir);
        }
        if let Some(reason) = &self.offline {
            return Err(error(format!(
                "no folder of that name here and not in the HF cache; {reason}, so the hub \
                 was not asked"
            )));
        }
        download(model, &self.cache).map_err(error)
    }
}

/// The folder of the model named `model`, with the cache and offline switch of
/// [`Hub::from_env`].
pub fn resolve(model: &str) -> Result<PathBuf> {
    Hub::from_env()?.resolve(model)
}

/// As [`resolve`], with the hub cache at `cache`.
pub fn resolve_in(model: &str, cache: &Path) -> Result<PathBuf> {
    let hub = Hub {
        cache: cache.to_path_buf(),
        offline: offline_from_env(),
    };
    hub.resolve(model)
}

fn default_cache() -> Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(home) = var("HF_HOME") {
        return Ok(PathBuf::from(home).join("hub"));
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .or_else(|| var("USERPROFILE").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or_else(|| {
            Error::Input(
                "no HF cache folder: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME or HOME is set"
                    .into(),
            )
        })?;
    Ok(cache.join("huggingface").join("hub"))
}

/// `Some("HF_HUB_OFFLINE is set")` when the environment says to stay off the network, with
/// the values HF's libraries take as true.
fn offline_from_env() -> Option<String> {
    OFFLINE_VARS.iter().find_map(|name| {
        let value = std::env::var(name).ok()?;
        let on = ["1", "ON", "YES", "TRUE"].contains(&value.trim().to_ascii_uppercase().as_str());
        on.then(|| format!("{name}={value} is set"))
    })
}

/// Whether `s` is meant as a hub id rather than a path: one `/` between two non-empty parts,
/// not starting like a path (`.`, `/`, `~`). Whether it is a valid one is [`hub_id_problem`]'s.
fn looks_like_hub_id(s: &str) -> bool {
    match s.split_once('/') {
        Some((org, name)) => {
            !org.is_empty()
                && !name.is_empty()
                && !name.contains('/')
                && !s.starts_with(['.', '~'])
                && !s.contains('\\')
        }
        None => false,
    }
}

/// What makes `org/name` no valid hub id, by huggingface_hub's `validate_repo_id`: each part of
/// 1..=96 letters, digits, `-`, `_` and `.`, starting and ending with a letter, digit or `_`,
/// no `--` or `..`, no `.git` ending.
fn hub_id_problem(id: &str) -> Option<String> {
    let (org, name) = id.split_once('/')?;
    for part in [org, name] {
        let count = part.chars().count();
        if count > MAX_ID_PART {
            return Some(format!(
                "a part of {count} characters, where HF allows at most {MAX_ID_PART}"
            ));
        }
        if let Some(c) = part
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Some(format!(
                "the character {c:?}, where HF allows letters, digits, '-', '_' and '.'"
            ));
        }
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !word(part.chars().next()) || !word(part.chars().last()) {
            return Some(format!(
                "`{}` starts or ends with '-' or '.'",
                shortened(part)
            ));
        }
    }
    if id.contains("--") || id.contains("..") {
        return Some("HF allows no `--` or `..` in an id".into());
    }
    if id.ends_with(".git") {
        return Some("HF allows no id ending in `.git`".into());
    }
    None
}

/// The snapshot of `id` in the cache if it holds a whole checkpoint (config.json and either
/// model.safetensors or an index with every shard it lists); `Ok(None)` when it does not.
/// A ref that names no commit, or a snapshot or file that resolves outside the cache folder
/// (through `..` or a symbolic link), is an error naming it: the cache is not followed there.
fn cached_snapshot(id: &str, cache: &Path) -> std::result::Result<Option<PathBuf>, String> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let reference = repo.join("refs").join("main");
    let Some(commit) = read_ref(&reference)? else {
        return Ok(None);
    };
    let dir = repo.join("snapshots").join(&commit);
    if !dir.join("config.json").exists() {
        return Ok(None);
    }
    // Every file read from the snapshot, resolved, must lie in the cache folder.
    let root = cache
        .canonicalize()
        .map_err(|e| format!("{}: {e}", cache.display()))?;
    let inside = |path: &Path| -> std::result::Result<(), String> {
        let real = path
            .canonicalize()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if real.starts_with(&root) {
            return Ok(());
        }
        Err(format!(
            "{} resolves to {}, outside the cache folder; refused",
            path.display(),
            real.display()
        ))
    };
    inside(&dir)?;
    let mut files: Vec<String> = WANTED.iter().map(|f| f.to_string()).collect();
    if dir.join("model.safetensors").exists() {
        files.push("model.safetensors".into());
    } else {
        let index = dir.join("model.safetensors.index.json");
        if !index.exists() {
            return Ok(None);
        }
        inside(&index)?;
        let shards = index_shards(&index).map_err(|e| e.to_string())?;
        if !shards.iter().all(|s| dir.join(s).exists()) {
            return Ok(None);
        }
        files.extend(shards);
    }
    for file in files {
        let path = dir.join(&file);
        if path.exists() {
            inside(&path)?;
        }
    }
    Ok(Some(dir))
}

/// The commit a cache ref (`refs/main`) names, `None` when there is no ref: a plain file
/// holding 40 hexadecimal digits, as HF writes it. Anything else (a path, a FIFO, a large
/// file) is an error naming the file.
fn read_ref(path: &Path) -> std::result::Result<Option<String>, String> {
    const MAX_REF_BYTES: u64 = 256;
    let bad = |message: String| format!("{}: {message}", path.display());
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    if !meta.is_file() {
        return Err(bad(format!(
            "is {}, expected a file naming a commit",
            crate::error::file_kind(&meta)
        )));
    }
    if meta.len() > MAX_REF_BYTES {
        return Err(bad(format!(
            "is {} bytes, expected a commit hash of 40 hexadecimal digits",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let commit = text.trim();
    let is_commit = commit.len() == 40
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_commit {
        return Err(bad(format!(
            "expected a commit hash of 40 hexadecimal digits, found {:?}; the cache is not \
             followed there",
            shortened(commit)
        )));
    }
    Ok(Some(commit.to_string()))
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
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("{}: not in a snapshot folder", config.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        for s in ["Qwen/Qwen3-30B-A3B", "allenai/OLMoE-1B-7B-0924.v2", "a b/c"] {
            assert!(looks_like_hub_id(s), "{s}");
        }
        for s in ["models/a/b", "./x/y", "x", "/abs/path", "a/", "../a", "~/a"] {
            assert!(!looks_like_hub_id(s), "{s}");
        }
    }

    #[test]
    fn hub_ids_follow_hfs_rule() {
        assert_eq!(hub_id_problem("Qwen/Qwen3-30B-A3B"), None);
        assert_eq!(hub_id_problem("allenai/OLMoE-1B-7B-0924.v2"), None);
        let long = format!("org/{}", "a".repeat(97));
        assert!(hub_id_problem(&long).unwrap().contains("at most 96"));
        assert!(hub_id_problem(&format!("org/{}", "a".repeat(96))).is_none());
        for bad in [
            "a b/c",
            "org/-x",
            "org/x.",
            "org/a--b",
            "org/a..b",
            "org/x.git",
        ] {
            assert!(hub_id_problem(bad).is_some(), "{bad}");
        }
    }
}
