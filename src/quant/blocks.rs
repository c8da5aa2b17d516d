//! The quantized block formats, bit for bit those of GGML (llama.cpp), so that the numbers
//! here mean what they mean there: 32 weights per block, one f16 scale.
//!
//! - `q8_0`: `x ≈ d · q`, q in -127..=127, d = max|x| / 127. 34 bytes per 32 weights.
//! - `q4_0`: `x ≈ d · (q - 8)`, q in 0..=15, d = (the x of largest magnitude) / -8, so that
//!   the extreme value is exact. 18 bytes per 32 weights; byte l holds weight l in its low
//!   nibble and weight l + 16 in its high nibble.
//! - `mxfp4`: `x = FP4(q) · 2^(e - 127)`, q an FP4 E2M1 code (±0, 0.5, 1, 1.5, 2, 3, 4, 6), e
//!   an E8M0 byte. 17 bytes per 32 weights; the codes nibble-packed as q4_0's. As integers the
//!   codes are twice the FP4 values (0, ±1, ±2, ±3, ±4, ±6, ±8, ±12) and the scale 2^(e-128).
//!
//! The conversions here are plain scalar code: they run once at load, and they are the slow
//! twins the SIMD kernels are tested against.

use half::f16;

/// Weights per block, in every format here.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; BLOCK],
}

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; BLOCK / 2],
}

/// q5_0: `x ≈ d · (q - 16)`, q in 0..=31: q4_0's nibbles plus a fifth bit per weight (bit l
/// of `qh` for weight l). 22 bytes per 32 weights; what Q4_K_M files use where rows are not
/// whole K-quant super-blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; BLOCK / 2],
}

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; BLOCK / 2],
}

/// Twice the FP4 E2M1 values, by code (GGML's `kvalues_mxfp4`): integers, so that the integer
/// kernels multiply them exactly; the scale is halved to match.
pub const MXFP4_CODES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// 2^(e - 128), the scale of the doubled codes, exactly (a subnormal for e < 2).
#[inline]
pub fn mxfp4_half_scale(e: u8) -> f32 {
    match e {
        0 => f32::from_bits(1 << 21),
        1 => f32::from_bits(1 << 22),
        e => f32::from_bits(u32::from(e - 1) << 23),
    }
}

impl BlockMxfp4 {
    /// A block from MXFP4 as HF checkpoints pack it: byte j holding value 2j in its low
    /// nibble and 2j + 1 in its high one; repacked to values j and j + 16.
    pub fn from_interleaved(codes: &[u8; BLOCK / 2], e: u8) -> BlockMxfp4 {
        let nibble = |v: usize| (codes[v / 2] >> (4 * (v % 2))) & 0x0f;
        let mut qs = [0u8; BLOCK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = nibble(j) | (nibble(j + BLOCK / 2) << 4);
        }
        BlockMxfp4 { e, qs }
    }
}

/// A block format: how a row of f32 becomes blocks and back.
///
/// Blocks are `Pod`: plain bytes and f16s in GGML's order with no padding, so that a GGUF
/// tensor's bytes are its blocks on a little-endian CPU (`from_ggml`, and read in place).
pub trait QuantBlock: bytemuck::Pod + Send + Sync {
    const NAME: &'static str;
    /// Weights per block: BLOCK, or the K-quants' K_BLOCK.
    const VALUES: usize = BLOCK;
    /// The block of zeros.
    const ZERO: Self;
    /// Quantizes `x` (a multiple of VALUES long) into `out` (x.len() / VALUES blocks).
    fn quantize(x: &[f32], out: &mut [Self]);
    /// Whether every value is a bf16, so that dequantizing to bf16 loses nothing: MXFP4's
    /// are 3 significant bits times a power of two; q8_0's and q4_0's carry an f16 scale's 11.
    const EXACT_IN_BF16: bool = false;
    /// The VALUES values this block stands for, into `out`.
    fn dequantize(&self, out: &mut [f32]);

    /// A block from GGML's bytes (`size_of::<Self>()` of them).
    #[inline]
    fn from_ggml(bytes: &[u8]) -> Self {
        bytemuck::pod_read_unaligned(bytes)
    }
}

