//! Activations quantized for the integer products: rows of x to q8_0 blocks (32 values) or
//! q8_K super-blocks (256), bit for bit what `QuantBlock::quantize` (the portable twin) makes
//! of finite values (NaNs included; a block whose largest magnitude is near f32's smallest
//! normal, whose inverse scale overflows, may differ).
//! The portable loop takes ~2 ns a value (its rounding and largest-magnitude search do not
//! vectorise), 5.5% of a q3-mini Q4_K_M prefill of 512; 16 lanes at a time it is a small
//! fraction of that.

use super::isa::Isa;
use crate::quant::{quantize_par_by, QuantBlock};

/// A block format activations are quantized to.
pub trait Activations: QuantBlock + Send + Sync {
    /// # Safety
    /// The CPU has AVX-512 F/BW; `x` holds `out.len()` blocks of values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn quantize_avx512(x: &[f32], out: &mut [Self]);
}

/// x (a multiple of B::VALUES long) as blocks, over all threads, on the widest kernels `isa`
/// has.
pub fn quantize_rows<B: Activations>(isa: Isa, x: &[f32]) -> Vec<B> {
    #[cfg(target_arch = "x86_64")]
    if isa.min(Isa::best()) >= Isa::Avx512 {
        // SAFETY: Isa::best() is Avx512 or better only where the CPU has AVX-512 F/BW/VL;
        // quantize_par_by hands each piece its own blocks of x.
        return quantize_par_by(x, |x, q| unsafe { B::quantize_avx512(x, q) });
    }
    let _ = isa;
    quantize_par_by(x, B::quantize)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::Activations;
    use crate::quant::{BlockQ8K, BlockQ8_0, BLOCK, K_BLOCK};

    /// The largest |x| of N vectors of 16 at `x`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn amax<const N: usize>(x: *const f32) -> f32 {
        let mut m = _mm512_setzero_ps();
        for v in 0..N {
            // `vmaxps` gives its second operand where either is NaN: NaNs are passed over, as
            // `f32::max` passes them.
            m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x.add(16 * v))), m);
        }
        _mm512_reduce_max_ps(m)
    }

    /// 16 values times `inv`, rounded half away from zero (as `round_half_away`: the
    /// truncation is exact, and so is the rest), as i32 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn codes16(x: *const f32, inv: __m512) -> __m512i {
        let y = _mm512_mul_ps(_mm512_loadu_ps(x), inv);
        // NaN lanes code 0, as `NaN as i32` is.
        let t = _mm512_maskz_mov_epi32(
            _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y),
            _mm512_cvttps_epi32(y),
        );
        let rest = _mm512_sub_ps(y, _mm512_cvtepi32_ps(t));
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(rest, _mm512_set1_ps(0.5));
        let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(rest, _mm512_set1_ps(-0.5));
        let t = _mm512_mask_add_epi32(t, up, t, _mm512_set1_epi32(1));
        _mm512_mask_sub_epi32(t, down, t, _mm512_set1_epi32(1))
    }

    /// The scale and its inverse, as the portable quantizers compute them.
    #[inline]
    fn scale(amax: f32) -> (f32, f32) {
        let d = amax / 127.0;
        (d, if d == 0.0 { 0.0 } else { 1.0 / d })
    }

    impl Activations for BlockQ8_0 {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn quantize_avx512(x: &[f32], out: &mut [Self]) {
            for (xs, b) in x.chunks_exact(BLOCK).zip(out) {
                let p = xs.as_ptr();
                let (d, inv) = scale(amax::<2>(p));
                b.d = f16::from_f32(d);
                let inv = _mm512_set1_ps(inv);
                for h in 0..2 {
                    let codes = _mm512_cvtepi32_epi8(codes16(p.add(16 * h), inv));
                    _mm_storeu_si128(b.qs[16 * h..].as_mut_ptr() as *mut __m128i, codes);
                }
            }
        }
    }

    impl Activations for BlockQ8K {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn quantize_avx512(x: &[f32], out: &mut [Self]) {
            for (xs, b) in x.chunks_exact(K_BLOCK).zip(out) {
                let p = xs.as_ptr();
                let (d, inv) = scale(amax::<16>(p));
                b.d = d;
                let inv = _mm512_set1_ps(inv);
                for (h, sum) in b.bsums.iter_mut().enumerate() {
                    let c = codes16(p.add(16 * h), inv);
                    *sum = _mm512_reduce_add_epi32(c) as i16;
                    let codes = _mm512_cvtepi32_epi8(c);
                    _mm_storeu_si128(b.qs[16 * h..].as_mut_ptr() as *mut __m128i, codes);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Activations for crate::quant::BlockQ8_0 {}
#[cfg(not(target_arch = "x86_64"))]
impl Activations for crate::quant::BlockQ8K {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{BlockQ8K, BlockQ8_0};

    /// Values with ties after scaling (x = k + 0.5 for a block whose largest is 127, so that
    /// the scale is 1), zeros, a block of all zeros, and ordinary values of both signs.
    fn values(len: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..len)
            .map(|i| ((i * 7919 % 1999) as f32 - 999.0) / 77.0)
            .collect();
        for (i, v) in x[..256].iter_mut().enumerate() {
            *v = match i {
                0 => 127.0,
                _ => (i as f32 % 120.0) - 60.5,
            };
        }
        x[256..512].fill(0.0);
        x[600] = f32::NAN;
        x
    }

    fn same_as_portable<B: Activations + PartialEq + std::fmt::Debug>() {
        let x = values(256 * 9);
        let want = crate::quant::quantize_par::<B>(&x);
        for isa in Isa::available() {
            assert_eq!(quantize_rows::<B>(isa, &x), want, "{isa:?} {}", B::NAME);
        }
    }

    #[test]
    fn every_kernel_quantizes_as_the_portable_loop() {
        same_as_portable::<BlockQ8_0>();
        same_as_portable::<BlockQ8K>();
    }
}
