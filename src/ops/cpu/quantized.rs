//! `out = x · wᵀ` for quantized weights (q8_0, q4_0, mxfp4, and the K-quants through
//! kquant.rs).
//!
//! Few rows (decode): x is quantized to q8_0 blocks too and each pair of blocks is an integer
//! dot product of 32 codes, scaled once by both block scales, as llama.cpp does: the weights
//! are read once, in their own 1.06 (q8_0) or 0.56 (q4_0) bytes per weight. On x86 the
//! integer products are AVX2 `vpmaddubsw` or AVX-512 VNNI `vpdpbusd` (int8.rs).
//! Many rows (prefill): the block of weights is dequantized once and goes through the kernel
//! dense weights would: on AMX, dequantized to bf16 (as a bf16 checkpoint holds them) with x
//! rounded to bf16; elsewhere dequantized to f32 for the packed f32 matrix kernel, x as it is;
//! except for the K-quants, whose integer tiles outran that on x86 (x as q8_K super-blocks:
//! `int8_rows`). On x86, q8_0 (with VNNI), q4_0, MXFP4 and q4_K rows are interleaved at load
//! in groups of eight (quant/interleaved.rs), and their group tiles (int8_x8.rs, int8_kx8.rs)
//! outran all of these at any number of rows (`matmul_bt_interleaved`).

use std::cell::RefCell;

use super::isa::Isa;
use super::matmul::matmul_abt;
use super::tile::{Lhs, OutView};
use crate::quant::{
    deinterleave_into, dequantize_into, BlockMxfp4, BlockMxfp4x8, BlockQ4Kx8, BlockQ4_0,
    BlockQ4_0x8, BlockQ5_0, BlockQ8_0, BlockQ8_0x8, Interleaved, QuantBlock, WeightBlock, BLOCK,
    GROUP_ROWS,
};

/// What a weight block format gives the product: integer dot products against x's codes
/// (q8_0 blocks, q8_K for the K-quants; `int8_rows` says when) and dequantization otherwise,
/// each on the best kernels the CPU has.
pub trait BlockKernels: QuantBlock {
    /// Whether many rows take the integer tiles too (see `int8_rows`).
    const INT8_MANY_ROWS: bool;

    /// out (m, n) = x (m, k) · w (n, k)ᵀ with x's integer codes (q8_0 blocks, or q8_K for the
    /// K-quants).
    fn int8(isa: Isa, x: Lhs, w: &[Self], dims: (usize, usize, usize), out: &mut OutView);

    /// The values of `w` into `out`, bit for bit those of `QuantBlock::dequantize`.
    fn dequantize_f32(isa: Isa, w: &[Self], out: &mut [f32]);

    /// The values of `w` rounded to bf16 into `out`.
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16 (`Isa::Avx512Bf16` or better).
    #[cfg(target_arch = "x86_64")]
    unsafe fn dequantize_bf16(w: &[Self], out: &mut [half::bf16]);
}

/// The formats of 32 signed codes and one scale: the integer tiles and dequantization of
/// int8.rs, or the portable loops.
macro_rules! block_kernels {
    ($($t:ty: $many:expr),*) => {$(
        impl BlockKernels for $t {
            const INT8_MANY_ROWS: bool = $many;

            fn int8(
                isa: Isa,
                x: Lhs,
                w: &[Self],
                dims: (usize, usize, usize),
                out: &mut OutView,
            ) {
                int8(isa, x.q8, w, dims, out)
            }

            fn dequantize_f32(isa: Isa, w: &[Self], out: &mut [f32]) {
                dequantize(isa, w, out)
            }

            #[cfg(target_arch = "x86_64")]
            unsafe fn dequantize_bf16(w: &[Self], out: &mut [half::bf16]) {
                super::int8::dequantize_bf16(w, out)
            }
        }
    )*};
}
block_kernels!(BlockQ8_0: true, BlockQ4_0: false, BlockQ5_0: false, BlockMxfp4: false);

/// Below this many rows of x, products of every format multiply integer codes; from it on,
/// `int8_rows` decides.
pub const DEQUANT_MIN_ROWS: usize = 4;