/// Marks a block type of `$size` bytes (GGML's) as plain bytes: `#[repr(C)]`, no padding,
/// every bit pattern a value.
macro_rules! pod_blocks {
    ($($t:ty = $size:expr),*) => {$(
        // No padding: the size is GGML's, the sum of the fields', checked at compile time.
        const _: () = assert!(size_of::<$t>() == $size);
        // SAFETY: the type is #[repr(C)] of integer, f16 and f32 fields (arrays of them) with
        // no padding (asserted above), and any bits are a valid value of each.
        unsafe impl bytemuck::Zeroable for $t {}
        unsafe impl bytemuck::Pod for $t {}
    )*};
}
pub(crate) use pod_blocks;

pod_blocks!(
    BlockQ8_0 = 34,
    BlockQ4_0 = 18,
    BlockQ5_0 = 22,
    BlockMxfp4 = 17
);

impl QuantBlock for BlockQ5_0 {
    const NAME: &'static str = "q5_0";
    const ZERO: Self = BlockQ5_0 {
        d: f16::ZERO,
        qh: [0xff; 4],
        qs: [0; BLOCK / 2],
    };

    /// GGML's `quantize_row_q5_0_ref`: as q4_0 with 32 levels, the extreme value at -16.
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
            let extreme = xs
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = extreme / -16.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            b.d = f16::from_f32(d);
            let q = |v: f32| ((v * inv + 16.5) as u8).min(31);
            let mut qh = 0u32;
            for l in 0..BLOCK / 2 {
                let (lo, hi) = (q(xs[l]), q(xs[l + BLOCK / 2]));
                b.qs[l] = (lo & 0x0f) | ((hi & 0x0f) << 4);
                qh |= ((lo as u32 >> 4) << l) | ((hi as u32 >> 4) << (l + BLOCK / 2));
            }
            b.qh = qh.to_le_bytes();
        }
    }

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        out.copy_from_slice(&self.values());
    }
}

impl WeightBlock for BlockQ5_0 {
    #[inline]
    fn codes(&self) -> [i8; BLOCK] {
        let qh = u32::from_le_bytes(self.qh);
        let mut c = [0i8; BLOCK];
        for (l, &byte) in self.qs.iter().enumerate() {
            let fifth = |v: usize| (((qh >> v) & 1) << 4) as u8;
            c[l] = ((byte & 0x0f) | fifth(l)) as i8 - 16;
            c[l + BLOCK / 2] = ((byte >> 4) | fifth(l + BLOCK / 2)) as i8 - 16;
        }
        c
    }
    #[inline]
    fn scale(&self) -> f32 {
        self.d.to_f32()
    }
}

impl QuantBlock for BlockQ8_0 {
    const NAME: &'static str = "q8_0";
    const ZERO: Self = BlockQ8_0 {
        d: f16::ZERO,
        qs: [0; BLOCK],
    };

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            b.d = f16::from_f32(d);
            for (q, v) in b.qs.iter_mut().zip(xs) {
                *q = round_half_away(v * inv) as i8;
            }
        }
    }

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        out.copy_from_slice(&self.values());
    }
}

impl QuantBlock for BlockQ4_0 {
    const NAME: &'static str = "q4_0";
    const ZERO: Self = BlockQ4_0 {
        d: f16::ZERO,
        qs: [0x88; BLOCK / 2],
    };

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
            // The value of largest magnitude, with its sign: it maps to -8 exactly.
            let extreme = xs
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = extreme / -8.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            b.d = f16::from_f32(d);
            let q = |v: f32| ((v * inv + 8.5) as u8).min(15);
            for l in 0..BLOCK / 2 {
                b.qs[l] = q(xs[l]) | (q(xs[l + BLOCK / 2]) << 4);
            }
        }
    }

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        out.copy_from_slice(&self.values());
    }
}

impl QuantBlock for BlockMxfp4 {
    const NAME: &'static str = "mxfp4";
    const EXACT_IN_BF16: bool = true;
    const ZERO: Self = BlockMxfp4 {
        e: 0,
        qs: [0; BLOCK / 2],
    };

