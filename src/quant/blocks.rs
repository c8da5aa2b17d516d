//! The quantized block formats, bit for bit those of GGML (llama.cpp), so that the numbers
//! here mean what they mean there: 32 weights per block, one f16 scale.
//!
//! - `q8_0`: `x ≈ d · q`, q in -127..=127, d = max|x| / 127. 34 bytes per 32 weights.
//! - `q4_0`: `x ≈ d · (q - 8)`, q in 0..=15, d = (the x of largest magnitude) / -8, so that
//!   the extreme value is exact. 18 bytes per 32 weights; byte l holds weight l in its low
//!   nibble and weight l + 16 in its high nibble.
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

/// A block format: how a row of f32 becomes blocks and back.
pub trait QuantBlock: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    /// The block of 32 zeros.
    const ZERO: Self;
    /// Quantizes `x` (a multiple of BLOCK long) into `out` (x.len() / BLOCK blocks).
    fn quantize(x: &[f32], out: &mut [Self]);
    /// The BLOCK values this block stands for.
    fn dequantize(&self) -> [f32; BLOCK];
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

    fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        self.qs.map(|q| d * q as f32)
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

    fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        let mut out = [0f32; BLOCK];
        for (l, &byte) in self.qs.iter().enumerate() {
            out[l] = d * ((byte & 0x0f) as i32 - 8) as f32;
            out[l + BLOCK / 2] = d * ((byte >> 4) as i32 - 8) as f32;
        }
        out
    }
}

/// `v.round() as i32` (halves away from zero, as C's `roundf` that GGML uses) for |v| < 2^31,
/// without the libm call `f32::round` compiles to on baseline x86-64 (a third of the time of
/// quantizing a model at load): the truncating conversion is exact, and so is `v - t`.
fn round_half_away(v: f32) -> i32 {
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

/// x (a multiple of BLOCK long) as blocks.
pub fn quantize<B: QuantBlock>(x: &[f32]) -> Vec<B> {
    let mut out = vec![B::ZERO; x.len() / BLOCK];
    B::quantize(x, &mut out);
    out
}

/// The f32 values of `blocks`, into `out` (BLOCK per block).
pub fn dequantize_into<B: QuantBlock>(blocks: &[B], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(BLOCK)) {
        o.copy_from_slice(&b.dequantize());
    }
}

/// A weight block format the integer kernels read: 32 signed codes and a scale.
pub trait WeightBlock: QuantBlock {
    /// The 32 codes as signed integers (q4_0: nibble - 8).
    fn codes(&self) -> [i8; BLOCK];
    /// The bits of the f16 scale.
    fn scale_bits(&self) -> u16;
}

impl WeightBlock for BlockQ8_0 {
    #[inline]
    fn codes(&self) -> [i8; BLOCK] {
        self.qs
    }
    #[inline]
    fn scale_bits(&self) -> u16 {
        self.d.to_bits()
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
    fn scale_bits(&self) -> u16 {
        self.d.to_bits()
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
        let back = b[0].dequantize();
        assert_eq!(back[5], -4.0);
        assert_eq!(b[0].qs[5] & 0x0f, 0);
    }
}
