//! End to end on CUDA: every fixture family on the GPU against HF's logits (f32, the parity
//! bound of tests/parity.rs) and against the CPU (bf16, prefill long enough for the grouped
//! GEMM, then decode steps), by our kernels and by the slow twin. Without a GPU each test says
//! it skipped and passes, unless MOE_REQUIRE_CUDA=1; CI compiles them with the feature, the GPU
//! machine runs them with that set.
//!
//! Same experts: the CUDA router's choices are checked against the CPU router's on the same
//! logits in src/ops/cuda/tests.rs; here a different expert anywhere would move that position's
//! logits by far more than the f32 bound (a tenth to a half of the largest logit on these
//! fixtures), so agreement within 1e-4 means every layer chose as HF did.

#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, position_errors, reference, FIXTURES};
use moe_runtime::{generate, Kernels, LoadOptions, Model};

/// As tests/parity.rs: f32 within 1e-4 of the largest reference logit.
const F32_BOUND: f32 = 1e-4;
/// bf16 on two devices: each rounds differently (the GPU's GEMM also rounds the activation), so
/// as in tests/parity.rs, 6% of the largest logit at every position but one.
const BF16_BOUND: f32 = 0.06;
/// Prompt length for the bf16 comparison: with k = 1..3 over 4..8 experts, enough slots per
/// expert that the grouped GEMM runs wherever the fixture's sizes are multiples of 8
/// (mixtral-a, olmoe-a, qwen2_moe-b); the rest take the decode kernel. Below the fixtures'
/// 128 positions.
const LONG_PROMPT: usize = 120;

use moe_runtime::device::gpu_for_tests as gpu;

fn load(name: &str, dtype: DType, kernels: Kernels, device: &Device) -> Model {
    let opts = LoadOptions {
        dtype,
        kernels,
        device: device.clone(),
        ..LoadOptions::default()
    };
    Model::load(&fixture(name), &opts).unwrap()
}

fn on_cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// The largest per-position error after sparing the `spared` worst positions.
fn worst(a: &Tensor, b: &Tensor, spared: usize) -> f32 {
    let mut errors = position_errors(&on_cpu(a), &on_cpu(b));
    errors.sort_by(f32::total_cmp);
    errors[errors.len() - 1 - spared]
}

#[test]
fn f32_logits_on_cuda_match_hf_with_both_moe_paths() {
    let Some(dev) = gpu() else { return };
    for name in FIXTURES {
        let r = reference(name);
        for imp in [Kernels::Fast, Kernels::Reference] {
            let model = load(name, DType::F32, imp, &dev);
            let logits = model.forward(&r.tokens, &mut model.new_cache()).unwrap();
            let err = worst(&logits, &r.logits, 0);
            assert!(err <= F32_BOUND, "{name} {imp:?}: {err:e} > {F32_BOUND:e}");
            eprintln!("{name} {imp:?}: f32 on CUDA vs HF {err:.2e}");
        }
    }
}

#[test]
fn greedy_continuations_on_cuda_match_hf() {
    let Some(dev) = gpu() else { return };
    for name in FIXTURES {
        let r = reference(name);
        let model = load(name, DType::F32, Kernels::Fast, &dev);
        let gen = generate::greedy(&model, &r.tokens, r.greedy.len(), &[]).unwrap();
        assert_eq!(gen.tokens, r.greedy, "{name}");
    }
}

#[test]
fn bf16_on_cuda_agrees_with_bf16_on_cpu_in_prefill_and_decode() {
    let Some(dev) = gpu() else { return };
    for name in FIXTURES {
        let r = reference(name);
        let prompt: Vec<u32> = r.tokens.iter().copied().cycle().take(LONG_PROMPT).collect();
        let cpu = load(name, DType::BF16, Kernels::Fast, &Device::Cpu);
        let gpu = load(name, DType::BF16, Kernels::Fast, &dev);
        let (mut cpu_cache, mut gpu_cache) = (cpu.new_cache(), gpu.new_cache());
        let want = cpu.forward(&prompt, &mut cpu_cache).unwrap();
        let got = gpu.forward(&prompt, &mut gpu_cache).unwrap();
        let prefill = worst(&got, &want, 1);
        assert!(prefill <= BF16_BOUND, "{name} prefill: {prefill:e}");
        // Decode steps on the decode kernel, both fed the CPU's greedy token.
        let mut next = generate::argmax(&on_cpu(&want).get(LONG_PROMPT - 1).unwrap()).unwrap();
        let mut step_errors = Vec::new();
        for _ in 0..4 {
            let want = cpu.forward(&[next], &mut cpu_cache).unwrap();
            let got = gpu.forward(&[next], &mut gpu_cache).unwrap();
            step_errors.push(worst(&got, &want, 0));
            next = generate::argmax(&on_cpu(&want).get(0).unwrap()).unwrap();
        }
        step_errors.sort_by(f32::total_cmp);
        // Every step but one, as for positions above.
        let decode = step_errors[step_errors.len() - 2];
        assert!(decode <= BF16_BOUND, "{name} decode: {step_errors:?}");
        eprintln!("{name}: bf16 CUDA vs CPU, prefill {prefill:.2e}, decode {step_errors:?}");
    }
}

/// Work launched on one thread and read back on another must not race (candle's own
/// `Device::new_cuda` puts each thread on its own stream, unordered with the others): greedy
/// generations from many prompts, from the test thread while rayon's pool is up, and from
/// several threads at once on one shared model, equal token for token the same generations run
/// one after another inside a one-thread pool, on bf16 (prefill on the grouped GEMM) and f32.
#[test]
fn generations_from_many_threads_match_a_single_threaded_run() {
    let Some(dev) = gpu() else { return };
    const NEW_TOKENS: usize = 24;
    for (name, dtype) in [("qwen3_moe-a", DType::F32), ("mixtral-a", DType::BF16)] {
        let r = reference(name);
        let model = load(name, dtype, Kernels::Fast, &dev);
        // Prompts of 8 to 64 tokens, each a different slice of the fixture's prompt.
        let prompts: Vec<Vec<u32>> = (0..8)
            .map(|i| {
                let cycled = r.tokens.iter().copied().cycle().skip(3 * i);
                cycled.take(8 + 8 * i).collect()
            })
            .collect();
        let run = |p: &Vec<u32>| generate::greedy(&model, p, NEW_TOKENS, &[]).unwrap().tokens;
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let want: Vec<Vec<u32>> = one.install(|| prompts.iter().map(run).collect());
        for round in 0..4 {
            let got: Vec<Vec<u32>> = prompts.iter().map(run).collect();
            assert_eq!(got, want, "{name}: round {round} from the test thread");
        }
        let got: Vec<Vec<u32>> = std::thread::scope(|s| {
            let threads: Vec<_> = prompts.iter().map(|p| s.spawn(move || run(p))).collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(got, want, "{name}: one thread per prompt");
    }
}