/// Whether many rows against `W` dequantize it to bf16 (with x rounded to bf16, as a bf16
/// checkpoint computes): on AMX for every format; with AVX-512 BF16 for formats whose values
/// are all bf16 (MXFP4), where `vdpbf16ps` takes 32 products an instruction against 8 for the
/// f32 kernel's 256-bit FMA (gpt-oss-20b's shape, 4 layers: prefill 1.3x). Rows in row order
/// only: interleaved ones decide by `interleaved_to_bf16` (on x86 MXFP4 rows are interleaved
/// wherever a matrix's row count is a multiple of eight, and the group tiles outran this).
pub fn bf16_for<W: QuantBlock>(isa: Isa) -> bool {
    isa == Isa::Amx || (isa >= Isa::Avx512Bf16 && W::EXACT_IN_BF16)
}

/// Whether a product of m rows against `W` multiplies integer codes (x quantized too, as
/// llama.cpp does) rather than dequantized weights: few rows, for every format; any number
/// for the formats whose integer tiles outran dequantizing for the f32 kernel
/// (`INT8_MANY_ROWS`), where the x86 tiles run and the weights do not go to bf16 tiles (AMX).
/// Measured (q3-mini GGUFs, prefill of 128, AVX-512 VNNI, interleaved): Q4_K_M 1.6x (the
/// K-quants sum a super-block in i32), Q8_0 1.23x (306 -> 378 tokens/s; its activations as
/// q8_0 stay within the accuracy budgets of tests/quantization.rs and gguf_parity.rs, as
/// llama.cpp's do); Q4_0 was even (324 -> 324). Where the rows are interleaved
/// (`matmul_bt_interleaved`) the group tiles take every format's many rows. The portable
/// loop is scalar: without SIMD many rows dequantize for the vectorised f32 kernel.
pub fn int8_rows<W: BlockKernels>(isa: Isa, m: usize) -> bool {
    m < DEQUANT_MIN_ROWS || (W::INT8_MANY_ROWS && isa != Isa::Portable && !bf16_for::<W>(isa))
}

/// Whether a product of m rows against `W` dequantizes it to bf16 (see `bf16_for`).
pub fn dequantizes_to_bf16<W: QuantBlock>(isa: Isa, m: usize) -> bool {
    m >= DEQUANT_MIN_ROWS && bf16_for::<W>(isa)
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ for blocks of weights; `x` holds the f32 rows, their q8_0
/// or q8_K blocks (where `int8_rows`) and, where `bf16_for`, their bf16 rounding.
/// Single-threaded.
pub fn matmul_bt_quantized<W: BlockKernels>(
    isa: Isa,
    x: Lhs,
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    let (m, n, k) = dims;
    if int8_rows::<W>(isa, m) {
        return W::int8(isa, x, w, dims, out);
    }
    let w = &w[..n * k / W::VALUES];
    #[cfg(target_arch = "x86_64")]
    if dequantizes_to_bf16::<W>(isa, m) {
        return SCRATCH_BF16.with_borrow_mut(|scratch| {
            let w_bf16 = reuse(scratch, n * k, half::bf16::ZERO);
            // SAFETY: bf16_for holds only where the CPU has AVX-512 BF16 (Avx512Bf16 or Amx),
            // and Amx only where amx::available(); quantized rows are whole blocks of 32,
            // which amx::fits.
            unsafe {
                W::dequantize_bf16(w, w_bf16);
                if isa == Isa::Amx {
                    super::amx::matmul_bt_amx(x.bf16, w_bf16, dims, out);
                } else {
                    super::avx512::matmul_bt_bf16(x.bf16, w_bf16, dims, out);
                }
            }
        });
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let scratch = reuse(scratch, n * k, 0.0);
        W::dequantize_f32(isa, w, scratch);
        let (data, rs, cs) = out.raw(m, n);
        matmul_abt(x.f32, scratch, (m, n, k), (data, rs, cs));
    });
}

