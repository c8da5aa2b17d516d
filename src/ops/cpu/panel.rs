//! `out = x · wᵀ` for f32 activations against bf16 weights in panels of 16 rows
//! (quant/panels.rs). A step of a panel (one 64-byte load) is a pair of weights of 16 rows;
//! a shift and a mask widen it to two f32 vectors, each multiplied by one broadcast element of
//! a row of x, so each accumulator is 16 output columns: no horizontal sums, and the f32 FMA's
//! rate, which on the AVX-512 CPUs without AMX we run on is four times `vdpbf16ps`'s (5.1 G
//! against 1.3 G instructions/s on one core; 67-75 against 32 G multiply-adds/s for the tile).
//! The f64 oracle is in `linear.rs`'s tests; `portable` is the slow twin.

use super::isa::Isa;
use super::tile::OutView;
use crate::quant::{PanelStep, PANEL_ROWS};

/// out (m, n) = x (m, k) · w (n, k)ᵀ, w in panels (n a multiple of 16, k even), single-threaded
/// (callers split the work at whole panels).
pub fn matmul_bt_panels(
    isa: Isa,
    x: &[f32],
    w: &[PanelStep],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    assert!(
        n.is_multiple_of(PANEL_ROWS)
            && k.is_multiple_of(2)
            && x.len() >= m * k
            && w.len() >= n / PANEL_ROWS * (k / 2),
        "bf16 panels: operand sizes"
    );
    #[cfg(target_arch = "x86_64")]
    if isa.min(Isa::best()) >= Isa::Avx512 {
        // SAFETY: Isa::best() is Avx512 or better only where the CPU has AVX-512 F/BW/VL;
        // the sizes are asserted above.
        return unsafe { avx512::matmul_bt(x, w, (m, n, k), out) };
    }
    let _ = isa;
    portable(x, w, (m, n, k), out)
}

