//! Quantized weights: the block formats, conversion at load (`--quant`), and [`Weight`], the
//! matrix every linear layer and expert reads, dense, in bf16 panels (panels.rs) or quantized.
//!
//! Activations stay in the compute dtype; only the weights of matrix products are quantized.
//! What stays dense, as llama.cpp keeps it: norms, the embedding table (a lookup, not a
//! product), the router and the shared-expert gate (tiny, and routing is sensitive to them).

mod blocks;
mod interleaved;
mod kquants;
mod mxfp4;
mod panels;
mod slice;
mod store;

use std::str::FromStr;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use blocks::{
    dequantize_into, mxfp4_half_scale, quantize, quantize_par, quantize_par_by, BlockMxfp4,
    BlockQ4_0, BlockQ5_0, BlockQ8_0, QuantBlock, WeightBlock, BLOCK, MXFP4_CODES,
};
pub use interleaved::{
    deinterleave, deinterleave_into, interleave, interleaves, BlockMxfp4x8, BlockQ4Kx8,
    BlockQ4_0x8, BlockQ8_0x8, Interleaved, GROUP_ROWS,
};
pub use kquants::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, SubScales, SuperBlock, K_BLOCK};
#[cfg(test)]
pub use mxfp4::dequantize_mxfp4;
pub use mxfp4::{MXFP4_BLOCK, MXFP4_BLOCK_BYTES};
pub use panels::{packs_panels, Bf16Panels, PanelStep, PANEL_ROWS};
pub use slice::{with_weight_slice, WeightSlice};
pub use store::SharedBytes;
use store::Store;

use crate::error::{Error, Result};

/// A block format of quantized weights: what `--quant` converts to at load, and what the CPU
/// keeps of a GGUF file's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q8_0,
    Q4_0,
    Q5_0,
    Mxfp4,
    Q4K,
    Q5K,
    Q6K,
}

/// Runs `$make` with the type alias `$B` set to `$format`'s block type, wrapping its result
/// (a `Store` of blocks) in the matching `Blocks` variant.
macro_rules! blocks_of {
    ($format:expr, $B:ident => $make:expr) => {
        match $format {
            QuantFormat::Q8_0 => {
                type $B = BlockQ8_0;
                Blocks::Q8_0($make)
            }
            QuantFormat::Q4_0 => {
                type $B = BlockQ4_0;
                Blocks::Q4_0($make)
            }
            QuantFormat::Q5_0 => {
                type $B = BlockQ5_0;
                Blocks::Q5_0($make)
            }
            QuantFormat::Mxfp4 => {
                type $B = BlockMxfp4;
                Blocks::Mxfp4($make)
            }
            QuantFormat::Q4K => {
                type $B = BlockQ4K;
                Blocks::Q4K($make)
            }
            QuantFormat::Q5K => {
                type $B = BlockQ5K;
                Blocks::Q5K($make)
            }
            QuantFormat::Q6K => {
                type $B = BlockQ6K;
                Blocks::Q6K($make)
            }
        }
    };
}

/// Runs `$body` with `$b` bound to the blocks `$blocks` holds in row order, whatever their
/// format, or `$grouped` with `$g` bound to interleaved groups.
macro_rules! with_blocks {
    ($blocks:expr, $b:ident => $body:expr, $g:ident => $grouped:expr) => {
        match $blocks {
            Blocks::Q8_0($b) => $body,
            Blocks::Q4_0($b) => $body,
            Blocks::Q8_0x8($g) => $grouped,
            Blocks::Q4_0x8($g) => $grouped,
            Blocks::Q4Kx8($g) => $grouped,
            Blocks::Mxfp4x8($g) => $grouped,
            Blocks::Q5_0($b) => $body,
            Blocks::Mxfp4($b) => $body,
            Blocks::Q4K($b) => $body,
            Blocks::Q5K($b) => $body,
            Blocks::Q6K($b) => $body,
        }
    };
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 7] = [
        QuantFormat::Q8_0,
        QuantFormat::Q4_0,
        QuantFormat::Q5_0,
        QuantFormat::Mxfp4,
        QuantFormat::Q4K,
        QuantFormat::Q5K,
        QuantFormat::Q6K,
    ];

    fn info(self) -> (&'static str, usize, usize) {
        fn of<B: QuantBlock>() -> (&'static str, usize, usize) {
            (B::NAME, B::VALUES, size_of::<B>())
        }
        match self {
            QuantFormat::Q8_0 => of::<BlockQ8_0>(),
            QuantFormat::Q4_0 => of::<BlockQ4_0>(),
            QuantFormat::Q5_0 => of::<BlockQ5_0>(),
            QuantFormat::Mxfp4 => of::<BlockMxfp4>(),
            QuantFormat::Q4K => of::<BlockQ4K>(),
            QuantFormat::Q5K => of::<BlockQ5K>(),
            QuantFormat::Q6K => of::<BlockQ6K>(),
        }
    }

    pub fn name(self) -> &'static str {
        self.info().0
    }

    /// Weights per block: 32, or 256 for the K-quants.
    pub fn block_values(self) -> usize {
        self.info().1
    }

    /// The bytes of a block in GGML's layout.
    pub fn block_bytes(self) -> usize {
        self.info().2
    }

    /// Bytes per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        self.block_bytes() as f64 / self.block_values() as f64
    }
}

