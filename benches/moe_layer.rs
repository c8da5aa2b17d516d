//! One MoE layer's routed experts, fast path against the reference loop, at decode (1 token)
//! and prefill (128 tokens), on named shapes with random weights.
//!
//!     cargo bench --bench moe_layer
//!     cargo bench --bench moe_layer -- 'q3-mini/decode'

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use moe_runtime::moe::{Experts, MoeImpl, RouterConfig, Routing};

/// A routed-expert shape: hidden size, experts, experts per token, expert FFN width.
struct Shape {
    name: &'static str,
    hidden: usize,
    experts: usize,
    top_k: usize,
    intermediate: usize,
}

const SHAPES: &[Shape] = &[
    // DESIGN.md section 5: the q3-mini benchmark model's layer.
    Shape {
        name: "q3-mini",
        hidden: 1024,
        experts: 64,
        top_k: 8,
        intermediate: 512,
    },
    // One Qwen3-30B-A3B MoE layer.
    Shape {
        name: "qwen3-30b-a3b",
        hidden: 2048,
        experts: 128,
        top_k: 8,
        intermediate: 768,
    },
];

/// Routings cycled through by successive iterations, so that over a few iterations every
/// expert is read and the timings are of memory, not of a cache holding the same k experts.
const ROUTINGS: usize = 16;

fn setup(s: &Shape, tokens: usize, dtype: DType) -> (Tensor, Experts, Vec<Routing>) {
    let dev = Device::Cpu;
    let rand = |shape: (usize, usize, usize)| {
        Tensor::randn(0f32, 0.02, shape, &dev)
            .and_then(|t| t.to_dtype(dtype))
            .expect("random weights")
    };
    let experts = Experts {
        gate_up: rand((s.experts, 2 * s.intermediate, s.hidden)),
        down: rand((s.experts, s.hidden, s.intermediate)),
    };
    let xs = Tensor::randn(0f32, 1.0, (tokens, s.hidden), &dev)
        .and_then(|t| t.to_dtype(dtype))
        .expect("random tokens");
    let cfg = RouterConfig {
        top_k: s.top_k,
        norm_topk_prob: true,
    };
    let routings = (0..ROUTINGS)
        .map(|_| {
            let logits =
                Tensor::randn(0f32, 1.0, (tokens, s.experts), &dev).expect("random logits");
            Routing::from_logits(&logits, cfg).expect("routing")
        })
        .collect();
    (xs, experts, routings)
}

fn bench(c: &mut Criterion) {
    for s in SHAPES {
        for (phase, tokens) in [("decode", 1), ("prefill128", 128)] {
            let mut group = c.benchmark_group(format!("{}/{phase}", s.name));
            group.sample_size(10);
            group.throughput(Throughput::Elements(tokens as u64));
            for dtype in [DType::F32, DType::BF16] {
                let (xs, experts, routings) = setup(s, tokens, dtype);
                for imp in [MoeImpl::Fast, MoeImpl::Reference] {
                    let id = BenchmarkId::new(format!("{imp:?}"), format!("{dtype:?}"));
                    let mut next = routings.iter().cycle();
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            let routing = next.next().expect("a cycle never ends");
                            experts.forward(&xs, routing, imp).expect("forward")
                        })
                    });
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
