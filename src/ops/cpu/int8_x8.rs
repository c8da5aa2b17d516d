//! x86 tiles of `out = x · wᵀ` for q8_0 activations and weights interleaved in groups of
//! eight rows (quant/interleaved.rs). Per group and block of 32, eight registers each hold four
//! codes of every row; one `vpdpbusd` (or `vpmaddubsw` + `vpmaddwd`) of such a register against
//! four of x's codes broadcast adds to all eight rows' dot products, so the scales, the
//! conversion and the float sums are paid once per eight rows, not once per row as in int8.rs.
//!
//! The stored codes are unsigned (q4_0's nibbles as they are), which both instructions want
//! for one operand; the offset comes back through x's block sums, exactly:
//! Σ (q - 8) x = Σ q x - 8 Σ x. Each block's integer sum is then scaled and added as the
//! portable loop adds it, so the result equals that loop's bit for bit (tested below).

use std::arch::x86_64::*;

use super::avx512::prefetch_ahead;
use super::int8::splat_scale;
use super::tile::OutView;
use crate::quant::{
    BlockMxfp4x8, BlockQ4_0x8, BlockQ8_0, BlockQ8_0x8, Interleaved, BLOCK, GROUP_ROWS, MXFP4_CODES,
};

/// A group of eight rows' blocks whose codes load as unsigned bytes, four per row per register.
pub trait Codes8: Interleaved {
    /// A stored code minus OFFSET is the signed code.
    const OFFSET: i32;

    /// The largest stored code: the AVX2 tiles take only groups whose codes are at most 127,
    /// so that `vpmaddubsw`'s pairs of products cannot saturate an i16.
    const MAX_STORED: u8;

    /// The eight rows' scales, row r in lane r.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and `g` points to a group.
    unsafe fn scales(g: *const Self) -> __m256;

    /// Register t holds codes 4t..4t + 4 of row r in its 32-bit lane r.
    ///
    /// # Safety
    /// The CPU has AVX2, and `g` points to a group.
    unsafe fn codes(g: *const Self) -> [__m256i; 8];
}

impl Codes8 for BlockQ4_0x8 {
    const OFFSET: i32 = 8;
    const MAX_STORED: u8 = 15;

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales(g: *const Self) -> __m256 {
        f16x8(&(*g).d)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(g: *const Self) -> [__m256i; 8] {
        nibble_chunks((*g).qs.as_ptr())
    }
}

/// Eight f16 scales (a group's, row r in lane r) as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn f16x8(d: &[half::f16; GROUP_ROWS]) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr() as *const __m128i))
}

/// The four chunks of a group's 16-byte code arrays (q4_0x8's layout), each as its low and
/// high nibbles: register c holds codes 4c.. of every row, register c + 4 codes 16 + 4c.. .
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibble_chunks(qs: *const u8) -> [__m256i; 8] {
    let mut out = [_mm256_setzero_si256(); 8];
    for c in 0..4 {
        [out[c], out[c + 4]] = nibbles32(qs.add(32 * c));
    }
    out
}

/// The 32 bytes at `p` as their low and high nibbles, each a byte.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn nibbles32(p: *const u8) -> [__m256i; 2] {
    let raw = _mm256_loadu_si256(p as *const __m256i);
    let low = _mm256_set1_epi8(0x0f);
    [
        _mm256_and_si256(raw, low),
        _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low),
    ]
}

/// MXFP4's doubled values plus its OFFSET, by code.
const MXFP4_STORED: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (MXFP4_CODES[i] + 12) as u8;
        i += 1;
    }
    t
};

impl Codes8 for BlockMxfp4x8 {
    /// The doubled FP4 values run from -12 to 12: stored as value + 12.
    const OFFSET: i32 = 12;
    const MAX_STORED: u8 = 24;

