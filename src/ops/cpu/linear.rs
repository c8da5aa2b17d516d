//! `out = x · wᵀ` for f32 activations against f32, bf16, f16 or quantized weights, on the
//! kernels the CPU has (`Isa`): the one product behind every linear layer and every expert.
//!
//! Which kernel runs:
//! - bf16 weights on `Amx`, AMX_MIN_ROWS rows or more: activations rounded to bf16 (what a bf16
//!   model computes in anyway) and AMX tiles (amx.rs).
//! - bf16 weights in panels (AVX-512 without AMX, quant/panels.rs): f32 FMAs on the weights
//!   widened in registers (panel.rs), x as it is.
//! - bf16 weights in rows on `Avx512Bf16` (and fewer rows on `Amx`): the same rounding and
//!   `vdpbf16ps`.
//! - quantized weights: quantized.rs (integer dot products at decode, dequantized for many
//!   rows).
//! - otherwise, few rows (decode): weights widened to f32 in registers, one pass over them.
//! - otherwise, many rows (prefill): weights widened to an f32 block, then the `gemm` crate's
//!   packed, register-blocked kernel.

use half::{bf16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use super::isa::Isa;
use super::matmul::matmul_abt;
use super::panel::{matmul_bt_panels, PanelProduct};
use super::quantize::quantize_rows;
use super::quantized::{
    bf16_for, interleaved_to_bf16, matmul_bt_interleaved, matmul_bt_quantized, DEQUANT_MIN_ROWS,
};
pub use super::tile::{Lhs, OutView};
use super::vector::{dot, WeightElem};
use crate::quant::{
    BlockMxfp4, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0,
    WeightSlice, BLOCK, GROUP_ROWS, K_BLOCK, PANEL_ROWS,
};

/// From this many rows of x on, widened weights go through the packed matrix kernel: below it
/// the product is a pass over the weights, bound by memory, and packing would not pay.
const GEMM_MIN_ROWS: usize = 4;

/// From this many rows of x on, bf16 products go to AMX tiles where the CPU has them. A tile
/// takes 16 rows, so fewer waste most of it, yet it still outruns `vdpbf16ps`: q3-mini decode
/// at batch 32 (about 4 tokens per expert) ran 124.6 / 138.9 against 114.1 / 110.3 tokens/s.
const AMX_MIN_ROWS: usize = 4;

/// Whether the kernel for `w` on `isa` reads the left-hand rows as bf16 (for quantized
/// weights: those dequantized to bf16, when there are enough rows).
pub fn wants_bf16(isa: Isa, w: &WeightSlice) -> bool {
    match w {
        WeightSlice::BF16(_) => isa >= Isa::Avx512Bf16,
        WeightSlice::Q8_0(_) => bf16_for::<BlockQ8_0>(isa),
        WeightSlice::Q4_0(_) => bf16_for::<BlockQ4_0>(isa),
        WeightSlice::Q5_0(_) => bf16_for::<BlockQ5_0>(isa),
        WeightSlice::Mxfp4(_) => bf16_for::<BlockMxfp4>(isa),
        WeightSlice::Q4K(_) => bf16_for::<BlockQ4K>(isa),
        WeightSlice::Q8_0x8(_)
        | WeightSlice::Q4_0x8(_)
        | WeightSlice::Mxfp4x8(_)
        | WeightSlice::Q4Kx8(_) => interleaved_to_bf16(isa, DEQUANT_MIN_ROWS),
        WeightSlice::Q5K(_) => bf16_for::<BlockQ5K>(isa),
        WeightSlice::Q6K(_) => bf16_for::<BlockQ6K>(isa),
        WeightSlice::BF16x16(_) => PanelProduct::for_isa(isa) == PanelProduct::Bf16Pairs,
        WeightSlice::F32(_) | WeightSlice::F16(_) => false,
    }
}

/// Rows of x in every form the kernel for one weight matrix reads.
pub struct PreparedLhs {
    bf16: Vec<bf16>,
    q8: Vec<BlockQ8_0>,
    q8_sums: Vec<i32>,
    q8k: Vec<BlockQ8K>,
}

impl PreparedLhs {
    /// x (rows of k) rounded to bf16 if the kernel for `w` wants it, quantized to q8_0 if `w`
    /// is in blocks of 32 or to q8_K if in K-quant super-blocks, else nothing beside the f32
    /// rows.
    pub fn new(isa: Isa, w: &WeightSlice, x: &[f32], k: usize) -> Self {
        let mut bf16 = Vec::new();
        if wants_bf16(isa, w) {
            bf16 = vec![bf16::ZERO; x.len()];
            bf16.convert_from_f32_slice(x);
        }
        let (mut q8, mut q8k) = (Vec::new(), Vec::new());
        if w.is_k_quant() {
            if k.is_multiple_of(K_BLOCK) {
                q8k = quantize_rows(isa, x);
            }
        } else if w.is_quantized() && k.is_multiple_of(BLOCK) {
            q8 = quantize_rows(isa, x);
        }
        // Groups of 32-weight blocks take their codes' offsets back through x's block sums.
        let mut q8_sums = Vec::new();
        if w.is_interleaved() {
            q8_sums = q8
                .iter()
                .map(|b: &BlockQ8_0| b.qs.iter().map(|&q| q as i32).sum())
                .collect();
        }
        PreparedLhs {
            bf16,
            q8,
            q8_sums,
            q8k,
        }
    }

    /// Rows `first..first + count` of x (rows of k) with their prepared forms.
    pub fn rows<'a>(&'a self, x: &'a [f32], first: usize, count: usize, k: usize) -> Lhs<'a> {
        let r = first * k..(first + count) * k;
        let blocks = |per: usize| first * k / per..(first + count) * k / per;
        Lhs {
            f32: &x[r.clone()],
            bf16: self.bf16.get(r).unwrap_or(&[]),
            q8: self.q8.get(blocks(BLOCK)).unwrap_or(&[]),
            q8_sums: self.q8_sums.get(blocks(BLOCK)).unwrap_or(&[]),
            q8k: self.q8k.get(blocks(K_BLOCK)).unwrap_or(&[]),
        }
    }
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ, accumulated in f32, single-threaded (callers split the
/// work). `x` must come from a [`PreparedLhs`] for `w` and `isa`.
pub fn matmul_bt(
    isa: Isa,
    x: Lhs,
    w: &WeightSlice,
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    // What makes the unsafe calls below sound: never more than the CPU has, whatever a caller
    // passes (the features are detected once; this is a compare).
    let isa = isa.min(Isa::best());
    match *w {
        WeightSlice::F32(w) if m >= GEMM_MIN_ROWS => gemm(x.f32, w, (m, n, k), out),
        WeightSlice::F32(w) => widen(isa, x.f32, w, (m, n, k), out),
        #[cfg(target_arch = "x86_64")]
        WeightSlice::BF16(w) if isa == Isa::Amx && m >= AMX_MIN_ROWS && super::amx::fits(k) => {
            // SAFETY: isa is at most Isa::best(), which is Amx only where amx::available().
            unsafe { super::amx::matmul_bt_amx(x.bf16, w, (m, n, k), out) }
        }
        #[cfg(target_arch = "x86_64")]
        WeightSlice::BF16(w) if isa >= Isa::Avx512Bf16 => {
            // SAFETY: isa is at most Isa::best(), so the CPU has the features.
            unsafe { super::avx512::matmul_bt_bf16(x.bf16, w, (m, n, k), out) }
        }
        WeightSlice::BF16x16(w) => matmul_bt_panels(isa, x, w, (m, n, k), out),
        WeightSlice::BF16(w) if m >= GEMM_MIN_ROWS => widen_gemm(x.f32, w, (m, n, k), out),
        WeightSlice::BF16(w) => widen(isa, x.f32, w, (m, n, k), out),
        WeightSlice::F16(w) if m >= GEMM_MIN_ROWS => widen_gemm(x.f32, w, (m, n, k), out),
        WeightSlice::F16(w) => widen(isa, x.f32, w, (m, n, k), out),
        WeightSlice::Q8_0(w) => matmul_bt_quantized(isa, x, w, (m, n, k), out),
        WeightSlice::Q4_0(w) => matmul_bt_quantized(isa, x, w, (m, n, k), out),
        WeightSlice::Q8_0x8(w) => matmul_bt_interleaved(isa, x, w, (m, n, k), out),
        WeightSlice::Q4_0x8(w) => matmul_bt_interleaved(isa, x, w, (m, n, k), out),
        WeightSlice::Mxfp4x8(w) => matmul_bt_interleaved(isa, x, w, (m, n, k), out),
        WeightSlice::Q5_0(w) => matmul_bt_quantized(isa, x, w, (m, n, k), out),
        WeightSlice::Mxfp4(w) => matmul_bt_quantized(isa, x, w, (m, n, k), out),
        WeightSlice::Q4K(w) => matmul_bt_quantized(isa, x, w, (m, n, k), out),
        WeightSlice::Q4Kx8(w) => matmul_bt_interleaved(isa, x, w, (m, n, k), out),
        WeightSlice::Q5K(w) => matmul_bt_quantized(isa, x, w, (m, n, k), out),
        WeightSlice::Q6K(w) => matmul_bt_quantized(isa, x, w, (m, n, k), out),
    }
}

/// `matmul_bt` over all threads, split into blocks of w's rows. out: (m, n) row-major.
pub fn linear(
    isa: Isa,
    x: Lhs,
    w: &WeightSlice,
    (m, n, k): (usize, usize, usize),
    out: &mut [f32],
) {
    let threads = rayon::current_num_threads();
    // Enough blocks that a slow core does not hold up the rest, each a multiple of the tile, of
    // a group of interleaved rows and of a panel.
    const { assert!(PANEL_ROWS.is_multiple_of(GROUP_ROWS)) };
    let per_task = n
        .div_ceil(threads * 4)
        .next_multiple_of(PANEL_ROWS)
        .max(PANEL_ROWS);
    if m == 1 {
        // One row: (1, n) and its transpose are the same buffer; blocks are contiguous.
        out[..n]
            .par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(b, block)| {
                let rows = block.len();
                let w = w.rows(b * per_task, rows, k);
                matmul_bt(isa, x, &w, (1, rows, k), &mut OutView::rows(block, rows));
            });
        return;
    }
    // Each task owns a contiguous (rows, m) block of the transposed product.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(per_task * m)
        .enumerate()
        .for_each(|(b, block)| {
            let rows = block.len() / m;
            let w = w.rows(b * per_task, rows, k);
            matmul_bt(isa, x, &w, (m, rows, k), &mut OutView::transposed(block, m));
        });
    out[..m * n]
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(i, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                *o = out_t[j * m + i];
            }
        });
}

