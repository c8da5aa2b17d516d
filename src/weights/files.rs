//! A checkpoint's safetensors files: which shards (the single file, or those the index lists),
//! each a regular file mapped and its header checked with errors naming the tensor, and every
//! tensor found in exactly one of them where the index says it is.

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::{Entry, MappedFile};
use crate::error::{Error, Result};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// The mapped files of the checkpoint in `dir` and where each tensor lies in them.
///
/// A tensor in two shards is refused unless both copies are the same bytes (then the one the
/// index names is read): HF transformers merges the shards' tensors in file-name order, so the
/// later shard's copy silently wins whatever the index says, and two different copies mean a
/// checkpoint put together from two versions, with no right answer to pick.
pub(super) fn open(dir: &Path) -> Result<(Vec<MappedFile>, HashMap<String, Entry>)> {
    Error::check_model_dir(dir)?;
    let index_path = dir.join(INDEX_FILE);
    let weight_map = match index_path.exists() {
        true => Some(index_weight_map(&index_path)?),
        false => None,
    };
    let paths: Vec<PathBuf> = match &weight_map {
        Some(map) => (map.values().collect::<BTreeSet<_>>().into_iter())
            .map(|f| dir.join(f))
            .collect(),
        None => vec![dir.join(SINGLE_FILE)],
    };
    let mut files: Vec<MappedFile> = Vec::with_capacity(paths.len());
    let mut tensors: HashMap<String, Entry> = HashMap::new();
    for (file, path) in paths.into_iter().enumerate() {
        let mmap = map(&path)?;
        // read_metadata checks the header and that the offsets tile the file exactly, so a
        // truncated file is caught here rather than when a tensor is read.
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: header_problem(&mmap, &e).unwrap_or_else(|| e.to_string()),
            })?;
        files.push(MappedFile {
            path,
            mmap: Arc::new(mmap),
        });
        let data_start = 8 + header_len;
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let entry = Entry {
                file,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + start,
                end: data_start + end,
                packed: None,
            };
            match tensors.entry(name) {
                Slot::Vacant(slot) => {
                    slot.insert(entry);
                }
                Slot::Occupied(mut slot) => {
                    let name = slot.key().clone();
                    let named = weight_map.as_ref().and_then(|m| m.get(&name));
                    if twice(&files, &name, slot.get(), &entry, named)? {
                        slot.insert(entry);
                    }
                }
            }
        }
    }
    if let Some(map) = &weight_map {
        check_index(&index_path, map, &files, &tensors)?;
    }
    Ok((files, tensors))
}

/// A tensor found in a second shard: an error unless both copies have the same dtype, shape
/// and bytes; then whether to take the `second` (the one in the file the index names).
fn twice(
    files: &[MappedFile],
    name: &str,
    first: &Entry,
    second: &Entry,
    named: Option<&String>,
) -> Result<bool> {
    let (a, b) = (&files[first.file], &files[second.file]);
    let same = first.dtype == second.dtype
        && first.shape == second.shape
        && a.mmap[first.start..first.end] == b.mmap[second.start..second.end];
    if !same {
        return Err(Error::Checkpoint {
            path: b.path.clone(),
            message: format!(
                "tensor `{name}` is also in {}, with other values; a checkpoint holds each \
                 tensor once (which copy is meant cannot be told)",
                a.path.display()
            ),
        });
    }
    let file_name = |f: &MappedFile| f.path.file_name().map(|n| n.to_string_lossy().into_owned());
    Ok(named.is_some() && file_name(b).as_ref() == named)
}

/// Every tensor the index's weight_map names must be in the shard it names.
fn check_index(
    index: &Path,
    map: &BTreeMap<String, String>,
    files: &[MappedFile],
    tensors: &HashMap<String, Entry>,
) -> Result<()> {
    for (name, file) in map {
        let found = tensors.get(name).map(|e| &files[e.file].path);
        if found.is_some_and(|p| p.file_name().is_some_and(|n| n == file.as_str())) {
            continue;
        }
        let where_else = match found {
            Some(path) => format!(" (it is in {})", path.display()),
            None => " (no shard does)".into(),
        };
        return Err(Error::Checkpoint {
            path: index.to_path_buf(),
            message: format!(
                "weight_map puts tensor `{name}` in {file}, which does not hold it{where_else}"
            ),
        });
    }
    Ok(())
}

/// The shard file names a model.safetensors.index.json lists, each once, in order; every one
/// must be a plain file name in the index's own folder.
pub(crate) fn index_shards(index: &Path) -> Result<Vec<String>> {
    let map = index_weight_map(index)?;
    let shards: BTreeSet<String> = map.into_values().collect();
    Ok(shards.into_iter().collect())
}

