//! GGML's K-quants, bit for bit: super-blocks of 256 weights with an f16 scale (and min) over
//! small per-part scales, the formats a Q4_K_M or Q5_K_M GGUF file mixes.
//!
//! - `q4_K`: 8 parts of 32, each `x ≈ d·sc·q - dmin·m`, q in 0..=15, sc and m 6 bits packed in
//!   12 bytes. 144 bytes per 256 weights (4.5 bits).
//! - `q5_K`: as q4_K with a fifth bit per weight (q in 0..=31). 176 bytes (5.5 bits).
//! - `q6_K`: 16 parts of 16, each `x ≈ d·sc·(q - 32)`, q in 0..=63, sc a signed byte.
//!   210 bytes (6.56 bits).
//!
//! For the kernels each format is read as 8 runs of 32 unsigned codes (`SuperBlock::codes`),
//! each run in two halves of 16 with a scale and a min: `x = s·(code - OFFSET) - m`
//! (`SuperBlock::sub_scales`). The integer kernels multiply the codes by q8_K activations
//! (`BlockQ8K`) and subtract the min terms through the activations' sums of 16 codes.
//!
//! The quantizers are plain min/max ones (each part's range, the part scales rounded to the
//! 6 or 8 bits), not llama.cpp's error-minimising search: files quantized by llama.cpp are
//! read as they are; these serve `--quant` and the tests.

use half::f16;

use super::blocks::{pod_blocks, QuantBlock};

/// Weights per super-block.
pub const K_BLOCK: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; K_BLOCK / 2],
}

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; K_BLOCK / 8],
    pub qs: [u8; K_BLOCK / 2],
}

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; K_BLOCK / 2],
    pub qh: [u8; K_BLOCK / 4],
    pub scales: [i8; K_BLOCK / 16],
    pub d: f16,
}

/// Activations as the K-quant kernels take them (GGML's q8_K): one f32 scale for 256 values,
/// their codes in -127..=127, and the sum of each 16 codes, which the min terms multiply.
/// One scale per super-block lets the kernels sum a whole super-block in integers.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; K_BLOCK],
    pub bsums: [i16; K_BLOCK / 16],
}

pod_blocks!(
    BlockQ4K = 144,
    BlockQ5K = 176,
    BlockQ6K = 210,
    BlockQ8K = 4 + 256 + 32
);

impl QuantBlock for BlockQ8K {
    const NAME: &'static str = "q8_K";
    const VALUES: usize = K_BLOCK;
    const ZERO: Self = BlockQ8K {
        d: 0.0,
        qs: [0; K_BLOCK],
        bsums: [0; K_BLOCK / 16],
    };

    /// As q8_0 over 256 values: d = max|x| / 127, each code x / d rounded half away from 0.
    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(K_BLOCK).zip(out) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            b.d = d;
            for (q, v) in b.qs.iter_mut().zip(xs) {
                *q = super::blocks::round_half_away(v * inv) as i8;
            }
            for (sum, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *sum = qs.iter().map(|&q| q as i16).sum();
            }
        }
    }

    fn dequantize(&self, out: &mut [f32]) {
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = self.d * q as f32;
        }
    }
}

/// The scales of one super-block's 8 runs of 32 codes, each in two halves of 16:
/// `x = s[r][h] · (code - OFFSET) - m[r][h]`.
#[derive(Debug, Clone, Copy)]
pub struct SubScales {
    pub s: [[f32; 2]; 8],
    pub m: [[f32; 2]; 8],
}

/// A K-quant super-block as the kernels read it.
pub trait SuperBlock: QuantBlock {
    /// What the unsigned codes are offset by (q6_K's are signed values plus 32).
    const OFFSET: i32;
    /// The 32 unsigned codes of run `r` (0..8), in order.
    fn codes(&self, r: usize) -> [u8; 32];
    fn sub_scales(&self) -> SubScales;
}

/// Run j's 6-bit scale and min from the 12 packed bytes of q4_K and q5_K.
pub(super) fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of `scale_min`: 8 scales and 8 mins of 6 bits into 12 bytes.
pub(super) fn pack_scale_min(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
    q
}

/// The scales and mins of q4_K and q5_K: d·sc and dmin·m, the same for both halves of a run.
fn affine_scales(d: f16, dmin: f16, packed: &[u8; 12]) -> SubScales {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    let mut out = SubScales {
        s: [[0.0; 2]; 8],
        m: [[0.0; 2]; 8],
    };
    for r in 0..8 {
        let (sc, m) = scale_min(r, packed);
        out.s[r] = [d * sc as f32; 2];
        out.m[r] = [dmin * m as f32; 2];
    }
    out
}

