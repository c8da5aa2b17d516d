//! x86 tiles of `out = x · wᵀ` for q8_0 activations and quantized weights: per pair of blocks,
//! 32 int8 products summed exactly in i32 lanes, then scaled by both block scales into f32
//! accumulators. Two families share one body: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512
//! VNNI (`vpdpbusd`, one instruction). Both multiply unsigned by signed bytes, so x goes in as
//! |x| and its sign moves onto w (`vpsignb`). The f64 oracle is in `linear.rs`'s tests.

use std::arch::x86_64::*;

use super::avx2::reduce;
use super::avx512::{prefetch_ahead, tile_dispatch};
use super::tile::{for_block_tiles, OutView, TileSums};
use crate::quant::WeightBlock;
use crate::quant::{BlockMxfp4, BlockQ4_0, BlockQ5_0, BlockQ8_0, BLOCK};

/// A weight block whose 32 codes load as 32 signed bytes.
pub trait Codes256: WeightBlock {
    /// # Safety
    /// The CPU has AVX2, and `p` points to a block.
    unsafe fn load(p: *const Self) -> __m256i;

    /// The block's scale in all 8 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and `p` points to a block.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn splat_scale(p: *const Self) -> __m256 {
        _mm256_set1_ps((*p).scale())
    }
}

impl Codes256 for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const Self) -> __m256i {
        _mm256_loadu_si256((*p).qs.as_ptr() as *const __m256i)
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn splat_scale(p: *const Self) -> __m256 {
        splat_scale((*p).d.to_bits())
    }
}

/// The 32 nibbles of a block's 16 bytes as (low, high): byte l holds weight l in its low
/// nibble and weight l + 16 in its high one (the packing of q4_0, q5_0 and MXFP4).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles(qs: *const u8) -> (__m128i, __m128i) {
    let bytes = _mm_loadu_si128(qs as *const __m128i);
    let low = _mm_set1_epi8(0x0f);
    (
        _mm_and_si128(bytes, low),
        _mm_and_si128(_mm_srli_epi16::<4>(bytes), low),
    )
}

impl Codes256 for BlockMxfp4 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const Self) -> __m256i {
        // Each code looks up its doubled FP4 value in a 16-entry byte table.
        let table = _mm_loadu_si128(crate::quant::MXFP4_CODES.as_ptr() as *const __m128i);
        let (lo, hi) = nibbles((*p).qs.as_ptr());
        _mm256_set_m128i(_mm_shuffle_epi8(table, hi), _mm_shuffle_epi8(table, lo))
    }
}

impl Codes256 for BlockQ4_0 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const Self) -> __m256i {
        let (lo, hi) = nibbles((*p).qs.as_ptr());
        _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn splat_scale(p: *const Self) -> __m256 {
        splat_scale((*p).d.to_bits())
    }
}

