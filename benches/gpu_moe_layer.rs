//! One MoE layer on a CUDA GPU in bf16: ours (`SparseMoe` on the device: our routing,
//! alignment, decode kernel or grouped GEMM, and combine) against candle-transformers 0.11's
//! `FusedMoe` (candle-nn's moe_gemm kernels, what its qwen3_moe runs under `cuda`), on the
//! same weights, at 1, 8, 32 and 128 tokens (decode batches) and 512 and 4096 (prefill).
//!
//!     cargo bench --features cuda --bench gpu_moe_layer
//!     cargo bench --features cuda --bench gpu_moe_layer -- 'qwen3-30b-a3b/decode1'
//!
//! One iteration is one forward of the block on one of 16 random inputs (so successive
//! iterations route to different experts), then a device synchronize, so the clock covers the
//! GPU's work. candle-transformers is told `is_prefill` for 512 and 4096 tokens, as its model
//! does for prompts, and not for decode batches.
//!
//! Before timing, both outputs on one input are compared, and the bench stops unless at least
//! 90% of the tokens' rows agree within 2% of the largest output (a row whose experts differ
//! on a bf16 near-tie of the router's logits, which the two top-k sorts break differently, is
//! the allowed exception). It prints what the setting must move: the bytes of the experts it
//! touches (expected distinct experts for that many tokens, times 3·H·I bf16 values) and its
//! FLOPs (tokens·k·6·H·I), from which the fraction of HBM bandwidth (decode) and of the bf16
//! tensor rate (prefill) follow. Where FusedMoe fails (its sort of 4096·k ids asks for more
//! shared memory than a launch may have), its row reads "n/a" and the rest go on.

use std::cell::OnceCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::fused_moe::{FusedMoe, MoeCfg};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use moe_runtime::moe::SparseMoe;
use moe_runtime::weights::Weights;

mod common;
use common::{configure, sparse_moe, Shape, LAYER_PREFIX, SEED};

const SHAPES: [&Shape; 2] = [&common::Q3_MINI, &common::QWEN3_30B_A3B];
const PHASES: [(&str, usize); 6] = [
    ("decode1", 1),
    ("decode8", 8),
    ("decode32", 32),
    ("decode128", 128),
    ("prefill512", 512),
    ("prefill4096", 4096),
];
const INPUTS: usize = 16;

struct Layer {
    ours: SparseMoe,
    theirs: FusedMoe,
}

impl Layer {
    fn new(s: &Shape, dev: &Device) -> Layer {
        let dtype = DType::BF16;
        let weights = Weights::random(SEED, dtype, dev);
        let get = |name: &str, shape: &[usize]| weights.get(name, shape).expect("random tensor");
        let ours = sparse_moe(s, &weights);
        let router = get(
            &format!("{LAYER_PREFIX}.gate.weight"),
            &[s.experts, s.hidden],
        );
        // The same values by hub name, one tensor per expert and projection, as FusedMoe reads
        // them (it stacks them itself).
        let mut tensors = HashMap::from([("gate.weight".to_string(), router)]);
        let (h, i) = (s.hidden, s.expert_ffn);
        for e in 0..s.experts {
            for (proj, shape) in [
                ("gate_proj", [i, h]),
                ("up_proj", [i, h]),
                ("down_proj", [h, i]),
            ] {
                let name = format!("experts.{e}.{proj}.weight");
                tensors.insert(name.clone(), get(&format!("{LAYER_PREFIX}.{name}"), &shape));
            }
        }
        let cfg = MoeCfg {
            hidden_size: h,
            num_experts: s.experts,
            num_experts_per_tok: s.top_k,
            moe_intermediate_size: i,
            norm_topk_prob: true,
            act: Activation::Silu,
            decoder_sparse_step: None,
        };
        let vb = VarBuilder::from_tensors(tensors, dtype, dev);
        let theirs = FusedMoe::new(&cfg, vb, dtype).expect("candle-transformers' FusedMoe");
        Layer { ours, theirs }
    }
}

/// Expected distinct experts that `tokens` uniformly routed tokens touch.
fn experts_touched(s: &Shape, tokens: usize) -> f64 {
    let e = s.experts as f64;
    e * (1.0 - (1.0 - s.top_k as f64 / e).powi(tokens as i32))
}

