//! One GGUF file's header, metadata and tensor infos, read from its bytes with every length and
//! offset checked against what is left before it is used: no size read from the file
//! allocates or loops beyond the file's own size.

use std::collections::HashSet;

use super::types::GgmlType;
use super::value::Value;

/// GGML_MAX_DIMS.
const MAX_DIMS: usize = 4;
/// Arrays of arrays nest no deeper than this (gguf-py writes none deeper than one).
const MAX_NESTING: usize = 8;
const DEFAULT_ALIGNMENT: usize = 32;

/// What the header of one file says; tensor ranges are absolute offsets in the file.
pub(super) struct Parsed {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<RawTensor>,
}

pub(super) struct RawTensor {
    pub name: String,
    /// GGUF's order: `dims[0]` is the length of a row (ggml's ne0).
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    pub start: usize,
    pub end: usize,
}

/// Parses `bytes`, the whole file; the message of an error says what and where.
pub(super) fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut r = Reader { bytes, at: 0 };
    let magic = r.take(4, "the magic number")?;
    if magic != b"GGUF" {
        return Err(format!(
            "not a GGUF file (it starts with {magic:02x?}, not \"GGUF\")"
        ));
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 (32-bit counts) is not supported".into()),
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err("a big-endian GGUF file; only little-endian ones are supported".into())
        }
        v => return Err(format!("GGUF version {v} is not supported (2 and 3 are)")),
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // The smallest entries: a key of 0 bytes and a u8 (13 bytes), a tensor of 0 dims (24).
    r.fits(kv_count, 13, "metadata entries")?;
    r.fits(tensor_count, 24, "tensor infos")?;

    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut keys = HashSet::new();
    for _ in 0..kv_count {
        let key = r.string("a metadata key")?;
        let kind = r.u32(&format!("the type of `{key}`"))?;
        let value = r.value(kind, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key `{key}` appears twice"));
        }
        metadata.push((key, value));
    }
    let alignment = alignment(&metadata)?;

    let mut infos = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let name = r.string("a tensor name")?;
        let what = |field: &str| format!("the {field} of tensor `{name}`");
        let n_dims = r.u32(&what("dimension count"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = r.u64(&what("shape"))?;
            dims.push(usize::try_from(d).map_err(|_| format!("tensor `{name}`: dimension {d}"))?);
        }
        let id = r.u32(&what("type"))?;
        let ggml_type = GgmlType::from_id(id).ok_or_else(|| {
            format!("tensor `{name}` has type id {id}, a GGML type this reader does not know")
        })?;
        let offset = r.u64(&what("offset"))?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        infos.push((name, dims, ggml_type, offset));
    }

    // A file of metadata alone (llama.cpp's vocabulary files) may end unpadded; each
    // tensor's range is checked against the file below.
    let data_start =
        r.at.checked_next_multiple_of(alignment)
            .ok_or("the tensor data would start past the end of the file")?;
    let tensors = infos
        .into_iter()
        .map(|(name, dims, ggml_type, offset)| {
            let (start, end) = locate(&name, &dims, ggml_type, offset, data_start, alignment)?;
            if end > bytes.len() {
                return Err(format!(
                    "the data of tensor `{name}` runs past the end of the file (bytes {start}..{end} \
                     of a file of {})",
                    bytes.len()
                ));
            }
            Ok(RawTensor {
                name,
                dims,
                ggml_type,
                start,
                end,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Parsed {
        version,
        metadata,
        tensors,
    })
}

/// `general.alignment`, a power of two, 32 when absent.
fn alignment(metadata: &[(String, Value)]) -> Result<usize, String> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() && a <= 1 << 20 => Ok(a as usize),
        _ => Err(format!(
            "metadata `general.alignment` is {value}, not a power of two up to 2^20"
        )),
    }
}

/// The absolute byte range of a tensor's data, its sizes checked for overflow and its rows
/// for whole blocks.
fn locate(
    name: &str,
    dims: &[usize],
    ggml_type: GgmlType,
    offset: u64,
    data_start: usize,
    alignment: usize,
) -> Result<(usize, usize), String> {
    let too_big = || format!("tensor `{name}` of shape {dims:?} is larger than any file");
    let row = dims.first().copied().unwrap_or(1);
    let rows = dims[1.min(dims.len())..]
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(too_big)?;
    let row_bytes = ggml_type.row_bytes(row).ok_or_else(|| {
        format!(
            "tensor `{name}` has rows of {row} values, not whole {ggml_type} blocks of {}",
            ggml_type.block_values()
        )
    })?;
    let size = row_bytes.checked_mul(rows).ok_or_else(too_big)?;
    let offset = usize::try_from(offset).map_err(|_| too_big())?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor `{name}` starts at data offset {offset}, not a multiple of the alignment {alignment}"
        ));
    }
    let start = data_start.checked_add(offset).ok_or_else(too_big)?;
    let end = start.checked_add(size).ok_or_else(too_big)?;
    Ok((start, end))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "{what} runs past the end of the file ({n} bytes at offset {}, {} left)",
                self.at,
                self.left()
            ));
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    /// Fails unless `count` items of at least `min_bytes` each fit in what is left.
    fn fits(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), String> {
        match count.checked_mul(min_bytes) {
            Some(n) if n <= self.left() as u64 => Ok(()),
            _ => Err(format!(
                "{count} {what} cannot fit in the {} bytes left of the file",
                self.left()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u64(what)?;
        if len > self.left() as u64 {
            return Err(format!(
                "{what}: a string of {len} bytes is longer than the {} bytes left of the file",
                self.left()
            ));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    /// A value of GGUF type `kind` (gguf-py's GGUFValueType) for metadata `key`.
    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value, String> {
        let what = format!("the value of `{key}`");
        Ok(match kind {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!("`{key}` nests arrays deeper than {MAX_NESTING}"));
                }
                let inner = self.u32(&what)?;
                let count = self.u64(&what)?;
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("`{key}` is an array of unknown value type {t}")),
                };
                self.fits(count, min, &format!("elements of `{key}`"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(inner, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            t => return Err(format!("`{key}` has unknown value type {t}")),
        })
    }
}
