//! MXFP4 (OCP microscaling FP4), as gpt-oss publishes its experts: blocks of 32 values, each
//! an FP4 E2M1 code (sign, two exponent bits, one mantissa bit) in a nibble, low nibble first,
//! sharing one E8M0 scale byte: value = FP4(code) × 2^(scale − 127).
//!
//! The loader repacks these into the CPU's block format (`BlockMxfp4`) and decodes through it;
//! the decoder here, written the way HF's `convert_moe_packed_tensors` reads the checkpoint, is
//! the oracle that repacking is tested against.

/// The 16 values of an FP4 E2M1 code (HF's `FP4_VALUES`).
#[cfg(test)]
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Values per MXFP4 block.
pub const MXFP4_BLOCK: usize = 32;
/// Bytes of codes per block (two codes a byte).
pub const MXFP4_BLOCK_BYTES: usize = MXFP4_BLOCK / 2;

/// 2^(scale − 127) as f32, exactly: a normal float for scales 1..=254, the subnormal 2^-127
/// for 0, and infinity for 255 (E8M0's NaN; no checkpoint holds one, and a product with it
/// shows instead of passing for a number).
#[cfg(test)]
fn scale_value(scale: u8) -> f32 {
    match scale {
        0 => f32::from_bits(1 << 22),
        255 => f32::INFINITY,
        s => f32::from_bits(u32::from(s) << 23),
    }
}

/// Dequantizes `scales.len()` blocks: `blocks` holds 16 bytes per scale, `out` 32 values.
/// Returns `false` (writing nothing) when the lengths do not match.
#[cfg(test)]
pub fn dequantize_mxfp4(blocks: &[u8], scales: &[u8], out: &mut [f32]) -> bool {
    let n = scales.len();
    if blocks.len() != n * MXFP4_BLOCK_BYTES || out.len() != n * MXFP4_BLOCK {
        return false;
    }
    for ((codes, &scale), out) in blocks
        .chunks_exact(MXFP4_BLOCK_BYTES)
        .zip(scales)
        .zip(out.chunks_exact_mut(MXFP4_BLOCK))
    {
        let s = scale_value(scale);
        for (pair, &byte) in out.chunks_exact_mut(2).zip(codes) {
            pair[0] = FP4_VALUES[(byte & 0x0f) as usize] * s;
            pair[1] = FP4_VALUES[(byte >> 4) as usize] * s;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code in both nibbles, and scales from the smallest to the largest, against the
    /// definition written out in f64: sign · 2^(e−1) · (1 + m/2) (or m/2 when e = 0) ·
    /// 2^(s − 127).
    #[test]
    fn every_code_at_every_scale_is_its_definition() {
        let fp4 = |c: u8| -> f64 {
            let sign = if c & 8 != 0 { -1.0 } else { 1.0 };
            let (e, m) = ((c >> 1) & 3, c & 1);
            let mag = if e == 0 {
                m as f64 / 2.0
            } else {
                2f64.powi(e as i32 - 1) * (1.0 + m as f64 / 2.0)
            };
            sign * mag
        };
        let scales: Vec<u8> = (0..=254).collect();
        // Block b, byte j: low nibble j % 16, high nibble (j + b) % 16, so every code meets
        // every scale in both halves of a byte.
        let blocks: Vec<u8> = (0..scales.len())
            .flat_map(|b| (0..16).map(move |j| (j as u8) | ((((j + b) % 16) as u8) << 4)))
            .collect();
        let mut out = vec![f32::NAN; scales.len() * 32];
        assert!(dequantize_mxfp4(&blocks, &scales, &mut out));
        for (b, &s) in scales.iter().enumerate() {
            for j in 0..16 {
                let (lo, hi) = (j as u8, ((j + b) % 16) as u8);
                let scale = 2f64.powi(s as i32 - 127);
                // Rounded to f32 as the product is: exact, or ±inf past f32's range (as torch's
                // ldexp gives for the largest scales).
                let want = |c: u8| (fp4(c) * scale) as f32;
                assert_eq!(out[b * 32 + 2 * j], want(lo), "block {b} lo {lo}");
                assert_eq!(out[b * 32 + 2 * j + 1], want(hi), "block {b} hi {hi}");
            }
        }
        assert!(!dequantize_mxfp4(&blocks[1..], &scales, &mut out));
    }
}
