//! x86 tiles of `out = x · wᵀ` for q8_K activations and K-quant weights, the sums of
//! kquant.rs's module comment in integers. Per run of 32 codes, `vpmaddubsw` multiplies the
//! unsigned codes by x's signed ones into 16 i16 lanes (lanes 0-7 the first half run, 8-15 the
//! second), and `vpmaddwd` (or AVX-512 VNNI's `vpdpwssd`) multiplies each lane by its half's
//! integer scale into i32 sums for the whole super-block; the mins multiply x's code sums
//! (`bsums`) the same way. Two float products per super-block and row: d_x · d and d_x · dmin.
//! Also the SIMD dequantization, bit for bit the scalar one: to bf16 for AMX's prefill, to f32
//! where the portable kernels are capped above them (`BlockKernels::dequantize_f32`).

use std::arch::x86_64::*;

use super::avx2::reduce;
use super::avx512::{prefetch_ahead, tile_dispatch};
use super::tile::{for_block_tiles, OutView, TileSums};
use crate::quant::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, SuperBlock};

/// Runs of RUN codes per super-block.
const RUNS: usize = 8;
const RUN: usize = 32;

/// A K-quant super-block whose runs load as 32 unsigned bytes.
pub trait KCodes256: SuperBlock {
    /// Run `r`'s 32 codes.
    ///
    /// # Safety
    /// The CPU has AVX2, `p` points to a block and r < 8.
    unsafe fn load(p: *const Self, r: usize) -> __m256i;

    /// The block's scales as the integer kernels apply them.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and `p` points to a block.
    unsafe fn int_scales(p: *const Self) -> IntScales;
}

/// A super-block's scales for the integer sums: `Σ x·w = d_x · (d · Σ_r run_r · products_r -
/// dmin · mins · bsums)`, the products being `vpmaddubsw`'s i16 lanes.
pub struct IntScales {
    /// Per run, the i16 scale of each of the 16 product lanes (8 per half run).
    run: [__m256i; RUNS],
    /// The i16 factor of each of x's 16 code sums.
    mins: __m256i,
    d: f32,
    dmin: f32,
}

/// The 6-bit scales and mins of q4_K and q5_K, unpacked from their 12 bytes all at once (as
/// ggml does): scales in bytes 0-7, mins in bytes 8-15.
#[inline]
fn unpack_scale_min(q: &[u8; 12]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    [
        a & LOW6,
        (c & LOW4) | (((a >> 6) & LOW2) << 4),
        b & LOW6,
        ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4),
    ]
}

/// Each of 8 byte scales (in the low 8 bytes of `bytes`) as 16 i16 lanes, for the runs.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn run_scales(bytes: __m128i) -> [__m256i; RUNS] {
    let words = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(bytes));
    std::array::from_fn(|r| {
        // Word r of each 128-bit lane, in every word.
        let pick = _mm256_set1_epi16((((2 * r + 1) << 8) | (2 * r)) as i16);
        _mm256_shuffle_epi8(words, pick)
    })
}

/// q4_K's and q5_K's: one scale per run, and each run's min times both of its code sums.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn affine_int_scales(d: half::f16, dmin: half::f16, packed: &[u8; 12]) -> IntScales {
    let u = unpack_scale_min(packed);
    let scales = _mm_set_epi32(0, 0, u[1] as i32, u[0] as i32);
    let mins = _mm_set_epi32(0, 0, u[3] as i32, u[2] as i32);
    IntScales {
        run: run_scales(scales),
        mins: _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins)),
        d: d.to_f32(),
        dmin: dmin.to_f32(),
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load32(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Bits `shift..shift + width` of each byte, where `mask` is `width` ones.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn bits(v: __m256i, shift: usize, mask: i8) -> __m256i {
    // A 16-bit shift moves bits across the byte boundary; the mask drops them.
    let shifted = _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32));
    _mm256_and_si256(shifted, _mm256_set1_epi8(mask))
}

impl KCodes256 for BlockQ4K {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const Self, r: usize) -> __m256i {
        bits(
            load32((*p).qs.as_ptr().add(32 * (r / 2))),
            4 * (r % 2),
            0x0f,
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn int_scales(p: *const Self) -> IntScales {
        affine_int_scales((*p).d, (*p).dmin, &(*p).scales)
    }
}

impl KCodes256 for BlockQ5K {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const Self, r: usize) -> __m256i {
        let low = bits(
            load32((*p).qs.as_ptr().add(32 * (r / 2))),
            4 * (r % 2),
            0x0f,
        );
        let fifth = bits(load32((*p).qh.as_ptr()), r, 1);
        _mm256_or_si256(low, _mm256_slli_epi16::<4>(fifth))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn int_scales(p: *const Self) -> IntScales {
        affine_int_scales((*p).d, (*p).dmin, &(*p).scales)
    }
}

impl KCodes256 for BlockQ6K {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const Self, r: usize) -> __m256i {
        let (half, k) = (r / 4, r % 4);
        let ql = load32((*p).ql.as_ptr().add(64 * half + 32 * (k % 2)));
        let qh = load32((*p).qh.as_ptr().add(32 * half));
        let top = bits(qh, 2 * k, 3);
        _mm256_or_si256(bits(ql, 4 * (k / 2), 0x0f), _mm256_slli_epi16::<4>(top))
    }

