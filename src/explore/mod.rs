//! `moe explore`: one model swept over the knobs that set what a token costs (experts per
//! token, weight format, batch size), each setting measured for speed and energy (or
//! core-seconds) and scored for quality against the model's own setting on a held-out text.
//! This is the experiment behind "sparse MoE buys efficiency without giving up quality":
//! experts per token from 1 up to the model's k, and on to every expert, the compute-matched
//! dense run of the same weights.

mod chart;
pub mod compare;
mod compare_report;
mod report;

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::bench::{self, BenchOptions, BenchResult, Measured};
use crate::energy::{EnergyMeter, EnergyReport, PhaseReport, Reading, Skipped, SourceInfo};
use crate::error::{Error, Result};
use crate::layers::{LoadOptions, Model};
use crate::quality::{self, Agreement};
use crate::quant::QuantFormat;

/// The weight formats explore sweeps: what the weights of matrix products are kept in, with
/// the compute dtype that runs fastest beside it on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    F32,
    Bf16,
    /// q8_0 blocks, bf16 activations.
    Q8_0,
    /// q4_0 blocks, bf16 activations.
    Q4_0,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::F32, Format::Bf16, Format::Q8_0, Format::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::Bf16 => "bf16",
            Format::Q8_0 => "q8_0",
            Format::Q4_0 => "q4_0",
        }
    }

    pub fn compute_dtype(self) -> DType {
        match self {
            Format::F32 => DType::F32,
            _ => DType::BF16,
        }
    }

    fn quant(self) -> Option<QuantFormat> {
        match self {
            Format::Q8_0 => Some(QuantFormat::Q8_0),
            Format::Q4_0 => Some(QuantFormat::Q4_0),
            Format::F32 | Format::Bf16 => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                Error::Input(format!(
                    "format {s} is not supported (f32, bf16, q8_0 or q4_0)"
                ))
            })
    }
}

/// What to sweep, and how long to measure each setting.
#[derive(Debug, Clone, PartialEq)]
pub struct ExploreOptions {
    /// Experts per token; empty: [`default_experts`].
    pub experts: Vec<usize>,
    pub formats: Vec<Format>,
    pub batches: Vec<usize>,
    /// Prompt, generation, repeats and idle baseline of every setting's bench (its batch is
    /// each of `batches` in turn).
    pub bench: BenchOptions,
    /// Passes over all settings, each loading every model again: a setting's runs are spread
    /// over the sweep, so a busy minute on a shared machine does not land on one setting.
    pub rounds: usize,
    /// Held-out tokens scored per setting (the text's first ones), in sequences of at most 512.
    pub quality_tokens: usize,
}

impl Default for ExploreOptions {
    fn default() -> Self {
        ExploreOptions {
            experts: Vec::new(),
            formats: Format::ALL.to_vec(),
            batches: vec![1, 4, 16],
            bench: BenchOptions {
                prompt_len: 64,
                gen_len: 32,
                ..BenchOptions::default()
            },
            rounds: 1,
            quality_tokens: 1024,
        }
    }
}

/// 1 up to the model's `top_k`, then doubling up to every expert (`num_experts`, always
/// included): the sparse settings and the compute-matched dense one.
pub fn default_experts(top_k: usize, num_experts: usize) -> Vec<usize> {
    let mut k: Vec<usize> = (1..=top_k).collect();
    let mut next = top_k * 2;
    while next < num_experts {
        k.push(next);
        next *= 2;
    }
    if top_k < num_experts {
        k.push(num_experts);
    }
    k
}

/// Energy of one setting: per phase as `moe bench` reports it, and the efficiency figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEnergy {
    pub prefill: PhaseReport,
    pub decode: PhaseReport,
    /// Decode tokens per joule (gross) where a source exists.
    pub tokens_per_joule: Option<f64>,
    /// Decode tokens per second of CPU time of the whole process: always there, exact.
    pub tokens_per_core_second: f64,
    pub warnings: Vec<String>,
}

