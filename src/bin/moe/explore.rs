//! `moe explore`: the sweep of experts per token, weight format and batch size, written to a
//! folder as JSON, a Markdown table with its reading, and SVG charts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use moe_runtime::bench::BenchOptions;
use moe_runtime::explore::{self, ExploreOptions, Format};
use moe_runtime::tokenizer::Tokenizer;
use moe_runtime::Limits;

use crate::bounds;
use crate::common::{read_input, ModelArg, Runtime};
use crate::energy::EnergyArgs;
use crate::output::{self, note};

#[derive(Args)]
pub struct ExploreArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    runtime: Runtime,
    /// Folder for explore.json, explore.md and the charts (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Held-out text scored for quality (needs the model's tokenizer.json); by default
    /// held_out.txt in the model folder.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Experts per token to sweep, comma-separated; by default 1 up to the model's k, then
    /// doubling up to every expert.
    #[arg(long, value_delimiter = ',')]
    experts: Vec<usize>,
    /// Weight formats to sweep: f32, bf16, q8_0, q4_0 (quantized ones with bf16 activations).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,q8_0,q4_0")]
    formats: Vec<String>,
    /// Batch sizes to sweep (sequences decoded together).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batches: Vec<usize>,
    /// Prompt tokens per sequence of each timed prefill.
    #[arg(long, default_value_t = 64)]
    prompt_len: usize,
    /// Decode steps of each timed run.
    #[arg(long, default_value_t = 32)]
    gen_len: usize,
    /// Timed runs per setting and round.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Passes over all settings; each setting's runs are spread over them.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Held-out tokens scored per setting.
    #[arg(long, default_value_t = 1024)]
    quality_tokens: usize,
    #[command(flatten)]
    energy: EnergyArgs,
}

pub fn run(args: &ExploreArgs) -> Result<()> {
    check_flags(args)?;
    writable(&args.out)?;
    let dir = args.model.dir()?;
    let text_path = held_out_text(&dir, args.text.as_ref())?;
    let held_out = tokens(&dir, &read_input("the held-out text", &text_path)?)?;
    let base = args.runtime.load_options()?;
    let mut meter = args.energy.meter(!base.device.is_cpu())?;
    let opts = ExploreOptions {
        experts: args.experts.clone(),
        formats: args
            .formats
            .iter()
            .map(|f| f.parse::<Format>())
            .collect::<moe_runtime::Result<_>>()?,
        batches: args.batches.clone(),
        bench: BenchOptions {
            prompt_len: args.prompt_len,
            gen_len: args.gen_len,
            repeats: args.repeats,
            batch: 1,
            idle_seconds: args.energy.idle_seconds,
        },
        rounds: args.rounds,
        quality_tokens: args.quality_tokens,
    };
    // Every load is checked against the flags' lengths and batches: the first, the
    // reference, before anything is measured.
    let largest_batch = args.batches.iter().copied().max().unwrap_or(1);
    let mut load = |opts: &moe_runtime::LoadOptions| {
        checked_load(
            &args.runtime,
            &dir,
            opts,
            args.prompt_len,
            args.gen_len,
            largest_batch,
        )
    };
    let mut exploration = explore::run(
        &mut load,
        &base,
        &held_out,
        &opts,
        &mut meter,
        &mut |line| note!("explore    {line}"),
    )?;
    exploration.model = shown(&dir);
    exploration.write(&args.out)?;
    write!(output::stdout(), "{}", exploration.markdown())?;
    note!(
        "explore    wrote explore.json, explore.md, efficiency_vs_quality.svg and \
         throughput_vs_batch.svg to {}",
        args.out.display()
    );
    Ok(())
}

/// The counts of the flags, before anything is loaded (the lengths against the model's context
/// once it is).
fn check_flags(args: &ExploreArgs) -> Result<()> {
    check_runs(args.prompt_len, args.gen_len, args.repeats, args.rounds)?;
    if args.batches.is_empty() {
        bail!("--batches lists no batch size");
    }
    for &batch in &args.batches {
        if batch == 0 {
            bail!("--batches 0: batch sizes must be at least 1");
        }
        Limits::current().check_batch("--batches", batch)?;
    }
    Ok(())
}

/// `--out` can be created and written in: found before the sweep, not after it.
pub fn writable(out: &Path) -> Result<()> {
    let cannot = |what: &str| format!("--out {}: cannot {what}", out.display());
    std::fs::create_dir_all(out).with_context(|| cannot("create the folder"))?;
    let probe = out.join(".moe-explore-probe");
    std::fs::write(&probe, b"").with_context(|| cannot("write in it"))?;
    std::fs::remove_file(&probe).with_context(|| cannot("remove a file from it"))?;
    Ok(())
}

/// The held-out text as the model's token ids.
pub fn tokens(dir: &Path, text: &str) -> Result<Vec<u32>> {
    let tokenizer = Tokenizer::load(dir)?;
    Ok(tokenizer.encode(text)?)
}

/// `--text`, else held_out.txt in the model folder `dir` (refused where there is none).
pub fn held_out_text(dir: &Path, given: Option<&PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    let path = dir.join("held_out.txt");
    if !path.exists() {
        bail!(
            "{} has no held_out.txt: give --text FILE, a text the model was not trained on",
            dir.display()
        );
    }
    Ok(path)
}

/// A path as the reader would type it: relative to here when it is under here.
pub fn shown(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The timed runs' lengths and counts, before anything is loaded (the lengths against the
/// model's context once it is).
pub fn check_runs(prompt_len: usize, gen_len: usize, repeats: usize, rounds: usize) -> Result<()> {
    bounds::bench_lengths(prompt_len, gen_len, None)?;
    let why = "a median over more runs measures nothing new";
    bounds::at_most("--repeats", repeats, bounds::MAX_REPEATS, why)?;
    let why = "each round loads every model again";
    bounds::at_most("--rounds", rounds, bounds::MAX_ROUNDS, why)?;
    Ok(())
}

/// The checkpoint in `dir` loaded with `opts`, checked against the timed runs' lengths and
/// caches for `batch` sequences before anything is measured.
pub fn checked_load(
    runtime: &Runtime,
    dir: &Path,
    opts: &moe_runtime::LoadOptions,
    prompt_len: usize,
    gen_len: usize,
    batch: usize,
) -> moe_runtime::Result<moe_runtime::Model> {
    let checked = runtime.load(dir, opts).and_then(|model| {
        let context = Some(model.config().max_position_embeddings);
        let positions = bounds::bench_lengths(prompt_len, gen_len, context)?;
        bounds::caches(&model, batch, positions)?;
        Ok(model)
    });
    checked.map_err(|e| moe_runtime::Error::Input(format!("{e:#}")))
}
