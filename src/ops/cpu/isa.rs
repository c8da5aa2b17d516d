//! Which SIMD kernels this CPU can run, detected once at run time, so one binary runs at its
//! best on whatever x86-64 (or other) machine it lands on.

use std::sync::OnceLock;

/// A family of CPU kernels, weakest first. Each one needs every feature of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust that LLVM vectorises for the build target; runs anywhere.
    Portable,
    /// AVX2 + FMA + F16C: 8 lanes, weights widened to f32.
    Avx2,
    /// AVX-512 F/BW/VL: 16 lanes, weights widened to f32, masked tails.
    Avx512,
    /// AVX-512 with `vdpbf16ps`: bf16 weights times bf16 activations, summed in f32, without
    /// widening: 32 products an instruction, at a rate that depends on the CPU
    /// (`bf16_dot_full_rate`).
    Avx512Bf16,
    /// `Avx512Bf16` plus AMX tiles (`tdpbf16ps`) for bf16 products of many rows.
    Amx,
}

/// Names for `MOE_CPU_KERNELS`, which caps the kernels used (to compare them in one build).
const NAMES: [(Isa, &str); 5] = [
    (Isa::Portable, "portable"),
    (Isa::Avx2, "avx2"),
    (Isa::Avx512, "avx512"),
    (Isa::Avx512Bf16, "avx512-bf16"),
    (Isa::Amx, "amx"),
];

impl Isa {
    /// The kernels used by default: the best the CPU has, or less when the environment
    /// variable `MOE_CPU_KERNELS` (portable, avx2, avx512, avx512-bf16, amx) asks for less.
    pub fn selected() -> Isa {
        static SELECTED: OnceLock<Isa> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let best = Isa::best();
            let wanted = std::env::var("MOE_CPU_KERNELS").ok().and_then(|v| {
                NAMES
                    .iter()
                    .find(|(_, name)| *name == v.trim())
                    .map(|(isa, _)| *isa)
            });
            wanted.map_or(best, |w| w.min(best))
        })
    }

    /// Every kernel family this CPU can run, weakest first: the set the tests compare.
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        let best = Isa::best();
        NAMES
            .iter()
            .map(|(isa, _)| *isa)
            .filter(|isa| *isa <= best)
            .collect()
    }

    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(isa, _)| *isa == self)
            .map_or("portable", |(_, name)| name)
    }

    /// Whether the CPU has AVX-512 VNNI (int8 dot products in one instruction), detected once.
    /// Not an `Isa` level of its own: CPUs have it with or without BF16. Used only where the
    /// selected family is `Avx512` or better.
    pub fn vnni() -> bool {
        static VNNI: OnceLock<bool> = OnceLock::new();
        *VNNI.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("avx512vnni")
                    && Isa::best() >= Isa::Avx512
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            false
        })
    }

    /// Whether kernels chosen at this level take the AVX-512 VNNI tiles: the level is `Avx512`
    /// or better and the CPU has VNNI. The one test every integer product makes.
    pub fn runs_vnni(self) -> bool {
        self >= Isa::Avx512 && Isa::vnni()
    }

    /// Whether `vdpbf16ps` issues as fast as an f32 FMA, so that 32 bf16 products beat 16 f32
    /// ones: AMD's AVX-512 BF16 (Zen 4 on) runs both at one 512-bit instruction a cycle.
    /// Intel's without AMX do not: on the Xeon (model 207) we run on, 1.3 G `vdpbf16ps` against
    /// 5.1 G FMAs a second on one core, so there bf16 is multiplied widened to f32. Detected once
    /// (by vendor; meaningful where the selected level is `Avx512Bf16` or better).
    pub fn bf16_dot_full_rate() -> bool {
        static FULL_RATE: OnceLock<bool> = OnceLock::new();
        *FULL_RATE.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                // CPUID leaf 0: the vendor string "AuthenticAMD" in EBX, EDX, ECX.
                let v = std::arch::x86_64::__cpuid(0);
                (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
            }
            #[cfg(not(target_arch = "x86_64"))]
            false
        })
    }

    /// The best kernels this CPU can run (detected once).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(Isa::detect)
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Isa {
        use std::arch::is_x86_feature_detected as has;
        let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        if avx512 && has!("avx512bf16") && super::amx::available() {
            Isa::Amx
        } else if avx512 && has!("avx512bf16") {
            Isa::Avx512Bf16
        } else if avx512 {
            Isa::Avx512
        } else if has!("avx2") && has!("fma") && has!("f16c") {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Isa {
        Isa::Portable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_kernels_run_here_and_portable_always_does() {
        let available = Isa::available();
        assert_eq!(available[0], Isa::Portable);
        assert!(available.contains(&Isa::selected()));
        for isa in available {
            assert!(NAMES
                .iter()
                .any(|(i, name)| *i == isa && *name == isa.name()));
        }
    }
}
