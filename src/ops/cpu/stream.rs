//! Reading memory as fast as this CPU can, for the bandwidth probe of `moe bench`: a wrapping
//! sum in the widest vectors the CPU has, over several sequential streams at once. The probe
//! must be at least as good a reader as the kernels whose fraction of it is reported; a scalar
//! or 128-bit loop is bound by its own instructions on the dev VMs and reads about half as fast
//! as the AVX-512 kernels do.

use super::isa::Isa;

/// Streams read in lockstep: several sequential streams per core keep the prefetchers busy
/// (one stream alone reads about a quarter slower).
const STREAMS: usize = 4;

/// The wrapping sum of `data`, read on `isa`'s widest loads as STREAMS sequential streams.
pub fn sum_u64(isa: Isa, data: &[u64]) -> u64 {
    match isa.min(Isa::best()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: capped at Isa::best(), so the CPU has the features.
        Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => unsafe { x86::sum_avx512(data) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::sum_avx2(data) },
        _ => sum_portable(data),
    }
}

fn sum_portable(data: &[u64]) -> u64 {
    const STEP: usize = 8;
    let len = data.len() / STREAMS / STEP * STEP;
    let mut acc = [[0u64; STEP]; STREAMS];
    for i in (0..len).step_by(STEP) {
        for (s, a) in acc.iter_mut().enumerate() {
            for (a, &x) in a.iter_mut().zip(&data[s * len + i..][..STEP]) {
                *a = a.wrapping_add(x);
            }
        }
    }
    let rest = wrapping_sum(&data[STREAMS * len..]);
    acc.iter().flatten().fold(rest, |a, &x| a.wrapping_add(x))
}

fn wrapping_sum(data: &[u64]) -> u64 {
    data.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{wrapping_sum, STREAMS};

    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sum_avx512(data: &[u64]) -> u64 {
        const LANES: usize = 8;
        let len = data.len() / STREAMS / LANES * LANES;
        let mut acc = [_mm512_setzero_si512(); STREAMS];
        for i in (0..len).step_by(LANES) {
            for (s, a) in acc.iter_mut().enumerate() {
                // SAFETY: s * len + i + LANES <= STREAMS * len <= data.len().
                let v = unsafe { _mm512_loadu_si512(data.as_ptr().add(s * len + i) as *const _) };
                *a = _mm512_add_epi64(*a, v);
            }
        }
        let rest = wrapping_sum(&data[STREAMS * len..]);
        acc.iter().fold(rest, |r, &a| {
            r.wrapping_add(_mm512_reduce_add_epi64(a) as u64)
        })
    }

    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sum_avx2(data: &[u64]) -> u64 {
        const LANES: usize = 4;
        let len = data.len() / STREAMS / LANES * LANES;
        let mut acc = [_mm256_setzero_si256(); STREAMS];
        for i in (0..len).step_by(LANES) {
            for (s, a) in acc.iter_mut().enumerate() {
                // SAFETY: s * len + i + LANES <= STREAMS * len <= data.len().
                let v = unsafe { _mm256_loadu_si256(data.as_ptr().add(s * len + i) as *const _) };
                *a = _mm256_add_epi64(*a, v);
            }
        }
        let mut lanes = [0u64; LANES * STREAMS];
        for (s, a) in acc.iter().enumerate() {
            // SAFETY: lanes has room for STREAMS vectors of LANES u64.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().add(s * LANES) as *mut _, *a) };
        }
        lanes
            .iter()
            .fold(wrapping_sum(&data[STREAMS * len..]), |r, &x| {
                r.wrapping_add(x)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reader_sums_every_element_once() {
        for n in [0usize, 1, 31, 32, 33, 1000, 4099] {
            let data: Vec<u64> = (0..n as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            for isa in Isa::available() {
                assert_eq!(sum_u64(isa, &data), wrapping_sum(&data), "{isa:?}, n={n}");
            }
        }
    }
}
