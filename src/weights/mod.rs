//! Checkpoint tensors: safetensors files (one, or shards listed in
//! `model.safetensors.index.json`) memory-mapped, looked up by hub name, checked for shape,
//! converted to the compute dtype, and routed experts stacked once into `[E, N, K]`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
#[cfg(unix)]
use memmap2::UncheckedAdvice;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

mod experts;
mod files;
mod finite;
mod fp8;
mod gguf;

pub(crate) use files::index_shards;
pub use finite::{CheckWeights, AUTO_CHECK_BYTES};
pub use gguf::cpu_format;

/// All tensors of a checkpoint, mapped but not yet read; or, for benchmarks of shapes that
/// have no checkpoint on disk, random tensors of whatever shape is asked for.
pub struct Weights {
    dir: PathBuf,
    files: Vec<MappedFile>,
    /// Tensor name -> (file index, dtype, shape, byte range within that file).
    tensors: HashMap<String, Entry>,
    /// `Some(seed)`: every name exists and reads as random values (see [`Weights::random`]).
    random: Option<u64>,
    /// Whether the device's random generator has been seeded (random weights on a GPU).
    gpu_seeded: AtomicBool,
    dtype: DType,
    device: Device,
    /// GGUF tensors whose rows llama.cpp's converter permuted (q and k of Llama-style
    /// models), with their head count: read back in HF's order (gguf.rs).
    unpermute: HashMap<String, usize>,
    /// The block size of FP8 weights' scales, where config.json says the checkpoint has them.
    fp8_block: Option<[usize; 2]>,
    /// The names of the tensors read so far (see [`Weights::unread`]).
    read: Mutex<HashSet<String>>,
    /// Whether every number read is checked to be finite (see [`Weights::checking`]).
    check_finite: bool,
}

struct MappedFile {
    path: PathBuf,
    /// Shared with the quantized matrices that read their blocks in place from it.
    mmap: Arc<Mmap>,
}

impl MappedFile {
    /// An error about tensor `name` of this (GGUF) file.
    fn tensor_error(&self, name: &str, message: String) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            message: format!("tensor `{name}`: {message}"),
        }
    }

    /// Hands the mapped pages of bytes [start, end) back to the page cache once they are
    /// copied into the model: otherwise each loaded tensor counts twice in the process's
    /// memory until the load ends (gpt-oss-20b, 13 GB: a peak of 26 GB). Pages shared with a
    /// neighbouring tensor are dropped too and read back if needed.
    fn release(&self, start: usize, end: usize) {
        #[cfg(unix)]
        // SAFETY: the map is shared and read-only; a dropped page that is read again comes back
        // from the file with the same bytes, so no slice into the map sees anything change.
        // A failure only leaves the pages mapped.
        let _ = unsafe {
            self.mmap
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
        };
        #[cfg(not(unix))]
        let _ = (start, end);
    }
}

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
    /// A GGUF tensor's type, where it is not one of the plain `dtype`s.
    packed: Option<GgmlType>,
}