    /// 2^(e - 128) (`mxfp4_half_scale`) from the exponent bits: (e - 1) << 23 for e >= 2, the
    /// subnormals 1 << 21 and 1 << 22 for e = 0 and 1.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales(g: *const Self) -> __m256 {
        let e = _mm256_cvtepu8_epi32(_mm_loadl_epi64((*g).e.as_ptr() as *const __m128i));
        let one = _mm256_set1_epi32(1);
        let normal = _mm256_slli_epi32::<23>(_mm256_sub_epi32(e, one));
        let subnormal = _mm256_sllv_epi32(_mm256_set1_epi32(1 << 21), e);
        let bits = _mm256_blendv_epi8(subnormal, normal, _mm256_cmpgt_epi32(e, one));
        _mm256_castsi256_ps(bits)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(g: *const Self) -> [__m256i; 8] {
        let table =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(MXFP4_STORED.as_ptr() as *const __m128i));
        let mut codes = nibble_chunks((*g).qs.as_ptr());
        for c in codes.iter_mut() {
            *c = _mm256_shuffle_epi8(table, *c);
        }
        codes
    }
}

impl Codes8 for BlockQ8_0x8 {
    const OFFSET: i32 = 128;
    const MAX_STORED: u8 = 255;

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales(g: *const Self) -> __m256 {
        f16x8(&(*g).d)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(g: *const Self) -> [__m256i; 8] {
        std::array::from_fn(|c| {
            // SAFETY: in bounds of the group's 256 bytes; the caller has AVX2.
            unsafe { _mm256_loadu_si256((*g).qs.as_ptr().add(32 * c) as *const __m256i) }
        })
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX2, `sums` holding the sum of each of x's blocks'
/// codes.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (`Isa::Avx2` or better was detected).
pub unsafe fn matmul_bt_avx2<G: Codes8>(
    x: (&[BlockQ8_0], &[i32]),
    w: &[G],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    const { assert!(G::MAX_STORED <= 127, "vpmaddubsw would saturate") };
    // 16 ymm registers: the eight codes, the scales and two rows' sums.
    for_groups(w, dims, BLOCK, out, 2, |i0, w, groups, kb, mr| unsafe {
        let x = x_rows(x, i0, kb, mr);
        let w = (w, groups.stride * kb);
        match (mr, groups.count) {
            (1, 1) => avx2_tile::<G, 1, 1>(x, w, kb),
            (1, _) => avx2_tile::<G, 1, DECODE_STREAMS>(x, w, kb),
            _ => avx2_tile::<G, 2, 1>(x, w, kb),
        }
    });
}

/// As `matmul_bt_avx2`, on AVX-512 VNNI (256-bit lanes).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX-512 VL and VNNI.
pub unsafe fn matmul_bt_vnni<G: Codes8>(
    x: (&[BlockQ8_0], &[i32]),
    w: &[G],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    // 32 ymm registers with AVX-512 VL: four rows' sums beside the codes.
    for_groups(w, dims, BLOCK, out, 4, |i0, w, groups, kb, mr| unsafe {
        let x = x_rows(x, i0, kb, mr);
        let w = (w, groups.stride * kb);
        match (mr, groups.count) {
            (1, 1) => vnni_tile::<G, 1, 1>(x, w, kb),
            (1, _) => vnni_tile::<G, 1, DECODE_STREAMS>(x, w, kb),
            (2, _) => vnni_tile::<G, 2, 1>(x, w, kb),
            (3, _) => vnni_tile::<G, 3, 1>(x, w, kb),
            _ => vnni_tile::<G, 4, 1>(x, w, kb),
        }
    });
}

/// A tile's sums: entry `t · mr + i` holds row i of x against group t's eight rows (at most
/// four pairs).
pub(super) type GroupSums = [[f32; GROUP_ROWS]; 4];

/// Groups walked side by side when x is one row (decode): each is the head of its own long
/// sequential stream, and several streams keep the prefetchers busier than one (the reason
/// `tile::for_tiles` reads rows far apart).
pub(super) const DECODE_STREAMS: usize = 4;

/// Where a tile's groups are: the first, how many, and their distance in groups.
#[derive(Clone, Copy)]
pub(super) struct Groups {
    pub first: usize,
    pub count: usize,
    pub stride: usize,
}

/// Every group of eight rows of w against every row of x: one group at a time with up to
/// mr_max rows of x passing it while its blocks stay in L1, or, for one row of x,
/// DECODE_STREAMS groups far apart at once. `tile` gets the first row of x, the tile's groups,
/// the blocks per row and the rows of x in the tile. Asserts that w holds the rows the dims
/// say and that n is whole groups; each tile asserts its x (the forms differ).
pub(super) fn for_groups<G>(
    w: &[G],
    (m, n, k): (usize, usize, usize),
    per_block: usize,
    out: &mut OutView,
    mr_max: usize,
    mut tile: impl FnMut(usize, *const G, Groups, usize, usize) -> GroupSums,
) {
    let kb = k / per_block;
    let groups = n / GROUP_ROWS;
    assert!(
        k.is_multiple_of(per_block) && n.is_multiple_of(GROUP_ROWS) && w.len() >= groups * kb,
        "interleaved tiles: operand sizes"
    );
    let streams = if m == 1 && groups >= DECODE_STREAMS {
        DECODE_STREAMS
    } else {
        1
    };
    let step = groups / streams;
    let mut run = |tile_groups: Groups| {
        // The tile's groups lie inside w: first + (count - 1) · stride < groups.
        let wg = w[tile_groups.first * kb..].as_ptr();
        for i0 in (0..m).step_by(mr_max) {
            let mr = mr_max.min(m - i0);
            let s = tile(i0, wg, tile_groups, kb, mr);
            for t in 0..tile_groups.count {
                let g = tile_groups.first + t * tile_groups.stride;
                for i in 0..mr {
                    for (r, &v) in s[t * mr + i].iter().enumerate() {
                        out.set(i0 + i, g * GROUP_ROWS + r, v);
                    }
                }
            }
        }
    };
    for first in 0..step {
        run(Groups {
            first,
            count: streams,
            stride: step,
        });
    }
    for first in streams * step..groups {
        run(Groups {
            first,
            count: 1,
            stride: 1,
        });
    }
}

/// The tile's rows of x (i0.. of kb blocks each) and their sums, checked to hold mr rows.
fn x_rows(
    (x, sums): (&[BlockQ8_0], &[i32]),
    i0: usize,
    kb: usize,
    mr: usize,
) -> (*const BlockQ8_0, *const i32) {
    let rows = i0 * kb..(i0 + mr) * kb;
    (x[rows.clone()].as_ptr(), sums[rows].as_ptr())
}

/// x's four codes at `p` in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn broadcast4(p: *const i8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// acc + the four products of each lane's unsigned `w` and signed `x` bytes: `vpmaddubsw`
/// (pairs, exact: see `Codes8::OFFSET`) then `vpmaddwd` by ones.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dot_avx2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(w, x);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

#[inline]
#[target_feature(enable = "avx2,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_vnni(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, x)
}

/// One tile body per family: MR rows of x against NG groups (`ldg` blocks apart), each over
/// all kb blocks; MR · NG <= 4.
macro_rules! group_tile {
    ($name:ident, $features:literal, $dot:ident) => {
        // Indices, not iterators: acc[t][i] and the codes are registers.
        #[allow(clippy::needless_range_loop)]
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name<G: Codes8, const MR: usize, const NG: usize>(
            (x, sums): (*const BlockQ8_0, *const i32),
            (w, ldg): (*const G, usize),
            kb: usize,
        ) -> GroupSums {
            let mut acc = [[_mm256_setzero_ps(); MR]; NG];
            for b in 0..kb {
                for t in 0..NG {
                    let wb = w.add(t * ldg + b);
                    prefetch_ahead(wb);
                    let codes = G::codes(wb);
                    let wd = G::scales(wb);
                    for i in 0..MR {
                        let xb = x.add(i * kb + b);
                        let xs = (*xb).qs.as_ptr();
                        // Two chains, so that the adds of one wait less on the other's.
                        let mut p0 = _mm256_set1_epi32(-G::OFFSET * *sums.add(i * kb + b));
                        let mut p1 = _mm256_setzero_si256();
                        for c in (0..8).step_by(2) {
                            p0 = $dot(p0, codes[c], broadcast4(xs.add(4 * c)));
                            p1 = $dot(p1, codes[c + 1], broadcast4(xs.add(4 * c + 4)));
                        }
                        let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(p0, p1));
                        // As the portable loop: (dot · (d_x · d_w)), then added; no fused step.
                        let scale = _mm256_mul_ps(splat_scale((*xb).d.to_bits()), wd);
                        acc[t][i] = _mm256_add_ps(acc[t][i], _mm256_mul_ps(dot, scale));
                    }
                }
            }
            let mut out = [[0f32; GROUP_ROWS]; 4];
            for t in 0..NG {
                for i in 0..MR {
                    _mm256_storeu_ps(out[t * MR + i].as_mut_ptr(), acc[t][i]);
                }
            }
            out
        }
    };
}

group_tile!(avx2_tile, "avx2,fma,f16c", dot_avx2);
group_tile!(vnni_tile, "avx2,fma,f16c,avx512vl,avx512vnni", dot_vnni);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::quantized::portable;
    use crate::quant::{interleave, BlockMxfp4, BlockQ4_0, WeightBlock};

