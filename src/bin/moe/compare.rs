//! `moe compare`: several checkpoints measured the same way on one held-out text, written to a
//! folder as JSON, a Markdown table with its reading, and a chart of quality against cost.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use moe_runtime::bench::BenchOptions;
use moe_runtime::explore::compare::{self, CompareOptions, Contender};
use moe_runtime::explore::Format;
use moe_runtime::{hub, Limits};

use crate::bounds;
use crate::common::{read_input, Runtime};
use crate::energy::EnergyArgs;
use crate::explore::{check_runs, checked_load, held_out_text, shown, tokens, writable};
use crate::output::{self, note};

/// More checkpoints than anyone sets side by side in one table; each is loaded per format and
/// round.
const MAX_MODELS: usize = 64;

#[derive(Args)]
pub struct CompareArgs {
    /// The checkpoints (folders, GGUF files or hub ids), the flag repeated or comma-separated;
    /// by default every model bundled under models/: the tiny MoE and its twins trained on the
    /// same budget.
    #[arg(long = "model", value_delimiter = ',')]
    models: Vec<String>,
    #[command(flatten)]
    runtime: Runtime,
    /// Folder for compare.json, compare.md and quality_vs_cost.svg (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Held-out text scored for quality (each model reads it with its own tokenizer.json); by
    /// default held_out.txt in the first model's folder.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Weight formats each model runs in: f32, bf16, q8_0, q4_0 (quantized ones with bf16
    /// activations).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    formats: Vec<String>,
    /// Sequences decoded together in each timed run.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt tokens per sequence of each timed prefill.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Decode steps of each timed run.
    #[arg(long, default_value_t = 32)]
    gen_len: usize,
    /// Timed runs per model, format and round.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Passes over all models; each one's runs are spread over them.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[command(flatten)]
    energy: EnergyArgs,
}

pub fn run(args: &CompareArgs) -> Result<()> {
    check_flags(args)?;
    let formats = (args.formats.iter())
        .map(|f| f.parse::<Format>())
        .collect::<moe_runtime::Result<Vec<_>>>()?;
    writable(&args.out)?;
    let names = match args.models.is_empty() {
        true => bundled()?,
        false => args.models.clone(),
    };
    bounds::at_most(
        "--model",
        names.len(),
        MAX_MODELS,
        "models in one comparison",
    )?;
    let dirs = (names.iter())
        .map(|m| hub::resolve(m).with_context(|| format!("--model {m}")))
        .collect::<Result<Vec<_>>>()?;
    let text_path = held_out_text(&dirs[0], args.text.as_ref())?;
    // Read once; each model tokenizes it.
    let text = read_input("the held-out text", &text_path)?;
    let base = args.runtime.load_options()?;
    let mut meter = args.energy.meter(!base.device.is_cpu())?;
    let opts = CompareOptions {
        formats,
        bench: BenchOptions {
            prompt_len: args.prompt_len,
            gen_len: args.gen_len,
            repeats: args.repeats,
            batch: args.batch,
            idle_seconds: args.energy.idle_seconds,
        },
        rounds: args.rounds,
    };
    let mut contenders = Vec::new();
    for (name, dir) in names.iter().zip(&dirs) {
        let held_out = tokens(dir, &text).with_context(|| format!("--model {name}"))?;
        let (runtime, dir) = (&args.runtime, dir.clone());
        let (prompt_len, gen_len, batch) = (args.prompt_len, args.gen_len, args.batch);
        contenders.push(Contender {
            name: match Path::new(name).exists() {
                true => shown(&dir),
                false => name.clone(),
            },
            load: Box::new(move |opts: &moe_runtime::LoadOptions| {
                checked_load(runtime, &dir, opts, prompt_len, gen_len, batch)
                    .map_err(|e| moe_runtime::Error::Input(format!("{}: {e}", dir.display())))
            }),
            held_out,
        });
    }
    let mut comparison = compare::run(
        &mut contenders,
        &base,
        text.len(),
        &opts,
        &mut meter,
        &mut |line| note!("compare    {line}"),
    )?;
    comparison.text = shown(&text_path);
    comparison.write(&args.out)?;
    write!(output::stdout(), "{}", comparison.markdown())?;
    note!(
        "compare    wrote compare.json, compare.md and quality_vs_cost.svg to {}",
        args.out.display()
    );
    Ok(())
}

/// The models bundled beside the default one (models/*/ with a config.json), the default first.
fn bundled() -> Result<Vec<String>> {
    let default = Path::new(moe_runtime::BUNDLED_MODEL);
    let folder = default.parent().unwrap_or(default);
    let listing = std::fs::read_dir(folder)
        .with_context(|| format!("listing the bundled models in {}", folder.display()))?;
    let mut others: Vec<PathBuf> = listing
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file() && p != default)
        .collect();
    others.sort();
    let models: Vec<String> = std::iter::once(default.to_path_buf())
        .chain(others)
        .map(|p| p.display().to_string())
        .collect();
    Ok(models)
}

/// The counts of the flags, before anything is loaded (the lengths against each model's
/// context once it is).
fn check_flags(args: &CompareArgs) -> Result<()> {
    check_runs(args.prompt_len, args.gen_len, args.repeats, args.rounds)?;
    bounds::positive("--batch", args.batch)?;
    Limits::current().check_batch("--batch", args.batch)?;
    if args.formats.is_empty() {
        bail!("--formats lists no format");
    }
    Ok(())
}