/// `x = s·(code - OFFSET) - m` over a super-block, in f32 as ggml's `dequantize_row_*`.
fn dequantize_super<B: SuperBlock>(b: &B, out: &mut [f32]) {
    let sc = b.sub_scales();
    for (r, o) in out.chunks_exact_mut(32).enumerate() {
        for (l, (o, &c)) in o.iter_mut().zip(&b.codes(r)).enumerate() {
            let (s, m) = (sc.s[r][l / 16], sc.m[r][l / 16]);
            *o = s * (c as i32 - B::OFFSET) as f32 - m;
        }
    }
}

/// Codes of `levels` steps from `lo` (a value ≤ 0), `scale` apart: the affine parts of
/// q4_K and q5_K.
fn affine_codes(xs: &[f32], scale: f32, min: f32, levels: u8) -> [u8; 32] {
    let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    std::array::from_fn(|l| ((xs[l] + min) * inv).round().clamp(0.0, levels as f32) as u8)
}

/// q4_K and q5_K's part scales and mins for a super-block, and each part's codes.
fn quantize_affine(xs: &[f32], levels: u8) -> (f16, f16, [u8; 12], [[u8; 32]; 8]) {
    // Each part's range from min(0, x) to max(x); its step and how far below zero it starts.
    let mut steps = [0f32; 8];
    let mut mins = [0f32; 8];
    for (r, part) in xs.chunks_exact(32).enumerate() {
        let lo = part.iter().fold(0f32, |m, &v| m.min(v));
        let hi = part.iter().fold(f32::MIN, |m, &v| m.max(v));
        steps[r] = (hi - lo) / levels as f32;
        mins[r] = -lo;
    }
    let max = |v: &[f32; 8]| v.iter().fold(0f32, |m, &x| m.max(x));
    let d = f16::from_f32(max(&steps) / 63.0);
    let dmin = f16::from_f32(max(&mins) / 63.0);
    let six_bits = |v: f32, unit: f16| -> u8 {
        let unit = unit.to_f32();
        if unit == 0.0 {
            0
        } else {
            (v / unit).round().clamp(0.0, 63.0) as u8
        }
    };
    // Round a scale up rather than to nearest where rounding down would clip the part's top.
    let sc: [u8; 8] = std::array::from_fn(|r| {
        let s = six_bits(steps[r], d);
        if (s as f32) * d.to_f32() < steps[r] {
            (s + 1).min(63)
        } else {
            s
        }
    });
    let m: [u8; 8] = std::array::from_fn(|r| six_bits(mins[r], dmin));
    let packed = pack_scale_min(&sc, &m);
    let scales = affine_scales(d, dmin, &packed);
    let codes = std::array::from_fn(|r| {
        affine_codes(&xs[32 * r..][..32], scales.s[r][0], scales.m[r][0], levels)
    });
    (d, dmin, packed, codes)
}

impl QuantBlock for BlockQ4K {
    const NAME: &'static str = "q4_K";
    const VALUES: usize = K_BLOCK;
    const ZERO: Self = BlockQ4K {
        d: f16::ZERO,
        dmin: f16::ZERO,
        scales: [0; 12],
        qs: [0; K_BLOCK / 2],
    };

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(K_BLOCK).zip(out) {
            let (d, dmin, scales, codes) = quantize_affine(xs, 15);
            let mut qs = [0u8; K_BLOCK / 2];
            for (pair, q) in qs.chunks_exact_mut(32).enumerate() {
                for (l, q) in q.iter_mut().enumerate() {
                    *q = codes[2 * pair][l] | (codes[2 * pair + 1][l] << 4);
                }
            }
            *b = BlockQ4K {
                d,
                dmin,
                scales,
                qs,
            };
        }
    }

    fn dequantize(&self, out: &mut [f32]) {
        dequantize_super(self, out)
    }
}

impl SuperBlock for BlockQ4K {
    const OFFSET: i32 = 0;

    /// Runs 2p and 2p + 1 share 32 bytes: the low nibbles, then the high ones.
    #[inline]
    fn codes(&self, r: usize) -> [u8; 32] {
        let q = &self.qs[32 * (r / 2)..][..32];
        std::array::from_fn(|l| (q[l] >> (4 * (r % 2))) & 0x0f)
    }

