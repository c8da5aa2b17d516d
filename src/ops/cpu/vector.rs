//! Vector pieces shared by the CPU kernels: a dot product LLVM can vectorise, SiLU, and
//! weight rows widened to f32.

use half::{bf16, f16, slice::HalfFloatSliceExt};

/// Lanes of independent accumulators: enough for the compiler to keep a full vector register
/// of partial sums busy, and a fixed summation order so results do not depend on the caller.
const LANES: usize = 16;

/// Σ a[i]·b[i] in f32, over the shorter of the two slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let split = n / LANES * LANES;
    let mut acc = [0f32; LANES];
    for (x, y) in a[..split]
        .chunks_exact(LANES)
        .zip(b[..split].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = 0f32;
    for (x, y) in a[split..].iter().zip(&b[split..]) {
        sum += x * y;
    }
    acc.iter().sum::<f32>() + sum
}

/// A weight element type the kernels read: weights are widened to f32 before use.
pub trait WeightElem: Copy + Send + Sync + 'static {
    /// f32 needs no scratch space to be read as f32.
    const IS_F32: bool;
    /// `src` as f32: itself for f32, otherwise converted into `scratch` (at least as long).
    fn as_f32<'a>(src: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
}

impl WeightElem for f32 {
    const IS_F32: bool = true;
    fn as_f32<'a>(src: &'a [f32], _scratch: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl WeightElem for bf16 {
    const IS_F32: bool = false;
    fn as_f32<'a>(src: &'a [bf16], scratch: &'a mut [f32]) -> &'a [f32] {
        src.convert_to_f32_slice(&mut scratch[..src.len()]);
        &scratch[..src.len()]
    }
}

impl WeightElem for f16 {
    const IS_F32: bool = false;
    fn as_f32<'a>(src: &'a [f16], scratch: &'a mut [f32]) -> &'a [f32] {
        src.convert_to_f32_slice(&mut scratch[..src.len()]);
        &scratch[..src.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 oracle: a plain sequential sum.
    fn dot_slow(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn dot_matches_a_plain_sum_at_every_tail_length() {
        for n in [0, 1, 15, 16, 17, 100, 1027] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let fast = dot(&a, &b) as f64;
            let slow = dot_slow(&a, &b);
            assert!(
                (fast - slow).abs() <= 1e-4 * (1.0 + slow.abs()),
                "n={n}: {fast} vs {slow}"
            );
        }
    }

    #[test]
    fn half_rows_widen_exactly() {
        let src: Vec<bf16> = [1.5f32, -2.25, 3.0e-3]
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect();
        let mut scratch = vec![0f32; 3];
        let row = bf16::as_f32(&src, &mut scratch);
        assert_eq!(row, &[src[0].to_f32(), src[1].to_f32(), src[2].to_f32()]);
    }
}