impl FromStr for QuantFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let name = s.to_ascii_lowercase();
        QuantFormat::ALL
            .into_iter()
            .find(|f| f.name().to_ascii_lowercase() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = QuantFormat::ALL.iter().map(|f| f.name()).collect();
                Error::Input(format!(
                    "--quant {s} is not supported ({})",
                    names.join(", ")
                ))
            })
    }
}

/// The blocks of a quantized matrix, row after row, or in groups of rows interleaved for the
/// x86 tiles (see interleaved.rs).
#[derive(Debug)]
enum Blocks {
    Q8_0(Store<BlockQ8_0>),
    Q8_0x8(Vec<BlockQ8_0x8>),
    Q4_0(Store<BlockQ4_0>),
    Q4_0x8(Vec<BlockQ4_0x8>),
    Q5_0(Store<BlockQ5_0>),
    Mxfp4(Store<BlockMxfp4>),
    Mxfp4x8(Vec<BlockMxfp4x8>),
    Q4K(Store<BlockQ4K>),
    Q4Kx8(Vec<BlockQ4Kx8>),
    Q5K(Store<BlockQ5K>),
    Q6K(Store<BlockQ6K>),
}

/// A quantized tensor of two or more dims whose last dim (the one products sum over) is whole
/// blocks of its format (32 weights, or 256 for the K-quants); each row's blocks contiguous.
#[derive(Debug)]
pub struct QMatrix {
    blocks: Blocks,
    dims: Vec<usize>,
}

impl QMatrix {
    /// `blocks` in row order as a matrix of `dims`, interleaved where the CPU kernels read
    /// them so (`interleaves`): a copy at load, of the file's size.
    fn new(blocks: Blocks, dims: &[usize]) -> QMatrix {
        let plain = QMatrix {
            blocks,
            dims: dims.to_vec(),
        };
        let format = plain.format();
        if !interleaves(format, dims) {
            return plain;
        }
        let kb = dims.last().copied().unwrap_or(0) / format.block_values();
        let blocks = match plain.blocks {
            Blocks::Q8_0(b) => Blocks::Q8_0x8(interleave(&b, kb)),
            Blocks::Q4_0(b) => Blocks::Q4_0x8(interleave(&b, kb)),
            Blocks::Mxfp4(b) => Blocks::Mxfp4x8(interleave(&b, kb)),
            Blocks::Q4K(b) => Blocks::Q4Kx8(interleave(&b, kb)),
            b => b,
        };
        QMatrix {
            blocks,
            dims: plain.dims,
        }
    }

    /// MXFP4 blocks as they are: `dims` with a last dim of `blocks.len()` / rows · 32.
    pub fn from_mxfp4(blocks: Vec<BlockMxfp4>, dims: &[usize]) -> Result<QMatrix> {
        let values: usize = dims.iter().product();
        let k = dims.last().copied().unwrap_or(0);
        if dims.len() < 2 || !k.is_multiple_of(BLOCK) || blocks.len() * BLOCK != values {
            return Err(Error::Input(format!(
                "{} MXFP4 blocks do not make a matrix of {dims:?}",
                blocks.len()
            )));
        }
        Ok(QMatrix::new(Blocks::Mxfp4(Store::Owned(blocks)), dims))
    }