    /// 16 signed scales, one per half run; the codes are offset by 32, so the min term is
    /// 32 · d times each scale times its code sum.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn int_scales(p: *const Self) -> IntScales {
        let bytes = _mm_loadu_si128((*p).scales.as_ptr() as *const __m128i);
        let d = (*p).d.to_f32();
        IntScales {
            run: std::array::from_fn(|r| {
                // Byte 2r in the first 8 bytes, byte 2r + 1 in the next 8.
                let pick = _mm_set_epi64x(
                    0x0101_0101_0101_0101 * (2 * r as i64 + 1),
                    0x0101_0101_0101_0101 * (2 * r as i64),
                );
                _mm256_cvtepi8_epi16(_mm_shuffle_epi8(bytes, pick))
            }),
            mins: _mm256_cvtepi8_epi16(bytes),
            d,
            dmin: 32.0 * d,
        }
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX2.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (`Isa::Avx2` or better was detected).
pub unsafe fn matmul_bt_avx2<W: KCodes256>(
    x: &[BlockQ8K],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    for_block_tiles((x, w), dims, W::VALUES, out, 2, |x, w, kb, t| unsafe {
        tile_dispatch!(avx2_tile, [W], (x, w, kb), t.mr, t.nr)
    });
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX-512 VNNI (256-bit lanes).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX-512 VL and VNNI.
pub unsafe fn matmul_bt_vnni<W: KCodes256>(
    x: &[BlockQ8K],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    for_block_tiles((x, w), dims, W::VALUES, out, 4, |x, w, kb, t| unsafe {
        tile_dispatch!(vnni_tile, [W], (x, w, kb), t.mr, t.nr)
    });
}

/// acc + each pair of i16 lanes of `products` times the same lanes of `scales`, in i32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn scaled_avx2(acc: __m256i, products: __m256i, scales: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(products, scales))
}

#[inline]
#[target_feature(enable = "avx2,avx512vl,avx512vnni")]
unsafe fn scaled_vnni(acc: __m256i, products: __m256i, scales: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(acc, products, scales)
}

/// Asks for every cache line of the block PREFETCH_BYTES ahead (a super-block spans 3 or 4).
#[inline(always)]
fn prefetch_block<W>(p: *const W) {
    for line in (0..size_of::<W>()).step_by(64) {
        prefetch_ahead((p as *const u8).wrapping_add(line));
    }
}

/// One tile body per family: MR rows of x against NR rows of w (`ldw` super-blocks apart),
/// each over all kb super-blocks, MR · NR f32 accumulators in registers.
macro_rules! k_tile {
    ($name:ident, $features:literal, $scaled:ident) => {
        // Indices, not iterators: acc[i][j], the x blocks and the rows of w are one tile.
        #[allow(clippy::needless_range_loop)]
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name<W: KCodes256, const MR: usize, const NR: usize>(
            x: *const BlockQ8K,
            w: *const W,
            (kb, ldw): (usize, usize),
        ) -> TileSums {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            for sb in 0..kb {
                for j in 0..NR {
                    let wb = w.add(j * ldw + sb);
                    prefetch_block(wb);
                    let sc = W::int_scales(wb);
                    // No i16 lane saturates: codes <= 63 and |x| <= 127 give at most 16002
                    // per pair; nor does the i32 sum of a super-block (|scale| <= 128).
                    let mut sums = [_mm256_setzero_si256(); MR];
                    for r in 0..RUNS {
                        let codes = W::load(wb, r);
                        for i in 0..MR {
                            let q =
                                load32((*x.add(i * kb + sb)).qs.as_ptr().add(32 * r) as *const u8);
                            let products = _mm256_maddubs_epi16(codes, q);
                            sums[i] = $scaled(sums[i], products, sc.run[r]);
                        }
                    }
                    for i in 0..MR {
                        let xb = x.add(i * kb + sb);
                        let bsums = _mm256_loadu_si256((*xb).bsums.as_ptr() as *const __m256i);
                        let mins = _mm256_madd_epi16(bsums, sc.mins);
                        let d = _mm256_set1_ps((*xb).d * sc.d);
                        let dmin = _mm256_set1_ps((*xb).d * sc.dmin);
                        acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[i]), d, acc[i][j]);
                        acc[i][j] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), dmin, acc[i][j]);
                    }
                }
            }
            reduce(&acc)
        }
    };
}

