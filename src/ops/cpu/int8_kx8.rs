//! x86 tiles of `out = x · wᵀ` for q8_K activations and q4_K weights interleaved in groups of
//! eight rows (`BlockQ4Kx8`): int8_x8.rs's registers of four codes of every row, over the
//! super-block's 8 runs of 32. Per run, each row's dot product with x's codes sums exactly in
//! an i32 lane, is multiplied by the row's 6-bit run scale, and the run's min meets x's code
//! sums (`bsums`) in one `vpmaddwd`; a super-block then costs two float products per row:
//!
//! `Σ x·w = d_x · (d · Σ_run sc · Σ q_x·code - dmin · Σ_run m · Σ q_x)`
//!
//! (kquant.rs's formula with q4_K's offset of 0). The slow twin is kquant.rs's portable loop,
//! compared in the tests of linear.rs against the f64 oracle and below directly.

use std::arch::x86_64::*;

use super::avx512::prefetch_ahead;
use super::int8_x8::{
    broadcast4, dot_avx2, dot_vnni, f16x8, for_groups, nibbles32, GroupSums, DECODE_STREAMS,
};
use super::tile::OutView;
use crate::quant::{BlockQ4Kx8, BlockQ8K, GROUP_ROWS, K_BLOCK};

/// out (m, n) = x (m, k) · w (n, k)ᵀ on AVX2.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (`Isa::Avx2` or better was detected).
pub unsafe fn matmul_bt_avx2(
    x: &[BlockQ8K],
    w: &[BlockQ4Kx8],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    // 16 ymm registers: four sums per row of x, so two rows.
    for_groups(w, dims, K_BLOCK, out, 2, |i0, w, groups, kb, mr| unsafe {
        let x = x[i0 * kb..(i0 + mr) * kb].as_ptr();
        let w = (w, groups.stride * kb);
        match (mr, groups.count) {
            (1, 1) => avx2_tile::<1, 1>(x, w, kb),
            (1, _) => avx2_tile::<1, DECODE_STREAMS>(x, w, kb),
            _ => avx2_tile::<2, 1>(x, w, kb),
        }
    });
}

/// As `matmul_bt_avx2`, on AVX-512 VNNI (256-bit lanes).
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX-512 VL and VNNI.
pub unsafe fn matmul_bt_vnni(
    x: &[BlockQ8K],
    w: &[BlockQ4Kx8],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    // 32 ymm registers with AVX-512 VL: four rows of x.
    for_groups(w, dims, K_BLOCK, out, 4, |i0, w, groups, kb, mr| unsafe {
        let x = x[i0 * kb..(i0 + mr) * kb].as_ptr();
        let w = (w, groups.stride * kb);
        match (mr, groups.count) {
            (1, 1) => vnni_tile::<1, 1>(x, w, kb),
            (1, _) => vnni_tile::<1, DECODE_STREAMS>(x, w, kb),
            (2, _) => vnni_tile::<2, 1>(x, w, kb),
            (3, _) => vnni_tile::<3, 1>(x, w, kb),
            _ => vnni_tile::<4, 1>(x, w, kb),
        }
    });
}

