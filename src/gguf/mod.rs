//! GGUF files, as llama.cpp writes them: the header, metadata and tensor infos parsed with every
//! length and offset checked against the file (parse.rs), the tensor data memory-mapped and
//! handed out in place, never copied. A split set (`NAME-00001-of-00003.gguf` ...) reads as one
//! file: open its first part.

mod arch;
pub(crate) mod dequant;
mod parse;
mod tokenizer;
mod types;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use arch::{architecture, GGUF_NAMES};
pub use tokenizer::tokenizer_files;
pub use types::GgmlType;
pub use value::Value;

use crate::error::{Error, Result};

/// One GGUF model: one file, or every file of a split set.
pub struct Gguf {
    /// The first file: what errors name (set before `files` has any, for errors met while
    /// reading the first file's metadata).
    first: PathBuf,
    files: Vec<GgufFile>,
    version: u32,
    /// The first file's metadata (the others of a split set hold only `split.*`).
    metadata: BTreeMap<String, Value>,
    /// In file order, then the order each file lists them.
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
}

/// Where a tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF's order: `dims[0]` is the length of a row (ggml's ne0); see [`TensorInfo::shape`].
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    pub(crate) file: usize,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl TensorInfo {
    /// The shape in row-major order, as safetensors and candle write it: `[rows, row length]`
    /// for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.end - self.start
    }

    /// Where its bytes start in the file that holds them.
    pub fn offset(&self) -> usize {
        self.start
    }
}

impl Gguf {
    /// Opens `path`: a GGUF file, the first file of a split set, or a folder that holds one
    /// of either.
    pub fn open(path: &Path) -> Result<Gguf> {
        let first = if path.is_dir() {
            find(path)?
        } else {
            path.to_path_buf()
        };
        let file = GgufFile::map(&first)?;
        let parsed = file.parse()?;
        let metadata: BTreeMap<String, Value> = parsed.metadata.into_iter().collect();
        let mut gguf = Gguf {
            first: first.clone(),
            files: Vec::new(),
            version: parsed.version,
            metadata,
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        let count = gguf.u64_or("split.count", 1)?;
        if gguf.u64_or("split.no", 0)? != 0 {
            return gguf.fail_at(
                &first,
                "this is not the first file of its split set: open that one",
            );
        }
        gguf.add(file, parsed.tensors)?;
        for no in 1..count {
            let path = split_part(&first, no, count)?;
            let file = GgufFile::map(&path)?;
            let parsed = file.parse()?;
            let part: HashMap<_, _> = parsed.metadata.into_iter().collect();
            let number = |key: &str| part.get(key).and_then(Value::as_u64);
            if number("split.no") != Some(no) || number("split.count") != Some(count) {
                return gguf.fail_at(
                    &path,
                    format!("its split.no / split.count are not {no} / {count}"),
                );
            }
            gguf.add(file, parsed.tensors)?;
        }
        if let Some(expected) = gguf.get("split.tensors.count").and_then(Value::as_u64) {
            if expected != gguf.tensors.len() as u64 {
                let found = gguf.tensors.len();
                return gguf.fail(format!(
                    "split.tensors.count says {expected} tensors; the {count} files hold {found}"
                ));
            }
        }
        Ok(gguf)
    }

    fn add(&mut self, file: GgufFile, tensors: Vec<parse::RawTensor>) -> Result<()> {
        let index = self.files.len();
        for t in tensors {
            if self.by_name.contains_key(&t.name) {
                return self.fail_at(&file.path, format!("tensor `{}` is in two files", t.name));
            }
            self.by_name.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(TensorInfo {
                name: t.name,
                dims: t.dims,
                ggml_type: t.ggml_type,
                file: index,
                start: t.start,
                end: t.end,
            });
        }
        self.files.push(file);
        Ok(())
    }

    /// The path of the (first) file.
    pub fn path(&self) -> &Path {
        &self.first
    }

    /// The GGUF version of the (first) file: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path.as_path())
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// `general.architecture` (`qwen3moe`, `llama`, `gpt-oss`, ...).
    pub fn architecture(&self) -> Result<&str> {
        self.str("general.architecture")
    }

    /// The string at `key`; an error naming it when absent or not a string.
    pub fn str(&self, key: &str) -> Result<&str> {
        let value = self.required(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, value, "a string"))
    }

