//! Intel AMX tiles for bf16 products of many rows (prefill, batched decode): one `tdpbf16ps`
//! multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums, 8192 products,
//! where `vdpbf16ps` does 32. Stable Rust has no AMX intrinsics, so the few instructions are
//! inline assembly (the integrated assembler knows them; no target feature is needed).
//!
//! The product is computed transposed, out^T (n, m) = w (n, k) · x^T, so that the weights are
//! the A operand and load straight from their rows, 16 at a time; only x, which is small, is
//! repacked into the pair-interleaved layout the B operand needs. The f64 oracle is in
//! `linear.rs`'s tests.

use std::arch::asm;
use std::sync::OnceLock;

use half::bf16;

use super::avx512::prefetch_ahead;
use super::tile::OutView;

/// Rows of a tile, and bf16 values in a tile row (64 bytes).
const ROWS: usize = 16;
const K_STEP: usize = 32;

/// Whether this CPU and OS run AMX-BF16 here: CPUID says so, the OS saves tile state, and
/// Linux granted this process the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM)`; detected
/// once, process-wide).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    use std::arch::x86_64::__cpuid_count;
    let leaf7 = __cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    let osxsave = __cpuid_count(1, 0).ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && osxsave) {
        return false;
    }
    // XCR0 bits 17 and 18: the OS saves tile configuration and tile data.
    // SAFETY: xgetbv is valid once OSXSAVE is set (checked above).
    let xcr0 = unsafe { xgetbv0() };
    if xcr0 & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    request_tile_data() == 0
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
}

/// XCR0, read without the `xsave` target feature the intrinsic would need.
unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack));
    ((hi as u64) << 32) | lo as u64
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: 0 on success.
#[cfg(target_os = "linux")]
fn request_tile_data() -> i64 {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it changes only which state the kernel lets us use.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// The 64-byte tile configuration: palette 1, every tile 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Whether `matmul_bt_amx` takes a product of depth k (whole tile rows only).
pub fn fits(k: usize) -> bool {
    k > 0 && k.is_multiple_of(K_STEP)
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ, bf16 products summed in f32.
///
/// # Safety
/// `available()` returned true, and `fits(k)`.
pub unsafe fn matmul_bt_amx(
    x: &[bf16],
    w: &[bf16],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    assert!(
        fits(k) && x.len() >= m * k && w.len() >= n * k,
        "amx: operand sizes"
    );
    let steps = k / K_STEP;
    let xp = pack_x(x, m, k);
    // Weight rows of the last, partial block of 16, copied into a zero-padded block so that
    // every tile load stays inside a buffer (none when n is whole blocks, as it mostly is).
    let full = n / ROWS * ROWS;
    let mut tail = Vec::new();
    if full < n {
        tail = vec![bf16::ZERO; ROWS * k];
        tail[..(n - full) * k].copy_from_slice(&w[full * k..n * k]);
    }
    let w_block = |n0: usize| -> (*const bf16, usize) {
        if n0 < full {
            (w[n0 * k..].as_ptr(), k * 2)
        } else {
            (tail.as_ptr(), k * 2)
        }
    };
    let m_blocks = m.div_ceil(ROWS);
    let n_blocks = n.div_ceil(ROWS);
    let mut c = [[0f32; ROWS * ROWS]; 4];
    asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
    // 2 x 2 blocks of 16 weight rows x 16 tokens: tmm0-3 sums, tmm4-5 weights, tmm6-7 tokens.
    for nb in (0..n_blocks).step_by(2) {
        let two_n = nb + 1 < n_blocks;
        let (a0, lda) = w_block(nb * ROWS);
        let (a1, _) = w_block(if two_n { (nb + 1) * ROWS } else { nb * ROWS });
        for mb in (0..m_blocks).step_by(2) {
            let two_m = mb + 1 < m_blocks;
            let b0 = xp[mb * steps * ROWS * K_STEP..].as_ptr();
            let b1 = xp[(mb + usize::from(two_m)) * steps * ROWS * K_STEP..].as_ptr();
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for s in 0..steps {
                // Weight tiles read 16 rows at a time: 32 streams, more than the hardware
                // prefetchers follow, so each row is asked for a few steps ahead.
                if mb == 0 {
                    for r in 0..ROWS {
                        prefetch_ahead(a0.add(r * k + s * K_STEP));
                        if two_n {
                            prefetch_ahead(a1.add(r * k + s * K_STEP));
                        }
                    }
                }
                let (a0, a1) = (a0.add(s * K_STEP), a1.add(s * K_STEP));
                let (b0, b1) = (b0.add(s * ROWS * K_STEP), b1.add(s * ROWS * K_STEP));
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    a0 = in(reg) a0,
                    b0 = in(reg) b0,
                    lda = in(reg) lda,
                    ldb = in(reg) 64usize,
                    options(nostack, readonly)
                );
                if two_m {
                    asm!(
                        "tileloadd tmm7, [{b1} + {ldb}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        b1 = in(reg) b1,
                        ldb = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                }
                if two_n {
                    asm!(
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        a1 = in(reg) a1,
                        lda = in(reg) lda,
                        options(nostack, readonly)
                    );
                    if two_m {
                        asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                    }
                }
            }
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c0 = in(reg) c[0].as_mut_ptr(),
                c1 = in(reg) c[1].as_mut_ptr(),
                c2 = in(reg) c[2].as_mut_ptr(),
                c3 = in(reg) c[3].as_mut_ptr(),
                ldc = in(reg) 64usize,
                options(nostack)
            );
            // Tile (i, j) of c holds out^T rows (weights) n0 + r, columns (tokens) m0 + q.
            for (t, tile) in c.iter().enumerate() {
                let (n0, m0) = ((nb + t / 2) * ROWS, (mb + t % 2) * ROWS);
                if n0 >= n || m0 >= m || (t / 2 == 1 && !two_n) || (t % 2 == 1 && !two_m) {
                    continue;
                }
                for r in 0..ROWS.min(n - n0) {
                    for q in 0..ROWS.min(m - m0) {
                        out.set(m0 + q, n0 + r, tile[r * ROWS + q]);
                    }
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// x (m, k) as B operands: per block of 16 tokens and per step of 32 along k, a 16 x 32 tile
/// whose row r holds, for each token q, the pair x[q][2r], x[q][2r + 1]. Tokens past m are
/// zero.
fn pack_x(x: &[bf16], m: usize, k: usize) -> Vec<bf16> {
    let steps = k / K_STEP;
    let blocks = m.div_ceil(ROWS);
    let mut p = vec![bf16::ZERO; blocks * steps * ROWS * K_STEP];
    for (q_all, row) in x.chunks_exact(k).take(m).enumerate() {
        let (block, q) = (q_all / ROWS, q_all % ROWS);
        for s in 0..steps {
            let tile = &mut p[(block * steps + s) * ROWS * K_STEP..][..ROWS * K_STEP];
            for r in 0..ROWS {
                tile[r * K_STEP + 2 * q] = row[s * K_STEP + 2 * r];
                tile[r * K_STEP + 2 * q + 1] = row[s * K_STEP + 2 * r + 1];
            }
        }
    }
    p
}
