//! The K-quants (q4_K, q5_K, q6_K) in the quantized product (quantized.rs): super-blocks of
//! 256 weights read as 8 runs of 32 unsigned codes with a scale and a min per half run
//! (`SuperBlock`). Against a q8_0 block x of the same 32 positions, each half run gives
//!
//! `Σ x·w = d_x · (s · Σ q_x·code - M · Σ q_x)`, with `M = s · OFFSET + m`,
//!
//! two integer sums: the codes' dot product with x's codes, and x's codes alone (the same for
//! every row of w, so computed once per block of x). x86 runs them in int8_k.rs; the loops
//! here are the portable kernels and the slow twins the tests compare those with.

use super::isa::Isa;
use super::quantized::BlockKernels;
use super::tile::OutView;
use crate::quant::{dequantize_into, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, SuperBlock, BLOCK};

/// The integer sums of one half run (16 codes) against 16 codes of x: (Σ q_x·code, Σ q_x).
#[inline]
fn half_sums(x: &[i8], codes: &[u8]) -> (i32, i32) {
    let dot = x
        .iter()
        .zip(codes)
        .map(|(&a, &c)| a as i32 * c as i32)
        .sum();
    (dot, x.iter().map(|&a| a as i32).sum())
}

/// Block by block, as the module comment writes it.
pub fn portable<W: SuperBlock>(
    x: &[BlockQ8_0],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    let (kb, runs) = (k / W::VALUES, W::VALUES / BLOCK);
    for j in 0..n {
        let w_row = &w[j * kb..][..kb];
        for i in 0..m {
            let x_row = &x[i * kb * runs..][..kb * runs];
            let mut sum = 0f32;
            for (wb, xs) in w_row.iter().zip(x_row.chunks_exact(runs)) {
                let sc = wb.sub_scales();
                for (r, xb) in xs.iter().enumerate() {
                    let codes = wb.codes(r);
                    let xd = xb.d.to_f32();
                    for h in 0..2 {
                        let (dot, xsum) = half_sums(&xb.qs[16 * h..][..16], &codes[16 * h..][..16]);
                        let s = sc.s[r][h];
                        let min = s * W::OFFSET as f32 + sc.m[r][h];
                        sum += xd * (s * dot as f32 - min * xsum as f32);
                    }
                }
            }
            out.set(i, j, sum);
        }
    }
}

macro_rules! k_kernels {
    ($($t:ty),*) => {$(
        impl BlockKernels for $t {
            fn int8(
                isa: Isa,
                x: &[BlockQ8_0],
                w: &[Self],
                dims: (usize, usize, usize),
                out: &mut OutView,
            ) {
                #[cfg(target_arch = "x86_64")]
                if isa != Isa::Portable {
                    // SAFETY: callers cap isa at Isa::best(), so the CPU has what each family
                    // needs; VNNI is checked on its own (it is not part of any Isa level).
                    return unsafe {
                        if isa >= Isa::Avx512 && Isa::vnni() {
                            super::int8_k::matmul_bt_vnni(x, w, dims, out)
                        } else {
                            super::int8_k::matmul_bt_avx2(x, w, dims, out)
                        }
                    };
                }
                let _ = isa;
                portable(x, w, dims, out)
            }

            fn dequantize_f32(isa: Isa, w: &[Self], out: &mut [f32]) {
                #[cfg(target_arch = "x86_64")]
                if isa != Isa::Portable {
                    // SAFETY: every Isa above Portable has AVX2 and F16C.
                    return unsafe { super::int8_k::dequantize_f32(w, out) };
                }
                let _ = isa;
                dequantize_into(w, out)
            }

            #[cfg(target_arch = "x86_64")]
            unsafe fn dequantize_bf16(w: &[Self], out: &mut [half::bf16]) {
                super::int8_k::dequantize_bf16(w, out)
            }
        }
    )*};
}
k_kernels!(BlockQ4K, BlockQ5K, BlockQ6K);
