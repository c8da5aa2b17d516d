//! Generation: prefill the prompt, then decode one token at a time until the token budget is
//! spent, a stop id comes out, the context is full or the caller says stop; with timings.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::layers::{Cache, Model};
use crate::reasoning::OutputFormat;
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::Tokenizer;

/// Timings of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens that went through the model; fewer than `prompt_tokens` when a cache
    /// already held the rest (a chat's earlier turns).
    pub prefilled_tokens: usize,
    pub generated_tokens: usize,
    /// Time of the prompt's forward pass, which also yields the first new token.
    pub prefill_secs: f64,
    /// Time of the forward passes after the first new token.
    pub decode_secs: f64,
}

impl Stats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prefilled_tokens, self.prefill_secs)
    }

    /// From the call to the first new token: the prefill.
    pub fn time_to_first_token_secs(&self) -> f64 {
        self.prefill_secs
    }

    /// Decode steps per second: every new token after the first costs one forward pass.
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new ids, without the prompt; ends with the stop id when one stopped it.
    pub tokens: Vec<u32>,
    pub stats: Stats,
    pub stop: StopReason,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id (end of sequence) came out.
    StopToken,
    /// A stop string appeared in the text (text generation only).
    StopString,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model's context is full.
    ContextFull,
    /// The streaming callback asked to stop.
    Callback,
}

/// What the streaming callback tells the generator after each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Ids that end generation (they are kept in the output).
    pub stop_tokens: Vec<u32>,
    pub sampling: SamplingConfig,
}

/// Prefills `prompt`, then decodes one token at a time, calling `on_token` with each new id.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> Flow,
) -> Result<Generation> {
    generate_cached(model, &mut model.new_cache(), prompt, opts, on_token)
}

/// As [`generate`], for a `prompt` whose first `cache.position()` tokens are in `cache`
/// already: only the rest is prefilled. Afterwards the cache holds the prompt and every new
/// token but the last (which was sampled, not yet fed back).
pub fn generate_cached(
    model: &Model,
    cache: &mut Cache,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Flow,
) -> Result<Generation> {
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let cached = cache.position();
    let context = model.config().max_position_embeddings;
    if prompt.is_empty() {
        return Err(Error::Input(
            "the prompt is empty: generation needs at least one token to continue".into(),
        ));
    }
    if prompt.len() > context {
        return Err(Error::Input(format!(
            "the prompt's {} tokens exceed the model's context of {context} \
             (max_position_embeddings)",
            prompt.len()
        )));
    }
    if cached >= prompt.len() {
        return Err(Error::Input(format!(
            "the cache holds {cached} tokens; the prompt ({} tokens) must go beyond it",
            prompt.len()
        )));
    }
    let mut stats = Stats {
        prompt_tokens: prompt.len(),
        prefilled_tokens: prompt.len() - cached,
        ..Stats::default()
    };
    let mut history = prompt.to_vec();
    // The budget may be any number; the context bounds what can come.
    let mut tokens = Vec::with_capacity(opts.max_new_tokens.min(context));
    let mut stop = StopReason::MaxTokens;
    let mut input = prompt[cached..].to_vec();
    let mut decode_start = None;
    while tokens.len() < opts.max_new_tokens {
        if cache.position() + input.len() > context {
            stop = StopReason::ContextFull;
            break;
        }
        let start = Instant::now();
        let logits = model.forward_last(&input, cache)?.to_vec1::<f32>()?;
        check_logits(model, &logits, &history, tokens.len(), cache.position() - 1)?;
        let next = sampler.sample(&logits, &history);
        if tokens.is_empty() {
            stats.prefill_secs = start.elapsed().as_secs_f64();
            decode_start = Some(Instant::now());
        }
        tokens.push(next);
        history.push(next);
        input = vec![next];
        if on_token(next) == Flow::Stop {
            stop = StopReason::Callback;
            break;
        }
        if opts.stop_tokens.contains(&next) {
            stop = StopReason::StopToken;
            break;
        }
    }
    stats.decode_secs = decode_start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    stats.generated_tokens = tokens.len();
    Ok(Generation {
        tokens,
        stats,
        stop,
    })
}

/// Refuses `logits` with a NaN or an infinity (a broken weight, a degenerate config: sampled,
/// they would give token 0 forever), naming the step, the position and the first stage of the
/// forward over `history` whose output is not finite. That diagnosis costs a forward, run only
/// once the logits are found broken.
pub(crate) fn check_logits(
    model: &Model,
    logits: &[f32],
    history: &[u32],
    step: usize,
    position: usize,
) -> Result<()> {
    let Some(id) = logits.iter().position(|l| !l.is_finite()) else {
        return Ok(());
    };
    let origin = match model.first_non_finite(history) {
        Ok(Some(stage)) => format!("; the first output that is not finite is {stage}'s"),
        Ok(None) | Err(_) => String::new(),
    };
    Err(Error::Input(format!(
        "step {step} (position {position}): the model's logits are not finite ({} at token id \
         {id}){origin}; a weight or a config value of this checkpoint is broken",
        logits[id]
    )))
}

/// Greedy decoding of up to `max_new_tokens` after `prompt`, stopping after any of `eos`.
pub fn greedy(
    model: &Model,
    prompt: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
) -> Result<Generation> {
    let opts = GenerateOptions {
        max_new_tokens,
        stop_tokens: eos.to_vec(),
        sampling: SamplingConfig::default(),
    };
    generate(model, prompt, &opts, |_| Flow::Continue)
}

/// The index of the largest logit of `logits: (vocab,)`; the first one on ties, as torch.argmax.
pub fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(crate::sampling::argmax(&logits.to_vec1::<f32>()?))
}

/// The ids that end generation for the checkpoint in `dir`: the end-of-sequence ids of its
/// generation_config.json (or config.json) and of its tokenizer, and those that end a turn in
/// its output format (harmony's `<|return|>` and `<|call|>`), without repeats.
pub fn stop_tokens(dir: &Path, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>> {
    let mut ids = eos_token_ids(dir)?;
    let mut more = Vec::new();
    if let Some(tokenizer) = tokenizer {
        more.extend_from_slice(tokenizer.eos_ids());
        more.extend(OutputFormat::of(tokenizer).stop_ids());
    }
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// End-of-sequence ids, from generation_config.json when present, else config.json (its own,
/// or its `text_config`'s); each may hold one id or a list.
pub fn eos_token_ids(dir: &Path) -> Result<Vec<u32>> {
    for file in ["generation_config.json", "config.json"] {
        let path = dir.join(file);
        if !path.exists() {
            continue;
        }
        let value = crate::json::read(&path)?;
        let bad = || Error::config(&path, "eos_token_id", "expected an id or a list of ids");
        let id = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        };
        // A multimodal checkpoint's text model may carry its own.
        let eos = value
            .get("eos_token_id")
            .filter(|v| !v.is_null())
            .or_else(|| value.get("text_config").and_then(|t| t.get("eos_token_id")));
        match eos {
            None | Some(Value::Null) => continue,
            Some(Value::Array(ids)) => return ids.iter().map(id).collect(),
            Some(v) => return Ok(vec![id(v)?]),
        }
    }
    Ok(Vec::new())
}