/// An index's weight_map: tensor name -> shard file name (a plain name in the same folder).
fn index_weight_map(index: &Path) -> Result<BTreeMap<String, String>> {
    let value = crate::json::read(index)?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(index, "weight_map", "expected an object of name -> file"))?;
    map.iter()
        .map(|(name, file)| {
            let file = file
                .as_str()
                .filter(|f| is_plain_file_name(f))
                .ok_or_else(|| {
                    Error::config(
                        index,
                        &format!("weight_map.{name}"),
                        format!("expected a file name in the same folder, got {file}"),
                    )
                })?;
            Ok((name.clone(), file.to_string()))
        })
        .collect()
}

/// Shard names must stay inside the checkpoint folder.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && name != ".." && name != "."
}

/// Maps the file at `path`, which must be a regular file: a folder would fail to map with
/// "No such device", and opening a FIFO blocks.
fn map(path: &Path) -> Result<Mmap> {
    let io = |cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "is {}, expected a safetensors file",
                crate::error::file_kind(&meta)
            ),
        });
    }
    let file = File::open(path).map_err(io)?;
    // SAFETY: the map is read-only, and checkpoints are not modified while a model is loaded
    // from them or reads blocks in place from them (as with llama.cpp's mmap, a file truncated
    // under a running model faults it); every read is bounds-checked against the header.
    unsafe { Mmap::map(&file) }.map_err(io)
}

/// What is wrong with the header of `bytes` (a safetensors file) that `err` reports without
/// naming a tensor (sizes, offsets, the end of the data): the tensor and its numbers. `None`
/// where the header cannot be read this far, and the library's message is all there is.
fn header_problem(bytes: &[u8], err: &safetensors::SafeTensorError) -> Option<String> {
    use safetensors::SafeTensorError as E;
    if !matches!(
        err,
        E::TensorInvalidInfo
            | E::ValidationOverflow
            | E::MisalignedSlice
            | E::MetadataIncompleteBuffer
            | E::InvalidOffset(_)
    ) {
        return None;
    }
    // read_metadata got past the length and the JSON, so both are there.
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(header).ok()?;
    let mut infos = Vec::with_capacity(header.len());
    for (name, info) in header.iter().filter(|(n, _)| *n != "__metadata__") {
        let dtype: Dtype = serde_json::from_value(info.get("dtype")?.clone()).ok()?;
        let shape: Vec<usize> = serde_json::from_value(info.get("shape")?.clone()).ok()?;
        let offsets: [usize; 2] = serde_json::from_value(info.get("data_offsets")?.clone()).ok()?;
        infos.push((name, dtype, shape, offsets));
    }
    infos.sort_by_key(|(_, _, _, offsets)| *offsets);
    let mut end = 0usize;
    for (name, dtype, shape, [s, e]) in &infos {
        let at = format!("tensor `{name}` ({dtype:?} {shape:?}, data_offsets [{s}, {e}])");
        if *s != end || e < s {
            return Some(format!(
                "{at}: its data should start at {end}, where the previous tensor's ends"
            ));
        }
        let bits = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize()));
        let Some(bits) = bits else {
            return Some(format!("{at}: its size overflows"));
        };
        if bits % 8 != 0 {
            return Some(format!("{at}: its size is not a whole number of bytes"));
        }
        if e - s != bits / 8 {
            return Some(format!(
                "{at}: its shape needs {} bytes, its data_offsets span {}",
                bits / 8,
                e - s
            ));
        }
        end = *e;
    }
    let data = bytes.len() - 8 - len;
    (end != data).then(|| {
        format!("the tensors' data takes {end} bytes, and the file has {data} after the header")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of the given header JSON and `data` bytes after it.
    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        bytes
    }

    fn problem(header: &str, data: usize) -> String {
        let bytes = file(header, data);
        let err = SafeTensors::read_metadata(&bytes).map(|_| ()).unwrap_err();
        header_problem(&bytes, &err).unwrap_or_else(|| format!("unnamed: {err}"))
    }

    #[test]
    fn size_and_offset_errors_name_the_tensor() {
        let p = problem(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                "b":{"dtype":"F32","shape":[3],"data_offsets":[8,16]}}"#,
            16,
        );
        assert!(
            p.contains("tensor `b`") && p.contains("needs 12 bytes, its data_offsets span 8"),
            "{p}"
        );
        let p = problem(
            r#"{"big":{"dtype":"F32","shape":[18446744073709551615,4],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(p.contains("tensor `big`") && p.contains("overflows"), "{p}");
        let p = problem(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            12,
        );
        assert!(p.contains("takes 8 bytes, and the file has 12"), "{p}");
    }
}