    #[inline]
    fn sub_scales(&self) -> SubScales {
        affine_scales(self.d, self.dmin, &self.scales)
    }
}

impl QuantBlock for BlockQ5K {
    const NAME: &'static str = "q5_K";
    const VALUES: usize = K_BLOCK;
    const ZERO: Self = BlockQ5K {
        d: f16::ZERO,
        dmin: f16::ZERO,
        scales: [0; 12],
        qh: [0; K_BLOCK / 8],
        qs: [0; K_BLOCK / 2],
    };

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(K_BLOCK).zip(out) {
            let (d, dmin, scales, codes) = quantize_affine(xs, 31);
            let mut qs = [0u8; K_BLOCK / 2];
            let mut qh = [0u8; K_BLOCK / 8];
            for (pair, q) in qs.chunks_exact_mut(32).enumerate() {
                for (l, q) in q.iter_mut().enumerate() {
                    let (lo, hi) = (codes[2 * pair][l], codes[2 * pair + 1][l]);
                    *q = (lo & 0x0f) | ((hi & 0x0f) << 4);
                    qh[l] |= ((lo >> 4) << (2 * pair)) | ((hi >> 4) << (2 * pair + 1));
                }
            }
            *b = BlockQ5K {
                d,
                dmin,
                scales,
                qh,
                qs,
            };
        }
    }

    fn dequantize(&self, out: &mut [f32]) {
        dequantize_super(self, out)
    }
}

impl SuperBlock for BlockQ5K {
    const OFFSET: i32 = 0;

    /// As q4_K's nibbles, with the fifth bit of run r's weight l in bit r of `qh[l]`.
    #[inline]
    fn codes(&self, r: usize) -> [u8; 32] {
        let q = &self.qs[32 * (r / 2)..][..32];
        std::array::from_fn(|l| ((q[l] >> (4 * (r % 2))) & 0x0f) | (((self.qh[l] >> r) & 1) << 4))
    }

    #[inline]
    fn sub_scales(&self) -> SubScales {
        affine_scales(self.d, self.dmin, &self.scales)
    }
}

impl QuantBlock for BlockQ6K {
    const NAME: &'static str = "q6_K";
    const VALUES: usize = K_BLOCK;
    const ZERO: Self = BlockQ6K {
        ql: [0; K_BLOCK / 2],
        qh: [0; K_BLOCK / 4],
        scales: [0; K_BLOCK / 16],
        d: f16::ZERO,
    };

    fn quantize(x: &[f32], out: &mut [Self]) {
        for (xs, b) in x.chunks_exact(K_BLOCK).zip(out) {
            // Each part of 16: the value of largest magnitude, with its sign, maps to -32.
            let steps: [f32; 16] = std::array::from_fn(|g| {
                let part = &xs[16 * g..][..16];
                part.iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
                    / -32.0
            });
            let amax = steps.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = f16::from_f32(amax / 127.0);
            let unit = d.to_f32();
            let scales: [i8; 16] = std::array::from_fn(|g| {
                if unit == 0.0 {
                    0
                } else {
                    (steps[g] / unit).round().clamp(-127.0, 127.0) as i8
                }
            });
            let code = |v: usize| -> u8 {
                let s = unit * scales[v / 16] as f32;
                let q = if s == 0.0 { 0.0 } else { (xs[v] / s).round() };
                (q.clamp(-32.0, 31.0) as i32 + 32) as u8
            };
            let mut block = BlockQ6K {
                scales,
                d,
                ..BlockQ6K::ZERO
            };
            for half in 0..2 {
                let v0 = 128 * half;
                for l in 0..32 {
                    let c: [u8; 4] = std::array::from_fn(|k| code(v0 + l + 32 * k));
                    block.ql[64 * half + l] = (c[0] & 0x0f) | ((c[2] & 0x0f) << 4);
                    block.ql[64 * half + l + 32] = (c[1] & 0x0f) | ((c[3] & 0x0f) << 4);
                    block.qh[32 * half + l] =
                        (c[0] >> 4) | ((c[1] >> 4) << 2) | ((c[2] >> 4) << 4) | ((c[3] >> 4) << 6);
                }
            }
            *b = block;
        }
    }

    fn dequantize(&self, out: &mut [f32]) {
        dequantize_super(self, out)
    }
}

