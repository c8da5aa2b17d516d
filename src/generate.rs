//! Greedy generation: prefill the prompt, then decode one token at a time until the token
//! budget is spent or an end-of-sequence id comes out; with timings.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::Model;

/// Timings of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Time of the prompt's forward pass, which also yields the first new token.
    pub prefill_secs: f64,
    /// Time of the forward passes after the first new token.
    pub decode_secs: f64,
}

impl Stats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
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
    /// The new ids, without the prompt; ends with the eos id when one stopped it.
    pub tokens: Vec<u32>,
    pub stats: Stats,
}

/// Greedy decoding of up to `max_new_tokens` after `prompt`, stopping after any of `eos`.
pub fn greedy(
    model: &Model,
    prompt: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
) -> Result<Generation> {
    let mut cache = model.new_cache();
    let mut stats = Stats {
        prompt_tokens: prompt.len(),
        ..Stats::default()
    };
    let mut tokens = Vec::with_capacity(max_new_tokens);
    if max_new_tokens == 0 {
        return Ok(Generation { tokens, stats });
    }
    let start = Instant::now();
    let mut next = argmax(&model.forward_last(prompt, &mut cache)?)?;
    stats.prefill_secs = start.elapsed().as_secs_f64();
    tokens.push(next);
    let start = Instant::now();
    while tokens.len() < max_new_tokens && !eos.contains(&next) {
        next = argmax(&model.forward_last(&[next], &mut cache)?)?;
        tokens.push(next);
    }
    stats.decode_secs = start.elapsed().as_secs_f64();
    stats.generated_tokens = tokens.len();
    Ok(Generation { tokens, stats })
}

/// The index of the largest logit; the first one on ties, as torch.argmax.
pub fn argmax(logits: &Tensor) -> Result<u32> {
    let v = logits.to_vec1::<f32>()?;
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// End-of-sequence ids, from generation_config.json when present, else config.json; each
/// may hold one id or a list.
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
        match value.get("eos_token_id") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(ids)) => return ids.iter().map(id).collect(),
            Some(v) => return Ok(vec![id(v)?]),
        }
    }
    Ok(Vec::new())
}