/// The slow twin: each sum in f32, term by term in order of k.
fn portable(x: &[f32], w: &[PanelStep], (m, n, k): (usize, usize, usize), out: &mut OutView) {
    let steps = k / 2;
    for (p, panel) in w
        .chunks_exact(steps.max(1))
        .take(n / PANEL_ROWS)
        .enumerate()
    {
        for i in 0..m {
            let x = &x[i * k..][..k];
            for r in 0..PANEL_ROWS {
                let sum = panel
                    .iter()
                    .zip(x.chunks_exact(2))
                    .fold(0f32, |s, (st, xp)| {
                        let [a, b] = st.pairs[r];
                        s + xp[0] * a.to_f32() + xp[1] * b.to_f32()
                    });
                out.set(i, p * PANEL_ROWS + r, sum);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::avx512::prefetch_ahead;
    use super::{OutView, PanelStep, PANEL_ROWS};

    /// Rows of x a tile takes at most: with two panels, 16 accumulators, 4 widened weight
    /// vectors and 2 broadcasts of the 32 registers.
    const MR: usize = 8;

    /// Up to this many rows of x (decode, small batches), a tile takes four panels a quarter
    /// of the matrix apart: four long sequential streams, which the prefetchers follow at full
    /// speed (as the row tiles do, tile.rs). More rows take two adjacent panels.
    const FEW_ROWS: usize = 4;

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL; n is whole panels, k even, x and w hold (m, k) and (n, k).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn matmul_bt(
        x: &[f32],
        w: &[PanelStep],
        (m, n, k): (usize, usize, usize),
        out: &mut OutView,
    ) {
        let (panels, steps) = (n / PANEL_ROWS, k / 2);
        let mut sums = [[0f32; 4 * PANEL_ROWS]; MR];
        // One tile: rows i0..i0 + mr of x against nv panels `apart` panels apart from p0.
        let mut tile = |i0: usize, mr: usize, p0: usize, nv: usize, apart: usize| {
            let xp = x[i0 * k..].as_ptr();
            let wp = w[p0 * steps..].as_ptr();
            // SAFETY: the tile's rows of x and panels of w are inside the slices (the walk
            // below keeps i0 + mr <= m and p0 + (nv - 1) · apart < panels); CPU features are
            // the caller's promise.
            unsafe { tile_any(xp, wp, (k, apart * steps), (mr, nv), &mut sums) };
            for (i, row) in sums.iter().enumerate().take(mr) {
                for v in 0..nv {
                    let col = (p0 + v * apart) * PANEL_ROWS;
                    for (r, &s) in row[v * PANEL_ROWS..][..PANEL_ROWS].iter().enumerate() {
                        out.set(i0 + i, col + r, s);
                    }
                }
            }
        };
        if m <= FEW_ROWS {
            let apart = panels / 4;
            for p0 in 0..apart {
                tile(0, m, p0, 4, apart);
            }
            for p0 in 4 * apart..panels {
                tile(0, m, p0, 1, 1);
            }
            return;
        }
        // Two adjacent panels (k · 64 bytes) stay in L2 while every row of x passes them.
        for p0 in (0..panels).step_by(2) {
            let nv = (panels - p0).min(2);
            for i0 in (0..m).step_by(MR) {
                tile(i0, (m - i0).min(MR), p0, nv, 1);
            }
        }
    }

    /// Runs `tile` monomorphised for the rows and panels the walk asks for.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn tile_any(
        x: *const f32,
        w: *const PanelStep,
        k: (usize, usize),
        (mr, nv): (usize, usize),
        sums: &mut [[f32; 4 * PANEL_ROWS]; MR],
    ) {
        macro_rules! arms {
            ($(($m:literal, $v:literal)),*) => {
                match (mr, nv) {
                    $(($m, $v) => tile::<$m, $v>(x, w, k, sums),)*
                    _ => unreachable!("panel tile {mr}x{nv}"),
                }
            };
        }
        arms!(
            (1, 1),
            (1, 2),
            (1, 4),
            (2, 1),
            (2, 2),
            (2, 4),
            (3, 1),
            (3, 2),
            (3, 4),
            (4, 1),
            (4, 2),
            (4, 4),
            (5, 1),
            (5, 2),
            (6, 1),
            (6, 2),
            (7, 1),
            (7, 2),
            (8, 1),
            (8, 2)
        )
    }

    /// R rows of x (rows of k) against V panels (`ldp` steps apart), over the whole k: R · V
    /// accumulators of 16 columns each, a step of each panel loaded and widened once for all
    /// R rows.
    // Indices, not iterators: acc[i][v] and the widened steps are one register tile.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn tile<const R: usize, const V: usize>(
        x: *const f32,
        w: *const PanelStep,
        (k, ldp): (usize, usize),
        sums: &mut [[f32; 4 * PANEL_ROWS]; MR],
    ) {
        let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for s in 0..k / 2 {
            let mut first = [_mm512_setzero_ps(); V];
            let mut second = [_mm512_setzero_ps(); V];
            for v in 0..V {
                let step = w.add(v * ldp + s);
                prefetch_ahead(step);
                // Lane r: row r's pair, first weight in the low half. bf16 is the top half of
                // an f32: shift the first into place, mask the second.
                let pairs = _mm512_load_si512(step as *const __m512i);
                first[v] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(pairs));
                second[v] = _mm512_castsi512_ps(_mm512_and_si512(pairs, high));
            }
            for i in 0..R {
                let xa = _mm512_set1_ps(*x.add(i * k + 2 * s));
                let xb = _mm512_set1_ps(*x.add(i * k + 2 * s + 1));
                for v in 0..V {
                    acc[i][v] = _mm512_fmadd_ps(xa, first[v], acc[i][v]);
                    acc[i][v] = _mm512_fmadd_ps(xb, second[v], acc[i][v]);
                }
            }
        }
        for i in 0..R {
            for v in 0..V {
                _mm512_storeu_ps(sums[i][v * PANEL_ROWS..].as_mut_ptr(), acc[i][v]);
            }
        }
    }
}
