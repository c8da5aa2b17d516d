//! `out = x · wᵀ` against bf16 weights in panels of 16 rows (quant/panels.rs). A step of a
//! panel (one 64-byte load) is a pair of weights of 16 rows, and each accumulator sums 16
//! output columns: no horizontal sums. Two products, by CPU (`Isa::bf16_dot_full_rate`):
//! - widened: a shift and a mask make the step two f32 vectors, each multiplied by one
//!   broadcast f32 element of a row of x. Where `vdpbf16ps` issues at a quarter of the FMA's
//!   rate (Intel without AMX: 1.3 G against 5.1 G a second on one core) this is the faster:
//!   67-75 G multiply-adds/s on one core against 32 for bf16 row tiles. x stays f32.
//! - bf16 pairs: `vdpbf16ps` of the step and a broadcast pair of x rounded to bf16, 32 products
//!   an instruction where it issues at the FMA's rate (AMD Zen 4 on).
//!
//! The f64 oracle is in `linear.rs`'s tests; `portable` is the slow twin.

use super::isa::Isa;
use super::tile::{Lhs, OutView};
use crate::quant::{PanelStep, PANEL_ROWS};

/// How a panel's steps are multiplied (see the module's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelProduct {
    Portable,
    Widened,
    Bf16Pairs,
}

