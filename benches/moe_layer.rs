//! One MoE layer at decode (1 token), prefill128 and prefill512, on named shapes with random
//! weights, f32 and bf16: our `SparseMoe` (fast path and reference loop) against
//! candle-transformers 0.11's qwen3_moe sparse block on the same weights.
//!
//!     cargo bench --bench moe_layer
//!     cargo bench --bench moe_layer -- qwen3-30b-a3b
//!     cargo bench --bench moe_layer -- 'q3-mini/decode'
//!
//! What one iteration times, by benchmark id:
//!
//! - `Fast/<dtype>`, `Reference/<dtype>`: `SparseMoe::forward(xs)`, xs: (tokens, hidden): the
//!   router (x·Wᵀ), softmax and top-k on the host, the routed experts. Nothing else.
//! - `candle-transformers/<dtype>`: its `Qwen3SparseMoeBlock` and `DecoderLayer` are private;
//!   the smallest public type holding the block is `qwen3_moe::ModelForCausalLM`, built here
//!   with one layer and a 1024-token vocabulary. One iteration is `clear_kv_cache()` and
//!   `forward(ids, 0)` on `tokens` ids: embedding lookup, RMSNorm, attention over those tokens
//!   (q/k/v/o projections, per-head q/k norms, RoPE, its CPU flash attention), RMSNorm, the
//!   sparse block (router, softmax, arg-sort top-k, then a loop over the experts that have
//!   tokens), final RMSNorm, and the head for the last token.
//! - `candle-transformers-no-moe/<dtype>`: the same one-layer model with a dense MLP of width 1
//!   where the sparse block was (`decoder_sparse_step` 2), so all of the above but the block:
//!   the block alone takes about the difference of the two rows.
//!
//! Inputs: both engines route random inputs with the same router weights; neither is handed a
//! routing. Ours are random normal hidden states; theirs random token ids, whose embeddings
//! after attention and a norm are random hidden states too. Each side cycles through 16
//! inputs, so successive iterations pick different experts and the weights come from memory,
//! not from a cache holding the same k experts.
//!
//! Weights: one `Weights::random` source gives our stacked experts and router and, by the same
//! hub names, each of candle-transformers' per-expert tensors, so both hold the same values.
//!
//! Left out (see `reference_runs`): the reference loop in bf16, except at q3-mini decode:
//! candle 0.11 widens the whole stacked expert tensor to f32 for every per-expert matmul, so
//! one iteration takes 1.8 s there and from 16 s to minutes elsewhere.
//!
//! Everything runs on the CPU, where candle's ops return when their work is done, so the clock
//! stops after the work without a device sync.

use std::cell::OnceCell;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::qwen3_moe::ModelForCausalLM;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use moe_runtime::layers::SparseMoe;
use moe_runtime::weights::Weights;
use moe_runtime::Backend;

mod common;
use common::{
    config_json, configure, ct_config, ct_ids, ct_model, random_ids, sparse_moe, Shape, SEED,
};

const SHAPES: [&Shape; 2] = [&common::Q3_MINI, &common::QWEN3_30B_A3B];

const PHASES: [(&str, usize); 3] = [("decode", 1), ("prefill128", 128), ("prefill512", 512)];

/// Inputs cycled through by successive iterations.
const INPUTS: usize = 16;

/// The candle-transformers model's vocabulary: small, so that its embedding and head cost
/// next to nothing beside the layer.
const VOCAB: usize = 1024;

/// The candle-transformers models, by benchmark name: the layer, and the layer without its
/// sparse block.
const THEIRS: [&str; 2] = ["candle-transformers", "candle-transformers-no-moe"];

/// Both engines' copies of one layer.
struct Layer {
    ours: SparseMoe,
    /// As named by `THEIRS`.
    theirs: [ModelForCausalLM; 2],
}

impl Layer {
    fn new(s: &Shape, dtype: DType) -> Layer {
        let weights = Weights::random(SEED, dtype, &Device::Cpu);
        let ours = sparse_moe(s, &weights, Backend::cpu());
        let json = config_json(s, 1, VOCAB);
        let theirs = ct_model(&ct_config(&json), &weights);
        let mut no_moe = ct_config(&json);
        // Layer 0 is dense when (0 + 1) is off the sparse grid; width 1 makes its MLP free.
        no_moe.decoder_sparse_step = 2;
        no_moe.intermediate_size = 1;
        let theirs_no_moe = ct_model(&no_moe, &weights);
        Layer {
            ours,
            theirs: [theirs, theirs_no_moe],
        }
    }
}

/// Whether the reference loop is timed: criterion runs at least eleven iterations, so one must
/// take seconds, not minutes. In f32 it always does. In bf16 candle 0.11 widens the whole
/// stacked expert tensor to f32 for every per-expert matmul: 1.8 s for a q3-mini decode step,
/// 16 s for its prefill128 and longer still on the larger shape.
fn reference_runs(s: &Shape, dtype: DType, tokens: usize) -> bool {
    dtype == DType::F32 || (tokens == 1 && s.name == common::Q3_MINI.name)
}

fn bench(c: &mut Criterion) {
    for s in SHAPES {
        for dtype in [DType::F32, DType::BF16] {
            // Built by the first benchmark that runs, so that a filter skipping a shape and
            // dtype also skips making its weights.
            let layer: OnceCell<Layer> = OnceCell::new();
            let layer = || layer.get_or_init(|| Layer::new(s, dtype));
            for (phase, tokens) in PHASES {
                let mut group = c.benchmark_group(format!("{}/{phase}", s.name));
                configure(&mut group, tokens);
                let xs: Vec<Tensor> = (0..INPUTS)
                    .map(|_| {
                        Tensor::randn(0f32, 1.0, (tokens, s.hidden), &Device::Cpu)
                            .and_then(|t| t.to_dtype(dtype))
                            .expect("random hidden states")
                    })
                    .collect();
                let ids: Vec<Tensor> = (0..INPUTS as u64)
                    .map(|i| ct_ids(&random_ids(i, tokens, VOCAB)))
                    .collect();
                for (name, be) in [("Fast", Backend::cpu()), ("Reference", Backend::Reference)] {
                    if name == "Reference" && !reference_runs(s, dtype, tokens) {
                        continue;
                    }
                    let id = BenchmarkId::new(name, format!("{dtype:?}"));
                    group.bench_function(id, |b| {
                        let moe = SparseMoe {
                            backend: be.clone(),
                            ..layer().ours.clone()
                        };
                        let mut next = xs.iter().cycle();
                        // The router on the CPU kernels either way: `be` runs the routed
                        // experts, the part the two implementations differ in.
                        let router = Backend::cpu();
                        b.iter(|| {
                            let xs = next.next().expect("a cycle never ends");
                            moe.forward(xs, &router).expect("our forward")
                        })
                    });
                }
                for (i, name) in THEIRS.into_iter().enumerate() {
                    let id = BenchmarkId::new(name, format!("{dtype:?}"));
                    group.bench_function(id, |b| {
                        let mut model = layer().theirs[i].clone();
                        let mut next = ids.iter().cycle();
                        b.iter(|| {
                            let ids = next.next().expect("a cycle never ends");
                            model.clear_kv_cache();
                            model.forward(ids, 0).expect("candle-transformers forward")
                        })
                    });
                }
                group.finish();
            }
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
