//! CPU kernels: the grouped expert FFN, and the small pieces it is made of.

mod expert_ffn;
mod matmul;
mod storage;
mod vector;

pub use expert_ffn::{grouped_ffn, grouped_ffn_weights, ExpertGroups, ExpertSlices};
pub use matmul::matmul_abt;
pub use storage::{with_weight_slice, WeightSlice};
pub use vector::{dot, silu, WeightElem};