k_tile!(avx2_tile, "avx2,fma,f16c", scaled_avx2);
k_tile!(vnni_tile, "avx2,fma,f16c,avx512vl,avx512vnni", scaled_vnni);
/// One super-block's values into `out` (256 of them), 8 lanes at a time: `s · (code -
/// OFFSET) - m` with a product and a difference, as `SuperBlock`'s scalar dequantization
/// computes them (no fused multiply-add), so equal to it bit for bit.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn dequantize_block<W: KCodes256>(block: *const W, out: *mut f32) {
    let sc = (*block).sub_scales();
    let offset = _mm256_set1_epi8(W::OFFSET as i8);
    for r in 0..RUNS {
        let codes = _mm256_sub_epi8(W::load(block, r), offset);
        let bytes = [
            _mm256_castsi256_si128(codes),
            _mm256_extracti128_si256::<1>(codes),
        ];
        for (h, half) in bytes.into_iter().enumerate() {
            let (s, m) = (_mm256_set1_ps(sc.s[r][h]), _mm256_set1_ps(sc.m[r][h]));
            for (e, eight) in [half, _mm_srli_si128::<8>(half)].into_iter().enumerate() {
                let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight));
                let v = _mm256_sub_ps(_mm256_mul_ps(v, s), m);
                _mm256_storeu_ps(out.add(RUN * r + 16 * h + 8 * e), v);
            }
        }
    }
}

/// The f32 values of `blocks` into `out` (256 per block).
///
/// # Safety
/// The CPU has AVX2 and F16C (`Isa::Avx2` or better).
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dequantize_f32<W: KCodes256>(blocks: &[W], out: &mut [f32]) {
    assert!(
        out.len() >= blocks.len() * W::VALUES,
        "dequantize_f32: output size"
    );
    for (b, block) in blocks.iter().enumerate() {
        dequantize_block(block, out.as_mut_ptr().add(b * W::VALUES));
    }
}

