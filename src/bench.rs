//! Throughput measurement against the physical limit: prefill and decode tokens/s (medians over
//! repeats after a warm-up), the bytes of weights one decode step must read, and the machine's
//! read bandwidth measured on the spot, which together bound decode from above; and what each
//! phase cost in energy (or, where nothing measures it, in core-seconds).

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::energy::{EnergyMeter, EnergyReport, PhaseEnergy, Reading};
use crate::error::{Error, Result};
use crate::generate::argmax;
use crate::layers::Model;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Tokens in the prompt (timed as one prefill).
    pub prompt_len: usize,
    /// Decode steps after the prompt (timed together).
    pub gen_len: usize,
    /// Timed runs; the medians are reported. One untimed warm-up run comes first.
    pub repeats: usize,
    /// Sequences decoded together, each step one token of each (`Model::forward_batch`).
    pub batch: usize,
    /// Seconds of idle baseline before the timed runs, where an energy source exists.
    pub idle_seconds: f64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompt_len: 128,
            gen_len: 32,
            repeats: 3,
            batch: 1,
            idle_seconds: 2.0,
        }
    }
}

/// Tokens/s of every timed run, and their medians; with a batch, tokens of all sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub prefill_runs: Vec<f64>,
    pub decode_runs: Vec<f64>,
    /// Every timed run's prefill and decode windows added up per phase.
    pub energy: EnergyReport,
}

impl BenchResult {
    /// The medians and the energy report of `measured`, against the idle baseline `idle`.
    pub fn new(measured: &Measured, meter: &EnergyMeter, idle: Option<&Reading>) -> BenchResult {
        BenchResult {
            prefill_tokens_per_s: median(&measured.prefill_runs),
            decode_tokens_per_s: median(&measured.decode_runs),
            prefill_runs: measured.prefill_runs.clone(),
            decode_runs: measured.decode_runs.clone(),
            energy: EnergyReport::new(meter, &measured.prefill, &measured.decode, idle),
        }
    }
}

/// Timed runs before they are summarised: tokens/s of each, and the meter's windows per phase.
/// Runs of one setting made at different times (`moe explore` interleaves settings) add up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    pub prefill_runs: Vec<f64>,
    pub decode_runs: Vec<f64>,
    pub prefill: PhaseEnergy,
    pub decode: PhaseEnergy,
}

impl Measured {
    pub fn extend(&mut self, other: &Measured) {
        self.prefill_runs.extend(&other.prefill_runs);
        self.decode_runs.extend(&other.decode_runs);
        self.prefill
            .add(&other.prefill.reading, other.prefill.tokens);
        self.decode.add(&other.decode.reading, other.decode.tokens);
    }
}

/// The idle baseline before a run: a window of `seconds` with nothing running, where `meter`
/// has a source to read (core-seconds alone need no baseline).
pub fn idle_baseline(meter: &mut EnergyMeter, seconds: f64) -> Result<Option<Reading>> {
    if !(0.0..=3600.0).contains(&seconds) {
        return Err(Error::Input(format!(
            "idle baseline of {seconds} s: expected 0 to 3600"
        )));
    }
    if meter.sources().next().is_none() || seconds == 0.0 {
        return Ok(None);
    }
    Ok(Some(meter.idle(Duration::from_secs_f64(seconds))?))
}

/// Measures the idle baseline (`opts.idle_seconds`), then [`measure`]s.
pub fn run(model: &Model, opts: &BenchOptions, meter: &mut EnergyMeter) -> Result<BenchResult> {
    check(model, opts)?;
    let idle = idle_baseline(meter, opts.idle_seconds)?;
    let measured = measure(model, opts, meter)?;
    Ok(BenchResult::new(&measured, meter, idle.as_ref()))
}

fn check(model: &Model, opts: &BenchOptions) -> Result<()> {
    let context = model.config().max_position_embeddings;
    if opts.prompt_len == 0 || opts.gen_len == 0 || opts.repeats == 0 || opts.batch == 0 {
        return Err(Error::Input(
            "prompt length, generation length, repeats and batch must be at least 1".into(),
        ));
    }
    crate::Limits::current().check_batch("batch", opts.batch)?;
    if opts.prompt_len.saturating_add(opts.gen_len) > context {
        return Err(Error::Input(format!(
            "prompt {} + generation {} tokens exceed the model's context of {context}",
            opts.prompt_len, opts.gen_len
        )));
    }
    Ok(())
}

