//! One linear layer, y = x · Wᵀ, on the CPU kernels for each weight format, at decode (1 row of
//! x) and prefill (128 rows): the kernels alone, without the model around them.
//!
//!     cargo bench --bench linear
//!     cargo bench --bench linear -- 'decode/q4_K'
//!
//! What one iteration times, by group:
//!
//! - `linear/decode/<format>`: `Linear::forward` of one row against a (4096, 4096) matrix;
//!   successive iterations cycle through copies of it that together exceed 512 MB, so the
//!   weights come from memory, as at decode, not from a cache. Throughput is in bytes of
//!   weights read: criterion's GB/s is the kernel's streaming rate.
//! - `linear/prefill128/<format>`: 128 rows against one such matrix (it stays in cache: prefill
//!   is bound by arithmetic). Throughput is in multiply-adds (criterion's "elements").
//!
//! Formats: bf16 weights (in panels of 16 rows on AVX-512 without AMX, else rows with x
//! rounded to bf16 where the CPU has AVX-512 BF16), and the blocks
//! `--quant` converts to (q8_0, q4_0, MXFP4, q4_K, q6_K; on x86 all but q6_K interleaved in
//! groups of eight rows at load). Weights are random normal, converted at load as `--quant`
//! converts them.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use moe_runtime::layers::Linear;
use moe_runtime::quant::{QuantFormat, Weight};
use moe_runtime::Backend;

const N: usize = 4096;
const K: usize = 4096;
const PREFILL: usize = 128;
/// The copies of the matrix that decode cycles through hold at least this many bytes.
const STREAM_BYTES: f64 = 512e6;

/// The formats measured, by name, with their bytes per weight.
fn formats() -> Vec<(&'static str, Option<QuantFormat>, f64)> {
    let mut out = vec![("bf16", None, 2.0)];
    for f in [
        QuantFormat::Q8_0,
        QuantFormat::Q4_0,
        QuantFormat::Mxfp4,
        QuantFormat::Q4K,
        QuantFormat::Q6K,
    ] {
        out.push((f.name(), Some(f), f.bytes_per_weight()));
    }
    out
}

fn layer(w: &Tensor, format: Option<QuantFormat>) -> Linear {
    let weight = match format {
        None => Weight::new(w.to_dtype(DType::BF16).unwrap(), None, "w").unwrap(),
        Some(f) => Weight::new(w.clone(), Some(f), "w").unwrap(),
    };
    Linear::from_weight(weight, None)
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let be = Backend::cpu();
    let w = Tensor::randn(0f32, 1.0 / (K as f32).sqrt(), (N, K), &dev).unwrap();
    let x1 = Tensor::randn(0f32, 1.0, (1, K), &dev).unwrap();
    let xs = Tensor::randn(0f32, 1.0, (PREFILL, K), &dev).unwrap();
    for (name, format, bytes_per_weight) in formats() {
        let bytes = (N * K) as f64 * bytes_per_weight;
        let copies = (STREAM_BYTES / bytes).ceil() as usize;
        let layers: Vec<Linear> = (0..copies).map(|_| layer(&w, format)).collect();

        let mut group = c.benchmark_group("linear/decode");
        group.throughput(Throughput::Bytes(bytes as u64));
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                next = (next + 1) % layers.len();
                layers[next].forward(&x1, &be).unwrap()
            })
        });
        group.finish();

        let mut group = c.benchmark_group("linear/prefill128");
        group.throughput(Throughput::Elements((PREFILL * N * K) as u64));
        group.sample_size(20);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| layers[0].forward(&xs, &be).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
