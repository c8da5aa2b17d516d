//! `out = a · bᵀ` on row-major f32 operands (and the general strided product under it),
//! through the `gemm` crate (the matrix kernels candle
//! itself uses, with their own run-time SIMD dispatch), single-threaded: callers parallelise
//! over blocks.

/// out (m, n) = a (m, k) · b (n, k)ᵀ with a and b row-major and contiguous; out[i, j] is
/// written at `i · row_stride + j · col_stride`.
pub fn matmul_abt(
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
    (out, row_stride, col_stride): (&mut [f32], usize, usize),
) {
    // bᵀ (k, n): element (l, j) is b[j · k + l].
    gemm_strided(
        (out, row_stride, col_stride),
        (a, k, 1),
        (b, 1, k),
        (m, n, k),
        (None, 1.0),
    );
}

/// dst (m, n) = dst_scale · dst + product_scale · lhs (m, k) · rhs (k, n), each operand given
/// as a slice and its (row, column) strides; `dst_scale` `None` overwrites dst.
pub fn gemm_strided(
    (dst, dst_rs, dst_cs): (&mut [f32], usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    (m, n, k): (usize, usize, usize),
    (dst_scale, product_scale): (Option<f32>, f32),
) {
    if m == 0 || n == 0 {
        return;
    }
    // The last element each operand is read or written at; k = 0 reads none of lhs or rhs.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    // These bounds are what makes the call below sound; callers derive the sizes from the same
    // shapes, so a failure is a bug in this crate, never bad input.
    assert!(
        dst.len() > last(m, n, dst_rs, dst_cs)
            && (k == 0
                || (lhs.len() > last(m, k, lhs_rs, lhs_cs)
                    && rhs.len() > last(k, n, rhs_rs, rhs_cs))),
        "gemm_strided: operand sizes"
    );
    // SAFETY: with the bounds above, every element gemm reads or writes is inside its slice:
    // dst[i, j] at i · dst_rs + j · dst_cs, lhs[i, l] at i · lhs_rs + l · lhs_cs, rhs[l, j] at
    // l · rhs_rs + j · rhs_cs. `dst` is borrowed mutably, so it cannot alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            dst_scale.is_some(),
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            dst_scale.unwrap_or(0.0),
            product_scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The oracle: three nested loops.
    fn matmul_abt_slow(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum();
            }
        }
        out
    }

    #[test]
    fn matches_the_naive_product_on_odd_shapes() {
        for (m, n, k) in [
            (1, 1, 1),
            (3, 1, 17),
            (1, 5, 33),
            (37, 9, 40),
            (64, 16, 128),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 19) as f32 - 9.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n * k)
                .map(|i| ((i * 5 % 23) as f32 - 11.0) / 5.0)
                .collect();
            let mut out = vec![0f32; m * n];
            matmul_abt(&a, &b, (m, n, k), (&mut out, n, 1));
            let slow = matmul_abt_slow(&a, &b, (m, n, k));
            for (x, y) in out.iter().zip(&slow) {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{m}x{n}x{k}: {x} vs {y}"
                );
            }
        }
    }
}