    /// Arbitrary bytes: every code byte over the blocks.
    fn byte(b: usize, l: usize) -> u8 {
        ((b * 7 + l * 13) % 256) as u8
    }

    /// Scales from subnormal to large, of both signs.
    fn f16_of(i: usize) -> half::f16 {
        half::f16::from_bits([0x0001, 0x3c00, 0x5bff, 0xb555][i % 4])
    }

    /// `G`'s group tiles against the portable loop on the same blocks (`block(b)`) in row
    /// order, bit for bit, for every row count of a tile, a remainder of rows of x and the
    /// decode walk of several groups at once.
    fn check<G: Codes8>(block: impl Fn(usize) -> G::Block, runs: &[(&str, Product<G>)])
    where
        G::Block: WeightBlock,
    {
        for (m, n, k) in [
            (1, 8, 32),
            (1, 40, 64),
            (1, 96, 32),
            (2, 16, 64),
            (3, 8, 96),
            (5, 24, 128),
            (9, 8, 1024),
        ] {
            let kb = k / BLOCK;
            let w: Vec<G::Block> = (0..n * kb).map(&block).collect();
            // x's codes run to -128.
            let x: Vec<BlockQ8_0> = (0..m * kb)
                .map(|b| BlockQ8_0 {
                    d: f16_of(b + 1),
                    qs: std::array::from_fn(|l| byte(b + 3, 2 * l) as i8),
                })
                .collect();
            let sums: Vec<i32> = x
                .iter()
                .map(|b| b.qs.iter().map(|&q| q as i32).sum())
                .collect();
            let groups = interleave::<G>(&w, kb);
            let mut want = vec![0f32; m * n];
            portable(&x, &w, (m, n, k), &mut OutView::rows(&mut want, n));
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for &(name, run) in runs {
                let mut got = vec![f32::NAN; m * n];
                let out = &mut OutView::rows(&mut got, n);
                // SAFETY: the caller passes only tiles whose features it detected.
                unsafe { run((&x, &sums), &groups, (m, n, k), out) };
                assert_eq!(bits(&got), bits(&want), "{name} {m}x{n}x{k}");
            }
        }
    }

