//! What `moe explore` writes: explore.json (every figure), explore.md (a table and a plain
//! reading of it, made from the numbers) and the charts.

use std::fmt::Write as _;
use std::path::Path;

use super::chart::{self, significant};
use super::{Exploration, Run};
use crate::error::{Error, Result};

/// Perplexities within this share of each other read as "about the same".
const SAME_PERPLEXITY: f64 = 0.01;

/// A reference perplexity above this share of the vocabulary is close to a uniform guess.
const CHANCE: f64 = 0.5;

impl Exploration {
    /// Writes explore.json, explore.md, efficiency_vs_quality.svg and throughput_vs_batch.svg
    /// into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_report(dir, "explore", self, &self.markdown())?;
        chart::efficiency_vs_quality(self, &dir.join("efficiency_vs_quality.svg"))?;
        chart::throughput_vs_batch(self, &dir.join("throughput_vs_batch.svg"))?;
        Ok(())
    }

    /// The run of one setting, if it was swept.
    pub fn find(&self, experts_per_token: usize, format: &str, batch: usize) -> Option<&Run> {
        self.runs.iter().find(|r| {
            r.experts_per_token == experts_per_token && r.format == format && r.batch == batch
        })
    }

    /// The table of every run, and the reading.
    pub fn markdown(&self) -> String {
        let unit = &self.energy.efficiency_unit;
        let mut md = format!("# moe explore: {}\n\n", self.model);
        let _ = writeln!(
            md,
            "{} threads, {} kernels. Per setting: a {}-token prefill and {} decode steps, {} runs \
             x {} rounds (medians; rounds interleave the settings). Quality: {} held-out tokens, \
             each setting's next-token distributions against the reference (k = {} of {} \
             experts, the checkpoint's own, in {}).\n",
            self.threads,
            self.cpu_kernels,
            self.prompt_len,
            self.gen_len,
            self.repeats,
            self.rounds,
            self.held_out_tokens,
            self.model_experts_per_token,
            self.num_experts,
            self.reference_format
        );
        let _ = writeln!(
            md,
            "Energy source: {}. {}.\n",
            self.energy.source, self.energy.note
        );
        let _ = writeln!(
            md,
            "| experts per token | format | batch | decode tokens/s | prefill tokens/s | MB read \
             per token | decode {unit} | KL vs reference (nats) | top-1 agreement | perplexity |"
        );
        md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.runs {
            let k = if r.experts_per_token == self.model_experts_per_token {
                format!("{} (model's)", r.experts_per_token)
            } else if r.experts_per_token == self.num_experts {
                format!("{} (all)", r.experts_per_token)
            } else {
                r.experts_per_token.to_string()
            };
            let _ = writeln!(
                md,
                "| {k} | {}{}{} | {} | {:.1} | {:.1} | {:.2} | {} | {:.4} | {:.3} | {:.3} |",
                r.format,
                if r.weights != r.format {
                    format!(" (weights {})", r.weights)
                } else {
                    String::new()
                },
                if r.reference { " (reference)" } else { "" },
                r.batch,
                r.decode_tokens_per_s,
                r.prefill_tokens_per_s,
                r.bytes_per_token / 1e6,
                significant(r.efficiency()),
                r.kl_divergence,
                r.top1_agreement,
                r.perplexity
            );
        }
        md.push_str("\n## Reading\n\n");
        for paragraph in self.reading() {
            md.push_str(&paragraph);
            md.push_str("\n\n");
        }
        md
    }

    /// Plain sentences on what the table says, each only where its runs were swept. They
    /// compare settings at the smallest batch and in the reference format where it was swept.
    fn reading(&self) -> Vec<String> {
        let unit = &self.energy.efficiency_unit;
        let (k, e) = (self.model_experts_per_token, self.num_experts);
        let batch = self.runs.iter().map(|r| r.batch).min().unwrap_or(1);
        let max_batch = self.runs.iter().map(|r| r.batch).max().unwrap_or(1);
        let format = if self.runs.iter().any(|r| r.format == self.reference_format) {
            self.reference_format
        } else {
            self.runs
                .first()
                .map_or(self.reference_format, |r| r.format)
        };
        let mut out = Vec::new();
        let own = self.find(k, format, batch);
        let all = self.find(e, format, batch);
        if let (Some(own), Some(all)) = (own, all) {
            if e != k {
                out.push(format!(
                    "**Sparse against all experts** (batch {batch}, {format}). Running all {e} \
                     experts per token, the compute-matched dense run of these weights, reads \
                     {:.1}x the weight bytes per token of the model's own k = {k}, decodes at \
                     {:.2}x its tokens/s and {:.2}x its {unit}. Its perplexity is {:.3} against \
                     {:.3} ({}). The model was trained with k = {k}: running every expert is not \
                     a dense model trained as one; it shows what spending more compute on the \
                     same weights buys at inference.",
                    all.bytes_per_token / own.bytes_per_token,
                    all.decode_tokens_per_s / own.decode_tokens_per_s,
                    all.efficiency() / own.efficiency(),
                    all.perplexity,
                    own.perplexity,
                    compare_perplexity(all.perplexity, own.perplexity),
                ));
            }
        }
        if let Some(own) = own {
            let fewer: Vec<String> = (1..k)
                .filter_map(|j| self.find(j, format, batch))
                .map(|r| {
                    format!(
                        "k = {} gives {:.2}x the {unit} of k = {k} at a KL of {:.4} nats, top-1 \
                         agreement {:.2} and perplexity {:.3} ({})",
                        r.experts_per_token,
                        r.efficiency() / own.efficiency(),
                        r.kl_divergence,
                        r.top1_agreement,
                        r.perplexity,
                        compare_perplexity(r.perplexity, own.perplexity)
                    )
                })
                .collect();
            if !fewer.is_empty() {
                out.push(format!(
                    "**Fewer experts** (batch {batch}, {format}): {}.",
                    fewer.join("; ")
                ));
            }
            let formats: Vec<String> = self
                .runs
                .iter()
                .filter(|r| r.experts_per_token == k && r.batch == batch && r.format != format)
                .map(|r| {
                    format!(
                        "{} reads {:.2}x the bytes, gives {:.2}x the {unit}, KL {:.4}, top-1 {:.2}",
                        r.format,
                        r.bytes_per_token / own.bytes_per_token,
                        r.efficiency() / own.efficiency(),
                        r.kl_divergence,
                        r.top1_agreement
                    )
                })
                .collect();
            if !formats.is_empty() {
                out.push(format!(
                    "**Weight formats** (k = {k}, batch {batch}, against {format}): {}.",
                    formats.join("; ")
                ));
            }
        }
        if let (Some(own), Some(big)) = (own, self.find(k, format, max_batch)) {
            if max_batch > batch {
                let mut text = format!(
                    "**Batching** (k = {k}, {format}): batch {max_batch} decodes {:.2}x the \
                     tokens/s of batch {batch} and gives {:.2}x the {unit}.",
                    big.decode_tokens_per_s / own.decode_tokens_per_s,
                    big.efficiency() / own.efficiency()
                );
                if let (Some(all), Some(all_big)) =
                    (self.find(e, format, batch), self.find(e, format, max_batch))
                {
                    let (small, large) = (
                        own.efficiency() / all.efficiency(),
                        big.efficiency() / all_big.efficiency(),
                    );
                    let _ = write!(
                        text,
                        " The sparse setting's {unit} over all experts' goes from {small:.2}x \
                         at batch {batch} to {large:.2}x at batch {max_batch}{}",
                        if large < small * 0.95 {
                            ": a batch's tokens choose different experts, so together they \
                             read more of them and sparsity saves less."
                        } else {
                            "."
                        }
                    );
                }
                out.push(text);
            }
        }
        if let (Some(own), Some(all)) = (own, all) {
            if e != k {
                let gain = own.efficiency() / all.efficiency();
                let cost = own.perplexity / all.perplexity - 1.0;
                let verdict = if own.perplexity > CHANCE * self.vocab_size as f64 {
                    format!(
                        "cannot be judged on quality here: the reference's perplexity, {:.0}, \
                         is near or above a uniform guess over the {} tokens of the \
                         vocabulary, so the model does not know this text (random weights, or \
                         a text not in its language) and perplexity says nothing; KL still \
                         says how far each setting moves the distributions. On efficiency, \
                         k = {k} gives {gain:.2}x the {unit} of all {e} experts",
                        own.perplexity, self.vocab_size
                    )
                } else if gain > 1.0 && cost <= SAME_PERPLEXITY {
                    format!(
                        "holds here: the model's own k = {k} gives {gain:.2}x the {unit} of \
                         running all {e} experts, at a perplexity no worse (within {:.0}%)",
                        SAME_PERPLEXITY * 100.0
                    )
                } else if gain > 1.0 {
                    format!(
                        "holds for efficiency only: k = {k} gives {gain:.2}x the {unit} of all \
                         {e} experts, but its perplexity is {:.1}% higher",
                        cost * 100.0
                    )
                } else {
                    format!(
                        "does not hold here: k = {k} gives {gain:.2}x the {unit} of all {e} \
                         experts"
                    )
                };
                out.push(format!(
                    "**The claim** that sparse MoE buys efficiency without giving up quality \
                     {verdict} (batch {batch}, {format}, this model on this machine)."
                ));
            }
        }
        out.push(self.what_is_measured());
        out
    }

    fn what_is_measured(&self) -> String {
        let s = &self.energy;
        if s.source == "none" {
            "**What is measured.** Tokens/s, bytes per token (counted from the shapes), KL, \
             top-1 and perplexity are exact for this run. No energy sensor was found, so the \
             efficiency column is decode tokens per core-second: what a token costs in \
             processor time on this machine, not in joules. Energy would also depend on the \
             power drawn, which nothing here measured."
                .to_string()
        } else if s.measured {
            format!(
                "**What is measured.** Joules come from {} ({}); gross figures include idle \
                 power{}.",
                s.source,
                s.sources
                    .iter()
                    .filter(|i| i.measured)
                    .map(|i| i.covers.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.idle_watts.map_or(String::new(), |w| format!(
                    " ({w:.1} W measured before the sweep; explore.json has the net figures)"
                ))
            )
        } else {
            "**What is measured.** No energy sensor was found: the joules are an ESTIMATE (CPU \
             time x a given power per core), so the efficiency column is core-seconds in \
             disguise and says nothing about energy beyond speed."
                .to_string()
        }
    }
}