    /// GGML's `quantize_row_mxfp4_ref`: e puts the largest magnitude in FP4's top binade
    /// (floor(log2 amax) - 2 + 127), each value to the nearest doubled code (a tie to the
    /// smaller magnitude, as GGML's `best_index_mxfp4`).
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let e = if amax > 0.0 {
                (amax.log2().floor() - 2.0 + 127.0).clamp(0.0, 254.0) as u8
            } else {
                0
            };
            let d = mxfp4_half_scale(e);
            let code = |v: f32| -> u8 {
                let mag = (v / d).abs();
                let magnitudes = &MXFP4_CODES[..8];
                let mut best = 0;
                for (i, &m) in magnitudes.iter().enumerate() {
                    if (m as f32 - mag).abs() < (magnitudes[best] as f32 - mag).abs() {
                        best = i;
                    }
                }
                best as u8 | if v < 0.0 && best != 0 { 8 } else { 0 }
            };
            b.e = e;
            for l in 0..BLOCK / 2 {
                b.qs[l] = code(xs[l]) | (code(xs[l + BLOCK / 2]) << 4);
            }
        }
    }

    #[inline]
    fn dequantize(&self, out: &mut [f32]) {
        out.copy_from_slice(&self.values());
    }
}

/// `v.round() as i32` (halves away from zero, as C's `roundf` that GGML uses) for |v| < 2^31,
/// without the libm call `f32::round` compiles to on baseline x86-64 (a third of the time of
/// quantizing a model at load): the truncating conversion is exact, and so is `v - t`.
pub(super) fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let rest = v - t as f32;
    if rest >= 0.5 {
        t + 1
    } else if rest <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// x (a multiple of B::VALUES long) as blocks.
pub fn quantize<B: QuantBlock>(x: &[f32]) -> Vec<B> {
    let mut out = vec![B::ZERO; x.len() / B::VALUES];
    B::quantize(x, &mut out);
    out
}

/// x (a multiple of B::VALUES long) as blocks, quantized in parallel pieces of 64 blocks
/// (a block never depends on another, so the pieces are any whole blocks).
pub fn quantize_par<B: QuantBlock>(x: &[f32]) -> Vec<B> {
    quantize_par_by(x, B::quantize)
}

/// As `quantize_par`, each piece quantized by `quantize` (a faster kernel for the same blocks).
pub fn quantize_par_by<B: QuantBlock>(
    x: &[f32],
    quantize: impl Fn(&[f32], &mut [B]) + Sync,
) -> Vec<B> {
    use rayon::prelude::*;
    let mut out = vec![B::ZERO; x.len() / B::VALUES];
    out.par_chunks_mut(64)
        .zip(x.par_chunks(64 * B::VALUES))
        .for_each(|(q, x)| quantize(x, q));
    out
}

/// The f32 values of `blocks`, into `out` (B::VALUES per block).
#[inline]
pub fn dequantize_into<B: QuantBlock>(blocks: &[B], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(B::VALUES)) {
        b.dequantize(o);
    }
}

/// A weight block format the integer kernels read: 32 signed codes and a scale.
pub trait WeightBlock: QuantBlock {
    /// The 32 codes as signed integers (q4_0: nibble - 8; mxfp4: doubled FP4 values).
    fn codes(&self) -> [i8; BLOCK];
    /// The scale the codes are multiplied by.
    fn scale(&self) -> f32;
    /// The BLOCK values this block stands for: each code times the scale, one f32 product.
    #[inline]
    fn values(&self) -> [f32; BLOCK] {
        let d = self.scale();
        self.codes().map(|c| d * c as f32)
    }
}

impl WeightBlock for BlockQ8_0 {
    #[inline]
    fn codes(&self) -> [i8; BLOCK] {
        self.qs
    }
    #[inline]
    fn scale(&self) -> f32 {
        self.d.to_f32()
    }
}

impl WeightBlock for BlockMxfp4 {
    #[inline]
    fn codes(&self) -> [i8; BLOCK] {
        let mut c = [0i8; BLOCK];
        for (l, &byte) in self.qs.iter().enumerate() {
            c[l] = MXFP4_CODES[(byte & 0x0f) as usize];
            c[l + BLOCK / 2] = MXFP4_CODES[(byte >> 4) as usize];
        }
        c
    }
    #[inline]
    fn scale(&self) -> f32 {
        mxfp4_half_scale(self.e)
    }
}

