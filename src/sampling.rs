//! Choosing the next token from logits: greedy, or temperature with top-k, top-p and min-p
//! filters and a repetition penalty, drawn from a seeded generator so that runs repeat exactly.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::error::{Error, Result};

/// How to pick tokens. The default is greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 picks the most likely token; otherwise logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities sum to at least p.
    pub top_p: Option<f64>,
    /// Drop tokens less likely than min_p times the most likely one.
    pub min_p: Option<f64>,
    /// Divides positive (multiplies negative) logits of tokens seen in the last
    /// `repeat_last_n` tokens, as HF's `repetition_penalty`; 1 switches it off.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// The checkpoint's own defaults, from generation_config.json in `dir`, as HF's
    /// `generate()` applies them: greedy unless `do_sample`; then `temperature` (default 1),
    /// `top_k` (default 50), `top_p`, `min_p`, `repetition_penalty`. Greedy when the file is
    /// absent.
    pub fn from_generation_config(dir: &Path) -> Result<SamplingConfig> {
        let path = dir.join("generation_config.json");
        let mut cfg = SamplingConfig::default();
        if !path.exists() {
            return Ok(cfg);
        }
        let json = crate::json::read(&path)?;
        let get = |key: &str| json.get(key).filter(|v| !v.is_null());
        let number = |key: &str| -> Result<Option<f64>> {
            get(key)
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| Error::config(&path, key, "expected a number"))
                })
                .transpose()
        };
        // A flag, as HF reads it; `"true"` as a string is a mistake worth naming, not false.
        match get("do_sample") {
            None | Some(Value::Bool(false)) => return Ok(cfg),
            Some(Value::Bool(true)) => {}
            Some(v) => {
                let message = format!("expected true or false, got {v}");
                return Err(Error::config(&path, "do_sample", message));
            }
        }
        cfg.temperature = number("temperature")?.unwrap_or(1.0);
        cfg.top_k = match number("top_k")? {
            // HF treats top_k 0 as off.
            Some(k) if k <= 0.0 => None,
            Some(k) => Some(k as usize),
            None => Some(50),
        };
        cfg.top_p = number("top_p")?.filter(|&p| p != 1.0); // 1 keeps everything
        cfg.min_p = number("min_p")?;
        if let Some(r) = number("repetition_penalty")? {
            cfg.repeat_penalty = r as f32;
        }
        cfg.validate()
            .map_err(|e| Error::config(&path, "sampling", e.to_string()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Input(what));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature {} must be finite and >= 0",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad(format!("top-p {p} must be in (0, 1]"));
        }
        if let Some(p) = self.min_p.filter(|p| !(*p >= 0.0 && *p < 1.0)) {
            return bad(format!("min-p {p} must be in [0, 1)"));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(format!(
                "repeat penalty {} must be finite and > 0",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// Draws tokens according to a `SamplingConfig`; one per sequence, as it carries the generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: ChaCha8Rng,
    /// Scratch: (token, logit or probability) candidates of the current draw.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Sampler {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            candidates: Vec::new(),
        })
    }

    /// The next token after `history` (prompt and generated tokens so far), given its logits.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = &self.cfg;
        let mut logits = logits.to_vec();
        if c.repeat_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
            let mut seen = recent.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                }
            }
        }
        // Below this, 1/T overflows the logits into infinities and NaN: greedy, as vLLM.
        const GREEDY_BELOW: f64 = 1e-5;
        if c.temperature < GREEDY_BELOW || c.top_k == Some(1) {
            return argmax(&logits);
        }
        let inv_t = (1.0 / c.temperature) as f32;
        let cands = &mut self.candidates;
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        most_likely(cands, c.top_k);
        softmax_in_place(cands);
        if let Some(p) = c.top_p {
            let mut sum = 0.0f64;
            let keep = cands
                .iter()
                .position(|&(_, q)| {
                    sum += q as f64;
                    sum >= p
                })
                .map_or(cands.len(), |i| i + 1);
            cands.truncate(keep);
        }
        if let Some(m) = c.min_p {
            let floor = cands[0].1 * m as f32;
            cands.retain(|&(_, q)| q >= floor);
        }
        let total: f32 = cands.iter().map(|c| c.1).sum();
        let mut u = self.rng.random::<f32>() * total;
        for &(t, q) in cands.iter() {
            if u < q {
                return t;
            }
            u -= q;
        }
        // Rounding can leave u a hair above the last cumulative sum.
        cands.last().map_or(0, |c| c.0)
    }
}