fn gemm(x: &[f32], w: &[f32], (m, n, k): (usize, usize, usize), out: &mut OutView) {
    let (data, rs, cs) = out.raw(m, n);
    matmul_abt(x, w, (m, n, k), (data, rs, cs));
}

/// Widens all of w to f32 first: for many rows of x, where each weight is used many times.
fn widen_gemm<W: WeightElem>(
    x: &[f32],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    let mut scratch = vec![0f32; n * k];
    let w = W::as_f32(&w[..n * k], &mut scratch);
    gemm(x, w, (m, n, k), out);
}

/// One pass over w, widened in registers, on the widest vectors `isa` has.
#[cfg(target_arch = "x86_64")]
fn widen<W>(isa: Isa, x: &[f32], w: &[W], dims: (usize, usize, usize), out: &mut OutView)
where
    W: WeightElem + super::avx512::Widen16 + super::avx2::Widen8,
{
    match isa {
        // SAFETY: matmul_bt capped isa at Isa::best(), so the CPU has its features.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe {
            super::avx512::matmul_bt_widen(x, w, dims, out)
        },
        Isa::Avx2 => unsafe { super::avx2::matmul_bt_widen(x, w, dims, out) },
        Isa::Portable => portable(x, w, dims, out),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn widen<W: WeightElem>(
    _: Isa,
    x: &[f32],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    portable(x, w, dims, out)
}

/// Each row of w widened once into scratch, then dotted with every row of x.
fn portable<W: WeightElem>(
    x: &[f32],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    let mut scratch = vec![0f32; if W::IS_F32 { 0 } else { k }];
    for j in 0..n {
        let w_row = W::as_f32(&w[j * k..][..k], &mut scratch);
        for i in 0..m {
            out.set(i, j, dot(&x[i * k..][..k], w_row));
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::super::quantized::int8_rows;
    use super::*;
    use crate::quant::{BlockMxfp4x8, BlockQ4Kx8, BlockQ4_0x8, BlockQ8_0x8, QuantBlock};

    /// The f64 oracle: each product term in f64, with the weights (and the activations, for a
    /// kernel that multiplies in bf16) rounded exactly as the kernel sees them.
    /// Returns each sum and the sum of the terms' magnitudes, which bounds f32 rounding.
    fn slow(x: &[f32], w: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<(f64, f64)> {
        let mut out = vec![(0f64, 0f64); m * n];
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|l| x[i * k + l] as f64 * w[j * k + l] as f64);
                out[i * n + j] = (terms.clone().sum(), terms.map(f64::abs).sum());
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1999) as f32 - 999.0) / 577.0)
            .collect()
    }

    /// Whether the kernel for `w` multiplies x's integer codes at m rows, by quantized.rs's
    /// own policy: `int8_rows` for rows in row order, the group tiles (or few rows) for
    /// interleaved ones unless their rows go to bf16 tiles.
    fn takes_int8(isa: Isa, w: &WeightSlice, m: usize) -> bool {
        match w {
            WeightSlice::Q8_0(_) => int8_rows::<BlockQ8_0>(isa, m),
            WeightSlice::Q4_0(_) => int8_rows::<BlockQ4_0>(isa, m),
            WeightSlice::Q5_0(_) => int8_rows::<BlockQ5_0>(isa, m),
            WeightSlice::Mxfp4(_) => int8_rows::<BlockMxfp4>(isa, m),
            WeightSlice::Q4K(_) => int8_rows::<BlockQ4K>(isa, m),
            WeightSlice::Q5K(_) => int8_rows::<BlockQ5K>(isa, m),
            WeightSlice::Q6K(_) => int8_rows::<BlockQ6K>(isa, m),
            WeightSlice::Q8_0x8(_)
            | WeightSlice::Q4_0x8(_)
            | WeightSlice::Mxfp4x8(_)
            | WeightSlice::Q4Kx8(_) => {
                !interleaved_to_bf16(isa, m) && (isa != Isa::Portable || m < DEQUANT_MIN_ROWS)
            }
            WeightSlice::F32(_)
            | WeightSlice::BF16(_)
            | WeightSlice::BF16x16(_)
            | WeightSlice::F16(_) => false,
        }
    }

    /// Shapes that hit every tile remainder (m, n mod 4), every tail (k mod 8, 16 and 32), both
    /// sides of GEMM_MIN_ROWS, and AMX's blocks of 16 rows in pairs, whole and partial.
    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 1, 1),
        (1, 5, 33),
        (2, 7, 16),
        (3, 9, 47),
        (1, 64, 1024),
        (4, 13, 70),
        (5, 6, 129),
        (37, 11, 96),
        (20, 45, 64),
        (32, 64, 256),
    ];

    fn check(isa: Isa, w_f32: &[f32], w: WeightSlice, (m, n, k): (usize, usize, usize)) {
        let x = values(m * k, 3);
        let prepared = PreparedLhs::new(isa, &w, &x, k);
        let lhs = prepared.rows(&x, 0, m, k);
        // x and w as the kernel sees them: x quantized to q8_0 (few rows against quantized
        // weights), both rounded to bf16 (quantized weights dequantized for AMX), x rounded to
        // bf16 (a bf16 kernel), or as they are.
        let bf16_of =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
        let int8 = takes_int8(isa, &w, m);
        let (x_seen, w_seen): (Vec<f32>, Vec<f32>) = if w.is_quantized() && int8 {
            let mut x_q8 = vec![0f32; m * k];
            if w.is_k_quant() {
                crate::quant::dequantize_into(lhs.q8k, &mut x_q8);
            } else {
                crate::quant::dequantize_into(lhs.q8, &mut x_q8);
            }
            (x_q8, w_f32.to_vec())
        } else if w.is_quantized() && !lhs.bf16.is_empty() {
            (bf16_of(&x), bf16_of(w_f32))
        } else if !lhs.bf16.is_empty() {
            (bf16_of(&x), w_f32.to_vec())
        } else {
            (x.clone(), w_f32.to_vec())
        };
        let want = slow(&x_seen, &w_seen, (m, n, k));
        // Both layouts, and through the parallel split.
        let mut rows = vec![f32::NAN; m * n];
        matmul_bt(isa, lhs, &w, (m, n, k), &mut OutView::rows(&mut rows, n));
        let mut cols = vec![f32::NAN; m * n];
        matmul_bt(
            isa,
            lhs,
            &w,
            (m, n, k),
            &mut OutView::transposed(&mut cols, m),
        );
        let mut par = vec![f32::NAN; m * n];
        linear(isa, lhs, &w, (m, n, k), &mut par);
        for i in 0..m {
            for j in 0..n {
                let (want, magnitude) = want[i * n + j];
                // f32 sums of k terms in any order: a few ulps of the magnitude per term.
                let bound = 1e-6 * (k as f64).sqrt() * magnitude + 1e-7;
                for (what, got) in [
                    ("rows", rows[i * n + j]),
                    ("cols", cols[j * m + i]),
                    ("par", par[i * n + j]),
                ] {
                    assert!(
                        (got as f64 - want).abs() <= bound,
                        "{isa:?} {m}x{n}x{k} {what} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    /// As SHAPES, with k whole blocks of 32 (what quantized weights need).
    const BLOCK_SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 32),
        (1, 5, 64),
        (2, 7, 32),
        (3, 9, 96),
        (1, 64, 1024),
        (4, 13, 64),
        (5, 6, 128),
        (37, 11, 96),
    ];

    fn check_blocks<B: QuantBlock>(
        isa: Isa,
        dims @ (_, n, k): (usize, usize, usize),
        slice: for<'a> fn(&'a [B]) -> WeightSlice<'a>,
    ) {
        let w: Vec<B> = crate::quant::quantize(&values(n * k, 5));
        let mut w_f32 = vec![0f32; n * k];
        crate::quant::dequantize_into(&w, &mut w_f32);
        check(isa, &w_f32, slice(&w), dims);
    }

    #[test]
    fn quantized_kernels_match_the_f64_oracle_on_every_family() {
        for isa in Isa::available() {
            for dims in BLOCK_SHAPES {
                check_blocks(isa, dims, |w| WeightSlice::Q8_0(w));
                check_blocks(isa, dims, |w| WeightSlice::Q4_0(w));
                check_blocks(isa, dims, |w| WeightSlice::Q5_0(w));
                check_blocks(isa, dims, |w| WeightSlice::Mxfp4(w));
            }
        }
    }

    /// Rows interleaved in groups of eight (n a multiple of eight), through every path: the
    /// group tiles, and the rows given back for the portable loop and bf16 tiles.
    #[test]
    fn interleaved_kernels_match_the_f64_oracle() {
        fn check_groups<G: crate::quant::Interleaved>(
            isa: Isa,
            dims @ (_, n, k): (usize, usize, usize),
            slice: for<'a> fn(&'a [G]) -> WeightSlice<'a>,
        ) {
            let w: Vec<G::Block> = crate::quant::quantize(&values(n * k, 5));
            let mut w_f32 = vec![0f32; n * k];
            crate::quant::dequantize_into(&w, &mut w_f32);
            let groups = crate::quant::interleave::<G>(&w, k / G::Block::VALUES);
            check(isa, &w_f32, slice(&groups), dims);
        }
        for isa in Isa::available() {
            for (m, n, k) in [
                (1, 8, 1),
                (2, 16, 2),
                (3, 8, 3),
                (1, 64, 4),
                (5, 24, 1),
                (37, 16, 2),
            ] {
                check_groups::<BlockQ4_0x8>(isa, (m, n, 32 * k), |w| WeightSlice::Q4_0x8(w));
                check_groups::<BlockMxfp4x8>(isa, (m, n, 32 * k), |w| WeightSlice::Mxfp4x8(w));
                check_groups::<BlockQ8_0x8>(isa, (m, n, 32 * k), |w| WeightSlice::Q8_0x8(w));
                check_groups::<BlockQ4Kx8>(isa, (m, n, 256 * k), |w| WeightSlice::Q4Kx8(w));
            }
        }
    }

    /// As BLOCK_SHAPES, with k whole super-blocks of 256 (the K-quants).
    const K_BLOCK_SHAPES: [(usize, usize, usize); 6] = [
        (1, 1, 256),
        (1, 7, 512),
        (2, 9, 256),
        (3, 5, 768),
        (5, 6, 256),
        (37, 11, 512),
    ];

    #[test]
    fn k_quant_kernels_match_the_f64_oracle_on_every_family() {
        for isa in Isa::available() {
            for dims in K_BLOCK_SHAPES {
                check_blocks(isa, dims, |w| WeightSlice::Q4K(w));
                check_blocks(isa, dims, |w| WeightSlice::Q5K(w));
                check_blocks(isa, dims, |w| WeightSlice::Q6K(w));
            }
        }
    }

    /// bf16 rows in panels of sixteen (n a multiple of 16, k even): every tile shape of the
    /// walk (few rows against four panels apart and the remainder, more rows against pairs of
    /// adjacent panels), whatever the CPU packs.
    #[test]
    fn panel_kernels_match_the_f64_oracle() {
        for isa in Isa::available() {
            for (m, n, k) in [
                (1, 16, 2),
                (2, 80, 6),
                (3, 112, 64),
                (4, 64, 130),
                (5, 48, 32),
                (9, 16, 64),
                (37, 112, 18),
            ] {
                let w: Vec<bf16> = values(n * k, 5)
                    .iter()
                    .map(|&v| bf16::from_f32(v))
                    .collect();
                let w_f32: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
                let panels = crate::quant::Bf16Panels::pack(&w, &[n, k]).unwrap();
                check(isa, &w_f32, WeightSlice::BF16x16(panels.steps()), (m, n, k));
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_f64_oracle_for_every_weight_dtype() {
        for isa in Isa::available() {
            for dims @ (_, n, k) in SHAPES {
                let w = values(n * k, 5);
                check(isa, &w, WeightSlice::F32(&w), dims);
                let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
                let wb_f32: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
                check(isa, &wb_f32, WeightSlice::BF16(&wb), dims);
                let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
                let wh_f32: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
                check(isa, &wh_f32, WeightSlice::F16(&wh), dims);
            }
        }
    }
}