impl WeightBlock for BlockQ4_0 {
    #[inline]
    fn codes(&self) -> [i8; BLOCK] {
        let mut c = [0i8; BLOCK];
        for (l, &byte) in self.qs.iter().enumerate() {
            c[l] = (byte & 0x0f) as i8 - 8;
            c[l + BLOCK / 2] = (byte >> 4) as i8 - 8;
        }
        c
    }
    #[inline]
    fn scale(&self) -> f32 {
        self.d.to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1999) as f32 - 999.0) / 577.0)
            .collect()
    }

    /// Each value comes back within `tolerance` steps (d) plus the f16 rounding of d.
    fn round_trip<B: QuantBlock>(steps: f32, tolerance: f32) {
        let mut x = values(4 * BLOCK, 1);
        x[BLOCK..2 * BLOCK].fill(0.0); // an all-zero block stays zero
        let blocks: Vec<B> = quantize(&x);
        let mut back = vec![f32::NAN; x.len()];
        dequantize_into(&blocks, &mut back);
        for (xs, ys) in x.chunks(BLOCK).zip(back.chunks(BLOCK)) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / steps;
            for (a, b) in xs.iter().zip(ys) {
                assert!(
                    (a - b).abs() <= d * tolerance + amax * 2e-3,
                    "{} {a} -> {b}",
                    B::NAME
                );
            }
        }
        assert!(back[BLOCK..2 * BLOCK].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn rounding_matches_f32_round_on_halves_and_their_neighbours() {
        let mut cases = vec![0.0f32, -0.0, 0.49999997, -0.49999997, 127.0, -127.0];
        for i in -300..=300 {
            let half = i as f32 + 0.5;
            cases.extend([half, -half, half.next_up(), half.next_down()]);
        }
        cases.extend(values(4096, 9).iter().map(|v| v * 70.0));
        for v in cases {
            assert_eq!(round_half_away(v), v.round() as i32, "{v}");
        }
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        round_trip::<BlockQ8_0>(127.0, 0.5);
    }

    #[test]
    fn q4_0_round_trips_within_a_step_and_keeps_the_extreme() {
        // One step, not half: when the extreme is negative, positive values above 7d clip.
        round_trip::<BlockQ4_0>(8.0, 1.0);
        let mut x = values(BLOCK, 2);
        x[5] = -4.0; // the extreme, negative: d = 0.5, code 0
        x[20] = 3.9;
        let b: Vec<BlockQ4_0> = quantize(&x);
        let back = b[0].values();
        assert_eq!(back[5], -4.0);
        assert_eq!(b[0].qs[5] & 0x0f, 0);
    }

    #[test]
    fn mxfp4_decodes_as_the_checkpoint_format_does_and_requantizes_exactly() {
        // Random code bytes under every scale, repacked from HF's interleaved nibbles: the
        // same values as the checkpoint decoder gives.
        let scales: Vec<u8> = (0..=254).collect();
        let bytes: Vec<u8> = (0..scales.len() * 16)
            .map(|i| ((i * 7919 + 13) % 256) as u8)
            .collect();
        let mut want = vec![0f32; scales.len() * BLOCK];
        assert!(crate::quant::dequantize_mxfp4(&bytes, &scales, &mut want));
        let blocks: Vec<BlockMxfp4> = bytes
            .chunks_exact(16)
            .zip(&scales)
            .map(|(c, &e)| BlockMxfp4::from_interleaved(c.try_into().unwrap(), e))
            .collect();
        let mut got = vec![0f32; want.len()];
        dequantize_into(&blocks, &mut got);
        assert_eq!(got, want);
        // Values an MXFP4 block holds quantize back to themselves (in the normal range).
        let normal = &got[16 * BLOCK..200 * BLOCK];
        let mut again = vec![0f32; normal.len()];
        dequantize_into(&quantize::<BlockMxfp4>(normal), &mut again);
        assert_eq!(again, normal);
    }

    #[test]
    fn mxfp4_quantizes_within_its_grid() {
        let x = values(8 * BLOCK, 3);
        let blocks: Vec<BlockMxfp4> = quantize(&x);
        let mut y = vec![0f32; x.len()];
        dequantize_into(&blocks, &mut y);
        for (xs, ys) in x.chunks(BLOCK).zip(y.chunks(BLOCK)) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xs.iter().zip(ys) {
                // The top binade clips above 6 of 8 (a quarter of amax); below, half a gap.
                assert!(
                    (a - b).abs() <= amax / 4.0 + 1e-6,
                    "{a} -> {b} (amax {amax})"
                );
            }
        }
        assert_eq!(quantize::<BlockMxfp4>(&[0.0; BLOCK])[0], BlockMxfp4::ZERO);
    }
}
