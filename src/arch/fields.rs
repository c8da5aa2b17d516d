//! `Fields`: reads config.json values by name, with errors that name the field, and remembers
//! which fields were read so that none is ignored silently.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub struct Fields {
    path: PathBuf,
    map: Map<String, Value>,
    seen: BTreeSet<String>,
    /// Where these fields sit in the file (`text_config.` for a nested config; empty at the
    /// top level), for errors and the unread list.
    prefix: String,
    /// Unread fields of nested configs read through `nested`, already prefixed.
    nested_unread: Vec<String>,
}

impl Fields {
    pub fn new(path: &Path, value: Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Fields {
                path: path.to_path_buf(),
                map,
                seen: BTreeSet::new(),
                prefix: String::new(),
                nested_unread: Vec::new(),
            }),
            _ => Err(Error::config(path, "(top level)", "expected a JSON object")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::config(&self.path, &format!("{}{field}", self.prefix), message)
    }

    /// The object at `key` as fields of their own (a multimodal checkpoint's `text_config`),
    /// named `key.field` in errors; hand them back with `absorb` once read.
    pub fn nested(&mut self, key: &str) -> Result<Fields> {
        match self.value(key) {
            Some(Value::Object(map)) => Ok(Fields {
                path: self.path.clone(),
                map,
                seen: BTreeSet::new(),
                prefix: format!("{}{key}.", self.prefix),
                nested_unread: Vec::new(),
            }),
            Some(v) => Err(self.error(key, format!("expected an object, got {v}"))),
            None => Err(self.error(key, "is required but missing")),
        }
    }

    /// Takes over the unread fields of a config read through `nested`.
    pub fn absorb(&mut self, nested: Fields) {
        self.nested_unread.extend(nested.unread());
    }

    /// Whether the field is there and not null, without counting it as read.
    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    /// Whether the config names `key` at all, null included (where null and absent differ:
    /// DeepSeek's `q_lora_rank: null` is a choice, its absence a default).
    pub fn present(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The raw value, `None` when absent or null.
    pub fn value(&mut self, key: &str) -> Option<Value> {
        self.seen.insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_null()).cloned()
    }

    pub fn opt_usize(&mut self, key: &str) -> Result<Option<usize>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.error(key, format!("expected a non-negative integer, got {v}"))
                }),
        }
    }

    pub fn usize(&mut self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.error(key, "is required but missing"))
    }

    /// The first of several accepted names that is present (for example `num_experts` and
    /// `num_local_experts`, which different transformers versions write for the same thing).
    pub fn usize_any(&mut self, keys: &[&str]) -> Result<usize> {
        for key in keys {
            if let Some(v) = self.opt_usize(key)? {
                return Ok(v);
            }
        }
        Err(self.error(&keys.join("` or `"), "is required but missing"))
    }

    pub fn opt_f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a number, got {v}"))),
        }
    }

    pub fn f64_or(&mut self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub fn bool_or(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.value(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(v) => Err(self.error(key, format!("expected true or false, got {v}"))),
        }
    }

    pub fn opt_str(&mut self, key: &str) -> Result<Option<String>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(key, format!("expected a string, got {v}"))),
        }
    }

    pub fn usize_list(&mut self, key: &str) -> Result<Vec<usize>> {
        match self.value(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| self.error(key, format!("expected integers, got {v}")))
                })
                .collect(),
            Some(v) => Err(self.error(key, format!("expected a list of integers, got {v}"))),
        }
    }

    /// Marks fields as read that do not change inference (training knobs, bookkeeping).
    pub fn irrelevant(&mut self, keys: &[&str]) {
        self.seen.extend(keys.iter().map(|k| k.to_string()));
    }

    /// Fields present in the file that nothing read: the caller reports them.
    pub fn unread(&self) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| !self.seen.contains(*k))
            .map(|k| format!("{}{k}", self.prefix))
            .chain(self.nested_unread.iter().cloned())
            .collect()
    }
}