impl Weights {
    /// Maps the checkpoint in `dir`; tensors come out in `dtype` on `device`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (files, tensors) = files::open(dir)?;
        Ok(Weights {
            dir: dir.to_path_buf(),
            files,
            tensors,
            random: None,
            gpu_seeded: AtomicBool::new(false),
            dtype,
            device: device.clone(),
            unpermute: HashMap::new(),
            fp8_block: None,
            read: Mutex::default(),
            check_finite: false,
        })
    }

    /// Reads F8_E4M3 weights with their per-block scales of this size (`None`: the checkpoint
    /// says it has none, and an F8_E4M3 tensor is an error).
    pub fn with_fp8_blocks(mut self, block: Option<[usize; 2]>) -> Self {
        self.fp8_block = block;
        self
    }

    /// Weights with no checkpoint behind them: every tensor asked for exists, with the shape
    /// asked for. Matrices are uniform with standard deviation 1/sqrt(fan_in) (the last
    /// dimension), so activations keep their scale through the layers; vectors are ones for
    /// norms and zeros otherwise (biases). On the CPU the same seed and name give the same
    /// values (in one build: the name is hashed with the standard library's hasher). On a GPU
    /// they are drawn there, so that a 60 GB model never passes through the host, from one
    /// cuRAND generator seeded once: the same seed and order of reads give the same values.
    pub fn random(seed: u64, dtype: DType, device: &Device) -> Self {
        Weights {
            dir: PathBuf::from("(random weights)"),
            files: Vec::new(),
            tensors: HashMap::new(),
            random: Some(seed),
            gpu_seeded: AtomicBool::new(false),
            dtype,
            device: device.clone(),
            unpermute: HashMap::new(),
            fp8_block: None,
            read: Mutex::default(),
            check_finite: false,
        }
    }

    /// Checks every number read from here on to be finite, as `check` says for a checkpoint
    /// of this size; a weight that is not is an error naming its tensor. Random weights are
    /// never checked (they are finite by construction).
    pub fn checking(mut self, check: CheckWeights) -> Self {
        let bytes: u64 = self.files.iter().map(|f| f.mmap.len() as u64).sum();
        self.check_finite = self.random.is_none() && check.applies(bytes);
        self
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.random.is_some() || self.tensors.contains_key(name)
    }

    /// The checkpoint's tensors that nothing has read yet (by [`Weights::get`],
    /// [`Weights::bytes`], [`Weights::quantized`] or the readers built on them), sorted, less
    /// those under any of `skipped` (name prefixes of parts a text model does not load). After
    /// a model is built from these weights: what it ignored. Empty for random weights.
    pub fn unread(&self, skipped: &[&str]) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut unread: Vec<String> = (self.tensors.keys())
            .filter(|name| !read.contains(*name))
            .filter(|name| !skipped.iter().any(|prefix| name.starts_with(prefix)))
            .cloned()
            .collect();
        unread.sort();
        unread
    }

    /// Tensor `name`'s entry and the file it is in, after checking that it has `shape`; the
    /// name counts as read.
    fn entry(&self, name: &str, shape: &[usize]) -> Result<(&Entry, &MappedFile)> {
        let entry = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            dir: self.dir.clone(),
            name: name.to_string(),
        })?;
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        if !read.contains(name) {
            read.insert(name.to_string());
        }
        drop(read);
        let file = &self.files[entry.file];
        if entry.shape != shape {
            return Err(Error::TensorShape {
                path: file.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        Ok((entry, file))
    }

    /// The stored bytes of tensor `name`, which must be U8 of exactly `shape`, read in place
    /// (packed formats such as MXFP4's blocks and scales).
    pub fn bytes(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        if self.random.is_some() {
            return Err(Error::Input(format!(
                "{name}: random weights have no packed bytes"
            )));
        }
        let (entry, file) = self.entry(name, shape)?;
        if entry.dtype != Dtype::U8 {
            return Err(Error::TensorDtype {
                path: file.path.clone(),
                name: name.to_string(),
                dtype: format!("{:?} (expected U8)", entry.dtype),
            });
        }
        Ok(&file.mmap[entry.start..entry.end])
    }

    /// Lets go of the mapped pages of `name` (see `MappedFile::release`), for callers of
    /// [`Weights::bytes`] done with them.
    pub fn release(&self, name: &str) {
        if let Some(entry) = self.tensors.get(name) {
            self.files[entry.file].release(entry.start, entry.end);
        }
    }

    /// Reads tensor `name`, which must have exactly `shape`, in the compute dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get_as(name, shape, self.dtype)
    }

    /// [`Weights::get`] in `dtype` rather than the compute dtype, converted from the stored
    /// values directly: for the small tensors kept in f32 whatever the model computes in.
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if let Some(seed) = self.random {
            if !self.device.is_cpu() && !self.gpu_seeded.swap(true, Ordering::Relaxed) {
                // One generator for every tensor: a generator per tensor is a driver
                // allocation and a setup each time, thousands for per-expert checkpoints.
                self.device.set_seed(seed)?;
            }
            let tensor = random_tensor(seed, name, shape, &self.device)?;
            return Ok(tensor.to_dtype(dtype)?);
        }
        let (entry, file) = self.entry(name, shape)?;
        if let Some(packed) = entry.packed {
            let tensor = self.unpacked(name, shape, packed)?;
            return Ok(tensor.to_dtype(dtype)?.to_device(&self.device)?);
        }
        if entry.dtype == Dtype::F8_E4M3 {
            let tensor = self.fp8(name, shape)?;
            return Ok(tensor.to_dtype(dtype)?.to_device(&self.device)?);
        }
        let cpu = Device::Cpu;
        let tensor = self.read_rows(name, shape, |bytes, _| {
            self.refuse_non_finite(name, shape, file, || {
                finite::first_non_finite_stored(entry.dtype, bytes)
            })?;
            Ok(match entry.dtype {
                Dtype::F32 => Tensor::from_vec(decode(bytes, f32::from_le_bytes), shape, &cpu)?,
                Dtype::BF16 => Tensor::from_vec(
                    decode(bytes, |b| bf16::from_bits(u16::from_le_bytes(b))),
                    shape,
                    &cpu,
                )?,
                Dtype::F16 => Tensor::from_vec(
                    decode(bytes, |b| f16::from_bits(u16::from_le_bytes(b))),
                    shape,
                    &cpu,
                )?,
                other => {
                    return Err(Error::TensorDtype {
                        path: file.path.clone(),
                        name: name.to_string(),
                        dtype: format!("{other:?}"),
                    })
                }
            })
        })?;
        Ok(tensor.to_dtype(dtype)?.to_device(&self.device)?)
    }

    /// Where weights are checked, refuses tensor `name` (in `file`) if `first_bad` finds a
    /// value that is not finite (its index and value); `first_bad` runs only then.
    fn refuse_non_finite(
        &self,
        name: &str,
        shape: &[usize],
        file: &MappedFile,
        first_bad: impl FnOnce() -> Option<(usize, f32)>,
    ) -> Result<()> {
        if !self.check_finite {
            return Ok(());
        }
        match first_bad() {
            Some((at, v)) => Err(finite::error(
                &file.path,
                name,
                finite::value_problem(at, v, shape),
            )),
            None => Ok(()),
        }
    }

    /// FP8 weight `name` (a matrix, F8_E4M3) times its block scales (`{name}_scale_inv`, F32,
    /// one per block of `fp8_block`), as f32 on the CPU.
    fn fp8(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (entry, file) = self.entry(name, shape)?;
        let bad = |message: String| Error::TensorDtype {
            path: file.path.clone(),
            name: name.to_string(),
            dtype: format!("{:?} ({message})", entry.dtype),
        };
        let Some(block) = self.fp8_block else {
            return Err(bad(
                "config.json has no FP8 quantization_config with a weight_block_size".into(),
            ));
        };
        let &[rows, cols] = shape else {
            return Err(bad(format!(
                "an FP8 tensor of shape {shape:?}; only matrices are"
            )));
        };
        let scale_name = fp8::scale_name(name);
        if !self.tensors.contains_key(&scale_name) {
            return Err(bad(format!("its block scales `{scale_name}` are missing")));
        }
        let scale_shape = fp8::scale_shape((rows, cols), block);
        let scales = self.get_as(&scale_name, &scale_shape, DType::F32)?;
        let scales = scales.flatten_all()?.to_vec1::<f32>()?;
        let values = self.read_rows(name, shape, |codes, _| {
            fp8::decode(name, codes, (rows, cols), &scales, block)
        })?;
        Ok(Tensor::from_vec(values, (rows, cols), &Device::Cpu)?)
    }

    /// Hands `read` the stored bytes of tensor `name` (of `shape`), its rows restored to HF's
    /// order where llama.cpp permuted them (GGUF files), and a maker of errors naming the
    /// tensor; the mapped pages are released once `read` has taken what it needs.
    fn read_rows<T>(
        &self,
        name: &str,
        shape: &[usize],
        read: impl FnOnce(&[u8], &dyn Fn(String) -> Error) -> Result<T>,
    ) -> Result<T> {
        let (entry, file) = self.entry(name, shape)?;
        let bad = |message: String| file.tensor_error(name, message);
        let mut bytes = Cow::Borrowed(&file.mmap[entry.start..entry.end]);
        if let Some(&heads) = self.unpermute.get(name) {
            bytes = Cow::Owned(gguf::unpermute_byte_rows(&bytes, shape[0], heads).map_err(bad)?);
        }
        let out = read(&bytes, &bad)?;
        file.release(entry.start, entry.end);
        Ok(out)
    }
}