    /// Blocks in GGML's own layout (a GGUF tensor's bytes), rows of `dims` in order.
    pub fn from_ggml(format: QuantFormat, bytes: &[u8], dims: &[usize]) -> Result<QMatrix> {
        let values: usize = dims.iter().product();
        let (size, per) = (format.block_bytes(), format.block_values());
        if !is_matrix_of(format, dims) || bytes.len() != values / per * size {
            return Err(unfit(format, bytes.len(), dims));
        }
        let blocks = blocks_of!(
            format,
            B => Store::Owned(bytes.chunks_exact(size).map(B::from_ggml).collect())
        );
        Ok(QMatrix::new(blocks, dims))
    }

    /// Blocks in GGML's own layout read in place from `bytes[range]` (a GGUF tensor in its
    /// mapped file), rows of `dims` in order; copied only if the bytes are not aligned for
    /// the block type.
    pub fn mapped(
        format: QuantFormat,
        bytes: SharedBytes,
        range: std::ops::Range<usize>,
        dims: &[usize],
    ) -> Result<QMatrix> {
        let values: usize = dims.iter().product();
        let (size, per) = (format.block_bytes(), format.block_values());
        if !is_matrix_of(format, dims) || range.len() != values / per * size {
            return Err(unfit(format, range.len(), dims));
        }
        let len = range.len();
        let blocks = blocks_of!(
            format,
            B => Store::<B>::mapped(bytes, range).ok_or_else(|| unfit(format, len, dims))?
        );
        Ok(QMatrix::new(blocks, dims))
    }

    /// Whether the rows are interleaved in groups for the x86 tiles (see interleaved.rs).
    pub fn is_interleaved(&self) -> bool {
        self.slice().is_interleaved()
    }

    /// Whether the blocks are read in place from a mapped file.
    pub fn is_mapped(&self) -> bool {
        with_blocks!(&self.blocks, b => b.is_mapped(), _g => false)
    }

    /// Quantizes a CPU tensor; `name` is used in errors.
    pub fn quantize(t: &Tensor, format: QuantFormat, name: &str) -> Result<QMatrix> {
        let dims = t.dims().to_vec();
        if !is_matrix_of(format, &dims) {
            return Err(Error::Input(format!(
                "{name}: {} needs rows of a multiple of {} values, the shape is {dims:?}",
                format.name(),
                format.block_values()
            )));
        }
        let x = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let blocks = blocks_of!(format, B => Store::Owned(quantize_par::<B>(&x)));
        Ok(QMatrix::new(blocks, &dims))
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn format(&self) -> QuantFormat {
        match self.blocks {
            Blocks::Q8_0(_) | Blocks::Q8_0x8(_) => QuantFormat::Q8_0,
            Blocks::Q4_0(_) | Blocks::Q4_0x8(_) => QuantFormat::Q4_0,
            Blocks::Q5_0(_) => QuantFormat::Q5_0,
            Blocks::Mxfp4(_) | Blocks::Mxfp4x8(_) => QuantFormat::Mxfp4,
            Blocks::Q4K(_) | Blocks::Q4Kx8(_) => QuantFormat::Q4K,
            Blocks::Q5K(_) => QuantFormat::Q5K,
            Blocks::Q6K(_) => QuantFormat::Q6K,
        }
    }

    /// The blocks, for the kernels.
    pub(crate) fn slice(&self) -> WeightSlice<'_> {
        match &self.blocks {
            Blocks::Q8_0(b) => WeightSlice::Q8_0(b),
            Blocks::Q8_0x8(g) => WeightSlice::Q8_0x8(g),
            Blocks::Q4_0(b) => WeightSlice::Q4_0(b),
            Blocks::Q4_0x8(g) => WeightSlice::Q4_0x8(g),
            Blocks::Q5_0(b) => WeightSlice::Q5_0(b),
            Blocks::Mxfp4(b) => WeightSlice::Mxfp4(b),
            Blocks::Mxfp4x8(g) => WeightSlice::Mxfp4x8(g),
            Blocks::Q4K(b) => WeightSlice::Q4K(b),
            Blocks::Q4Kx8(g) => WeightSlice::Q4Kx8(g),
            Blocks::Q5K(b) => WeightSlice::Q5K(b),
            Blocks::Q6K(b) => WeightSlice::Q6K(b),
        }
    }