/// How perplexity `p` compares with `reference`, in words.
/// Writes `dir/{stem}.json` (`value`, pretty) and `dir/{stem}.md` (`markdown`), creating `dir`.
pub(super) fn write_report(
    dir: &Path,
    stem: &str,
    value: &impl serde::Serialize,
    markdown: &str,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| Error::Io { path, cause }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(format!("{stem}.json"));
    let json = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.clone(),
        cause: e,
    })?;
    std::fs::write(&path, json + "\n").map_err(io(&path))?;
    let path = dir.join(format!("{stem}.md"));
    std::fs::write(&path, markdown).map_err(io(&path))
}

pub(super) fn compare_perplexity(p: f64, reference: f64) -> String {
    let change = p / reference - 1.0;
    if change.abs() <= SAME_PERPLEXITY {
        "about the same".into()
    } else if change > 0.0 {
        format!("{:.1}% higher: worse", change * 100.0)
    } else {
        format!("{:.1}% lower: better", -change * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EnergySummary, RunEnergy};
    use super::*;
    use crate::energy::PhaseReport;

    fn run(k: usize, batch: usize, tokens_per_core_second: f64, perplexity: f64) -> Run {
        let phase = PhaseReport {
            tokens: 1,
            seconds: 1.0,
            core_seconds_per_token: 1.0 / tokens_per_core_second,
            joules_per_token: None,
            net_joules_per_token: None,
            tokens_per_joule: None,
        };
        Run {
            experts_per_token: k,
            format: "f32",
            weights: "f32".into(),
            compute_dtype: "f32".into(),
            batch,
            reference: k == 2,
            decode_tokens_per_s: tokens_per_core_second,
            prefill_tokens_per_s: 1.0,
            decode_runs: vec![],
            prefill_runs: vec![],
            bytes_per_token: k as f64,
            energy: RunEnergy {
                prefill: phase.clone(),
                decode: phase,
                tokens_per_joule: None,
                tokens_per_core_second,
                warnings: vec![],
            },
            kl_divergence: 0.0,
            kl_max: 0.0,
            top1_agreement: 1.0,
            perplexity,
        }
    }

    /// k = 2 of 8 experts, vocabulary 1000, at batches 1 and 8.
    fn exploration(runs: Vec<Run>) -> Exploration {
        Exploration {
            model: "m".into(),
            num_experts: 8,
            vocab_size: 1000,
            model_experts_per_token: 2,
            reference_format: "f32",
            held_out_tokens: 10,
            prompt_len: 1,
            gen_len: 1,
            repeats: 1,
            rounds: 1,
            threads: 1,
            cpu_kernels: "portable",
            energy: EnergySummary {
                source: "none".into(),
                measured: false,
                note: "n".into(),
                efficiency_unit: "tokens per core-second".into(),
                idle_watts: None,
                idle_seconds: None,
                sources: vec![],
                skipped: vec![],
            },
            runs,
        }
    }

    #[test]
    fn the_verdict_follows_the_numbers() {
        let claim = |own_ppl: f64, all_ppl: f64| {
            let ex = exploration(vec![
                run(2, 1, 300.0, own_ppl),
                run(8, 1, 100.0, all_ppl),
                run(2, 8, 900.0, own_ppl),
                run(8, 8, 600.0, all_ppl),
            ]);
            let md = ex.markdown();
            assert!(md.contains("| 2 (model's) | f32 (reference) | 1 |"), "{md}");
            assert!(md.contains("| 8 (all) | f32 | 8 |"), "{md}");
            // 3x at batch 1, 1.5x at batch 8: the batch's tokens share the experts.
            assert!(
                md.contains("from 3.00x at batch 1 to 1.50x at batch 8"),
                "{md}"
            );
            assert!(md.contains("not in joules"), "{md}");
            ex.reading()
                .into_iter()
                .find(|p| p.starts_with("**The claim**"))
                .unwrap()
        };
        assert!(claim(20.0, 20.1).contains("holds here: the model's own k = 2 gives 3.00x"));
        let worse = claim(22.0, 20.0);
        assert!(
            worse.contains("efficiency only") && worse.contains("10.0% higher"),
            "{worse}"
        );
        assert!(claim(900.0, 900.0).contains("cannot be judged on quality"));
    }

    #[test]
    fn weights_kept_in_another_format_than_the_one_named_are_shown() {
        let mut r = run(2, 1, 10.0, 5.0);
        r.weights = "q4_K 84% q6_K 16%".into();
        let md = exploration(vec![r, run(2, 4, 10.0, 5.0)]).markdown();
        assert!(
            md.contains("| f32 (weights q4_K 84% q6_K 16%) (reference) | 1 |"),
            "{md}"
        );
        assert!(md.contains("| f32 (reference) | 4 |"), "{md}");
    }

    #[test]
    fn sentences_need_their_runs() {
        // Only the model's own k: nothing to compare but what is measured.
        let ex = exploration(vec![run(2, 1, 300.0, 20.0)]);
        let reading = ex.reading();
        assert_eq!(reading.len(), 1, "{reading:?}");
        assert!(reading[0].starts_with("**What is measured.**"));
    }

    #[test]
    fn numbers_keep_three_significant_digits_and_perplexities_compare_in_words() {
        assert_eq!(significant(1234.4), "1234");
        assert_eq!(significant(12.345), "12.3");
        assert_eq!(significant(0.012345), "0.0123");
        assert_eq!(compare_perplexity(10.05, 10.0), "about the same");
        assert_eq!(compare_perplexity(11.0, 10.0), "10.0% higher: worse");
        assert_eq!(compare_perplexity(9.0, 10.0), "10.0% lower: better");
    }
}