/// See [`Weights::random`]. Values are drawn in parallel blocks, each from a generator seeded
/// by (seed, name, block), so a 30B-parameter shape fills in seconds and always the same way.
fn random_tensor(seed: u64, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    use rayon::prelude::*;
    use std::hash::{Hash, Hasher};

    const BLOCK: usize = 1 << 16;
    let n = (shape.iter())
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::Input(format!(
                "{name}: random weights of shape {shape:?} overflow"
            ))
        })?;
    if device.is_cpu() {
        let what = format!("random weights {name} {shape:?}");
        crate::Limits::current().check_memory(&what, n as u128 * 4)?;
    }
    let cpu = Device::Cpu;
    if shape.len() < 2 {
        let fill = if name.contains("norm") { 1.0f32 } else { 0.0 };
        return Ok(Tensor::full(fill, shape, device)?);
    }
    let fan_in = shape[shape.len() - 1] as f32;
    let bound = (3.0 / fan_in).sqrt(); // uniform(-b, b) has variance b^2 / 3 = 1 / fan_in
    if !device.is_cpu() {
        // From the device's one generator, seeded once by Weights::get.
        return Ok(Tensor::rand(-bound, bound, shape, device)?);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (seed, name).hash(&mut hasher);
    let base = hasher.finish();
    let mut values = vec![0f32; n];
    values
        .par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(block, chunk)| {
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(base ^ (block as u64).rotate_left(32));
            chunk
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-bound..bound));
        });
    Ok(Tensor::from_vec(values, shape, &cpu)?)
}

