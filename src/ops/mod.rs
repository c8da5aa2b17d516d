//! Fast kernels behind safe functions. `cpu/` holds the CPU ones (plain Rust over slices,
//! parallel with rayon); the slow twins they are tested against live beside their callers.

pub mod cpu;
