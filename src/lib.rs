//! # moe-runtime
//!
//! A sparse Mixture-of-Experts inference engine on [Candle](https://github.com/huggingface/candle).
//! It loads the safetensors checkpoints MoE models are published in (the HuggingFace hub
//! layout), routes every token to its top-k experts, and computes what HF transformers
//! computes for the same weights.
//!
//! The core types, and what each owns:
//!
//! - [`ModelConfig`] and the rest of [`spec`]: the architecture-free blueprint (a plan per
//!   layer, the router, the activation), translated from a family's config.json by [`arch`]
//!   (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE).
//! - [`Model`] and the rest of [`layers`]: the immutable weights, shared freely between
//!   threads.
//! - [`Backend`]: which kernels run the ops ([`ops`]: the CPU's, CUDA's, or the reference
//!   backend's slow twins), chosen once at load from [`LoadOptions`].
//! - [`Cache`]: one sequence's keys, values and position, owned by the caller.
//! - [`serve`]: the OpenAI-compatible server, a continuous-batching scheduler over one model.
//!
//! ```
//! use moe_runtime::{generate, LoadOptions, Model};
//!
//! let model = Model::load("tests/fixtures/qwen3_moe-a".as_ref(), &LoadOptions::default())?;
//! let mut cache = model.new_cache();
//! let logits = model.forward(&[1, 2, 3], &mut cache)?; // (3, vocab), f32
//! let next = generate::argmax(&logits.get(2)?)?;
//! let more = model.forward(&[next], &mut cache)?; // continues after position 3
//! # let _ = more;
//! # Ok::<(), moe_runtime::Error>(())
//! ```

pub mod arch;
pub mod bench;
pub mod chat;
pub mod chat_template;
pub mod device;
pub mod energy;
pub mod error;
pub mod explore;
pub mod generate;
pub mod gguf;
pub mod hub;
mod json;
pub mod layers;
pub mod limits;
pub mod ops;
pub mod quality;
pub mod quant;
pub mod reasoning;
pub mod sampling;
pub mod serve;
pub mod spec;
pub mod text;
pub mod tokenizer;
pub mod weights;

/// The bundled default model (models/tiny-shakespeare-moe in the source tree), used when no
/// model is named.
pub const BUNDLED_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-shakespeare-moe");

/// The README's Rust blocks, run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{Error, Result};
pub use layers::{Cache, LoadOptions, Model};
pub use limits::Limits;
pub use ops::{Backend, Kernels};
pub use spec::ModelConfig;
