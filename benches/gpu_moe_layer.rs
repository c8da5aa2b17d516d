//! One MoE layer on a CUDA GPU in bf16: ours (`SparseMoe` on the device: our routing,
//! alignment, decode kernel or grouped GEMM, and combine) against candle-transformers 0.11's
//! `FusedMoe` (candle-nn's moe_gemm kernels, what its qwen3_moe runs under `cuda`), on the
//! same weights, at 1, 8 and 32 tokens (decode batches) and 512 and 4096 (prefill).
//!
//!     cargo bench --features cuda --bench gpu_moe_layer
//!     cargo bench --features cuda --bench gpu_moe_layer -- 'qwen3-30b-a3b/decode1'
//!
//! One iteration is one forward of the block on one of 16 random inputs (so successive
//! iterations route to different experts), then a device synchronize, so the clock covers the
//! GPU's work. candle-transformers is told `is_prefill` for 512 and 4096 tokens, as its model
//! does for prompts, and not for decode batches.
//!
//! Before timing, both outputs on one input are compared: every token's row must agree within
//! 2% of the largest output, but for rows whose k-th and (k+1)-th router logits are within two
//! bf16 steps (a near-tie, which the two top-k sorts may rightly break differently); the bench
//! fails at the end, after every measurement, if any does not. It prints what the setting must move: the bytes of the experts it
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
use moe_runtime::layers::SparseMoe;
use moe_runtime::quant::Weight;
use moe_runtime::weights::Weights;
use moe_runtime::{Backend, Kernels};

mod common;
use common::{configure, sparse_moe, Shape, SEED};

const SHAPES: [&Shape; 2] = [&common::Q3_MINI, &common::QWEN3_30B_A3B];
const PHASES: [(&str, usize); 5] = [
    ("decode1", 1),
    ("decode8", 8),
    ("decode32", 32),
    ("prefill512", 512),
    ("prefill4096", 4096),
];
const INPUTS: usize = 16;

struct Layer {
    ours: SparseMoe,
    /// The GPU's backend, which runs our router.
    backend: Backend,
    theirs: FusedMoe,
}

impl Layer {
    fn new(s: &Shape, dev: &Device) -> Layer {
        let dtype = DType::BF16;
        let weights = Weights::random(SEED, dtype, dev);
        let backend = Backend::new(dev, dtype, Kernels::Fast);
        let ours = sparse_moe(s, &weights, backend.clone());
        // FusedMoe reads one tensor per expert and projection by hub name and stacks them
        // itself. On a GPU a random name read twice gives new values, so its tensors are cut
        // from ours: the same values, each in storage of its own as a checkpoint's would be.
        let dense = |w: &Weight| w.dense(dtype).expect("the bench builds bf16 experts");
        let (gate_up, down) = (dense(&ours.experts.gate_up), dense(&ours.experts.down));
        let own = |t: Tensor| t.contiguous().and_then(|t| t.copy()).expect("a copy");
        let router = dense(ours.router.linear.weight());
        let mut tensors = HashMap::from([("gate.weight".to_string(), own(router))]);
        let i = s.expert_ffn;
        for e in 0..s.experts {
            let expert = |w: &Tensor, start: usize, len: usize| {
                own(w
                    .get(e)
                    .and_then(|w| w.narrow(0, start, len))
                    .expect("a slice"))
            };
            for (proj, t) in [
                ("gate_proj", expert(&gate_up, 0, i)),
                ("up_proj", expert(&gate_up, i, i)),
                ("down_proj", expert(&down, 0, s.hidden)),
            ] {
                tensors.insert(format!("experts.{e}.{proj}.weight"), t);
            }
        }
        let cfg = MoeCfg {
            hidden_size: s.hidden,
            num_experts: s.experts,
            num_experts_per_tok: s.top_k,
            moe_intermediate_size: i,
            norm_topk_prob: true,
            act: Activation::Silu,
            decoder_sparse_step: None,
        };
        let vb = VarBuilder::from_tensors(tensors, dtype, dev);
        let theirs = FusedMoe::new(&cfg, vb, dtype).expect("candle-transformers' FusedMoe");
        Layer {
            ours,
            backend,
            theirs,
        }
    }

    /// The rows whose choice of experts does not hang on a near-tie of router logits: the
    /// gap between the k-th and (k+1)-th largest bf16 logits above two bf16 steps at that
    /// size. Elsewhere the two top-k sorts (ours stable, theirs a bitonic sort) may rightly
    /// choose different experts. xs: (tokens, hidden).
    fn decided_rows(&self, xs: &Tensor, k: usize) -> Vec<bool> {
        let logits = self
            .ours
            .router
            .linear
            .forward(xs, &self.backend)
            .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?))
            .expect("router logits");
        logits
            .into_iter()
            .map(|mut row| {
                row.sort_by(|a, b| b.total_cmp(a));
                let (kth, next) = (row[k - 1], row[k]);
                kth - next > 2.0 * kth.abs().max(next.abs()).max(1e-3) / 128.0
            })
            .collect()
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

/// (rows compared, rows agreeing): of the rows `decided` marks, those of `got` within
/// [`ROW_BOUND`] of `want`'s, relative to its largest value.
fn rows_agreeing(got: &Tensor, want: &Tensor, decided: &[bool]) -> (usize, usize) {
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
    let compared = rows.iter().zip(decided).filter(|(_, &d)| d);
    let agreeing = compared
        .clone()
        .filter(|(&r, _)| r <= ROW_BOUND * scale)
        .count();
    (compared.count(), agreeing)
}

fn bench(c: &mut Criterion) {
    // MOE_REQUIRE_CUDA=1 makes a missing GPU an error rather than an empty run.
    let Some(dev) = moe_runtime::device::gpu_for_tests() else {
        eprintln!("gpu_moe_layer: nothing to measure");
        return;
    };
    let sync = || dev.synchronize().expect("device synchronize");
    // Settings where our output disagrees with FusedMoe's: reported after every measurement.
    let mut disagreements = Vec::new();
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
            let ours = layer()
                .ours
                .forward(&xs[0], &layer().backend)
                .expect("our forward");
            let theirs = layer()
                .theirs
                .forward(&xs[0].unsqueeze(0).expect("a batch of one"), prefill)
                .and_then(|t| t.squeeze(0));
            // A failed launch is an error the context recovers from; the next one runs.
            let agreement = match &theirs {
                Ok(theirs) => {
                    let decided = layer().decided_rows(&xs[0], s.top_k);
                    let (compared, agreeing) = rows_agreeing(&ours, theirs, &decided);
                    if agreeing < compared {
                        disagreements.push(format!("{}/{phase}", s.name));
                    }
                    format!(
                        "{agreeing} of {compared} rows agree with FusedMoe ({} on router \
                         near-ties not compared)",
                        tokens - compared
                    )
                }
                Err(e) => format!("FusedMoe n/a: {}", e.to_string().replace('\n', " ")),
            };
            print_costs(s, phase, tokens, &agreement);

            group.bench_function(BenchmarkId::new("ours", "BF16"), |b| {
                let mut next = xs.iter().cycle();
                b.iter(|| {
                    let l = layer();
                    let y = l
                        .ours
                        .forward(next.next().expect("a cycle never ends"), &l.backend);
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
    assert!(
        disagreements.is_empty(),
        "our output differs from FusedMoe's on rows whose experts are not in doubt: {}",
        disagreements.join(", ")
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