impl PanelProduct {
    /// The product for kernels of level `isa` on this CPU.
    pub fn for_isa(isa: Isa) -> PanelProduct {
        let isa = isa.min(Isa::best());
        if isa >= Isa::Avx512Bf16 && Isa::bf16_dot_full_rate() {
            PanelProduct::Bf16Pairs
        } else if isa >= Isa::Avx512 {
            PanelProduct::Widened
        } else {
            PanelProduct::Portable
        }
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ, w in panels (n a multiple of 16, k even), single-threaded
/// (callers split the work at whole panels). x must come from a `PreparedLhs` for `isa`.
pub fn matmul_bt_panels(
    isa: Isa,
    x: Lhs,
    w: &[PanelStep],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    matmul_bt_by(PanelProduct::for_isa(isa), x, w, dims, out)
}

/// As `matmul_bt_panels`, by `product` (which this CPU must run: `for_isa` or less).
fn matmul_bt_by(
    product: PanelProduct,
    x: Lhs,
    w: &[PanelStep],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    let pairs = product == PanelProduct::Bf16Pairs;
    assert!(
        n.is_multiple_of(PANEL_ROWS)
            && k.is_multiple_of(2)
            && x.f32.len() >= m * k
            && (!pairs || x.bf16.len() >= m * k)
            && w.len() >= n / PANEL_ROWS * (k / 2),
        "bf16 panels: operand sizes"
    );
    match product {
        PanelProduct::Portable => portable(x.f32, w, (m, n, k), out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the products above Portable are chosen only where the CPU has their
        // features (for_isa caps at Isa::best()); the sizes are asserted above.
        _ => unsafe { avx512::matmul_bt(pairs, x, w, (m, n, k), out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => portable(x.f32, w, (m, n, k), out),
    }
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

    use super::super::avx512::{as_bh, prefetch_ahead};
    use super::{Lhs, OutView, PanelStep, PANEL_ROWS};

    /// Rows of x a tile takes at most: with two panels, 16 accumulators, 4 widened weight
    /// vectors and 2 broadcasts of the 32 registers.
    const MR: usize = 8;

    /// Up to this many rows of x (decode, small batches), a tile takes four panels a quarter
    /// of the matrix apart: four long sequential streams, which the prefetchers follow at full
    /// speed (as the row tiles do, tile.rs). More rows take two adjacent panels.
    const FEW_ROWS: usize = 4;

    /// Sums of a tile: row i's panel v in `[i][16 v..16 v + 16]`.
    type Sums = [[f32; 4 * PANEL_ROWS]; MR];

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL, and BF16 if `pairs`; n is whole panels, k even, x (in
    /// f32, and in bf16 if `pairs`) and w hold (m, k) and (n, k).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn matmul_bt(
        pairs: bool,
        x: Lhs,
        w: &[PanelStep],
        (m, n, k): (usize, usize, usize),
        out: &mut OutView,
    ) {
        let (panels, steps) = (n / PANEL_ROWS, k / 2);
        let mut sums: Sums = [[0f32; 4 * PANEL_ROWS]; MR];
        // One tile: rows i0..i0 + mr of x against nv panels `apart` panels apart from p0.
        let mut tile = |i0: usize, mr: usize, p0: usize, nv: usize, apart: usize| {
            let wp = w[p0 * steps..].as_ptr();
            let shape = (k, apart * steps, mr, nv);
            // SAFETY: the tile's rows of x and panels of w are inside the slices (the walk
            // below keeps i0 + mr <= m and p0 + (nv - 1) · apart < panels); CPU features are
            // the caller's promise.
            unsafe {
                match pairs {
                    true => pairs_tile_any(x.bf16[i0 * k..].as_ptr(), wp, shape, &mut sums),
                    false => widened_tile_any(x.f32[i0 * k..].as_ptr(), wp, shape, &mut sums),
                }
            };
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

    /// Runs tile function `$f` monomorphised for the (rows, panels) the walk asks for.
    macro_rules! panel_dispatch {
        ($f:ident, ($($arg:expr),*), $mr:expr, $nv:expr) => {
            match ($mr, $nv) {
                (1, 1) => $f::<1, 1>($($arg),*),
                (1, 2) => $f::<1, 2>($($arg),*),
                (1, 4) => $f::<1, 4>($($arg),*),
                (2, 1) => $f::<2, 1>($($arg),*),
                (2, 2) => $f::<2, 2>($($arg),*),
                (2, 4) => $f::<2, 4>($($arg),*),
                (3, 1) => $f::<3, 1>($($arg),*),
                (3, 2) => $f::<3, 2>($($arg),*),
                (3, 4) => $f::<3, 4>($($arg),*),
                (4, 1) => $f::<4, 1>($($arg),*),
                (4, 2) => $f::<4, 2>($($arg),*),
                (4, 4) => $f::<4, 4>($($arg),*),
                (5, 1) => $f::<5, 1>($($arg),*),
                (5, 2) => $f::<5, 2>($($arg),*),
                (6, 1) => $f::<6, 1>($($arg),*),
                (6, 2) => $f::<6, 2>($($arg),*),
                (7, 1) => $f::<7, 1>($($arg),*),
                (7, 2) => $f::<7, 2>($($arg),*),
                (8, 1) => $f::<8, 1>($($arg),*),
                (8, 2) => $f::<8, 2>($($arg),*),
                (mr, nv) => unreachable!("panel tile {mr}x{nv}"),
            }
        };
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn widened_tile_any(
        x: *const f32,
        w: *const PanelStep,
        (k, ldp, mr, nv): (usize, usize, usize, usize),
        sums: &mut Sums,
    ) {
        panel_dispatch!(widened_tile, (x, w, (k, ldp), sums), mr, nv)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pairs_tile_any(
        x: *const half::bf16,
        w: *const PanelStep,
        (k, ldp, mr, nv): (usize, usize, usize, usize),
        sums: &mut Sums,
    ) {
        panel_dispatch!(pairs_tile, (x, w, (k, ldp), sums), mr, nv)
    }

    /// R rows of x (rows of k) against V panels (`ldp` steps apart), over the whole k: R · V
    /// accumulators of 16 columns each, a step of each panel loaded and widened once for all
    /// R rows.
    // Indices, not iterators: acc[i][v] and the widened steps are one register tile.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn widened_tile<const R: usize, const V: usize>(
        x: *const f32,
        w: *const PanelStep,
        (k, ldp): (usize, usize),
        sums: &mut Sums,
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
        store(&acc, sums);
    }

    /// As `widened_tile`, with x rounded to bf16: one `vdpbf16ps` per row and panel and step,
    /// the row's pair broadcast to every lane.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pairs_tile<const R: usize, const V: usize>(
        x: *const half::bf16,
        w: *const PanelStep,
        (k, ldp): (usize, usize),
        sums: &mut Sums,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for s in 0..k / 2 {
            let mut steps = [_mm512_setzero_si512(); V];
            for v in 0..V {
                let step = w.add(v * ldp + s);
                prefetch_ahead(step);
                steps[v] = _mm512_load_si512(step as *const __m512i);
            }
            for i in 0..R {
                // Row i's weights 2s and 2s + 1 as one 32-bit lane (bf16 is only 2-aligned).
                let pair = (x.add(i * k + 2 * s) as *const i32).read_unaligned();
                let xp = as_bh(_mm512_set1_epi32(pair));
                for v in 0..V {
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], xp, as_bh(steps[v]));
                }
            }
        }
        store(&acc, sums);
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store<const R: usize, const V: usize>(acc: &[[__m512; V]; R], sums: &mut Sums) {
        for i in 0..R {
            for v in 0..V {
                // SAFETY: V <= 4 panels of 16 fit a row of Sums.
                unsafe { _mm512_storeu_ps(sums[i][v * PANEL_ROWS..].as_mut_ptr(), acc[i][v]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    /// Every product this CPU runs (bf16 pairs wherever it has AVX-512 BF16, whatever its
    /// vendor), at every tile shape of the walk, against f64 sums of the values each product
    /// sees (x rounded to bf16 for the pairs).
    #[test]
    fn every_product_matches_the_f64_sums() {
        let mut products = vec![PanelProduct::Portable];
        if Isa::best() >= Isa::Avx512 {
            products.push(PanelProduct::Widened);
        }
        if Isa::best() >= Isa::Avx512Bf16 {
            products.push(PanelProduct::Bf16Pairs);
        }
        let value =
            |i: usize, seed: usize| ((i * 7919 + seed * 104_729) % 1999) as f32 / 577.0 - 1.7;
        for (m, n, k) in [
            (1, 16, 2),
            (3, 112, 64),
            (4, 64, 130),
            (9, 48, 18),
            (37, 80, 34),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| value(i, 3)).collect();
            let x16: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            let w: Vec<bf16> = (0..n * k).map(|i| bf16::from_f32(value(i, 5))).collect();
            let panels = crate::quant::Bf16Panels::pack(&w, &[n, k]).unwrap();
            let lhs = Lhs {
                f32: &x,
                bf16: &x16,
                q8: &[],
                q8_sums: &[],
                q8k: &[],
            };
            for &product in &products {
                let mut out = vec![f32::NAN; m * n];
                let view = &mut OutView::rows(&mut out, n);
                matmul_bt_by(product, lhs, panels.steps(), (m, n, k), view);
                for i in 0..m {
                    for j in 0..n {
                        let xs = |l: usize| match product {
                            PanelProduct::Bf16Pairs => x16[i * k + l].to_f64(),
                            _ => x[i * k + l] as f64,
                        };
                        let terms = (0..k).map(|l| xs(l) * w[j * k + l].to_f64());
                        let (want, size) =
                            (terms.clone().sum::<f64>(), terms.map(f64::abs).sum::<f64>());
                        let got = out[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-6 * (k as f64).sqrt() * size + 1e-7,
                            "{product:?} {m}x{n}x{k} ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