    /// Entry `index` of the first dim, dequantized: dims[1..], in `dtype`.
    pub fn dequantize_entry(&self, index: usize, dtype: DType) -> Result<Tensor> {
        let rows: usize = self.dims[1..self.dims.len() - 1].iter().product();
        self.dequantize_rows(index * rows, rows, &self.dims[1..], dtype)
    }

    /// The whole tensor dequantized, in `dtype`.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        let rows: usize = self.dims[..self.dims.len() - 1].iter().product();
        self.dequantize_rows(0, rows, &self.dims, dtype)
    }

    fn dequantize_rows(
        &self,
        first: usize,
        count: usize,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let k = self.dims[self.dims.len() - 1];
        let mut out = vec![0f32; count * k];
        let per = self.format().block_values();
        let range = first * k / per..(first + count) * k / per;
        with_blocks!(
            &self.blocks,
            b => dequantize_into(&b[range], &mut out),
            g => dequantize_into(&deinterleave(g, k / per, first, count), &mut out)
        );
        Ok(Tensor::from_vec(out, shape, &Device::Cpu)?.to_dtype(dtype)?)
    }
}

fn unfit(format: QuantFormat, bytes: usize, dims: &[usize]) -> Error {
    Error::Input(format!(
        "{bytes} bytes of {} blocks do not make a matrix of {dims:?}",
        format.name()
    ))
}

/// Whether `dims` is a matrix (or a stack of them) whose rows are whole blocks of `format`.
fn is_matrix_of(format: QuantFormat, dims: &[usize]) -> bool {
    let k = dims.last().copied().unwrap_or(0);
    dims.len() >= 2 && k.is_multiple_of(format.block_values())
}

/// The weight matrix of a linear layer or a stack of experts, as the products read it.
#[derive(Debug, Clone)]
pub enum Weight {
    /// In the compute dtype, on the model's device.
    Dense(Tensor),
    /// bf16 on the CPU, packed into panels of rows for the AVX-512 product (quant/panels.rs).
    Panels(Arc<Bf16Panels>),
    /// Quantized blocks on the CPU, shared by clones of the model.
    Quantized(Arc<QMatrix>),
}

impl Weight {
    /// `t` as it is (bf16 on the CPU packed into panels where the kernels read it so), or
    /// quantized to `format`; `name` is used in errors. A K-quant falls back to q8_0 for rows
    /// that are not whole super-blocks of 256 (but are of 32), as llama.cpp's quantizer falls
    /// back to a format of 32-weight blocks.
    pub fn new(t: Tensor, format: Option<QuantFormat>, name: &str) -> Result<Weight> {
        let Some(mut f) = format else {
            return Weight::dense_for_cpu(t);
        };
        let k = t.dims().last().copied().unwrap_or(0);
        if !k.is_multiple_of(f.block_values()) && k.is_multiple_of(BLOCK) {
            f = QuantFormat::Q8_0;
        }
        Ok(Weight::Quantized(Arc::new(QMatrix::quantize(&t, f, name)?)))
    }

    /// `t` as it is, or in panels where it is bf16 on the CPU and `packs_panels` says so.
    fn dense_for_cpu(t: Tensor) -> Result<Weight> {
        let packs = t.device().is_cpu() && t.dtype() == DType::BF16 && packs_panels(t.dims());
        if !packs {
            return Ok(Weight::Dense(t));
        }
        // Packed from the tensor's storage in place: a copy less of every matrix at load.
        let panels = with_weight_slice(&t.contiguous()?, |w| match w {
            WeightSlice::BF16(values) => Bf16Panels::pack(values, t.dims()),
            _ => Err(Error::Input("a bf16 tensor's storage is not bf16".into())),
        })?;
        Ok(Weight::Panels(Arc::new(panels)))
    }

    pub fn dims(&self) -> &[usize] {
        match self {
            Weight::Dense(t) => t.dims(),
            Weight::Panels(p) => p.dims(),
            Weight::Quantized(q) => q.dims(),
        }
    }