    type Product<G> = unsafe fn((&[BlockQ8_0], &[i32]), &[G], (usize, usize, usize), &mut OutView);

    #[test]
    fn group_tiles_equal_the_portable_loop_bit_for_bit() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        let vnni = is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni");
        fn runs<G: Codes8>(vnni: bool) -> Vec<(&'static str, Product<G>)> {
            let mut runs: Vec<(&str, Product<G>)> = vec![("avx2", matmul_bt_avx2::<G>)];
            if vnni {
                runs.push(("vnni", matmul_bt_vnni::<G>));
            }
            runs
        }
        check::<BlockQ4_0x8>(
            |b| BlockQ4_0 {
                d: f16_of(b),
                qs: std::array::from_fn(|l| byte(b, l)),
            },
            &runs(vnni),
        );
        // Every exponent, the subnormal scales of 0 and 1 and the largest of 254 among them.
        check::<BlockMxfp4x8>(
            |b| BlockMxfp4 {
                e: (b * 37 % 255) as u8,
                qs: std::array::from_fn(|l| byte(b, l)),
            },
            &runs(vnni),
        );
        // q8_0's stored codes are VNNI's alone; its codes run to -128.
        if vnni {
            check::<BlockQ8_0x8>(
                |b| BlockQ8_0 {
                    d: f16_of(b),
                    qs: std::array::from_fn(|l| byte(b, l) as i8),
                },
                &[("vnni", matmul_bt_vnni::<BlockQ8_0x8>)],
            );
        }
    }
}