/// The values of `blocks` rounded to bf16 into `out` (256 per block), through f32 as
/// `dequantize_f32`, rounded to nearest even (as `half` rounds).
///
/// # Safety
/// The CPU has AVX2, F16C and AVX-512 F/BW/VL/BF16 (`Isa::Avx512Bf16` or better).
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn dequantize_bf16<W: KCodes256>(blocks: &[W], out: &mut [half::bf16]) {
    assert!(
        out.len() >= blocks.len() * W::VALUES,
        "dequantize_bf16: output size"
    );
    let mut values = [0f32; 256];
    for (b, block) in blocks.iter().enumerate() {
        dequantize_block(block, values.as_mut_ptr());
        for (c, chunk) in values.chunks_exact(32).enumerate() {
            let lo = _mm512_loadu_ps(chunk.as_ptr());
            let hi = _mm512_loadu_ps(chunk.as_ptr().add(16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let o = out.as_mut_ptr().add(b * W::VALUES + 32 * c);
            _mm512_storeu_si512(o as *mut __m512i, packed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_into, QuantBlock};

    /// Blocks of every byte pattern, with f16 scales from the smallest subnormal to the
    /// largest finite, of both signs.
    fn blocks<B: QuantBlock>() -> Vec<B> {
        let scale = [0x0001u16, 0x3c00, 0x7bff, 0xfbff, 0x1234, 0x8001];
        (0..96)
            .map(|b| {
                let mut bytes: Vec<u8> = (0..size_of::<B>())
                    .map(|l| ((b * 7 + l * 13 + l * l) % 256) as u8)
                    .collect();
                // The f16 fields: q4_K/q5_K's d and dmin lead; q6_K's d ends the block.
                let s = scale[b % scale.len()].to_le_bytes();
                let t = scale[(b / 6) % scale.len()].to_le_bytes();
                if size_of::<B>() == 210 {
                    bytes[208..].copy_from_slice(&s);
                } else {
                    bytes[..2].copy_from_slice(&s);
                    bytes[2..4].copy_from_slice(&t);
                }
                B::from_ggml(&bytes)
            })
            .collect()
    }

    fn check<B: KCodes256>() {
        let blocks = blocks::<B>();
        let mut want = vec![0f32; blocks.len() * 256];
        dequantize_into(&blocks, &mut want);
        let mut got = vec![f32::NAN; want.len()];
        // SAFETY: run only where the CPU has AVX2 and F16C.
        unsafe { dequantize_f32(&blocks, &mut got) };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{}", B::NAME);
        // Each run's codes as the scalar twin reads them.
        for b in &blocks {
            for r in 0..RUNS {
                let mut codes = [0u8; 32];
                // SAFETY: as above.
                unsafe { _mm256_storeu_si256(codes.as_mut_ptr() as *mut __m256i, B::load(b, r)) };
                assert_eq!(codes, b.codes(r), "{} run {r}", B::NAME);
            }
        }
        if !is_x86_feature_detected!("avx512bf16") {
            return;
        }
        let mut got = vec![half::bf16::ZERO; want.len()];
        // SAFETY: checked just above.
        unsafe { dequantize_bf16(&blocks, &mut got) };
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                g.to_bits(),
                half::bf16::from_f32(*w).to_bits(),
                "{}",
                B::NAME
            );
        }
    }

    type Kernel<B> = unsafe fn(&[BlockQ8K], &[B], (usize, usize, usize), &mut OutView);

    /// The integer tiles against the portable loop on blocks of arbitrary bytes (every packed
    /// scale pattern, q6_K scales down to -128) and activations of arbitrary codes.
    fn tiles_match_the_portable_loop<B: KCodes256>() {
        let (m, n, kb) = (5, 7, 2);
        let w: Vec<B> = blocks::<B>().into_iter().take(n * kb).collect();
        let x: Vec<BlockQ8K> = (0..m * kb)
            .map(|b| {
                let qs: [i8; 256] =
                    std::array::from_fn(|l| (((b * 31 + l * 17 + l * l) % 255) as i32 - 127) as i8);
                let bsums =
                    std::array::from_fn(|g| qs[16 * g..][..16].iter().map(|&q| q as i16).sum());
                BlockQ8K {
                    d: 0.01 + b as f32 * 1e-3,
                    qs,
                    bsums,
                }
            })
            .collect();
        let dims = (m, n, 256 * kb);
        // f64 sums of the exact integer terms, and their magnitude, which bounds f32 rounding
        // (arbitrary scales make terms up to ~1e12 that cancel).
        let mut oracle = vec![(0f64, 0f64); m * n];
        for i in 0..m {
            for j in 0..n {
                for sb in 0..kb {
                    let (xb, wb) = (&x[i * kb + sb], &w[j * kb + sb]);
                    let sc = wb.sub_scales();
                    for r in 0..RUNS {
                        let codes = wb.codes(r);
                        for h in 0..2 {
                            let at = RUN * r + 16 * h;
                            let dot: i64 = (0..16)
                                .map(|l| xb.qs[at + l] as i64 * codes[16 * h + l] as i64)
                                .sum();
                            let (s, m) = (sc.s[r][h] as f64, sc.m[r][h] as f64);
                            let min = s * B::OFFSET as f64 + m;
                            let xsum = xb.bsums[2 * r + h] as f64;
                            let (a, b) = (s * dot as f64, min * xsum);
                            let o = &mut oracle[i * n + j];
                            o.0 += xb.d as f64 * (a - b);
                            o.1 += xb.d as f64 * (a.abs() + b.abs());
                        }
                    }
                }
            }
        }
        let mut portable = vec![0f32; m * n];
        super::super::kquant::portable(&x, &w, dims, &mut OutView::rows(&mut portable, n));
        let mut families: Vec<(&str, Kernel<B>)> = vec![("avx2", matmul_bt_avx2::<B>)];
        if super::super::isa::Isa::vnni() {
            families.push(("vnni", matmul_bt_vnni::<B>));
        }
        let mut results = vec![("portable", portable)];
        for (name, f) in families {
            let mut got = vec![f32::NAN; m * n];
            // SAFETY: run only where the CPU has what the family needs (checked by callers).
            unsafe { f(&x, &w, dims, &mut OutView::rows(&mut got, n)) };
            results.push((name, got));
        }
        for (name, got) in results {
            for (g, (want, magnitude)) in got.iter().zip(&oracle) {
                let bound = 1e-6 * magnitude + 1e-6;
                assert!(
                    (*g as f64 - want).abs() <= bound,
                    "{} {name}: {g} vs {want}",
                    B::NAME
                );
            }
        }
    }

    #[test]
    fn integer_tiles_match_the_portable_loop_on_arbitrary_blocks() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        tiles_match_the_portable_loop::<BlockQ4K>();
        tiles_match_the_portable_loop::<BlockQ5K>();
        tiles_match_the_portable_loop::<BlockQ6K>();
    }

    #[test]
    fn simd_codes_and_dequantization_equal_the_scalar_ones_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")) {
            return;
        }
        check::<BlockQ4K>();
        check::<BlockQ5K>();
        check::<BlockQ6K>();
    }
}
