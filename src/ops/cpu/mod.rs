//! CPU kernels: the grouped expert FFN, the linear product under it and every linear layer,
//! and the SIMD tiles chosen at run time by CPU feature detection.

#[cfg(target_arch = "x86_64")]
mod amx;
mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod expert_ffn;
#[cfg(target_arch = "x86_64")]
mod int8;
mod isa;
mod linear;
mod matmul;
mod quantized;
mod storage;
mod stream;
mod vector;

pub use attention::{causal_attention, AttentionDims};
pub use expert_ffn::{grouped_ffn_weights, ExpertGroups, ExpertWeights};
pub use isa::Isa;
pub use linear::{linear, PreparedLhs};
pub use storage::{with_kv_rows, with_weight_slice, WeightSlice};
pub use stream::sum_u64;
