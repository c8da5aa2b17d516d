//! `moe compare`: several checkpoints measured the same way on one held-out text, each at its
//! own settings (its own experts per token) in each weight format asked for: speed, energy
//! (or core-seconds), bytes read and FLOPs per token, and quality as perplexity and bits per
//! byte. This is the other half of the efficiency question `moe explore` asks of one model:
//! not "what do more of these weights buy" but "does a sparse model beat dense models trained
//! the same way".

use serde::Serialize;

use super::{EnergySummary, Format, Loader, RunEnergy};
use crate::bench::{self, BenchOptions, BenchResult, Measured};
use crate::energy::EnergyMeter;
use crate::error::{Error, Result};
use crate::layers::{LoadOptions, Model};
use crate::quality;

/// Longest scored sequence, as in `moe explore`.
const HELD_OUT_SEQUENCE: usize = 512;

/// One model to compare: how to load it, and the held-out text in its own tokens.
pub struct Contender<'a> {
    /// As the caller names it (a folder or hub id).
    pub name: String,
    pub load: Box<Loader<'a>>,
    /// The held-out text as this model's tokenizer reads it (models may differ in tokenizer).
    pub held_out: Vec<u32>,
}

/// How to measure every model.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareOptions {
    pub formats: Vec<Format>,
    /// Prompt, generation, repeats, batch and idle baseline of every bench.
    pub bench: BenchOptions,
    /// Passes over all models and formats, each loading every model again.
    pub rounds: usize,
}

/// One model in one format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub model: String,
    pub format: &'static str,
    #[serde(flatten)]
    pub profile: Profile,
    pub decode_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_runs: Vec<f64>,
    pub prefill_runs: Vec<f64>,
    pub energy: RunEnergy,
}

/// What an entry is and how well it knows the text: the figures that come from the loaded
/// model alone, not from timing it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub model_type: String,
    /// Routed experts and experts per token; `None` for a dense model.
    pub experts: Option<Experts>,
    pub total_parameters: u64,
    pub active_parameters: u64,
    /// What the matrices were kept in (a GGUF file's own blocks under `f32` or `bf16`).
    pub weights: String,
    /// Bytes of weights (and recurrent state) one decode step of one sequence reads.
    pub bytes_per_token: f64,
    /// FLOPs of one decode step at the mean context of the timed decode
    /// (`ModelConfig::decode_flops`).
    pub flops_per_token: f64,
    /// Held-out tokens predicted (every token of the text after the first).
    pub held_out_tokens: usize,
    pub perplexity: f64,
    /// The same negative log-likelihood per byte of the text, in bits: comparable across
    /// tokenizers, where perplexity per token is not.
    pub bits_per_byte: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Experts {
    pub num_experts: usize,
    pub per_token: usize,
}

impl Entry {
    /// Decode tokens per joule where the meter had a source, else per core-second.
    pub fn efficiency(&self) -> f64 {
        self.energy
            .tokens_per_joule
            .unwrap_or(self.energy.tokens_per_core_second)
    }

    /// "8 experts, top-2" or "dense".
    pub fn sparsity(&self) -> String {
        match self.profile.experts {
            Some(e) => format!("{} experts, top-{}", e.num_experts, e.per_token),
            None => "dense".into(),
        }
    }
}

/// The whole comparison: how it was measured, and every model in every format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The held-out text as the caller names it; filled in by the caller.
    pub text: String,
    pub text_bytes: usize,
    pub prompt_len: usize,
    pub gen_len: usize,
    pub batch: usize,
    pub repeats: usize,
    pub rounds: usize,
    pub threads: usize,
    pub cpu_kernels: &'static str,
    pub energy: EnergySummary,
    pub entries: Vec<Entry>,
}

impl Comparison {
    /// Whether every entry predicted the same number of held-out tokens (one tokenizer), so
    /// that perplexities can be set side by side; else bits per byte must be.
    pub fn one_tokenizer(&self) -> bool {
        self.entries
            .windows(2)
            .all(|w| w[0].profile.held_out_tokens == w[1].profile.held_out_tokens)
    }
}