impl Codes256 for BlockQ5_0 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const Self) -> __m256i {
        // As q4_0's nibbles, then bit l of qh as the fifth bit of weight l: each byte takes
        // the qh byte holding its bit (a 128-bit lane holds 16 weights, 2 qh bytes), keeps
        // that bit, and turns it into 16.
        let (lo, hi) = nibbles((*p).qs.as_ptr());
        let qh = _mm256_set1_epi32(i32::from_le_bytes((*p).qh));
        let spread = _mm256_shuffle_epi8(
            qh,
            _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        let fifth = _mm256_and_si256(set, _mm256_set1_epi8(16));
        let low4 = _mm256_set_m128i(hi, lo);
        _mm256_sub_epi8(_mm256_or_si256(low4, fifth), _mm256_set1_epi8(16))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn splat_scale(p: *const Self) -> __m256 {
        splat_scale((*p).d.to_bits())
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX2.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (`Isa::Avx2` or better was detected).
pub unsafe fn matmul_bt_avx2<W: Codes256>(
    x: &[BlockQ8_0],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    // 16 ymm registers: 2 x 4 accumulators and the loaded blocks fit.
    for_block_tiles((x, w), dims, W::VALUES, out, 2, |x, w, kb, t| unsafe {
        tile_dispatch!(avx2_tile, [W], (x, w, kb), t.mr, t.nr)
    });
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX-512 VNNI (256-bit lanes: one block per register).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX-512 VL and VNNI.
pub unsafe fn matmul_bt_vnni<W: Codes256>(
    x: &[BlockQ8_0],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    // 32 ymm registers with AVX-512 VL: 4 x 4 accumulators fit.
    for_block_tiles((x, w), dims, W::VALUES, out, 4, |x, w, kb, t| unsafe {
        tile_dispatch!(vnni_tile, [W], (x, w, kb), t.mr, t.nr)
    });
}

/// `vpmaddubsw` then `vpmaddwd` by ones: 8 lanes, each the sum of 4 products. No pair
/// saturates: |x| <= 127 and |w| <= 127 give at most 32258 per i16.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(x_abs: __m256i, w_signed: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x_abs, w_signed), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,avx512vl,avx512vnni")]
unsafe fn dot_vnni(x_abs: __m256i, w_signed: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), x_abs, w_signed)
}

/// The f16 scale `bits` in all 8 lanes.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn splat_scale(bits: u16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

/// One tile body per family: MR rows of x against NR rows of w (`ldw` blocks apart), each
/// over all kb blocks, MR · NR f32 accumulators in registers.
macro_rules! int8_tile {
    ($name:ident, $features:literal, $dot:ident) => {
        // Indices, not iterators: acc[i][j], xs[i] and the rows of w are one register tile.
        #[allow(clippy::needless_range_loop)]
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name<W: Codes256, const MR: usize, const NR: usize>(
            x: *const BlockQ8_0,
            w: *const W,
            (kb, ldw): (usize, usize),
        ) -> TileSums {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            for b in 0..kb {
                let mut xq = [_mm256_setzero_si256(); MR];
                let mut xa = [_mm256_setzero_si256(); MR];
                let mut xd = [_mm256_setzero_ps(); MR];
                for i in 0..MR {
                    let xb = x.add(i * kb + b);
                    xq[i] = _mm256_loadu_si256((*xb).qs.as_ptr() as *const __m256i);
                    xa[i] = _mm256_abs_epi8(xq[i]);
                    xd[i] = splat_scale((*xb).d.to_bits());
                }
                for j in 0..NR {
                    let wb = w.add(j * ldw + b);
                    prefetch_ahead(wb);
                    let wq = W::load(wb);
                    let wd = W::splat_scale(wb);
                    for i in 0..MR {
                        let p = $dot(xa[i], _mm256_sign_epi8(wq, xq[i]));
                        let scale = _mm256_mul_ps(xd[i], wd);
                        acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[i][j]);
                    }
                }
            }
            reduce(&acc)
        }
    };
}

int8_tile!(avx2_tile, "avx2,fma,f16c", dot_avx2);
int8_tile!(vnni_tile, "avx2,fma,f16c,avx512vl,avx512vnni", dot_vnni);

/// The f32 values of `blocks` into `out` (32 per block), 8 lanes at a time: the codes widened
/// to f32, times the scale. One f32 product per value, as `quant::dequantize_into`'s: equal
/// to it bit for bit.
///
/// # Safety
/// The CPU has AVX2 and F16C (`Isa::Avx2` or better).
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dequantize_f32<W: Codes256>(blocks: &[W], out: &mut [f32]) {
    assert!(
        out.len() >= blocks.len() * BLOCK,
        "dequantize_f32: output size"
    );
    for (b, block) in blocks.iter().enumerate() {
        let codes = W::load(block);
        let d = W::splat_scale(block);
        let o = out.as_mut_ptr().add(b * BLOCK);
        let halves = [
            _mm256_castsi256_si128(codes),
            _mm256_extracti128_si256::<1>(codes),
        ];
        for (h, half) in halves.into_iter().enumerate() {
            let first = _mm256_cvtepi8_epi32(half);
            let second = _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(half));
            _mm256_storeu_ps(o.add(16 * h), _mm256_mul_ps(_mm256_cvtepi32_ps(first), d));
            _mm256_storeu_ps(
                o.add(16 * h + 8),
                _mm256_mul_ps(_mm256_cvtepi32_ps(second), d),
            );
        }
    }
}

/// The values of `blocks` rounded to bf16 into `out` (32 per block), 16 lanes at a time: the
/// codes widened to f32, times the scale, rounded to nearest even (as `half` rounds).
///
/// # Safety
/// The CPU has AVX2, F16C and AVX-512 F/BW/VL/BF16 (`Isa::Avx512Bf16` or better).
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn dequantize_bf16<W: Codes256>(blocks: &[W], out: &mut [half::bf16]) {
    assert!(
        out.len() >= blocks.len() * BLOCK,
        "dequantize_bf16: output size"
    );
    for (b, block) in blocks.iter().enumerate() {
        let codes = W::load(block);
        let d = _mm512_set1_ps(block.scale());
        let widen =
            |half: __m128i| _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(half)), d);
        let lo = widen(_mm256_castsi256_si128(codes));
        let hi = widen(_mm256_extracti128_si256::<1>(codes));
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().add(b * BLOCK) as *mut __m512i, packed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_into, QuantBlock};

    /// Blocks whose codes run through every byte and whose scales run from the smallest to
    /// the largest finite ones.
    fn every_code_and_scale<B: QuantBlock>(make: impl Fn(usize) -> B) -> Vec<B> {
        (0..512).map(make).collect()
    }

    fn check<B: Codes256 + QuantBlock>(blocks: &[B]) {
        let mut want = vec![0f32; blocks.len() * BLOCK];
        dequantize_into(blocks, &mut want);
        let mut got = vec![f32::NAN; blocks.len() * BLOCK];
        // SAFETY: run only where the CPU has AVX2 and F16C.
        unsafe { dequantize_f32(blocks, &mut got) };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn simd_dequantization_equals_the_scalar_one_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return;
        }
        let byte = |b: usize, l: usize| ((b * 7 + l * 13) % 256) as u8;
        check(&every_code_and_scale(|b| BlockMxfp4 {
            e: (b % 255) as u8,
            qs: std::array::from_fn(|l| byte(b, l)),
        }));
        let f16_scale = |b: usize| half::f16::from_bits([0x0001, 0x3c00, 0x7bff, 0xfbff][b % 4]);
        check(&every_code_and_scale(|b| BlockQ8_0 {
            d: f16_scale(b),
            qs: std::array::from_fn(|l| byte(b, l) as i8),
        }));
        check(&every_code_and_scale(|b| BlockQ4_0 {
            d: f16_scale(b),
            qs: std::array::from_fn(|l| byte(b, l)),
        }));
        check(&every_code_and_scale(|b| BlockQ5_0 {
            d: f16_scale(b),
            qh: std::array::from_fn(|l| byte(b, l + 77)),
            qs: std::array::from_fn(|l| byte(b, l)),
        }));
    }
}