impl RunEnergy {
    /// The figures of a bench's energy report.
    pub fn new(e: EnergyReport) -> RunEnergy {
        RunEnergy {
            tokens_per_joule: e.tokens_per_joule,
            tokens_per_core_second: 1.0 / e.decode.core_seconds_per_token.max(f64::MIN_POSITIVE),
            prefill: e.prefill,
            decode: e.decode,
            warnings: e.warnings,
        }
    }
}

/// One setting's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub experts_per_token: usize,
    pub format: &'static str,
    /// What the matrices were kept in, which differs from `format` where the checkpoint's own
    /// blocks are kept (a GGUF file's `q4_K 84% q6_K 16%` under `f32` or `bf16`).
    pub weights: String,
    pub compute_dtype: String,
    pub batch: usize,
    /// The setting every other is scored against.
    pub reference: bool,
    pub decode_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_runs: Vec<f64>,
    pub prefill_runs: Vec<f64>,
    /// Bytes of weights one decode step of one sequence reads.
    pub bytes_per_token: f64,
    pub energy: RunEnergy,
    /// Mean KL(reference ‖ this) of the next-token distributions over the held-out text, nats.
    pub kl_divergence: f64,
    pub kl_max: f64,
    pub top1_agreement: f64,
    pub perplexity: f64,
}

impl Run {
    /// The figure the charts and the table rank settings by: measured (or estimated) decode
    /// tokens per joule where the meter had a source, else decode tokens per core-second.
    pub fn efficiency(&self) -> f64 {
        self.energy
            .tokens_per_joule
            .unwrap_or(self.energy.tokens_per_core_second)
    }
}

/// What the energy figures of every run are, said once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergySummary {
    pub source: String,
    pub measured: bool,
    pub note: String,
    /// What [`Run::efficiency`] is: "tokens per joule", "tokens per joule (ESTIMATE)" or
    /// "tokens per core-second".
    pub efficiency_unit: String,
    pub idle_watts: Option<f64>,
    pub idle_seconds: Option<f64>,
    pub sources: Vec<SourceInfo>,
    pub skipped: Vec<Skipped>,
}

impl EnergySummary {
    /// What `meter` measured with, against the idle baseline `idle`: source, note and skipped
    /// sources are the meter's, the same for every run.
    pub fn new(meter: &EnergyMeter, idle: Option<&Reading>) -> EnergySummary {
        let summary = BenchResult::new(&Measured::default(), meter, idle).energy;
        let efficiency_unit = match (summary.source.as_str(), summary.measured) {
            ("none", _) => "tokens per core-second",
            (_, true) => "tokens per joule",
            (_, false) => "tokens per joule (ESTIMATE)",
        };
        EnergySummary {
            source: summary.source,
            measured: summary.measured,
            note: summary.note,
            efficiency_unit: efficiency_unit.into(),
            idle_watts: summary.idle_watts,
            idle_seconds: summary.idle_seconds,
            sources: summary.sources.into_iter().map(|s| s.info).collect(),
            skipped: summary.skipped,
        }
    }
}

/// Settings of the sweep, beside its runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exploration {
    /// The model as the caller names it (a folder or hub id): [`run`] only has a loader, so it
    /// leaves this empty for the caller to fill in before writing.
    pub model: String,
    pub num_experts: usize,
    /// A perplexity near this is a uniform guess: the model does not know the text.
    pub vocab_size: usize,
    /// The checkpoint's own experts per token.
    pub model_experts_per_token: usize,
    pub reference_format: &'static str,
    pub held_out_tokens: usize,
    pub prompt_len: usize,
    pub gen_len: usize,
    pub repeats: usize,
    pub rounds: usize,
    pub threads: usize,
    pub cpu_kernels: &'static str,
    pub energy: EnergySummary,
    pub runs: Vec<Run>,
}

