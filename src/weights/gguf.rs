//! Weights read from a GGUF file: its tensors under their GGUF names, plain numbers decoded as
//! safetensors ones are, and q/k rows that llama.cpp's converter permuted put back in HF's order.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;

use super::{finite, Entry, MappedFile, Weights};
use crate::arch::{join, ExpertNames, TensorNames};
use crate::error::Result;
use crate::gguf::{dequant, GgmlType, Gguf};
use crate::quant::{QMatrix, QuantFormat, SharedBytes};

impl Weights {
    /// The tensors of `gguf`, to come out in `dtype` on `device`; `unpermute` names those
    /// whose rows to restore to HF's order, with their head count (see [`unpermute_byte_rows`]).
    pub fn from_gguf(
        gguf: Gguf,
        unpermute: HashMap<String, usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Weights> {
        let dir = gguf.path().to_path_buf();
        let (maps, infos) = gguf.into_parts();
        let tensors = infos
            .into_iter()
            .map(|t| {
                let (dtype, packed) = match t.ggml_type {
                    GgmlType::F32 => (Dtype::F32, None),
                    GgmlType::F16 => (Dtype::F16, None),
                    GgmlType::BF16 => (Dtype::BF16, None),
                    other => (Dtype::U8, Some(other)),
                };
                let entry = Entry {
                    file: t.file,
                    dtype,
                    shape: t.shape(),
                    start: t.start,
                    end: t.end,
                    packed,
                };
                (t.name, entry)
            })
            .collect();
        Ok(Weights {
            dir,
            files: maps
                .into_iter()
                .map(|(path, mmap)| MappedFile {
                    path,
                    mmap: std::sync::Arc::new(mmap),
                })
                .collect(),
            tensors,
            random: None,
            gpu_seeded: AtomicBool::new(false),
            dtype,
            device: device.clone(),
            unpermute,
            fp8_block: None,
            read: std::sync::Mutex::default(),
            check_finite: false,
        })
    }
}

impl Weights {
    /// Tensor `name` (of `shape`) as the CPU's quantized blocks, read in place from the mapped
    /// file (copied only where llama.cpp permuted its rows or the bytes are not aligned for
    /// the block type), when the GGUF stores it in a
    /// format the CPU kernels read (Q8_0, Q4_0, MXFP4, Q4_K, Q5_K, Q6_K), the weights live on
    /// the CPU and `want` (a `--quant`) names that format or none. `None` otherwise: the
    /// tensor is then read dense (dequantized) like any other.
    pub fn quantized(
        &self,
        name: &str,
        shape: &[usize],
        want: Option<QuantFormat>,
    ) -> Result<Option<QMatrix>> {
        let format = match self.tensors.get(name).and_then(|e| e.packed) {
            Some(t) => cpu_format(t),
            None => None,
        };
        let Some(format) = format else {
            return Ok(None);
        };
        if !self.device.is_cpu() || want.is_some_and(|w| w != format) {
            return Ok(None);
        }
        if self.unpermute.contains_key(name) {
            return self.packed(name, shape, format).map(Some);
        }
        let (entry, file) = self.entry(name, shape)?;
        let bad = |message: String| file.tensor_error(name, message);
        self.check_blocks(format, &file.mmap[entry.start..entry.end], file, name)?;
        let bytes: SharedBytes = file.mmap.clone();
        QMatrix::mapped(format, bytes, entry.start..entry.end, shape)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    /// A GGUF layer's experts kept in their quantized format (see [`Weights::quantized`]):
    /// `(gate [E, I, H], up [E, I, H], down [E, H, I])`; `None` unless all three are kept and
    /// gate and up share a format (the kernels prepare x once for both).
    pub fn quantized_experts(
        &self,
        names: &TensorNames,
        prefix: &str,
        (e, i, h): (usize, usize, usize),
        want: Option<QuantFormat>,
    ) -> Result<Option<[QMatrix; 3]>> {
        let ExpertNames::Separate { gate, up, down } = &names.experts else {
            return Ok(None);
        };
        let part = |name: &str, shape: &[usize]| self.quantized(&join(prefix, name), shape, want);
        let (Some(gate), Some(up), Some(down)) = (
            part(gate, &[e, i, h])?,
            part(up, &[e, i, h])?,
            part(down, &[e, h, i])?,
        ) else {
            return Ok(None);
        };
        if gate.format() != up.format() {
            return Ok(None);
        }
        Ok(Some([gate, up, down]))
    }

    /// The packed tensor `name` read into blocks of `format`, copied (its rows restored where
    /// llama.cpp permuted them, its mapped pages released).
    fn packed(&self, name: &str, shape: &[usize], format: QuantFormat) -> Result<QMatrix> {
        let (_, file) = self.entry(name, shape)?;
        self.read_rows(name, shape, |bytes, bad| {
            self.check_blocks(format, bytes, file, name)?;
            QMatrix::from_ggml(format, bytes, shape).map_err(|e| bad(e.to_string()))
        })
    }

    /// A packed tensor as numbers (for the tensors kept dense: the embedding table, or any
    /// under another `--quant` or on a GPU), or an error naming a type not read yet.
    pub(super) fn unpacked(&self, name: &str, shape: &[usize], packed: GgmlType) -> Result<Tensor> {
        if let Some(format) = cpu_format(packed) {
            return self.packed(name, shape, format)?.dequantize(DType::F32);
        }
        if !dequant::supported(packed) {
            let (_, file) = self.entry(name, shape)?;
            return Err(file.tensor_error(
                name,
                format!(
                    "{packed} is a type not read yet (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, \
                     Q5_1, Q4_K, Q5_K, Q6_K and MXFP4 are)"
                ),
            ));
        }
        let values = self.read_rows(name, shape, |bytes, bad| {
            let mut values = vec![0f32; shape.iter().product()];
            dequant::dequantize(packed, bytes, &mut values)
                .ok_or_else(|| bad(format!("its {packed} blocks do not fill {shape:?}")))?;
            Ok(values)
        })?;
        let (_, file) = self.entry(name, shape)?;
        self.refuse_non_finite(name, shape, file, || finite::first_non_finite(&values))?;
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// Refuses what the kernels cannot take from tensor `name`'s blocks as they are: an MXFP4
    /// scale of 255 (E8M0's NaN), always; a scale that is not finite, where weights are
    /// checked.
    fn check_blocks(
        &self,
        format: QuantFormat,
        bytes: &[u8],
        file: &MappedFile,
        name: &str,
    ) -> Result<()> {
        if format == QuantFormat::Mxfp4 {
            let size = format.block_bytes();
            if let Some(at) = bytes.chunks_exact(size).position(|b| b[0] == 255) {
                let message =
                    format!("MXFP4 block {at} has scale 255, E8M0's NaN (a corrupt file)");
                return Err(file.tensor_error(name, message));
            }
        }
        if self.check_finite {
            if let Some(problem) = finite::block_problem(format, bytes) {
                return Err(finite::error(&file.path, name, problem));
            }
        }
        Ok(())
    }
}

/// The CPU's kept format for a GGUF type, where it has one (its tensors are read in place).
pub fn cpu_format(t: GgmlType) -> Option<QuantFormat> {
    match t {
        GgmlType::Q8_0 => Some(QuantFormat::Q8_0),
        GgmlType::Q4_0 => Some(QuantFormat::Q4_0),
        GgmlType::Q5_0 => Some(QuantFormat::Q5_0),
        GgmlType::Mxfp4 => Some(QuantFormat::Mxfp4),
        GgmlType::Q4K => Some(QuantFormat::Q4K),
        GgmlType::Q5K => Some(QuantFormat::Q5K),
        GgmlType::Q6K => Some(QuantFormat::Q6K),
        _ => None,
    }
}

/// Undoes llama.cpp's `permute` of q/k weights (and biases) of Llama-style models, on the
/// stored rows whatever their type: `rows` rows of `bytes.len() / rows` bytes, heads · d of
/// them. In each head's block of rows it interleaved the two halves (rows `r` and `r + d/2`
/// became rows `2r` and `2r + 1`) for GGML's RoPE on adjacent pairs.
pub(super) fn unpermute_byte_rows(
    bytes: &[u8],
    rows: usize,
    heads: usize,
) -> Result<Vec<u8>, String> {
    if heads == 0
        || rows == 0
        || !rows.is_multiple_of(2 * heads)
        || !bytes.len().is_multiple_of(rows)
    {
        return Err(format!(
            "{rows} rows do not split into {heads} heads of pairs"
        ));
    }
    let (width, d) = (bytes.len() / rows, rows / heads);
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for two in 0..2 {
            for r in 0..d / 2 {
                let (to, from) = (h * d + two * (d / 2) + r, h * d + 2 * r + two);
                out[to * width..][..width].copy_from_slice(&bytes[from * width..][..width]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` (convert_hf_to_gguf.py, LlamaModel.permute), on row indices.
    fn permute(rows: &[f32], heads: usize) -> Vec<f32> {
        let d = rows.len() / heads;
        let mut out = vec![0.0; rows.len()];
        for h in 0..heads {
            for two in 0..2 {
                for r in 0..d / 2 {
                    // reshape(heads, 2, d/2).swapaxes(1, 2): (h, r, two) <- (h, two, r)
                    out[h * d + r * 2 + two] = rows[h * d + two * (d / 2) + r];
                }
            }
        }
        out
    }

    #[test]
    fn blocks_the_cpu_reads_are_read_in_place_from_the_mapped_file() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gguf/tiny-shakespeare-moe-q4_0.gguf");
        let gguf = Gguf::open(&path).unwrap();
        let w = Weights::from_gguf(gguf, HashMap::new(), DType::F32, &Device::Cpu).unwrap();
        let gate = w
            .quantized("blk.0.ffn_gate_exps.weight", &[8, 256, 192], None)
            .unwrap()
            .unwrap();
        assert_eq!(gate.format(), QuantFormat::Q4_0);
        // q4_0 rows are interleaved for the x86 tiles where the CPU runs them: a copy.
        assert_eq!(gate.is_mapped(), !gate.is_interleaved());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(gate.is_interleaved(), is_x86_feature_detected!("avx2"));
        // Blocks no tile interleaves (q5_0) are read in place.
        let k_path = path.with_file_name("tiny-shakespeare-moe-q4_k_m.gguf");
        let k_quants = Weights::from_gguf(
            Gguf::open(&k_path).unwrap(),
            HashMap::new(),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let up = k_quants
            .quantized("blk.0.ffn_up_exps.weight", &[8, 256, 192], None)
            .unwrap()
            .unwrap();
        assert_eq!(up.format(), QuantFormat::Q5_0);
        assert!(up.is_mapped());
        // Rows llama.cpp permuted are restored in a copy of their own.
        let unpermute = HashMap::from([("blk.0.attn_q.weight".to_string(), 4)]);
        let gguf = Gguf::open(&path).unwrap();
        let w = Weights::from_gguf(gguf, unpermute, DType::F32, &Device::Cpu).unwrap();
        let q = w
            .quantized("blk.0.attn_q.weight", &[192, 192], None)
            .unwrap()
            .unwrap();
        assert!(!q.is_mapped());
        // Another --quant, or a GPU, takes the tensor dense.
        let other = w.quantized(
            "blk.0.ffn_gate_exps.weight",
            &[8, 256, 192],
            Some(QuantFormat::Q8_0),
        );
        assert!(other.unwrap().is_none());
    }

    #[test]
    fn unpermuting_restores_what_llama_cpp_permuted() {
        let heads = 3;
        let hf: Vec<f32> = (0..24).map(|r| r as f32).collect();
        // Rows of f32 values (dense tensors) and of two bytes (packed ones).
        let f32_rows =
            |rows: &[f32]| -> Vec<u8> { rows.iter().flat_map(|r| r.to_le_bytes()).collect() };
        let byte_rows = |rows: &[f32]| -> Vec<u8> {
            rows.iter()
                .flat_map(|&r| [r as u8, 100 + r as u8])
                .collect()
        };
        for rows in [f32_rows, byte_rows] {
            let stored = rows(&permute(&hf, heads));
            assert_eq!(unpermute_byte_rows(&stored, 24, heads).unwrap(), rows(&hf));
            assert!(unpermute_byte_rows(&stored, 24, 5).is_err());
        }
    }
}
