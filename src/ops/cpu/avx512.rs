//! AVX-512 tiles of `out = x · wᵀ`: weights widened to f32 (any of f32, bf16, f16) with f32
//! FMAs, or bf16 weights times bf16 activations with `vdpbf16ps`. Masked loads take the tail
//! of every row, so any k works. The f64 oracle is in `linear.rs`'s tests.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::tile::{for_tiles, OutView, Tile, TileSums};

/// A weight element type that loads as 16 f32 lanes.
pub trait Widen16: Copy {
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL, and `p..p + 16` is readable where `mask` is set.
    unsafe fn load(p: *const Self, mask: __mmask16) -> __m512;
}

impl Widen16 for f32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const f32, mask: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(mask, p)
    }
}

impl Widen16 for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const bf16, mask: __mmask16) -> __m512 {
        // bf16 is the top half of an f32: zero-extend each lane and shift it into place.
        let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

impl Widen16 for f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load(p: *const f16, mask: __mmask16) -> __m512 {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const i16))
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ with w widened to f32.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL (`Isa::Avx512` or better was detected).
pub unsafe fn matmul_bt_widen<W: Widen16>(
    x: &[f32],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "avx512 widen: operand sizes"
    );
    for_tiles((m, n), (4, 4), out, |t: Tile| {
        let (x, w) = (x[t.i0 * k..].as_ptr(), w[t.j0 * k..].as_ptr());
        // SAFETY: the tile's rows of x and w are inside the slices (asserted above, and
        // for_tiles keeps tiles inside m and n); the CPU features are the caller's promise.
        unsafe { widen_tile_any(x, w, (k, t.step * k), t.mr, t.nr) }
    });
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ, both bf16, products summed in f32 by `vdpbf16ps`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and BF16 (`Isa::Avx512Bf16` was detected).
pub unsafe fn matmul_bt_bf16(
    x: &[bf16],
    w: &[bf16],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "avx512 bf16: operand sizes"
    );
    for_tiles((m, n), (4, 4), out, |t: Tile| {
        let (x, w) = (x[t.i0 * k..].as_ptr(), w[t.j0 * k..].as_ptr());
        // SAFETY: as in matmul_bt_widen.
        unsafe { bf16_tile_any(x, w, (k, t.step * k), t.mr, t.nr) }
    });
}

/// Runs the tile function monomorphised for (mr, nr) in 1..=4 × 1..=4.
macro_rules! tile_dispatch {
    ($f:ident, [$($g:ty),*], ($($arg:expr),*), $mr:expr, $nr:expr) => {
        match ($mr, $nr) {
            (1, 1) => $f::<$($g,)* 1, 1>($($arg),*),
            (1, 2) => $f::<$($g,)* 1, 2>($($arg),*),
            (1, 3) => $f::<$($g,)* 1, 3>($($arg),*),
            (1, _) => $f::<$($g,)* 1, 4>($($arg),*),
            (2, 1) => $f::<$($g,)* 2, 1>($($arg),*),
            (2, 2) => $f::<$($g,)* 2, 2>($($arg),*),
            (2, 3) => $f::<$($g,)* 2, 3>($($arg),*),
            (2, _) => $f::<$($g,)* 2, 4>($($arg),*),
            (3, 1) => $f::<$($g,)* 3, 1>($($arg),*),
            (3, 2) => $f::<$($g,)* 3, 2>($($arg),*),
            (3, 3) => $f::<$($g,)* 3, 3>($($arg),*),
            (3, _) => $f::<$($g,)* 3, 4>($($arg),*),
            (_, 1) => $f::<$($g,)* 4, 1>($($arg),*),
            (_, 2) => $f::<$($g,)* 4, 2>($($arg),*),
            (_, 3) => $f::<$($g,)* 4, 3>($($arg),*),
            (_, _) => $f::<$($g,)* 4, 4>($($arg),*),
        }
    };
}
pub(super) use tile_dispatch;

/// How far ahead of the weights being read a tile asks for them. The hardware prefetchers
/// alone leave a single core at ~0.6 of the bandwidth a pure read loop gets from DRAM; asking
/// ~1 KB ahead on each of a tile's streams gains 25-35% (gemv of 128 Mi weights, one core:
/// bf16 8.6 -> 10.5-11.1 GB/s, q8_0 8.3 -> 11.1 GB/s; 256 bytes to 2 KB all do about as well).
const PREFETCH_BYTES: usize = 1024;

/// Asks for the cache line PREFETCH_BYTES past `p`. A hint: past the end of the data it does
/// nothing, so the address is computed without the in-bounds promise of `add`.
#[inline(always)]
pub(super) fn prefetch_ahead<T>(p: *const T) {
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(PREFETCH_BYTES));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn widen_tile_any<W: Widen16>(
    x: *const f32,
    w: *const W,
    k: (usize, usize),
    mr: usize,
    nr: usize,
) -> TileSums {
    tile_dispatch!(widen_tile, [W], (x, w, k), mr, nr)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn bf16_tile_any(
    x: *const bf16,
    w: *const bf16,
    k: (usize, usize),
    mr: usize,
    nr: usize,
) -> TileSums {
    tile_dispatch!(bf16_tile, [], (x, w, k), mr, nr)
}

/// MR rows of x against NR rows of w (`ldw` apart), each over the whole k: MR · NR
/// accumulators in registers, every x and w vector loaded once per 16 lanes.
// Indices, not iterators: acc[i][j], xv[i] and the rows of w are one register tile.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn widen_tile<W: Widen16, const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    (k, ldw): (usize, usize),
) -> TileSums {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut l = 0;
    while l < k {
        let mask: __mmask16 = if k - l >= 16 {
            u16::MAX
        } else {
            (1u16 << (k - l)) - 1
        };
        let mut xv = [_mm512_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, x.add(i * k + l));
        }
        for j in 0..NR {
            prefetch_ahead(w.add(j * ldw + l));
            let wv = W::load(w.add(j * ldw + l), mask);
            for i in 0..MR {
                acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
            }
        }
        l += 16;
    }
    reduce(&acc)
}

/// As `widen_tile`, 32 bf16 pairs per step: each f32 lane gains x[2l]·w[2l] + x[2l+1]·w[2l+1].
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn bf16_tile<const MR: usize, const NR: usize>(
    x: *const bf16,
    w: *const bf16,
    (k, ldw): (usize, usize),
) -> TileSums {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let mut l = 0;
    while l < k {
        let mask: __mmask32 = if k - l >= 32 {
            u32::MAX
        } else {
            (1u32 << (k - l)) - 1
        };
        let mut xv = [_mm512_setzero_si512(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_epi16(mask, x.add(i * k + l) as *const i16);
        }
        for j in 0..NR {
            prefetch_ahead(w.add(j * ldw + l));
            let wv = as_bh(_mm512_maskz_loadu_epi16(
                mask,
                w.add(j * ldw + l) as *const i16,
            ));
            for i in 0..MR {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(xv[i]), wv);
            }
        }
        l += 32;
    }
    reduce(&acc)
}

#[inline]
pub(super) fn as_bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512 plain bits; __m512bh is __m512i read as 32 bf16 lanes.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn reduce<const MR: usize, const NR: usize>(acc: &[[__m512; NR]; MR]) -> TileSums {
    let mut sums = [0f32; 16];
    for i in 0..MR {
        for j in 0..NR {
            sums[i * NR + j] = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
    sums
}