/// `f32`, or the shares of a mix: `q4_K 84% q6_K 16%`.
fn describe_formats(formats: &[(&'static str, f64)]) -> String {
    match formats {
        [(one, _)] => one.to_string(),
        mix => mix
            .iter()
            .map(|(f, share)| format!("{f} {:.0}%", 100.0 * share))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Loads one setting's model; explore calls it once per experts-per-token, format and round.
pub type Loader<'a> = dyn FnMut(&LoadOptions) -> Result<Model> + 'a;

/// Longest held-out sequence: long enough for the model to use its context, short enough
/// that the reference logits (positions x vocab, f32) stay small.
const HELD_OUT_SEQUENCE: usize = 512;

/// Sweeps the settings of `opts` on the model that `load` builds from `base` (its device and
/// MoE implementation; dtype, quantization and experts per token are set per setting). The
/// reference, scored first, is the checkpoint's own experts per token in f32. `held_out` is the
/// text scored for quality, as token ids; `log` hears a line per step.
pub fn run(
    load: &mut Loader<'_>,
    base: &LoadOptions,
    held_out: &[u32],
    opts: &ExploreOptions,
    meter: &mut EnergyMeter,
    log: &mut dyn FnMut(String),
) -> Result<Exploration> {
    let with = |k: usize, format: Format| LoadOptions {
        dtype: format.compute_dtype(),
        quant: format.quant(),
        experts_per_token: Some(k),
        ..base.clone()
    };
    // The checkpoint's own k: what a load without an override reads.
    let reference_model = load(&LoadOptions {
        experts_per_token: None,
        ..with(1, Format::F32)
    })?;
    let cfg = reference_model.config().clone();
    if !cfg.has_experts() {
        return Err(Error::Input(format!(
            "explore sweeps experts per token, and this {} model is dense: weigh it against \
             other models with `moe compare`",
            cfg.model_type
        )));
    }
    let (top_k, num_experts) = (cfg.moe.router.top_k, cfg.moe.num_experts);
    let experts = if opts.experts.is_empty() {
        default_experts(top_k, num_experts)
    } else {
        opts.experts.clone()
    };
    check(opts, &experts, num_experts, held_out)?;
    let sequence = HELD_OUT_SEQUENCE.min(cfg.max_position_embeddings);
    let scored = &held_out[..opts.quality_tokens.min(held_out.len())];
    let chunks: Vec<&[u32]> = scored.chunks(sequence).filter(|c| c.len() >= 2).collect();
    log(format!(
        "reference: k = {top_k} of {num_experts} experts, f32, on {} held-out tokens",
        scored.len()
    ));
    let reference = held_out_logits(&reference_model, &chunks)?;
    drop(reference_model);

    let idle = bench::idle_baseline(meter, opts.bench.idle_seconds)?;
    // One entry per (k, format), each with one Measured per batch size.
    let mut quality: Vec<(Agreement, f64)> = Vec::new();
    let mut measured: Vec<Vec<Measured>> = Vec::new();
    let mut bytes: Vec<f64> = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    let settings: Vec<(usize, Format)> = experts
        .iter()
        .flat_map(|&k| opts.formats.iter().map(move |&f| (k, f)))
        .collect();
    for round in 0..opts.rounds {
        for (i, &(k, format)) in settings.iter().enumerate() {
            let model = load(&with(k, format))?;
            if round == 0 {
                let logits = held_out_logits(&model, &chunks)?;
                quality.push(score(&reference, &logits, &chunks)?);
                measured.push(vec![Measured::default(); opts.batches.len()]);
                bytes.push(model.decode_read_bytes());
                kept.push(describe_formats(model.weight_formats()));
            }
            for (b, &batch) in opts.batches.iter().enumerate() {
                log(format!(
                    "round {}/{}: k = {k}, {format}, batch {batch}",
                    round + 1,
                    opts.rounds
                ));
                let bench_opts = BenchOptions {
                    batch,
                    ..opts.bench.clone()
                };
                measured[i][b].extend(&bench::measure(&model, &bench_opts, meter)?);
            }
        }
    }

    let mut runs = Vec::new();
    for (i, &(k, format)) in settings.iter().enumerate() {
        let (agreement, perplexity) = quality[i];
        for (b, &batch) in opts.batches.iter().enumerate() {
            let result = BenchResult::new(&measured[i][b], meter, idle.as_ref());
            let e = result.energy;
            runs.push(Run {
                experts_per_token: k,
                format: format.name(),
                weights: kept[i].clone(),
                compute_dtype: format!("{:?}", format.compute_dtype()).to_lowercase(),
                batch,
                reference: k == top_k && format == Format::F32,
                decode_tokens_per_s: result.decode_tokens_per_s,
                prefill_tokens_per_s: result.prefill_tokens_per_s,
                decode_runs: result.decode_runs,
                prefill_runs: result.prefill_runs,
                bytes_per_token: bytes[i],
                energy: RunEnergy::new(e),
                kl_divergence: agreement.kl_mean,
                kl_max: agreement.kl_max,
                top1_agreement: agreement.top1,
                perplexity,
            });
        }
    }
    Ok(Exploration {
        model: String::new(),
        num_experts,
        vocab_size: cfg.vocab_size,
        model_experts_per_token: top_k,
        reference_format: Format::F32.name(),
        held_out_tokens: scored.len(),
        prompt_len: opts.bench.prompt_len,
        gen_len: opts.bench.gen_len,
        repeats: opts.bench.repeats,
        rounds: opts.rounds,
        threads: rayon::current_num_threads(),
        cpu_kernels: bench::cpu_kernels(),
        energy: EnergySummary::new(meter, idle.as_ref()),
        runs,
    })
}

fn check(
    opts: &ExploreOptions,
    experts: &[usize],
    num_experts: usize,
    held_out: &[u32],
) -> Result<()> {
    let bad = |what: &str| Err(Error::Input(what.to_string()));
    if let Some(k) = experts.iter().find(|&&k| k == 0 || k > num_experts) {
        return bad(&format!(
            "{k} experts per token is out of range 1..={num_experts} for this model"
        ));
    }
    if opts.formats.is_empty() || opts.batches.is_empty() {
        return bad("give at least one format and one batch size");
    }
    if opts.batches.contains(&0) {
        return bad("batch sizes must be at least 1");
    }
    if opts.rounds == 0 {
        return bad("rounds must be at least 1");
    }
    if opts.quality_tokens < 2 || held_out.len() < 2 {
        return bad(&format!(
            "quality needs at least 2 held-out tokens (the text has {}, {} asked for)",
            held_out.len(),
            opts.quality_tokens
        ));
    }
    Ok(())
}

/// Logits (positions, vocab), f32 on the CPU, of each held-out sequence, each on a fresh cache.
fn held_out_logits(model: &Model, chunks: &[&[u32]]) -> Result<Vec<Tensor>> {
    chunks
        .iter()
        .map(|c| {
            let logits = model.forward(c, &mut model.new_cache())?;
            Ok(logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
        })
        .collect()
}

/// Agreement with the reference and perplexity, over all held-out sequences.
fn score(reference: &[Tensor], logits: &[Tensor], chunks: &[&[u32]]) -> Result<(Agreement, f64)> {
    let mut parts = Vec::new();
    let (mut nll, mut scored) = (0f64, 0usize);
    for ((r, l), c) in reference.iter().zip(logits).zip(chunks) {
        parts.push(quality::compare(r, l)?);
        let (sum, n) = quality::next_token_nll(l, c)?;
        nll += sum;
        scored += n;
    }
    Ok((Agreement::merge(&parts), (nll / scored.max(1) as f64).exp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_experts_run_from_one_to_every_expert() {
        assert_eq!(default_experts(2, 8), [1, 2, 4, 8]);
        assert_eq!(
            default_experts(8, 128),
            [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128]
        );
        assert_eq!(default_experts(2, 3), [1, 2, 3]);
        assert_eq!(default_experts(4, 4), [1, 2, 3, 4]);
    }

    #[test]
    fn kept_formats_read_as_one_name_or_a_mix() {
        assert_eq!(describe_formats(&[("bf16", 1.0)]), "bf16");
        let mix = describe_formats(&[("q4_K", 0.8412), ("q6_K", 0.1588)]);
        assert_eq!(mix, "q4_K 84% q6_K 16%");
    }

    #[test]
    fn formats_parse_by_name_and_quantized_ones_compute_in_bf16() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert_eq!(Format::Q4_0.compute_dtype(), DType::BF16);
        assert!("q5"
            .parse::<Format>()
            .unwrap_err()
            .to_string()
            .contains("q5"));
    }
}