/// Sorts `cands` most likely first (ties: the lower id first, so that filters cut
/// deterministically) and keeps the `top_k` first. With top-k, the k best are picked out first
/// (linear in the vocabulary) and only they are sorted: the same k, in the same order, as
/// sorting everything (n log n over a 150k vocabulary, for every sequence and token, on the
/// thread that runs a server's whole batch).
fn most_likely(cands: &mut Vec<(u32, f32)>, top_k: Option<usize>) {
    match top_k {
        Some(k) if k < cands.len() => {
            cands.select_nth_unstable_by(k - 1, most_likely_first);
            cands.truncate(k);
            cands.sort_unstable_by(most_likely_first);
        }
        _ => cands.sort_unstable_by(most_likely_first),
    }
}

/// Candidates' order: the larger scaled logit first, the lower id first on ties.
fn most_likely_first(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The first index of the largest value (as torch.argmax).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Turns (token, logit) pairs, most likely first, into (token, probability).
fn softmax_in_place(cands: &mut [(u32, f32)]) {
    let Some(&(_, max)) = cands.first() else {
        return;
    };
    let mut sum = 0.0f32;
    for c in cands.iter_mut() {
        c.1 = (c.1 - max).exp();
        sum += c.1;
    }
    cands.iter_mut().for_each(|c| c.1 /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(cfg: SamplingConfig) -> Sampler {
        Sampler::new(cfg).unwrap()
    }

    fn probs(logits: &[f32]) -> Vec<f64> {
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        logits.iter().map(|&l| (l as f64).exp() / z).collect()
    }

    const LOGITS: [f32; 6] = [1.0, 2.5, 0.3, 2.0, -1.0, 1.5];

    /// The top-k selection against its slow twin, sorting everything and cutting: the same
    /// candidates in the same order, ties included.
    #[test]
    fn top_k_by_selection_equals_sorting_everything() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for vocab in [1, 2, 17, 5000] {
            // Few distinct values, so that ties straddle the cut.
            let logits: Vec<(u32, f32)> = (0..vocab)
                .map(|i| (i, (rng.random::<f32>() * 8.0).floor()))
                .collect();
            for k in [1, 2, 3, 10, 40, 4999, 5000, 6000] {
                let mut fast = logits.clone();
                most_likely(&mut fast, Some(k));
                let mut slow = logits.clone();
                slow.sort_by(most_likely_first);
                slow.truncate(k);
                assert_eq!(fast, slow, "vocab {vocab}, top-k {k}");
            }
        }
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let mut s = sampler(SamplingConfig::default());
        for shift in 0..6 {
            let mut l = LOGITS.to_vec();
            l.rotate_left(shift);
            assert_eq!(s.sample(&l, &[]), argmax(&l));
        }
    }

    #[test]
    fn frequencies_match_the_softmax() {
        let t = 0.7;
        let mut s = sampler(SamplingConfig {
            temperature: t,
            seed: 7,
            ..SamplingConfig::default()
        });
        let n = 40_000;
        let mut counts = [0usize; 6];
        for _ in 0..n {
            counts[s.sample(&LOGITS, &[]) as usize] += 1;
        }
        let scaled: Vec<f32> = LOGITS.iter().map(|l| l / t as f32).collect();
        for (i, p) in probs(&scaled).iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            // Four standard deviations of a binomial frequency, plus a hair.
            let tol = 4.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-3;
            assert!(
                (f - p).abs() < tol,
                "token {i}: frequency {f:.4}, probability {p:.4}"
            );
        }
    }

    #[test]
    fn top_p_never_samples_outside_the_nucleus() {
        // Probabilities, most likely first: 1 (.43), 3 (.26), 5 (.16), 0 (.10), 2 (.05), 4 (.01);
        // the first three sum to .84, the first two to .69.
        let mut s = sampler(SamplingConfig {
            temperature: 1.0,
            top_p: Some(0.75),
            seed: 3,
            ..SamplingConfig::default()
        });
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5_000 {
            seen.insert(s.sample(&LOGITS, &[]));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3, 5]);
    }

    #[test]
    fn top_k_and_min_p_cut_the_tail() {
        let mut s = sampler(SamplingConfig {
            temperature: 1.5,
            top_k: Some(2),
            seed: 1,
            ..SamplingConfig::default()
        });
        assert!((0..2_000).all(|_| [1, 3].contains(&s.sample(&LOGITS, &[]))));
        // min-p 0.5 keeps tokens at least half as likely as token 1: tokens 1 and 3.
        let mut s = sampler(SamplingConfig {
            temperature: 1.0,
            min_p: Some(0.5),
            seed: 2,
            ..SamplingConfig::default()
        });
        assert!((0..2_000).all(|_| [1, 3].contains(&s.sample(&LOGITS, &[]))));
    }

    #[test]
    fn seeded_runs_repeat_exactly() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_p: Some(0.95),
            seed: 42,
            ..SamplingConfig::default()
        };
        let draw = |cfg: SamplingConfig| {
            let mut s = sampler(cfg);
            (0..200).map(|_| s.sample(&LOGITS, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(cfg.clone()), draw(cfg.clone()));
        assert_ne!(draw(cfg.clone()), draw(SamplingConfig { seed: 43, ..cfg }));
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens() {
        let mut s = sampler(SamplingConfig {
            repeat_penalty: 1.5,
            ..SamplingConfig::default()
        });
        assert_eq!(s.sample(&LOGITS, &[]), 1);
        // 2.5 / 1.5 < 2.0: token 3 wins once token 1 was seen.
        assert_eq!(s.sample(&LOGITS, &[1]), 3);
        // Seen long ago, outside repeat_last_n, it is not penalised.
        let old: Vec<u32> = std::iter::once(1)
            .chain(std::iter::repeat_n(4, 64))
            .collect();
        assert_eq!(s.sample(&LOGITS, &old), 1);
    }

    #[test]
    fn impossible_settings_are_refused() {
        for cfg in [
            SamplingConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingConfig {
                top_k: Some(0),
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(0.0),
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(1.5),
                ..Default::default()
            },
            SamplingConfig {
                min_p: Some(1.0),
                ..Default::default()
            },
            SamplingConfig {
                repeat_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(cfg.clone()).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn generation_config_defaults_follow_hf() {
        let dir = tempfile::tempdir().unwrap();
        let read = |json: &str| {
            std::fs::write(dir.path().join("generation_config.json"), json).unwrap();
            SamplingConfig::from_generation_config(dir.path())
        };
        assert_eq!(
            read(r#"{"temperature": 0.7}"#).unwrap(),
            SamplingConfig::default()
        );
        let cfg = read(r#"{"do_sample": true, "top_p": 0.9, "repetition_penalty": 1.1}"#).unwrap();
        assert_eq!(
            (cfg.temperature, cfg.top_k, cfg.top_p, cfg.repeat_penalty),
            (1.0, Some(50), Some(0.9), 1.1)
        );
        let cfg =
            read(r#"{"do_sample": true, "temperature": 0.6, "top_k": 0, "top_p": 1.0}"#).unwrap();
        assert_eq!((cfg.temperature, cfg.top_k, cfg.top_p), (0.6, None, None));
        let err = read(r#"{"do_sample": "true"}"#).unwrap_err();
        assert!(err.to_string().contains("do_sample"), "{err}");
        let err = read(r#"{"do_sample": true, "temperature": "hot"}"#).unwrap_err();
        assert!(err.to_string().contains("`temperature`"), "{err}");
        let err = read(r#"{"do_sample": true, "top_p": 1.5}"#).unwrap_err();
        assert!(err.to_string().contains("generation_config.json"), "{err}");
    }
}
