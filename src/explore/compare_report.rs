//! What `moe compare` writes: compare.json (every figure), compare.md (a table and a plain
//! reading of it, made from the numbers) and quality_vs_cost.svg.

use std::fmt::Write as _;
use std::path::Path;

use super::chart::{self, significant};
use super::compare::{Comparison, Entry};
use super::report::{compare_perplexity, write_report};
use crate::error::Result;

impl Comparison {
    /// Writes compare.json, compare.md and quality_vs_cost.svg into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_report(dir, "compare", self, &self.markdown())?;
        chart::quality_vs_cost(self, &dir.join("quality_vs_cost.svg"))
    }

    /// The table of every model in every format, and the reading.
    pub fn markdown(&self) -> String {
        let unit = &self.energy.efficiency_unit;
        let mut md = String::from("# moe compare\n\n");
        let _ = writeln!(
            md,
            "{} threads, {} kernels. Per model and format: a {}-token prefill and {} decode steps \
             at batch {}, {} runs x {} rounds (medians; rounds interleave the models). FLOPs per \
             token at the decode's mean context of {} positions. Quality on {} ({} bytes): \
             every token after the first predicted, in sequences of at most 512.\n",
            self.threads,
            self.cpu_kernels,
            self.prompt_len,
            self.gen_len,
            self.batch,
            self.repeats,
            self.rounds,
            self.prompt_len + self.gen_len / 2,
            self.text,
            self.text_bytes
        );
        let _ = writeln!(
            md,
            "Energy source: {}. {}.\n",
            self.energy.source, self.energy.note
        );
        let _ = writeln!(
            md,
            "| model | experts | parameters active / total | format | decode tokens/s | prefill \
             tokens/s | decode {unit} | MB read per token (one sequence) | MFLOPs per token | perplexity | bits \
             per byte |"
        );
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for e in &self.entries {
            let p = &e.profile;
            let _ = writeln!(
                md,
                "| {} | {} | {} / {} | {}{} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {:.3} | {:.4} |",
                e.model,
                e.sparsity(),
                millions(p.active_parameters),
                millions(p.total_parameters),
                e.format,
                if p.weights != e.format {
                    format!(" (weights {})", p.weights)
                } else {
                    String::new()
                },
                e.decode_tokens_per_s,
                e.prefill_tokens_per_s,
                significant(e.efficiency()),
                p.bytes_per_token / 1e6,
                p.flops_per_token / 1e6,
                p.perplexity,
                p.bits_per_byte
            );
        }
        let reading = self.reading();
        if !reading.is_empty() {
            md.push_str("\n## Reading\n\n");
            for line in reading {
                md.push_str(&line);
                md.push_str("\n\n");
            }
        }
        md
    }

    /// Each sparse model against each dense one in the same format: quality, and what a token
    /// costs in FLOPs, bytes and measured efficiency.
    fn reading(&self) -> Vec<String> {
        let unit = &self.energy.efficiency_unit;
        let quality = |e: &Entry| match self.one_tokenizer() {
            true => format!("perplexity {:.3}", e.profile.perplexity),
            false => format!("{:.4} bits per byte", e.profile.bits_per_byte),
        };
        let score = |e: &Entry| match self.one_tokenizer() {
            true => e.profile.perplexity,
            false => e.profile.bits_per_byte,
        };
        let sparse = self.entries.iter().filter(|e| e.profile.experts.is_some());
        let mut out = Vec::new();
        for s in sparse {
            let dense = self
                .entries
                .iter()
                .filter(|d| d.profile.experts.is_none() && d.format == s.format);
            for d in dense {
                out.push(format!(
                    "**{}** ({}) against **{}** (dense), {}: {} against {} ({}), at {:.2}x the \
                     FLOPs per token, {:.2}x the bytes read per token and {:.2}x the decode \
                     {unit}.",
                    s.model,
                    s.sparsity(),
                    d.model,
                    s.format,
                    quality(s),
                    quality(d),
                    compare_perplexity(score(s), score(d)),
                    s.profile.flops_per_token / d.profile.flops_per_token,
                    s.profile.bytes_per_token / d.profile.bytes_per_token,
                    s.efficiency() / d.efficiency()
                ));
            }
        }
        out
    }
}

/// Parameters in millions, with three significant digits.
fn millions(n: u64) -> String {
    format!("{}M", significant(n as f64 / 1e6))
}