/// Eight bytes at `p` widened to the eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn widen8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// One tile body per family: MR rows of x against NG groups (`ldg` super-blocks apart), each
/// over all kb super-blocks; MR · NG <= 4.
macro_rules! q4k_tile {
    ($name:ident, $features:literal, $dot:ident) => {
        // Indices, not iterators: the arrays are registers.
        #[allow(clippy::needless_range_loop)]
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name<const MR: usize, const NG: usize>(
            x: *const BlockQ8K,
            (w, ldg): (*const BlockQ4Kx8, usize),
            kb: usize,
        ) -> GroupSums {
            let mut acc = [[_mm256_setzero_ps(); MR]; NG];
            for b in 0..kb {
                let xb = |i: usize| x.add(i * kb + b);
                for t in 0..NG {
                    let g = w.add(t * ldg + b);
                    // Per row of x: Σ sc · dot and Σ m · bsum over the runs, exact in i32.
                    let mut dots = [_mm256_setzero_si256(); MR];
                    let mut mins = [_mm256_setzero_si256(); MR];
                    // Pairs of runs share their bytes: low nibbles run 2p, high ones 2p + 1.
                    for pair in 0..4 {
                        let mut p = [[_mm256_setzero_si256(); MR]; 2];
                        for c in 0..8 {
                            let at = (*g).qs.as_ptr().add(256 * pair + 32 * c);
                            if c % 2 == 0 {
                                prefetch_ahead(at);
                            }
                            let codes = nibbles32(at);
                            for i in 0..MR {
                                let xq = (*xb(i)).qs.as_ptr().add(64 * pair + 4 * c);
                                p[0][i] = $dot(p[0][i], codes[0], broadcast4(xq));
                                p[1][i] = $dot(p[1][i], codes[1], broadcast4(xq.add(32)));
                            }
                        }
                        for (h, p) in p.iter().enumerate() {
                            let run = 2 * pair + h;
                            let sc = widen8((*g).scales[run].as_ptr());
                            // The min in both i16 halves of its lane, for x's two sums of 16.
                            let m = widen8((*g).mins[run].as_ptr());
                            let m = _mm256_or_si256(m, _mm256_slli_epi32::<16>(m));
                            for i in 0..MR {
                                dots[i] = _mm256_add_epi32(dots[i], _mm256_mullo_epi32(p[i], sc));
                                let bsums = (*xb(i)).bsums.as_ptr().add(2 * run) as *const i8;
                                let min_sums = _mm256_madd_epi16(m, broadcast4(bsums));
                                mins[i] = _mm256_add_epi32(mins[i], min_sums);
                            }
                        }
                    }
                    let (d, dmin) = (f16x8(&(*g).d), f16x8(&(*g).dmin));
                    for i in 0..MR {
                        let part_mins = _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(mins[i]));
                        let t_sum = _mm256_fmsub_ps(d, _mm256_cvtepi32_ps(dots[i]), part_mins);
                        acc[t][i] = _mm256_fmadd_ps(_mm256_set1_ps((*xb(i)).d), t_sum, acc[t][i]);
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

q4k_tile!(avx2_tile, "avx2,fma,f16c", dot_avx2);
q4k_tile!(vnni_tile, "avx2,fma,f16c,avx512vl,avx512vnni", dot_vnni);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::kquant::portable;
    use crate::quant::{interleave, quantize_par, BlockQ4K, QuantBlock};

    /// The group tiles against the portable loop on the same super-blocks in row order, on
    /// blocks of arbitrary bytes (every packed scale and min, large and subnormal f16 scales)
    /// and every row count of a tile: equal up to f32 rounding of sums of the same terms.
    type Product = unsafe fn(&[BlockQ8K], &[BlockQ4Kx8], (usize, usize, usize), &mut OutView);

    #[test]
    fn group_tiles_match_the_portable_loop() {
        if !(is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        {
            return;
        }
        let vnni = is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512vnni");
        let scales = [0x0001u16, 0x3c00, 0x2e66, 0xb555];
        for (m, n, k) in [
            (1, 8, 256),
            (1, 40, 512),
            (1, 96, 256),
            (2, 16, 512),
            (3, 8, 768),
            (5, 24, 256),
            (9, 8, 1024),
        ] {
            let kb = k / K_BLOCK;
            let w: Vec<BlockQ4K> = (0..n * kb)
                .map(|b| {
                    let mut bytes: Vec<u8> =
                        (0..144).map(|i| ((b * 7 + i * 13) % 256) as u8).collect();
                    bytes[..2].copy_from_slice(&scales[b % 4].to_le_bytes());
                    bytes[2..4].copy_from_slice(&scales[(b + 1) % 4].to_le_bytes());
                    BlockQ4K::from_ggml(&bytes)
                })
                .collect();
            let xs: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1999) as f32 - 999.0) / 97.0)
                .collect();
            let x: Vec<BlockQ8K> = quantize_par(&xs);
            let groups = interleave::<BlockQ4Kx8>(&w, kb);
            let mut want = vec![0f32; m * n];
            portable(&x, &w, (m, n, k), &mut OutView::rows(&mut want, n));
            let mut runs: Vec<(&str, Product)> = vec![("avx2", matmul_bt_avx2)];
            if vnni {
                runs.push(("vnni", matmul_bt_vnni));
            }
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (name, run) in runs {
                let mut got = vec![f32::NAN; m * n];
                // SAFETY: the features were detected above.
                unsafe { run(&x, &groups, (m, n, k), &mut OutView::rows(&mut got, n)) };
                for (j, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    // The same terms summed in another order (runs in i32 here, halves of
                    // runs in f32 there): f32 rounding of the largest sums.
                    assert!(
                        (g - e).abs() <= 1e-5 * scale,
                        "{name} {m}x{n}x{k} [{j}]: {g} vs {e}"
                    );
                }
            }
        }
    }
}
