//! CPU kernels: the grouped expert FFN, and the small pieces it is made of.

mod expert_ffn;
mod matmul;
mod storage;
mod vector;

pub use expert_ffn::{grouped_ffn_weights, ExpertGroups};
pub use storage::with_weight_slice;
