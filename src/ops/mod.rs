//! Fast kernels behind safe functions. `cpu/` holds the CPU ones (plain Rust over slices,
//! parallel with rayon), `cuda.rs` launches kernels/*.cu (feature `cuda`); the slow twins they
//! are tested against live beside their callers.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