/// out (m, n) = x (m, k) · w (n, k)ᵀ for rows interleaved in groups of eight
/// (quant/interleaved.rs): the group tiles of int8_x8.rs for any number of rows, x quantized
/// to q8_0 (as llama.cpp multiplies its repacked q4_0). q3-mini's Q4_0 GGUF on AVX-512 VNNI
/// (Intel Xeon, no AMX; medians of three interleaved rounds): prefill of 128 1.78x the
/// dequantizing path (283 -> 504 tokens/s), decode 1.19x the per-row tiles (124 -> 148).
/// Where many rows go to bf16 tiles (AMX), or no SIMD exists, the blocks go back in row order
/// through `matmul_bt_quantized`. Single-threaded.
pub fn matmul_bt_interleaved<G: GroupTiles>(
    isa: Isa,
    x: Lhs,
    w: &[G],
    dims: (usize, usize, usize),
    out: &mut OutView,
) where
    G::Block: BlockKernels,
{
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && !interleaved_to_bf16(isa, dims.0) {
        // SAFETY: callers cap isa at Isa::best(), and it is not Portable.
        return unsafe { G::tiles(isa, x, w, dims, out) };
    }
    in_rows(w, dims, |blocks| {
        matmul_bt_quantized(isa, x, blocks, dims, out)
    })
}

/// Runs `f` on the n rows (of k values) of interleaved `w` back in row order, in a buffer this
/// thread keeps (a fresh one per product cost page faults, as `SCRATCH` notes).
fn in_rows<G: Interleaved, R>(
    w: &[G],
    (_, n, k): (usize, usize, usize),
    f: impl FnOnce(&[G::Block]) -> R,
) -> R {
    let kb = k / G::Block::VALUES;
    let w = &w[..n / GROUP_ROWS * kb];
    SCRATCH_ROWS.with_borrow_mut(|buffer| {
        let bytes = w.len() * GROUP_ROWS * size_of::<G::Block>();
        // u64 words: aligned for every block type.
        let words = reuse(buffer, bytes.div_ceil(8), 0);
        let blocks: &mut [G::Block] =
            bytemuck::cast_slice_mut(&mut bytemuck::cast_slice_mut::<u64, u8>(words)[..bytes]);
        deinterleave_into(w, kb, blocks);
        f(blocks)
    })
}

/// Whether m rows against interleaved weights go to bf16 tiles instead of the group tiles:
/// AMX's, from DEQUANT_MIN_ROWS on (x rounded to bf16). Elsewhere the group tiles outran the
/// dequantizing paths of every format, MXFP4's `vdpbf16ps` one included (see
/// `matmul_bt_interleaved`).
pub fn interleaved_to_bf16(isa: Isa, m: usize) -> bool {
    isa == Isa::Amx && m >= DEQUANT_MIN_ROWS
}

/// Interleaved groups with x86 group tiles; everywhere else they go back to rows.
pub trait GroupTiles: Interleaved {
    /// out (m, n) = x (m, k) · w (n, k)ᵀ on the group tiles (int8_x8.rs, int8_kx8.rs).
    ///
    /// # Safety
    /// `isa` is at most `Isa::best()` and not `Portable`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tiles(isa: Isa, x: Lhs, w: &[Self], dims: (usize, usize, usize), out: &mut OutView);
}

/// The group tiles of int8_x8.rs, for groups of 32-weight blocks.
macro_rules! group_tiles_32 {
    ($($t:ty),*) => {$(
        impl GroupTiles for $t {
            #[cfg(target_arch = "x86_64")]
            unsafe fn tiles(
                isa: Isa,
                x: Lhs,
                w: &[Self],
                dims: (usize, usize, usize),
                out: &mut OutView,
            ) {
                use super::int8_x8::{matmul_bt_avx2, matmul_bt_vnni};
                // Every Isa above Portable has AVX2, FMA and F16C; VNNI is checked on its own
                // (it is not part of any Isa level).
                let x = (x.q8, x.q8_sums);
                if isa.runs_vnni() {
                    matmul_bt_vnni(x, w, dims, out)
                } else {
                    matmul_bt_avx2(x, w, dims, out)
                }
            }
        }
    )*};
}
group_tiles_32!(BlockQ4_0x8, BlockMxfp4x8);

impl GroupTiles for BlockQ8_0x8 {
    /// VNNI's alone (`Codes8::MAX_STORED`): q8_0 is interleaved only where the CPU has it; a
    /// lower `isa` asked for takes the rows back to int8.rs's AVX2 tiles, x still as q8_0.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tiles(isa: Isa, x: Lhs, w: &[Self], dims: (usize, usize, usize), out: &mut OutView) {
        if isa.runs_vnni() {
            super::int8_x8::matmul_bt_vnni((x.q8, x.q8_sums), w, dims, out)
        } else {
            in_rows(w, dims, |blocks| BlockQ8_0::int8(isa, x, blocks, dims, out))
        }
    }
}

