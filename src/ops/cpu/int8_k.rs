//! x86 tiles of `out = x · wᵀ` for q8_0 activations and K-quant weights, the sums of
//! kquant.rs's module comment. Per run of 32 codes, `vpdpbusd` (AVX-512 VNNI), or `vpmaddubsw`
//! then `vpmaddwd` (AVX2), of the unsigned codes by x's signed ones gives 8 i32 lanes of 4
//! products each, lanes 0-3 the first half run and 4-7 the second, so each lane is scaled by
//! its half's scale; x's own code sums, scaled by the half's min, are subtracted the same way.
//! Also the SIMD dequantization of prefill, bit for bit the scalar one.

use std::arch::x86_64::*;

use super::avx512::{prefetch_ahead, tile_dispatch};
use super::tile::{for_tiles, OutView, Tile};
use crate::quant::{BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, SuperBlock, BLOCK};

/// Runs of 32 codes per super-block.
const RUNS: usize = 8;

/// A K-quant super-block whose runs load as 32 unsigned bytes.
pub trait KCodes256: SuperBlock {
    /// Run `r`'s 32 codes.
    ///
    /// # Safety
    /// The CPU has AVX2, `p` points to a block and r < 8.
    unsafe fn load(p: *const Self, r: usize) -> __m256i;
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
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX2.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (`Isa::Avx2` or better was detected).
pub unsafe fn matmul_bt_avx2<W: KCodes256>(
    x: &[BlockQ8_0],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    run(x, w, dims, out, 2, |x, w, kb, t| unsafe {
        tile_dispatch!(avx2_tile, [W], (x, w, kb), t.mr, t.nr)
    });
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX-512 VNNI (256-bit lanes).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX-512 VL and VNNI.
pub unsafe fn matmul_bt_vnni<W: KCodes256>(
    x: &[BlockQ8_0],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    run(x, w, dims, out, 4, |x, w, kb, t| unsafe {
        tile_dispatch!(vnni_tile, [W], (x, w, kb), t.mr, t.nr)
    });
}

/// Sums of one tile, row-major (mr, nr) in the first mr · nr entries.
type TileSums = [f32; 16];

fn run<W: KCodes256>(
    x: &[BlockQ8_0],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
    mr_max: usize,
    tile: impl Fn(*const BlockQ8_0, *const W, (usize, usize), Tile) -> TileSums,
) {
    let kb = k / W::VALUES;
    assert!(
        k.is_multiple_of(W::VALUES) && x.len() >= m * kb * RUNS && w.len() >= n * kb,
        "K-quant tiles: operand sizes"
    );
    for_tiles((m, n), (mr_max, 4), out, |t: Tile| {
        // The tile's rows of x and w are inside the slices (asserted above; for_tiles keeps
        // tiles inside m and n).
        let (xp, wp) = (x[t.i0 * kb * RUNS..].as_ptr(), w[t.j0 * kb..].as_ptr());
        tile(xp, wp, (kb, t.step * kb), t)
    });
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(unsigned: __m256i, signed: __m256i) -> __m256i {
    // No pair saturates: codes <= 63 and |x| <= 127 give at most 16002 per i16.
    _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned, signed), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,avx512vl,avx512vnni")]
unsafe fn dot_vnni(unsigned: __m256i, signed: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed)
}

/// `lo` in lanes 0-3 and `hi` in lanes 4-7: the two halves of a run.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn halves([lo, hi]: [f32; 2]) -> __m256 {
    _mm256_set_m128(_mm_set1_ps(hi), _mm_set1_ps(lo))
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
    ($name:ident, $features:literal, $dot:ident) => {
        // Indices, not iterators: acc[i][j], the x blocks and the rows of w are one tile.
        #[allow(clippy::needless_range_loop)]
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name<W: KCodes256, const MR: usize, const NR: usize>(
            x: *const BlockQ8_0,
            w: *const W,
            (kb, ldw): (usize, usize),
        ) -> TileSums {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let ones = _mm256_set1_epi8(1);
            for sb in 0..kb {
                // Each block of x under this super-block: its scale, and its codes' sums (in
                // the lanes the products fill) times the scale, for the min terms.
                let mut xd = [[_mm256_setzero_ps(); RUNS]; MR];
                let mut xs = [[_mm256_setzero_ps(); RUNS]; MR];
                for i in 0..MR {
                    for r in 0..RUNS {
                        let xb = x.add((i * kb + sb) * RUNS + r);
                        let q = load32((*xb).qs.as_ptr() as *const u8);
                        xd[i][r] = _mm256_cvtph_ps(_mm_set1_epi16((*xb).d.to_bits() as i16));
                        xs[i][r] = _mm256_mul_ps(_mm256_cvtepi32_ps($dot(ones, q)), xd[i][r]);
                    }
                }
                for j in 0..NR {
                    let wb = w.add(j * ldw + sb);
                    prefetch_block(wb);
                    let sc = (*wb).sub_scales();
                    for r in 0..RUNS {
                        let s = halves(sc.s[r]);
                        let [m0, m1] = sc.m[r];
                        let offset = W::OFFSET as f32;
                        let min = halves([sc.s[r][0] * offset + m0, sc.s[r][1] * offset + m1]);
                        let codes = W::load(wb, r);
                        for i in 0..MR {
                            let xb = x.add((i * kb + sb) * RUNS + r);
                            let q = load32((*xb).qs.as_ptr() as *const u8);
                            let p = _mm256_cvtepi32_ps($dot(codes, q));
                            let scale = _mm256_mul_ps(xd[i][r], s);
                            acc[i][j] = _mm256_fmadd_ps(p, scale, acc[i][j]);
                            acc[i][j] = _mm256_fnmadd_ps(xs[i][r], min, acc[i][j]);
                        }
                    }
                }
            }
            let mut sums = [0f32; 16];
            for i in 0..MR {
                for j in 0..NR {
                    sums[i * NR + j] = hsum(acc[i][j]);
                }
            }
            sums
        }
    };
}

k_tile!(avx2_tile, "avx2,fma,f16c", dot_avx2);
k_tile!(vnni_tile, "avx2,fma,f16c,avx512vl,avx512vnni", dot_vnni);

#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

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
                _mm256_storeu_ps(out.add(BLOCK * r + 16 * h + 8 * e), v);
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