/// Little-endian bytes to values; `bytes.len()` is a multiple of N (the header was validated).
fn decode<T, const N: usize>(bytes: &[u8], from: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            from(b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_repeat_and_keep_the_scale() {
        let w = Weights::random(7, DType::F32, &Device::Cpu);
        let a = w.get("layers.0.mlp.weight", &[300, 400]).unwrap();
        assert_eq!(a.dims(), &[300, 400]);
        let b = w.get("layers.0.mlp.weight", &[300, 400]).unwrap();
        let other = w.get("layers.1.mlp.weight", &[300, 400]).unwrap();
        let values = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(
            values,
            other.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let var = values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32;
        assert!((var * 400.0 - 1.0).abs() < 0.02, "variance {var}");
        let norm = w.get("layers.0.input_layernorm.weight", &[8]).unwrap();
        assert_eq!(norm.to_vec1::<f32>().unwrap(), vec![1.0; 8]);
        let bias = w.get("layers.0.self_attn.q_proj.bias", &[8]).unwrap();
        assert_eq!(bias.to_vec1::<f32>().unwrap(), vec![0.0; 8]);
        assert!(w.contains("anything"));
    }

    /// Released pages come back from the file: a tensor read again, and its neighbours that
    /// share its first and last pages, keep their values.
    #[test]
    fn released_pages_read_back_the_same() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt_oss-b");
        let w = Weights::open(&dir, DType::F32, &Device::Cpu).unwrap();
        let mut names: Vec<&String> = w.tensors.keys().collect();
        names.sort();
        let read = |name: &str| {
            let shape = w.tensors[name].shape.clone();
            match w.tensors[name].dtype {
                Dtype::U8 => w.bytes(name, &shape).unwrap().to_vec(),
                _ => {
                    let t = w.get(name, &shape).unwrap().flatten_all().unwrap();
                    let v = t.to_vec1::<f32>().unwrap();
                    v.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
            }
        };
        let before: Vec<Vec<u8>> = names.iter().map(|n| read(n)).collect();
        for name in &names {
            w.release(name);
        }
        let after: Vec<Vec<u8>> = names.iter().map(|n| read(n)).collect();
        assert!(before.iter().any(|b| !b.is_empty()));
        assert_eq!(before, after);
    }
}
