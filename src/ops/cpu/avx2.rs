//! AVX2 + FMA tiles of `out = x · wᵀ` with weights (f32, bf16 or f16) widened to f32, for
//! x86-64 machines without AVX-512. Row tails shorter than 8 are summed one element at a time.
//! The f64 oracle is in `linear.rs`'s tests.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::avx512::prefetch_ahead;
use super::tile::{for_tiles, OutView, Tile, TileSums};

/// A weight element type that loads as 8 f32 lanes.
pub trait Widen8: Copy {
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `p..p + 8` is readable.
    unsafe fn load(p: *const Self) -> __m256;
    fn to_f32(self) -> f32;
}

impl Widen8 for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Widen8 for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const bf16) -> __m256 {
        // bf16 is the top half of an f32: zero-extend each lane and shift it into place.
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl Widen8 for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ with w widened to f32.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (`Isa::Avx2` or better was detected).
pub unsafe fn matmul_bt_widen<W: Widen8>(
    x: &[f32],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "avx2 widen: operand sizes"
    );
    for_tiles((m, n), (2, 4), out, |t: Tile| {
        let (xs, ws) = (&x[t.i0 * k..], &w[t.j0 * k..]);
        let (xp, wp, kk) = (xs.as_ptr(), ws.as_ptr(), (k, t.step * k));
        // SAFETY: the tile's rows of x and w are inside the slices (asserted above, and
        // for_tiles keeps tiles inside m and n); the features are the caller's promise.
        let mut sums = unsafe {
            match (t.mr, t.nr) {
                (1, 1) => tile::<W, 1, 1>(xp, wp, kk),
                (1, 2) => tile::<W, 1, 2>(xp, wp, kk),
                (1, 3) => tile::<W, 1, 3>(xp, wp, kk),
                (1, _) => tile::<W, 1, 4>(xp, wp, kk),
                (_, 1) => tile::<W, 2, 1>(xp, wp, kk),
                (_, 2) => tile::<W, 2, 2>(xp, wp, kk),
                (_, 3) => tile::<W, 2, 3>(xp, wp, kk),
                (_, _) => tile::<W, 2, 4>(xp, wp, kk),
            }
        };
        // The tail the vector loop left, element by element.
        let full = k / 8 * 8;
        for i in 0..t.mr {
            for j in 0..t.nr {
                let (xr, wr) = (&xs[i * k..][full..k], &ws[j * t.step * k..][full..k]);
                sums[i * t.nr + j] += xr.iter().zip(wr).map(|(a, b)| a * b.to_f32()).sum::<f32>();
            }
        }
        sums
    });
}

/// MR rows of x against NR rows of w (`ldw` apart) over the first k / 8 · 8 columns; sums
/// row-major (MR, NR).
// Indices, not iterators: acc[i][j], xv[i] and the rows of w are one register tile.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<W: Widen8, const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    (k, ldw): (usize, usize),
) -> TileSums {
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    let mut l = 0;
    while l + 8 <= k {
        let mut xv = [_mm256_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(x.add(i * k + l));
        }
        for j in 0..NR {
            prefetch_ahead(w.add(j * ldw + l));
            let wv = W::load(w.add(j * ldw + l));
            for i in 0..MR {
                acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
        l += 8;
    }
    reduce(&acc)
}

/// A tile's accumulators summed lane by lane, row-major.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn reduce<const MR: usize, const NR: usize>(acc: &[[__m256; NR]; MR]) -> TileSums {
    let mut sums = [0f32; 16];
    for i in 0..MR {
        for j in 0..NR {
            sums[i * NR + j] = hsum(acc[i][j]);
        }
    }
    sums
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
