//! `out = a · bᵀ` on row-major f32 operands, through the `gemm` crate (the matrix kernels candle
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
    if m == 0 || n == 0 {
        return;
    }
    // These bounds are what makes the call below sound; callers derive the sizes from the same
    // shapes, so a failure is a bug in this crate, never bad input.
    assert!(
        a.len() >= m * k
            && b.len() >= n * k
            && out.len() > (m - 1) * row_stride + (n - 1) * col_stride,
        "matmul_abt: block sizes"
    );
    // SAFETY: with the bounds above, every element gemm reads or writes is inside its slice:
    // dst[i, j] at i * row_stride + j * col_stride, lhs[i, l] at i * k + l, and rhs = bᵀ,
    // rhs[l, j] at j * k + l. `out` is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            col_stride as isize,
            row_stride as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
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
