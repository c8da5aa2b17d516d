//! GGML block formats the CPU kernels do not read yet, dequantized to f32 as ggml does
//! (ggml-quants.c's `dequantize_row_*`): Q4_1, Q5_0 and Q5_1 (blocks of 32), and the K-quants
//! Q4_K, Q5_K and Q6_K (super-blocks of 256) that Q4_K_M and Q5_K_M files mix. These are the
//! slow twins of future kernels; tests compare them with gguf-py's dequantization.

use half::f16;

use super::GgmlType;

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
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
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

/// d, 4 bytes of fifth bits, 16 bytes of nibbles; values (nibble | bit << 4) - 16.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let (d, qh, qs) = (half(b, 0), fifth_bits(&b[2..6]), &b[6..22]);
    for (l, &q) in qs.iter().enumerate() {
        let hi0 = ((qh >> l) & 1) << 4;
        let hi1 = ((qh >> (l + 16)) & 1) << 4;
        y[l] = (((q & 0x0f) as u32 | hi0) as i32 - 16) as f32 * d;
        y[l + 16] = (((q >> 4) as u32 | hi1) as i32 - 16) as f32 * d;
    }
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

/// Sub-block j's 6-bit scale and min from the K-quants' 12 packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// d, dmin, 12 bytes of scales and mins, 128 bytes of nibbles: 8 sub-blocks of 32, in pairs
/// sharing 32 bytes (low nibbles, then high).
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin, scales, qs) = (half(b, 0), half(b, 2), &b[4..16], &b[16..144]);
    for pair in 0..4 {
        let q = &qs[32 * pair..][..32];
        let (s1, m1) = scale_min(2 * pair, scales);
        let (s2, m2) = scale_min(2 * pair + 1, scales);
        let out = &mut y[64 * pair..][..64];
        for l in 0..32 {
            out[l] = d * s1 * (q[l] & 0x0f) as f32 - dmin * m1;
            out[l + 32] = d * s2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}

/// As Q4_K, with a fifth bit per value from 32 bytes of `qh` (bit 2·pair, 2·pair + 1).
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin, scales) = (half(b, 0), half(b, 2), &b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for pair in 0..4 {
        let q = &qs[32 * pair..][..32];
        let (s1, m1) = scale_min(2 * pair, scales);
        let (s2, m2) = scale_min(2 * pair + 1, scales);
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        let out = &mut y[64 * pair..][..64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d * s1 * ((q[l] & 0x0f) + h1) as f32 - dmin * m1;
            out[l + 32] = d * s2 * ((q[l] >> 4) + h2) as f32 - dmin * m2;
        }
    }
}

/// 128 bytes of low nibbles, 64 of high bit pairs, 16 signed 8-bit scales, then d: two
/// halves of 128 values, each from 64 low bytes and 32 high ones.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &b[64 * half_block..][..64];
        let qh = &b[128 + 32 * half_block..][..32];
        let sc = &b[192 + 8 * half_block..][..8];
        let out = &mut y[128 * half_block..][..128];
        for l in 0..32 {
            let is = l / 16;
            let q =
                |low: u8, shift: u32| ((low | (((qh[l] >> shift) & 3) << 4)) as i32 - 32) as f32;
            let scale = |k: usize| d * sc[is + k] as i8 as f32;
            out[l] = scale(0) * q(ql[l] & 0x0f, 0);
            out[l + 32] = scale(2) * q(ql[l + 32] & 0x0f, 2);
            out[l + 64] = scale(4) * q(ql[l] >> 4, 4);
            out[l + 96] = scale(6) * q(ql[l + 32] >> 4, 6);
        }
    }
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