/// Runs `opts.repeats` timed prefill + decode runs (each on fresh caches) after one warm-up.
/// Each of the `batch` sequences gets its own fixed pseudo-random prompt (so that their tokens
/// route to different experts, as real ones do), prefilled one after another; then decode steps
/// all of them together, feeding back each one's argmax, as greedy decoding does. Each phase
/// of each run is one window of `meter`.
pub fn measure(model: &Model, opts: &BenchOptions, meter: &mut EnergyMeter) -> Result<Measured> {
    check(model, opts)?;
    let vocab = model.config().vocab_size as u64;
    // Spread over the vocabulary, never a special pattern the model could treat differently.
    let prompts: Vec<Vec<u32>> = (0..opts.batch as u64)
        .map(|b| {
            (0..opts.prompt_len as u64)
                .map(|i| ((i * 7919 + b * 104729 + 13) % vocab) as u32)
                .collect()
        })
        .collect();
    let (prefill_tokens, batch) = (opts.batch * opts.prompt_len, opts.batch);
    let device = model.device();
    let once = |gen_len: usize, meter: &mut EnergyMeter, measured: &mut Measured| -> Result<()> {
        let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
        let window = meter.start()?;
        let start = Instant::now();
        let mut next = prompts
            .iter()
            .zip(&mut caches)
            .map(|(prompt, cache)| argmax(&model.forward_last(prompt, cache)?))
            .collect::<Result<Vec<u32>>>()?;
        device.synchronize()?;
        let prefill = start.elapsed().as_secs_f64();
        measured.prefill.add(&meter.stop(&window)?, prefill_tokens);
        let window = meter.start()?;
        let start = Instant::now();
        for _ in 0..gen_len {
            let logits = model.forward_batch(&next, &mut caches)?; // (batch, vocab)
            next = batch_argmax(&logits)?;
        }
        device.synchronize()?;
        let decode = start.elapsed().as_secs_f64();
        measured.decode.add(&meter.stop(&window)?, batch * gen_len);
        measured.prefill_runs.push(prefill_tokens as f64 / prefill);
        measured
            .decode_runs
            .push((batch * gen_len) as f64 / decode.max(f64::MIN_POSITIVE));
        Ok(())
    };
    // Warm-up: page in the weights, grow the allocator's pools. Not metered.
    let mut unmetered = EnergyMeter::new(Vec::new(), Vec::new());
    once(
        opts.gen_len.min(4),
        &mut unmetered,
        &mut Measured::default(),
    )?;
    let mut measured = Measured::default();
    for _ in 0..opts.repeats {
        once(opts.gen_len, meter, &mut measured)?;
    }
    Ok(measured)
}

/// Each row's argmax of logits: (batch, vocab). On a GPU reduced there, so that one step
/// copies `batch` ids to the host, not `batch` rows of the vocabulary.
fn batch_argmax(logits: &Tensor) -> Result<Vec<u32>> {
    if logits.device().is_cpu() {
        let rows = logits.dim(0)?;
        return (0..rows).map(|b| argmax(&logits.get(b)?)).collect();
    }
    Ok(logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?)
}

/// The middle value (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The CPU kernels this process runs (`portable`, `avx2`, `avx512` or `avx512-bf16`): the best
/// the CPU has, or what the environment variable `MOE_CPU_KERNELS` capped them to.
pub fn cpu_kernels() -> &'static str {
    crate::ops::cpu::Isa::selected().name()
}

/// The machine's read bandwidth in bytes/s: the best of several passes summing a 512 MiB
/// buffer on every thread of rayon's pool (the pool the engine's kernels run on), in the widest
/// vectors the CPU has.
pub fn read_bandwidth() -> f64 {
    const BYTES: usize = 512 << 20;
    const PASSES: usize = 5;
    let data: Vec<u64> = (0..BYTES / 8).into_par_iter().map(|i| i as u64).collect();
    let chunk = data.len() / (rayon::current_num_threads() * 16).max(1);
    // The best reader the CPU has, whatever MOE_CPU_KERNELS caps the kernels to: the limit is
    // the machine's, not the kernels'.
    let isa = crate::ops::cpu::Isa::best();
    let mut best = 0f64;
    for _ in 0..PASSES {
        let start = Instant::now();
        let sum: u64 = data
            .par_chunks(chunk.max(1))
            .map(|c| crate::ops::cpu::sum_u64(isa, c))
            .reduce(|| 0, u64::wrapping_add);
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max(BYTES as f64 / secs);
    }
    best
}

/// The read bandwidth of `device`'s memory in bytes/s: [`read_bandwidth`] on the CPU. On a GPU
/// the best of several passes over a 1 GiB tensor, each timed from one device synchronize to
/// the next, of two kinds: candle's sum (bytes read) and a device-to-device copy (bytes read
/// plus bytes written, the usual measure of HBM bandwidth). Whichever is higher is the limit:
/// a fraction of it never flatters.
pub fn read_bandwidth_on(device: &Device) -> Result<f64> {
    if device.is_cpu() {
        return Ok(read_bandwidth());
    }
    const BYTES: usize = 1 << 30;
    const PASSES: usize = 5;
    let data = Tensor::ones(BYTES / 4, DType::F32, device)?;
    let timed = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        device.synchronize()?;
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    };
    let mut best = 0f64;
    for _ in 0..PASSES {
        let sum = timed(&|| {
            std::hint::black_box(data.sum_all()?);
            Ok(())
        })?;
        let copy = timed(&|| {
            std::hint::black_box(data.copy()?);
            Ok(())
        })?;
        best = best.max(BYTES as f64 / sum).max(2.0 * BYTES as f64 / copy);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
