//! The whole q3-mini model (8 layers, 64 experts, top-8, vocabulary 32000; random weights made
//! in memory), ours against candle-transformers 0.11's qwen3_moe `ModelForCausalLM` on the same
//! weights, in bf16 and f32: one decode step after a 128-token context, and a 128-token prefill.
//!
//!     cargo bench --bench model
//!     cargo bench --bench model -- BF16
//!     cargo bench --bench model -- model/q3-mini/prefill128
//!
//! What one iteration times, by group (`model/` keeps them apart from the moe_layer groups):
//!
//! - `model/q3-mini/decode-after-128`: one token through every layer and the head, with a cache
//!   already holding 128 positions. Ours: `Cache::truncate(128)` (it only moves the position
//!   back) and `Model::forward_last(&[token], &mut cache)`. Theirs has no truncate: each
//!   iteration runs `ModelForCausalLM::forward(token, 128)` on a clone of the model made
//!   after the 128-token prefill, outside the clock (a clone shares the cached key and value
//!   tensors and appending makes new ones, so every iteration sees the same 128 positions).
//!   The 128-token prefill runs once per side, untimed.
//! - `model/q3-mini/prefill128`: 128 tokens from an empty cache, logits for the last token only
//!   (what candle-transformers computes; ours through `forward_last`). Ours resets one cache
//!   (its buffers stay allocated); theirs runs a clone of the model with a cleared cache, made
//!   outside the clock.
//!
//! Both sides run the same tokens: the prefill cycles through 16 random 128-token prompts, the
//! decode step through 16 random tokens after the first of those prompts, so successive
//! iterations route to different experts. Both models are read from one `Weights::random`
//! source by hub name (ours through its loader, which stacks the experts; theirs one tensor
//! per expert and projection), so they hold the same values: before timing, the last-token
//! logits of an 8-token prompt are compared and the difference printed (f32 must agree to
//! 1e-3).
//!
//! Everything runs on the CPU, where candle's ops return when their work is done, so the clock
//! stops after the work without a device sync.
//!
//! Memory: each dtype's pair of models is built by its first benchmark and dropped after the
//! dtype's last, so bf16 needs about 3.6 GB and f32 about 7.2 GB at a time.

use std::cell::OnceCell;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::qwen3_moe::ModelForCausalLM;
use criterion::measurement::Measurement;
use criterion::{criterion_group, criterion_main, BatchSize, Bencher, BenchmarkId, Criterion};
use moe_runtime::weights::Weights;
use moe_runtime::{arch, LoadOptions, Model};

mod common;
use common::energy::Cost;
use common::{config_json, configure, ct_config, ct_ids, ct_model, random_ids, Q3_MINI, SEED};

const LAYERS: usize = 8;
const VOCAB: usize = 32000;
/// Context length before the decode step, and prompt length of the prefill.
const CONTEXT: usize = 128;
/// Token sequences cycled through by successive iterations.
const INPUTS: usize = 16;

/// Both engines' q3-mini on the same weights.
struct Pair {
    ours: Model,
    theirs: ModelForCausalLM,
}

impl Pair {
    fn new(dtype: DType) -> Pair {
        let json = config_json(&Q3_MINI, LAYERS, VOCAB);
        let arch = arch::parse(Path::new("(q3-mini config.json)"), json.clone())
            .expect("our config parser reads q3-mini");
        assert!(
            arch.unrecognized_fields.is_empty(),
            "config fields we do not read: {:?}",
            arch.unrecognized_fields
        );
        let weights = Weights::random(SEED, dtype, &Device::Cpu);
        let opts = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let ours = Model::from_weights(arch, &weights, &opts).expect("our model");
        let theirs = ct_model(&ct_config(&json), &weights);
        let pair = Pair { ours, theirs };
        pair.compare(dtype);
        pair
    }

    /// Our model alone, on the same weights as `new` builds.
    fn ours(dtype: DType) -> Model {
        let json = config_json(&Q3_MINI, LAYERS, VOCAB);
        let arch = arch::parse(Path::new("(q3-mini config.json)"), json)
            .expect("our config parser reads q3-mini");
        let weights = Weights::random(SEED, dtype, &Device::Cpu);
        let opts = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        Model::from_weights(arch, &weights, &opts).expect("our model")
    }

    /// Prints how far apart the two models' last-token logits are on one short prompt; in f32
    /// they must agree, or the timings would not be of the same model.
    fn compare(&self, dtype: DType) {
        let prompt = random_ids(1000, 8, VOCAB);
        let ours = self
            .ours
            .forward_last(&prompt, &mut self.ours.new_cache())
            .expect("our forward");
        let mut theirs = self.theirs.clone();
        let theirs = theirs
            .forward(&ct_ids(&prompt), 0)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_dtype(DType::F32))
            .expect("candle-transformers forward");
        let diff = (&ours - &theirs)
            .and_then(|d| d.abs())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("max difference");
        let scale = ours
            .abs()
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("max logit");
        eprintln!(
            "q3-mini {dtype:?}: last-token logits differ by at most {diff:.2e} \
             (largest |logit| {scale:.2})"
        );
        if dtype == DType::F32 {
            assert!(diff < 1e-3, "the two models disagree: {diff}");
        }
    }
}

