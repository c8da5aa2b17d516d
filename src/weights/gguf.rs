//! Weights read from a GGUF file: its tensors under their GGUF names, plain numbers decoded as
//! safetensors ones are, and q/k rows that llama.cpp's converter permuted put back in HF's order.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;

use super::{Entry, MappedFile, Weights};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Gguf};

impl Weights {
    /// The tensors of `gguf`, to come out in `dtype` on `device`; `unpermute` names those
    /// whose rows to restore to HF's order, with their head count (see [`unpermute_rows`]).
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
                .map(|(path, mmap)| MappedFile { path, mmap })
                .collect(),
            tensors,
            random: None,
            gpu_seeded: AtomicBool::new(false),
            dtype,
            device: device.clone(),
            unpermute,
        })
    }
}

/// Undoes llama.cpp's `permute` of q/k weights (and biases) of Llama-style models: in each
/// head's block of rows it interleaved the two halves (rows `r` and `r + d/2` became rows `2r`
/// and `2r + 1`) for GGML's RoPE on adjacent pairs. `t`: (rows, ...) with rows = heads · d.
pub(crate) fn unpermute_rows(t: &Tensor, heads: usize, name: &str) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if heads == 0 || !rows.is_multiple_of(2 * heads) {
        return Err(Error::Input(format!(
            "{name}: {rows} rows do not split into {heads} heads of pairs"
        )));
    }
    let rest: usize = dims[1..].iter().product();
    let half = rows / heads / 2;
    // (heads, half, 2, rest) -> (heads, 2, half, rest)
    let t = t
        .reshape((heads, half, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(t)
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
    fn unpermuting_restores_what_llama_cpp_permuted() {
        let heads = 3;
        let hf: Vec<f32> = (0..24).map(|r| r as f32).collect();
        let stored = Tensor::from_vec(permute(&hf, heads), (24, 1), &Device::Cpu).unwrap();
        let back = unpermute_rows(&stored, heads, "q").unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
        assert!(unpermute_rows(&stored, 5, "q").is_err());
    }
}
