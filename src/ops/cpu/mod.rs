//! CPU kernels: the grouped expert FFN, the linear product under it and every linear layer,
//! attention, and the SIMD tiles chosen at run time by CPU feature detection. `tensors` is the
//! CPU backend's face: candle tensors in, kernels over slices, tensors out.

#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod awake;
pub(crate) mod delta;
pub(crate) mod expert_ffn;
#[cfg(target_arch = "x86_64")]
mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_k;
#[cfg(target_arch = "x86_64")]
mod int8_kx8;
#[cfg(target_arch = "x86_64")]
mod int8_x8;
mod isa;
mod kquant;
mod linear;
mod matmul;
mod panel;
mod quantize;
mod quantized;
mod storage;
mod stream;
pub(crate) mod tensors;
mod tile;
mod vector;

pub use attention::{causal_attention, AttentionDims};
pub use awake::run_awake;
pub use expert_ffn::ExpertBlocks;
pub use isa::Isa;
pub use linear::{linear, PreparedLhs};
pub use storage::with_kv_rows;
pub use stream::sum_u64;
