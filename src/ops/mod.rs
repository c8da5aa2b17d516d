//! Fast kernels behind safe functions. `cpu/` holds the CPU ones (plain Rust over slices,
//! parallel with rayon), `cuda.rs` launches kernels/*.cu (feature `cuda`); the slow twins they
//! are tested against live beside their callers.

pub mod cpu;
// Only the tests call these kernels so far: the model's CUDA path (issue 6) is not wired yet.
#[cfg(feature = "cuda")]
#[allow(dead_code)]
pub mod cuda;
