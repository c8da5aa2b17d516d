//! bf16 weights packed at load into panels of 16 rows for the AVX-512 product (no AMX): a
//! panel is k / 2 steps, each one 64-byte vector holding a pair of consecutive weights of each
//! of its 16 rows. The kernel widens a step into two vectors of f32 (the pair's first and
//! second weights of 16 rows: a shift and a mask) and multiplies each by one broadcast
//! activation, so that a vector of sums is 16 output columns: no horizontal sums, f32 FMAs
//! (four times `vdpbf16ps`'s rate on these CPUs) and f32 activations (not rounded to bf16).
//! It is also the pair-interleaved layout `vdpbf16ps` and an AMX B tile read.
//!
//! Same bytes as the rows (a copy replacing them); matrices whose rows do not fill panels stay
//! rows.

use half::bf16;
use rayon::prelude::*;

use super::slice::whole_units;
use crate::error::{Error, Result};

/// Rows of a panel: one 512-bit vector holds a pair of weights of each.
pub const PANEL_ROWS: usize = 16;

/// One step along k of a panel: weights 2s and 2s + 1 of each of its 16 rows (row r's pair in
/// `pairs[r]`). Aligned so that a step is one aligned vector load.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct PanelStep {
    pub pairs: [[bf16; 2]; PANEL_ROWS],
}

impl PanelStep {
    const ZERO: PanelStep = PanelStep {
        pairs: [[bf16::ZERO; 2]; PANEL_ROWS],
    };
}

/// A bf16 tensor of two or more dims, its rows (all dims but the last) in panels: panel p
/// (rows 16p..16p + 16) is k / 2 steps, contiguous.
#[derive(Debug)]
pub struct Bf16Panels {
    steps: Vec<PanelStep>,
    dims: Vec<usize>,
}

/// Whether a bf16 matrix (or stack) of `dims` is packed into panels: where the CPU has AVX-512
/// and no AMX (AMX tiles read bf16 rows, amx.rs), k is even, and each matrix of a stack has a
/// multiple of 32 rows, so that both halves of a joined gate/up stack (and any multiple of 16
/// rows of them) are whole panels; a single matrix needs whole panels only.
pub fn packs_panels(dims: &[usize]) -> bool {
    let (Some(&k), Some(rows)) = (dims.last(), dims.len().checked_sub(2).map(|d| dims[d])) else {
        return false;
    };
    let unit = if dims.len() > 2 { 2 } else { 1 } * PANEL_ROWS;
    x86_panels() && k > 0 && k.is_multiple_of(2) && rows > 0 && rows.is_multiple_of(unit)
}

#[cfg(target_arch = "x86_64")]
fn x86_panels() -> bool {
    // CPUID leaf 7, EDX bit 22: AMX-BF16 (its feature detection is not stable Rust yet).
    let amx_bf16 = std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0;
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && !amx_bf16
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_panels() -> bool {
    false
}

impl Bf16Panels {
    /// `values` (row-major, of `dims`) into panels. Fails where `dims` do not make whole panels
    /// of pairs (see `packs_panels` for when they are wanted) or do not hold `values`.
    pub fn pack(values: &[bf16], dims: &[usize]) -> Result<Bf16Panels> {
        let k = dims.last().copied().unwrap_or(0);
        let rows = dims[..dims.len().saturating_sub(1)]
            .iter()
            .product::<usize>();
        if dims.len() < 2 || k == 0 || !k.is_multiple_of(2) || !rows.is_multiple_of(PANEL_ROWS) {
            return Err(Error::Input(format!(
                "a bf16 matrix of {dims:?} is not whole panels of {PANEL_ROWS} rows of pairs"
            )));
        }
        if values.len() != rows * k {
            return Err(Error::Input(format!(
                "{} bf16 values do not make a matrix of {dims:?}",
                values.len()
            )));
        }
        let mut steps = vec![PanelStep::ZERO; rows / PANEL_ROWS * (k / 2)];
        steps
            .par_chunks_mut(k / 2)
            .zip(values.par_chunks(PANEL_ROWS * k))
            .for_each(|(panel, rows)| {
                // Step by step: each step's 64 bytes written whole, from 16 row streams.
                let rows: [&[bf16]; PANEL_ROWS] = std::array::from_fn(|r| &rows[r * k..][..k]);
                for (s, step) in panel.iter_mut().enumerate() {
                    step.pairs = std::array::from_fn(|r| [rows[r][2 * s], rows[r][2 * s + 1]]);
                }
            });
        Ok(Bf16Panels {
            steps,
            dims: dims.to_vec(),
        })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The panels, for the kernels.
    pub fn steps(&self) -> &[PanelStep] {
        &self.steps
    }

    /// Rows `first..first + count` back in row order; both whole panels.
    pub fn rows(&self, first: usize, count: usize) -> Vec<bf16> {
        let k = self.dims.last().copied().unwrap_or(0);
        let mut out = vec![bf16::ZERO; count * k];
        let steps = &self.steps[whole_units(first, count, PANEL_ROWS, k / 2)];
        out.par_chunks_mut(PANEL_ROWS * k)
            .zip(steps.par_chunks(k / 2))
            .for_each(|(rows, panel)| {
                for (r, row) in rows.chunks_exact_mut(k).enumerate() {
                    for (pair, step) in row.chunks_exact_mut(2).zip(panel) {
                        pair.copy_from_slice(&step.pairs[r]);
                    }
                }
            });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_into_panels_and_come_back() {
        let (rows, k) = (48, 10);
        let values: Vec<bf16> = (0..rows * k).map(|i| bf16::from_f32(i as f32)).collect();
        let p = Bf16Panels::pack(&values, &[3, 16, k]).unwrap();
        assert_eq!(p.steps().len(), rows * k / 2 / PANEL_ROWS);
        // Panel 1, step 2, row 5: row 21's weights 4 and 5.
        let step = p.steps()[k / 2 + 2];
        assert_eq!(step.pairs[5], [values[21 * k + 4], values[21 * k + 5]]);
        assert_eq!(p.rows(0, rows), values);
        assert_eq!(p.rows(16, 32), &values[16 * k..]);
    }

    #[test]
    fn shapes_that_do_not_fill_panels_are_refused_or_left_as_rows() {
        let v = vec![bf16::ONE; 16 * 9];
        assert!(Bf16Panels::pack(&v, &[16, 9]).is_err());
        assert!(Bf16Panels::pack(&v[..8 * 18], &[8, 18]).is_err());
        assert!(Bf16Panels::pack(&v, &[16, 8]).is_err());
        assert!(!packs_panels(&[16, 9]));
        assert!(!packs_panels(&[24, 8]));
        // A stack's matrices need 32 rows (two halves of whole panels).
        assert!(!packs_panels(&[4, 16, 8]));
        assert!(!packs_panels(&[64]));
        assert_eq!(packs_panels(&[4, 32, 8]), x86_panels());
        assert_eq!(packs_panels(&[16, 8]), x86_panels());
    }
}
