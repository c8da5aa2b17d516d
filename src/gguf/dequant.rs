//! GGML block formats dequantized to f32 as ggml does (ggml-quants.c's `dequantize_row_*`):
//! Q4_1 and Q5_1 (blocks of 32 with a min), which the CPU kernels do not read yet, and Q5_0
//! and the K-quants Q4_K, Q5_K and Q6_K (decoded by `quant`'s block types, which the kernels
//! read) for tensors kept dense. Tests compare them with gguf-py's dequantization.

use half::f16;

use super::GgmlType;
use crate::quant::{BlockQ4K, BlockQ5K, BlockQ5_0, BlockQ6K, QuantBlock};

/// Whether `dequantize` reads `t`.
pub fn supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, Q4_1 | Q5_0 | Q5_1 | Q4K | Q5K | Q6K)
}

/// The values of `bytes` (whole blocks of type `t`) into `out` (block_values per block).
/// `None` for a type `supported` refuses or sizes that do not match.
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Option<()> {
    let (size, n) = (t.block_bytes(), t.block_values());
    if !supported(t) || !bytes.len().is_multiple_of(size) || bytes.len() / size * n != out.len() {
        return None;
    }
    let block: fn(&[u8], &mut [f32]) = match t {
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => block::<BlockQ5_0>,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q4K => block::<BlockQ4K>,
        GgmlType::Q5K => block::<BlockQ5K>,
        GgmlType::Q6K => block::<BlockQ6K>,
        _ => return None,
    };
    for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(n)) {
        block(b, o);
    }
    Some(())
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// d, m, then 16 bytes of nibbles: value l low, value l + 16 high.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m, qs) = (half(b, 0), half(b, 2), &b[4..20]);
    for (l, &q) in qs.iter().enumerate() {
        y[l] = (q & 0x0f) as f32 * d + m;
        y[l + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The fifth bits of a Q5 block's 32 values: bit j of `qh`.
fn fifth_bits(qh: &[u8]) -> u32 {
    u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]])
}

/// d, m, 4 bytes of fifth bits, 16 bytes of nibbles; values (nibble | bit << 4) · d + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m, qh, qs) = (half(b, 0), half(b, 2), fifth_bits(&b[4..8]), &b[8..24]);
    for (l, &q) in qs.iter().enumerate() {
        let hi0 = ((qh >> l) & 1) << 4;
        let hi1 = ((qh >> (l + 16)) & 1) << 4;
        y[l] = ((q & 0x0f) as u32 | hi0) as f32 * d + m;
        y[l + 16] = ((q >> 4) as u32 | hi1) as f32 * d + m;
    }
}

/// A block's values, through the block types the CPU kernels read.
fn block<B: QuantBlock>(b: &[u8], y: &mut [f32]) {
    B::from_ggml(b).dequantize(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Random blocks of each type against gguf-py's dequantization of the same bytes
    /// (tools/make_block_cases.py), bit for bit.
    #[test]
    fn every_type_dequantizes_as_gguf_py_does() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ggml_blocks.safetensors");
        let cases = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let types = [
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        for t in types {
            let bytes = cases[&format!("{}.bytes", t.name())]
                .to_dtype(DType::U8)
                .unwrap()
                .to_vec1::<u8>()
                .unwrap();
            let want = cases[&format!("{}.values", t.name())]
                .to_vec1::<f32>()
                .unwrap();
            let mut got = vec![f32::NAN; want.len()];
            dequantize(t, &bytes, &mut got).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{t}");
            // A wrong size is refused, not read past.
            assert!(dequantize(t, &bytes[1..], &mut got).is_none());
        }
        assert!(!supported(GgmlType::Q2K));
    }
}