fn print_costs(s: &Shape, phase: &str, tokens: usize, agreement: &str) {
    let (h, i) = (s.hidden as f64, s.expert_ffn as f64);
    let bytes = experts_touched(s, tokens) * 3.0 * h * i * 2.0 + s.experts as f64 * h * 2.0;
    let flops = tokens as f64 * s.top_k as f64 * 6.0 * h * i;
    eprintln!(
        "{}/{phase}: {agreement}; moves {:.1} MB of weights, {:.2} GFLOP",
        s.name,
        bytes / 1e6,
        flops / 1e9
    );
}

/// Rows of two (tokens, hidden) outputs within this much of the largest |want| agree.
const ROW_BOUND: f32 = 0.02;
/// The share of rows that must agree.
const ROWS_AGREEING: f64 = 0.9;

/// The share of rows of `got` within [`ROW_BOUND`] of `want`'s, relative to its largest value.
fn rows_agreeing(got: &Tensor, want: &Tensor) -> f64 {
    let f32_of = |t: &Tensor| t.to_dtype(DType::F32).expect("f32");
    let (got, want) = (f32_of(got), f32_of(want));
    let scale = want
        .abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_scalar::<f32>())
        .expect("a scale");
    let rows = (got - want)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(1))
        .and_then(|d| d.to_vec1::<f32>())
        .expect("row differences");
    let close = rows.iter().filter(|&&d| d <= ROW_BOUND * scale).count();
    close as f64 / rows.len() as f64
}

fn bench(c: &mut Criterion) {
    // MOE_REQUIRE_CUDA=1 makes a missing GPU an error rather than an empty run.
    let Some(dev) = moe_runtime::device::gpu_for_tests() else {
        eprintln!("gpu_moe_layer: nothing to measure");
        return;
    };
    let sync = || dev.synchronize().expect("device synchronize");
    for s in SHAPES {
        let layer: OnceCell<Layer> = OnceCell::new();
        let layer = || layer.get_or_init(|| Layer::new(s, &dev));
        for (phase, tokens) in PHASES {
            let mut group = c.benchmark_group(format!("gpu/{}/{phase}", s.name));
            configure(&mut group, tokens);
            let xs: Vec<Tensor> = (0..INPUTS)
                .map(|_| {
                    Tensor::randn(0f32, 1.0, (tokens, s.hidden), &dev)
                        .and_then(|t| t.to_dtype(DType::BF16))
                        .expect("random hidden states")
                })
                .collect();
            let prefill = tokens >= 512;
            let ours = layer().ours.forward(&xs[0]).expect("our forward");
            let theirs = layer()
                .theirs
                .forward(&xs[0].unsqueeze(0).expect("a batch of one"), prefill)
                .and_then(|t| t.squeeze(0));
            // A failed launch is an error the context recovers from; the next one runs.
            let agreement = match &theirs {
                Ok(theirs) => {
                    let share = rows_agreeing(&ours, theirs);
                    assert!(
                        share >= ROWS_AGREEING,
                        "{}/{phase}: only {:.1}% of rows agree with FusedMoe",
                        s.name,
                        100.0 * share
                    );
                    format!("{:.1}% of rows agree with FusedMoe", 100.0 * share)
                }
                Err(e) => format!(
                    "FusedMoe n/a ({})",
                    e.to_string().lines().next().unwrap_or("")
                ),
            };
            print_costs(s, phase, tokens, &agreement);

            group.bench_function(BenchmarkId::new("ours", "BF16"), |b| {
                let mut next = xs.iter().cycle();
                b.iter(|| {
                    let y = layer()
                        .ours
                        .forward(next.next().expect("a cycle never ends"));
                    sync();
                    y.expect("our forward")
                })
            });
            if theirs.is_ok() {
                let xs3: Vec<Tensor> = xs.iter().map(|x| x.unsqueeze(0).unwrap()).collect();
                group.bench_function(BenchmarkId::new("candle-transformers-fused", "BF16"), |b| {
                    let mut next = xs3.iter().cycle();
                    b.iter(|| {
                        let x = next.next().expect("a cycle never ends");
                        let y = layer().theirs.forward(x, prefill);
                        sync();
                        y.expect("FusedMoe forward")
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
