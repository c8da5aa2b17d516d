//! The K-quants (q4_K, q5_K, q6_K) in the quantized product (quantized.rs): super-blocks of
//! 256 weights read as 8 runs of 32 unsigned codes with a scale and a min per half run
//! (`SuperBlock`). x comes as q8_K (one scale d_x per 256 values, `BlockQ8K`), so each half
//! run h of a super-block gives
//!
//! `Σ x·w = d_x · (s_h · Σ q_x·code - M_h · Σ q_x)`, with `M_h = s_h · OFFSET + m_h`,
//!
//! two integer sums: the codes' dot product with x's codes, and x's codes alone (the block's
//! `bsums`). x86 runs them in int8_k.rs, where the part scales are small integers and a whole
//! super-block sums in i32; the loops here are the portable kernels and the slow twins the
//! tests compare those with.

use super::isa::Isa;
use super::quantized::BlockKernels;
use super::tile::{Lhs, OutView};
use crate::quant::{dequantize_into, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, SuperBlock};

/// Block by block, as the module comment writes it.
pub fn portable<W: SuperBlock>(
    x: &[BlockQ8K],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    let kb = k / W::VALUES;
    for j in 0..n {
        let w_row = &w[j * kb..][..kb];
        for i in 0..m {
            let x_row = &x[i * kb..][..kb];
            let mut sum = 0f32;
            for (wb, xb) in w_row.iter().zip(x_row) {
                let sc = wb.sub_scales();
                for r in 0..8 {
                    let codes = wb.codes(r);
                    for h in 0..2 {
                        let at = 32 * r + 16 * h;
                        let dot: i32 = xb.qs[at..at + 16]
                            .iter()
                            .zip(&codes[16 * h..][..16])
                            .map(|(&a, &c)| a as i32 * c as i32)
                            .sum();
                        let xsum = xb.bsums[2 * r + h] as f32;
                        let s = sc.s[r][h];
                        let min = s * W::OFFSET as f32 + sc.m[r][h];
                        sum += xb.d * (s * dot as f32 - min * xsum);
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
            const INT8_MANY_ROWS: bool = true;

            fn int8(
                isa: Isa,
                x: Lhs,
                w: &[Self],
                dims: (usize, usize, usize),
                out: &mut OutView,
            ) {
                // What makes the unsafe calls below sound, whatever a caller passes.
                let isa = isa.min(Isa::best());
                #[cfg(target_arch = "x86_64")]
                if isa != Isa::Portable {
                    // SAFETY: isa is at most Isa::best() (capped above), so the CPU has what
                    // each family needs; VNNI is checked on its own (no Isa level has it).
                    return unsafe {
                        if isa.runs_vnni() {
                            super::int8_k::matmul_bt_vnni(x.q8k, w, dims, out)
                        } else {
                            super::int8_k::matmul_bt_avx2(x.q8k, w, dims, out)
                        }
                    };
                }
                let _ = isa;
                portable(x.q8k, w, dims, out)
            }

            fn dequantize_f32(isa: Isa, w: &[Self], out: &mut [f32]) {
                let isa = isa.min(Isa::best());
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