impl GroupTiles for BlockQ4Kx8 {
    #[cfg(target_arch = "x86_64")]
    unsafe fn tiles(isa: Isa, x: Lhs, w: &[Self], dims: (usize, usize, usize), out: &mut OutView) {
        use super::int8_kx8::{matmul_bt_avx2, matmul_bt_vnni};
        // As for q4_0 above.
        if isa.runs_vnni() {
            matmul_bt_vnni(x.q8k, w, dims, out)
        } else {
            matmul_bt_avx2(x.q8k, w, dims, out)
        }
    }
}

thread_local! {
    /// The dequantized weights of a product, kept for the next one on this thread: a prefill
    /// makes thousands of products, and a fresh zeroed buffer for each cost a tenth of its
    /// time. Every product overwrites what it reads, and the matrix kernels run on this thread
    /// alone, so no call nests inside another.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_BF16: RefCell<Vec<half::bf16>> = const { RefCell::new(Vec::new()) };
    /// Interleaved weights back in row order (`in_rows`): bytes of blocks in u64 words.
    static SCRATCH_ROWS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The first `len` elements of `buffer`, grown (with `fill`) if it is shorter.
fn reuse<T: Copy>(buffer: &mut Vec<T>, len: usize, fill: T) -> &mut [T] {
    if buffer.len() < len {
        buffer.resize(len, fill);
    }
    &mut buffer[..len]
}

/// `dequantize_into`, with SIMD where the CPU has it (the scalar loop took a third of a
/// gpt-oss prefill).
fn dequantize<W: WeightBlock + IntCodes>(isa: Isa, w: &[W], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: every Isa above Portable has AVX2 and F16C.
        return unsafe { super::int8::dequantize_f32(w, out) };
    }
    let _ = isa;
    dequantize_into(w, out);
}

/// Weight blocks the x86 integer tiles can load; everywhere else only the portable loop runs.
#[cfg(target_arch = "x86_64")]
pub trait IntCodes: super::int8::Codes256 {}
#[cfg(target_arch = "x86_64")]
impl<W: super::int8::Codes256> IntCodes for W {}
#[cfg(not(target_arch = "x86_64"))]
pub trait IntCodes {}
#[cfg(not(target_arch = "x86_64"))]
impl<W> IntCodes for W {}

#[cfg(target_arch = "x86_64")]
fn int8<W: WeightBlock + IntCodes>(
    isa: Isa,
    x: &[BlockQ8_0],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    // SAFETY: callers cap isa at Isa::best(), so the CPU has the features each family needs;
    // VNNI is checked on its own (it is not part of any Isa level).
    match isa {
        _ if isa.runs_vnni() => unsafe { super::int8::matmul_bt_vnni(x, w, dims, out) },
        Isa::Portable => portable(x, w, dims, out),
        _ => unsafe { super::int8::matmul_bt_avx2(x, w, dims, out) },
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn int8<W: WeightBlock>(
    _: Isa,
    x: &[BlockQ8_0],
    w: &[W],
    dims: (usize, usize, usize),
    out: &mut OutView,
) {
    portable(x, w, dims, out)
}

/// Block by block: the exact integer dot product of the codes, times both scales.
pub(super) fn portable<W: WeightBlock>(
    x: &[BlockQ8_0],
    w: &[W],
    (m, n, k): (usize, usize, usize),
    out: &mut OutView,
) {
    let kb = k / BLOCK;
    for j in 0..n {
        let w_row = &w[j * kb..][..kb];
        for i in 0..m {
            let x_row = &x[i * kb..][..kb];
            let mut sum = 0f32;
            for (xb, wb) in x_row.iter().zip(w_row) {
                let codes = wb.codes();
                let dot: i32 = xb
                    .qs
                    .iter()
                    .zip(codes)
                    .map(|(&a, b)| a as i32 * b as i32)
                    .sum();
                let scale = xb.d.to_f32() * wb.scale();
                sum += dot as f32 * scale;
            }
            out.set(i, j, sum);
        }
    }
}