/// Measures every contender in every format of `opts`: quality once per (model, format) in the
/// first round, then speed and energy in each round, the models interleaved so that a busy
/// minute on a shared machine does not land on one of them. `text_bytes` is the held-out text's
/// length in bytes (for bits per byte); `log` hears a line per step.
pub fn run(
    contenders: &mut [Contender<'_>],
    base: &LoadOptions,
    text_bytes: usize,
    opts: &CompareOptions,
    meter: &mut EnergyMeter,
    log: &mut dyn FnMut(String),
) -> Result<Comparison> {
    check(contenders, text_bytes, opts)?;
    let with = |format: Format| LoadOptions {
        dtype: format.compute_dtype(),
        quant: format.quant(),
        experts_per_token: None,
        ..base.clone()
    };
    let idle = bench::idle_baseline(meter, opts.bench.idle_seconds)?;
    let settings: Vec<(usize, Format)> = (0..contenders.len())
        .flat_map(|m| opts.formats.iter().map(move |&f| (m, f)))
        .collect();
    // Filled in the first round: the figures that do not change between rounds.
    let mut profiles: Vec<Profile> = Vec::new();
    let mut measured = vec![Measured::default(); settings.len()];
    // The decode's mean context: the prompt, then half the generated tokens.
    let context = opts.bench.prompt_len + opts.bench.gen_len / 2;
    for round in 0..opts.rounds {
        for (i, &(m, format)) in settings.iter().enumerate() {
            let c = &mut contenders[m];
            let name = &c.name;
            log(format!(
                "round {}/{}: {name}, {format}",
                round + 1,
                opts.rounds
            ));
            let model = (c.load)(&with(format))?;
            if round == 0 {
                let p = profile(&model, &c.held_out, context, text_bytes)?;
                log(format!(
                    "{name}, {format}: perplexity {:.3}, {:.4} bits per byte over {} held-out \
                     tokens",
                    p.perplexity, p.bits_per_byte, p.held_out_tokens
                ));
                profiles.push(p);
            }
            measured[i].extend(&bench::measure(&model, &opts.bench, meter)?);
        }
    }
    let entries = settings
        .iter()
        .zip(profiles)
        .zip(&measured)
        .map(|((&(m, format), profile), measured)| {
            let result = BenchResult::new(measured, meter, idle.as_ref());
            Entry {
                model: contenders[m].name.clone(),
                format: format.name(),
                profile,
                decode_tokens_per_s: result.decode_tokens_per_s,
                prefill_tokens_per_s: result.prefill_tokens_per_s,
                decode_runs: result.decode_runs,
                prefill_runs: result.prefill_runs,
                energy: RunEnergy::new(result.energy),
            }
        })
        .collect();
    Ok(Comparison {
        text: String::new(),
        text_bytes,
        prompt_len: opts.bench.prompt_len,
        gen_len: opts.bench.gen_len,
        batch: opts.bench.batch,
        repeats: opts.bench.repeats,
        rounds: opts.rounds,
        threads: rayon::current_num_threads(),
        cpu_kernels: bench::cpu_kernels(),
        energy: EnergySummary::new(meter, idle.as_ref()),
        entries,
    })
}

fn check(contenders: &[Contender<'_>], text_bytes: usize, opts: &CompareOptions) -> Result<()> {
    let bad = |what: String| Err(Error::Input(what));
    if contenders.is_empty() || opts.formats.is_empty() {
        return bad("give at least one model and one format".into());
    }
    if opts.rounds == 0 {
        return bad("rounds must be at least 1".into());
    }
    if let Some(c) = contenders.iter().find(|c| c.held_out.len() < 2) {
        return bad(format!(
            "the held-out text is {} tokens for {}: quality needs at least 2",
            c.held_out.len(),
            c.name
        ));
    }
    if text_bytes == 0 {
        return bad("the held-out text is empty".into());
    }
    Ok(())
}

/// The figures that come from the model alone: its shape, bytes and FLOPs per token at
/// `context` cached positions, and its quality on the held-out text of `text_bytes` bytes.
fn profile(model: &Model, held_out: &[u32], context: usize, text_bytes: usize) -> Result<Profile> {
    let cfg = model.config();
    let (total, active) = cfg.parameter_counts();
    let (nll, scored) = held_out_nll(model, held_out)?;
    Ok(Profile {
        model_type: cfg.model_type.clone(),
        experts: cfg.has_experts().then_some(Experts {
            num_experts: cfg.moe.num_experts,
            per_token: cfg.moe.router.top_k,
        }),
        total_parameters: total as u64,
        active_parameters: active as u64,
        weights: super::describe_formats(model.weight_formats()),
        bytes_per_token: model.decode_read_bytes(),
        flops_per_token: cfg.decode_flops(context),
        held_out_tokens: scored,
        perplexity: (nll / scored.max(1) as f64).exp(),
        bits_per_byte: nll / std::f64::consts::LN_2 / text_bytes as f64,
    })
}

/// The summed negative log-likelihood (nats) of every token of `tokens` after the first, and
/// how many that is. Scored in sequences of at most 512 positions (or the model's context),
/// each on a fresh cache and starting on the last token of the one before, so that every
/// token is predicted exactly once.
pub fn held_out_nll(model: &Model, tokens: &[u32]) -> Result<(f64, usize)> {
    let sequence = HELD_OUT_SEQUENCE.min(model.config().max_position_embeddings);
    if sequence < 2 {
        return Err(Error::Input(
            "a context of fewer than 2 positions predicts nothing".into(),
        ));
    }
    let (mut nll, mut scored) = (0f64, 0usize);
    let mut start = 0;
    while start + 1 < tokens.len() {
        let chunk = &tokens[start..(start + sequence).min(tokens.len())];
        let logits = model.forward(chunk, &mut model.new_cache())?;
        let (sum, n) = quality::next_token_nll(&logits, chunk)?;
        nll += sum;
        scored += n;
        start += sequence - 1;
    }
    Ok((nll, scored))
}