fn bench(c: &mut Criterion) {
    let prompts: Vec<Vec<u32>> = (0..INPUTS as u64)
        .map(|i| random_ids(i, CONTEXT, VOCAB))
        .collect();
    let tokens: Vec<u32> = random_ids(INPUTS as u64, INPUTS, VOCAB);
    for dtype in [DType::BF16, DType::F32] {
        // Built by the first benchmark that runs, so that a filter skipping a dtype also
        // skips making its models.
        let pair: OnceCell<Pair> = OnceCell::new();
        let pair = || pair.get_or_init(|| Pair::new(dtype));
        let dt = format!("{dtype:?}");

        let mut group = c.benchmark_group(format!("model/q3-mini/decode-after-{CONTEXT}"));
        configure(&mut group, 1);
        group.bench_function(BenchmarkId::new("ours", &dt), |b| {
            our_decode_step(b, &pair().ours, &prompts[0], &tokens)
        });
        group.bench_function(BenchmarkId::new("candle-transformers", &dt), |b| {
            let mut primed = pair().theirs.clone();
            primed.clear_kv_cache();
            primed
                .forward(&ct_ids(&prompts[0]), 0)
                .expect("candle-transformers prefill");
            let mut next = tokens.iter().cycle();
            b.iter_batched(
                || {
                    let token = *next.next().expect("a cycle never ends");
                    (primed.clone(), ct_ids(&[token]))
                },
                |(mut model, token)| {
                    let logits = model.forward(&token, CONTEXT);
                    (logits.expect("candle-transformers decode step"), model)
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();

        let mut group = c.benchmark_group(format!("model/q3-mini/prefill{CONTEXT}"));
        configure(&mut group, CONTEXT);
        group.bench_function(BenchmarkId::new("ours", &dt), |b| {
            our_prefill(b, &pair().ours, &prompts)
        });
        let ids: Vec<Tensor> = prompts.iter().map(|p| ct_ids(p)).collect();
        group.bench_function(BenchmarkId::new("candle-transformers", &dt), |b| {
            let mut fresh = pair().theirs.clone();
            fresh.clear_kv_cache();
            let mut next = ids.iter().cycle();
            b.iter_batched(
                || fresh.clone(),
                |mut model| {
                    let ids = next.next().expect("a cycle never ends");
                    let logits = model.forward(ids, 0);
                    (logits.expect("candle-transformers prefill"), model)
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

/// One decode step of ours after `prompt`, the next token cycling through `tokens`.
fn our_decode_step<M: Measurement>(
    b: &mut Bencher<'_, M>,
    model: &Model,
    prompt: &[u32],
    tokens: &[u32],
) {
    let mut cache = model.new_cache();
    model.forward_last(prompt, &mut cache).expect("our prefill");
    let mut next = tokens.iter().cycle();
    b.iter(|| {
        // Only moves the position back: the buffers keep the 128 positions.
        cache.truncate(CONTEXT).expect("truncate");
        let token = *next.next().expect("a cycle never ends");
        model
            .forward_last(&[token], &mut cache)
            .expect("our decode step")
    })
}

/// One prefill of ours from an empty cache, cycling through `prompts`.
fn our_prefill<M: Measurement>(b: &mut Bencher<'_, M>, model: &Model, prompts: &[Vec<u32>]) {
    let mut cache = model.new_cache();
    let mut next = prompts.iter().cycle();
    b.iter(|| {
        // Forgets the positions and keeps the buffers, as a server reusing a cache.
        cache.reset();
        let prompt = next.next().expect("a cycle never ends");
        model.forward_last(prompt, &mut cache).expect("our prefill")
    })
}

/// What one decode step and one prefill of ours cost in energy: joules where a sensor exists,
/// else core-seconds (`common::energy::Cost` prints which, and why). bf16 only; throughput is
/// tokens per joule (or per core-second).
fn bench_energy(c: &mut Criterion<Cost>, unit: &str) {
    let dtype = DType::BF16;
    let model: OnceCell<Model> = OnceCell::new();
    let model = || model.get_or_init(|| Pair::ours(dtype));
    let prompts: Vec<Vec<u32>> = (0..INPUTS as u64)
        .map(|i| random_ids(i, CONTEXT, VOCAB))
        .collect();
    let tokens: Vec<u32> = random_ids(INPUTS as u64, INPUTS, VOCAB);

    let mut group = c.benchmark_group(format!("model/q3-mini/{unit}"));
    group
        .sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(5));
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new(format!("decode-after-{CONTEXT}"), "BF16"),
        |b| our_decode_step(b, model(), &prompts[0], &tokens),
    );
    group.throughput(criterion::Throughput::Elements(CONTEXT as u64));
    group.bench_function(BenchmarkId::new(format!("prefill{CONTEXT}"), "BF16"), |b| {
        our_prefill(b, model(), &prompts)
    });
    group.finish();
}

/// As `criterion_group!` would make it, with the unit (which the measurement found) in the
/// group's name, so that joules and core-seconds never land in one saved baseline.
fn energy() {
    let cost = Cost::probe(false);
    let unit = cost.unit();
    let mut c = Criterion::default()
        .with_measurement(cost)
        .configure_from_args();
    bench_energy(&mut c, unit);
}

criterion_group!(benches, bench);
criterion_main!(benches, energy);