    /// The non-negative integer at `key`, or `None` when absent.
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.wrong_type(key, v, "an integer"))
            })
            .transpose()
    }

    fn u64_or(&self, key: &str, default: u64) -> Result<u64> {
        Ok(self.u64(key)?.unwrap_or(default))
    }

    /// The number at `key`, or `None` when absent.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.wrong_type(key, v, "a number"))
            })
            .transpose()
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.get(key)
            .ok_or_else(|| self.error(format!("metadata `{key}` is missing")))
    }

    fn wrong_type(&self, key: &str, value: &Value, expected: &str) -> Error {
        self.error(format!(
            "metadata `{key}` is {} {value}, expected {expected}",
            value.type_name()
        ))
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of `tensor`, in place in the mapped file.
    pub fn data(&self, tensor: &TensorInfo) -> &[u8] {
        &self.files[tensor.file].mmap[tensor.start..tensor.end]
    }

    /// The mapped files (path and map, in the order `TensorInfo`s index them) and the tensors,
    /// for a reader that keeps them itself.
    pub(crate) fn into_parts(self) -> (Vec<(PathBuf, Mmap)>, Vec<TensorInfo>) {
        let files = self.files.into_iter().map(|f| (f.path, f.mmap)).collect();
        (files, self.tensors)
    }

    /// An error about this model, naming its (first) file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path().to_path_buf(),
            message: message.into(),
        }
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(self.error(message))
    }

    fn fail_at<T>(&self, path: &Path, message: impl Into<String>) -> Result<T> {
        Err(Error::Gguf {
            path: path.to_path_buf(),
            message: message.into(),
        })
    }
}

impl GgufFile {
    fn map(path: &Path) -> Result<GgufFile> {
        let io = |cause| Error::Io {
            path: path.to_path_buf(),
            cause,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only, and model files are not modified while they are in
        // use; every read is bounds-checked against the parsed header.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
        })
    }

    fn parse(&self) -> Result<parse::Parsed> {
        parse::parse(&self.mmap).map_err(|message| Error::Gguf {
            path: self.path.clone(),
            message,
        })
    }
}

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Whether `path` holds a GGUF model rather than a hub-layout checkpoint: a GGUF file, or a
/// folder with no config.json that holds a GGUF file.
pub fn holds_gguf(path: &Path) -> bool {
    if path.is_dir() {
        !path.join("config.json").exists()
            && std::fs::read_dir(path)
                .is_ok_and(|entries| entries.flatten().any(|e| is_gguf(&e.path())))
    } else {
        is_gguf(path)
    }
}

/// The one GGUF model in folder `dir`: its only GGUF file, or the first file of its only
/// split set.
fn find(dir: &Path) -> Result<PathBuf> {
    let io = |cause| Error::Io {
        path: dir.to_path_buf(),
        cause,
    };
    let mut models = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let later_part = split_name(&path).is_some_and(|(_, no, _)| no != 1);
        if is_gguf(&path) && !later_part {
            models.push(path);
        }
    }
    models.sort();
    match models.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::Gguf {
            path: dir.to_path_buf(),
            message: "no .gguf file in this folder".into(),
        }),
        many => Err(Error::Gguf {
            path: dir.to_path_buf(),
            message: format!(
                "{} GGUF models in this folder ({}): name the file",
                many.len(),
                many.iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// `PREFIX-0000N-of-0000M.gguf` read as (PREFIX, N, M).
fn split_name(path: &Path) -> Option<(String, u64, u64)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(no) && digits(count)) {
        return None;
    }
    Some((prefix.to_string(), no.parse().ok()?, count.parse().ok()?))
}

/// The path of part `no` (0-based) of the `count` files of the set `first` begins.
fn split_part(first: &Path, no: u64, count: u64) -> Result<PathBuf> {
    let bad = |message: String| Error::Gguf {
        path: first.to_path_buf(),
        message,
    };
    let (prefix, first_no, named_count) = split_name(first).ok_or_else(|| {
        bad(format!(
            "split.count is {count}, but the file is not named PREFIX-00001-of-{count:05}.gguf, \
             so its other parts cannot be found"
        ))
    })?;
    if first_no != 1 || named_count != count {
        return Err(bad(format!(
            "split.count is {count}, but the name says part {first_no} of {named_count}"
        )));
    }
    let path = first.with_file_name(format!("{prefix}-{:05}-of-{count:05}.gguf", no + 1));
    if !path.exists() {
        return Err(Error::Gguf {
            path,
            message: format!("part {} of {count} of the split set is missing", no + 1),
        });
    }
    Ok(path)
}