    /// The format it is kept in: its dtype (`bf16`, ...) or its blocks' (`q4_K`, ...).
    pub fn format_name(&self) -> &'static str {
        match self {
            Weight::Dense(t) => t.dtype().as_str(),
            Weight::Panels(_) => DType::BF16.as_str(),
            Weight::Quantized(q) => q.format().name(),
        }
    }

    /// Bytes per weight as it is kept: its dtype's size, or its blocks' share.
    pub fn bytes_per_weight(&self) -> f64 {
        match self {
            Weight::Dense(t) => t.dtype().size_in_bytes() as f64,
            Weight::Panels(_) => DType::BF16.size_in_bytes() as f64,
            Weight::Quantized(q) => q.format().bytes_per_weight(),
        }
    }

    /// Whether the CPU kernels can read it in place (`with_slice` succeeds): quantized
    /// blocks, panels, or a dense CPU tensor of a float dtype they read.
    pub fn cpu_kernels_read(&self) -> bool {
        match self {
            Weight::Dense(t) => {
                t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
            }
            Weight::Panels(_) | Weight::Quantized(_) => true,
        }
    }

    /// The whole matrix as a tensor in `dtype` (dequantized): for slow twins.
    pub fn dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.to_dtype(dtype)?),
            Weight::Panels(p) => panel_rows(p, 0, p.dims(), dtype),
            Weight::Quantized(q) => q.dequantize(dtype),
        }
    }

    /// Entry `index` of the first dim (one expert of a stack) as a tensor in `dtype`.
    pub fn entry(&self, index: usize, dtype: DType) -> Result<Tensor> {
        match self {
            Weight::Dense(t) => Ok(t.get(index)?.to_dtype(dtype)?),
            Weight::Panels(p) => panel_rows(p, index, &p.dims()[1..], dtype),
            Weight::Quantized(q) => q.dequantize_entry(index, dtype),
        }
    }

    /// Runs `f` over the data as the CPU kernels read it, without copying.
    pub(crate) fn with_slice<R>(&self, f: impl FnOnce(WeightSlice<'_>) -> Result<R>) -> Result<R> {
        match self {
            Weight::Dense(t) => with_weight_slice(t, f),
            Weight::Panels(p) => f(WeightSlice::BF16x16(p.steps())),
            Weight::Quantized(q) => f(q.slice()),
        }
    }
}

/// Entry `index` of `shape` (one matrix of a stack, or all of `shape` at index 0) back in rows,
/// as a tensor in `dtype`.
fn panel_rows(p: &Bf16Panels, index: usize, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let values = p.rows(index * rows, rows);
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_dequantizes_whole_and_by_entry_to_what_its_blocks_hold() {
        let x = Tensor::arange(0f32, 3.0 * 4.0 * 64.0, &Device::Cpu)
            .unwrap()
            .affine(0.01, -3.0)
            .unwrap()
            .reshape((3, 4, 64))
            .unwrap();
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Mxfp4] {
            let w = Weight::new(x.clone(), Some(format), "w").unwrap();
            assert_eq!(w.dims(), &[3, 4, 64]);
            let whole = w.dense(DType::F32).unwrap();
            let second = w.entry(1, DType::F32).unwrap();
            let diff = (whole.get(1).unwrap() - second).unwrap().abs().unwrap();
            assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
            let err = (whole - &x).unwrap().abs().unwrap().max_all().unwrap();
            // Blocks span 0.32; half a q4_0 step on the largest block (|x| <= 4.7) is < 0.3;
            // MXFP4's top binade clips at 6 of 8, a quarter of the block's largest |x|.
            let bound = if format == QuantFormat::Mxfp4 {
                4.7 / 4.0
            } else {
                0.3
            };
            assert!(err.to_scalar::<f32>().unwrap() < bound, "{format:?}");
        }
    }

    #[test]
    fn k_quants_fall_back_to_q8_0_for_rows_of_partial_super_blocks() {
        let x = Tensor::ones((2, 96), DType::F32, &Device::Cpu).unwrap();
        let w = Weight::new(x.clone(), Some(QuantFormat::Q4K), "w").unwrap();
        assert!(matches!(&w, Weight::Quantized(q) if q.format() == QuantFormat::Q8_0));
        let x = Tensor::ones((2, 512), DType::F32, &Device::Cpu).unwrap();
        let w = Weight::new(x, Some(QuantFormat::Q6K), "w").unwrap();
        assert!(matches!(&w, Weight::Quantized(q) if q.format() == QuantFormat::Q6K));
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused_by_name() {
        let x = Tensor::zeros((2, 40), DType::F32, &Device::Cpu).unwrap();
        let err = Weight::new(x, Some(QuantFormat::Q8_0), "layers.0.o_proj.weight").unwrap_err();
        assert!(err.to_string().contains("layers.0.o_proj.weight"), "{err}");
    }
}
