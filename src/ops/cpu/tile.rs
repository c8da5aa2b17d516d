//! The shapes the product kernels share: the strided output block they write, the tile walk
//! that orders their reads, and the left-hand rows in the forms they read. A leaf: every
//! kernel file imports it, it imports none of them.

use half::bf16;

use crate::quant::{BlockQ8K, BlockQ8_0};

/// An output block written through strides: element (i, j) at `i · row_stride + j · col_stride`,
/// so a caller can take (m, n) row-major or its transpose (n, m) without another copy.
pub struct OutView<'a> {
    data: &'a mut [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> OutView<'a> {
    /// (m, n) row-major.
    #[inline]
    pub fn rows(data: &'a mut [f32], n: usize) -> Self {
        OutView {
            data,
            row_stride: n,
            col_stride: 1,
        }
    }

    /// (m, n) stored transposed, as (n, m) row-major.
    #[inline]
    pub fn transposed(data: &'a mut [f32], m: usize) -> Self {
        OutView {
            data,
            row_stride: 1,
            col_stride: m,
        }
    }

    #[inline]
    pub(super) fn set(&mut self, i: usize, j: usize, v: f32) {
        self.data[i * self.row_stride + j * self.col_stride] = v;
    }

    /// Writes a tile's sums, row-major (mr, nr), at rows i0.. and columns j0, j0 + step, ...
    #[inline]
    fn put(
        &mut self,
        (i0, mr): (usize, usize),
        (j0, nr, step): (usize, usize, usize),
        sums: &[f32],
    ) {
        for i in 0..mr {
            for j in 0..nr {
                self.set(i0 + i, j0 + j * step, sums[i * nr + j]);
            }
        }
    }

    /// Checks that an (m, n) block fits, and returns (data, row stride, column stride).
    #[inline]
    pub(super) fn raw(&mut self, m: usize, n: usize) -> (&mut [f32], usize, usize) {
        if m > 0 && n > 0 {
            let last = (m - 1) * self.row_stride + (n - 1) * self.col_stride;
            assert!(last < self.data.len(), "OutView: block outside the buffer");
        }
        (self.data, self.row_stride, self.col_stride)
    }
}

/// A tile of the product: rows `i0..i0 + mr` of x against rows `j0, j0 + step, ...` (nr of
/// them) of w.
#[derive(Clone, Copy)]
pub(super) struct Tile {
    pub i0: usize,
    pub mr: usize,
    pub j0: usize,
    pub nr: usize,
    pub step: usize,
}

/// Computes (m, n) in tiles of at most (mr_max, nr_max): `tile` returns a tile's sums,
/// row-major (mr, nr), and they are written to `out`. The nr_max rows of w in a tile lie
/// n / nr_max rows apart: each is the head of a long sequential stream, which the hardware
/// prefetchers follow at full speed (adjacent short rows read 25-30% slower at decode on the
/// dev VMs). The rows of w are the outer loop, so a tile of weights stays in L1 while every
/// row of x passes it.
pub(super) fn for_tiles<S: AsRef<[f32]>>(
    (m, n): (usize, usize),
    (mr_max, nr_max): (usize, usize),
    out: &mut OutView,
    mut tile: impl FnMut(Tile) -> S,
) {
    let step = n / nr_max;
    let mut each_row_of_x = |j0: usize, nr: usize, step: usize| {
        for i0 in (0..m).step_by(mr_max) {
            let mr = mr_max.min(m - i0);
            let sums = tile(Tile {
                i0,
                mr,
                j0,
                nr,
                step,
            });
            out.put((i0, mr), (j0, nr, step), sums.as_ref());
        }
    };
    for j0 in 0..step {
        each_row_of_x(j0, nr_max, step);
    }
    // The last n mod nr_max rows, side by side.
    if step * nr_max < n {
        each_row_of_x(step * nr_max, n - step * nr_max, 1);
    }
}

/// Sums of one tile, row-major (mr, nr) in the first mr · nr entries.
pub(super) type TileSums = [f32; 16];

/// `for_tiles` over blocks of quantized rows: x (m rows) and w (n rows) each hold k /
/// `per_block` blocks a row; `tile` gets a tile's first blocks of x and w, (blocks per row, w
/// rows' distance in blocks) and the tile. Asserts the operands hold the rows the dims say,
/// so that the tile's pointer arithmetic stays inside them.
pub(super) fn for_block_tiles<X, W>(
    (x, w): (&[X], &[W]),
    (m, n, k): (usize, usize, usize),
    per_block: usize,
    out: &mut OutView,
    mr_max: usize,
    tile: impl Fn(*const X, *const W, (usize, usize), Tile) -> TileSums,
) {
    let kb = k / per_block;
    assert!(
        k.is_multiple_of(per_block) && x.len() >= m * kb && w.len() >= n * kb,
        "block tiles: operand sizes"
    );
    for_tiles((m, n), (mr_max, 4), out, |t: Tile| {
        // The tile's rows of x and w are inside the slices (asserted above; for_tiles keeps
        // tiles inside m and n).
        let (xp, wp) = (x[t.i0 * kb..].as_ptr(), w[t.j0 * kb..].as_ptr());
        tile(xp, wp, (kb, t.step * kb), t)
    });
}

/// The left-hand rows of a product: f32, and, where the kernel for the weights reads them so,
/// the same rounded to bf16, quantized to q8_0 blocks or to q8_K super-blocks (empty
/// otherwise). Made by
/// [`PreparedLhs`].
#[derive(Clone, Copy)]
pub struct Lhs<'a> {
    pub f32: &'a [f32],
    pub bf16: &'a [bf16],
    pub q8: &'a [BlockQ8_0],
    /// The sum of each q8_0 block's codes, where the weights are interleaved (their tiles
    /// take codes offset to unsigned and subtract the offset through these).
    pub q8_sums: &'a [i32],
    pub q8k: &'a [BlockQ8K],
}