impl SuperBlock for BlockQ6K {
    const OFFSET: i32 = 32;

    /// Each half of 128 weights: run k (0..4) takes its low 4 bits from nibble k / 2 of
    /// `ql[32·(k % 2) + l]` and its top 2 from bits 2k of `qh[l]`.
    #[inline]
    fn codes(&self, r: usize) -> [u8; 32] {
        let (half, k) = (r / 4, r % 4);
        let ql = &self.ql[64 * half + 32 * (k % 2)..][..32];
        let qh = &self.qh[32 * half..][..32];
        std::array::from_fn(|l| ((ql[l] >> (4 * (k / 2))) & 0x0f) | (((qh[l] >> (2 * k)) & 3) << 4))
    }

    #[inline]
    fn sub_scales(&self) -> SubScales {
        let d = self.d.to_f32();
        let s = std::array::from_fn(|r| {
            [
                d * self.scales[2 * r] as f32,
                d * self.scales[2 * r + 1] as f32,
            ]
        });
        SubScales {
            s,
            m: [[0.0; 2]; 8],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_into, quantize};

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1999) as f32 - 999.0) / 577.0)
            .collect()
    }

    /// Each value comes back within `steps` of its part's step (the range over the levels).
    fn round_trip<B: QuantBlock>(levels: f32, part: usize, tolerance: f32) {
        let mut x = values(3 * K_BLOCK, 4);
        // A part of zeros, a part of one sign, and a super-block of zeros.
        x[64..96].fill(0.0);
        x[96..128].iter_mut().for_each(|v| *v = v.abs() + 0.5);
        x[2 * K_BLOCK..].fill(0.0);
        let blocks: Vec<B> = quantize(&x);
        let mut back = vec![f32::NAN; x.len()];
        dequantize_into(&blocks, &mut back);
        for (xs, ys) in x.chunks(part).zip(back.chunks(part)) {
            let lo = xs.iter().fold(0f32, |m, &v| m.min(v));
            let hi = xs.iter().fold(0f32, |m, &v| m.max(v));
            let step = (hi - lo) / levels;
            for (a, b) in xs.iter().zip(ys) {
                // The part scales carry 6 or 8 bits: a few percent of the range beside.
                let bound = step * tolerance + (hi - lo) * 0.04;
                assert!((a - b).abs() <= bound, "{} {a} -> {b}", B::NAME);
            }
        }
        assert!(back[64..96].iter().all(|&v| v.abs() < 1e-3));
        assert!(back[2 * K_BLOCK..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn k_quants_round_trip_within_their_steps() {
        round_trip::<BlockQ4K>(15.0, 32, 0.5);
        round_trip::<BlockQ5K>(31.0, 32, 0.5);
        // q6_K's step is the extreme over 32 of a part of 16 (two-sided range over 64).
        round_trip::<BlockQ6K>(64.0, 16, 1.0);
    }

    #[test]
    fn packed_scales_and_mins_unpack_to_what_was_packed() {
        let sc: [u8; 8] = [0, 63, 17, 32, 1, 62, 48, 15];
        let m: [u8; 8] = [63, 0, 5, 33, 47, 16, 31, 2];
        let q = pack_scale_min(&sc, &m);
        for j in 0..8 {
            assert_eq!(scale_min(j, &q), (sc[j], m[j]), "{j}");
        }
    }

    #[test]
    fn blocks_read_from_ggml_bytes_keep_every_byte() {
        let bytes: Vec<u8> = (0..210).map(|i| (i * 37 + 11) as u8).collect();
        let q4 = BlockQ4K::from_ggml(&bytes[..144]);
        let q5 = BlockQ5K::from_ggml(&bytes[..176]);
        let q6 = BlockQ6K::from_ggml(&bytes);
        // GGML's sizes, so no padding; the memory of each is the file's bytes.
        assert_eq!(bytemuck::bytes_of(&q4), &bytes[..144]);
        assert_eq!(bytemuck::bytes_of(&q5), &bytes[..176]);
        assert_eq!(bytemuck::bytes_of(&q6), &bytes[..210]);
        // And the fields sit where GGML puts them.
        assert_eq!(q4.dmin.to_bits(), u16::from_le_bytes([bytes[2], bytes[3]]));
        assert_eq!(q5.qs[0], bytes[48]);
        assert_eq!(q6.d.to_bits(), u16::from_le_bytes([bytes[208], bytes[209]]));
    }
}
