//! `moe bench`: throughput of one model, and how close decode comes to the bandwidth limit.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use moe_runtime::bench::{self, BenchOptions, BenchResult};
use moe_runtime::{Limits, Model};
use serde_json::json;

use crate::bounds;
use crate::common::Common;
use crate::energy::{self, EnergyArgs};
use crate::output;

/// Loads the model once, then measures each of `settings` in turn.
pub fn run(
    common: &Common,
    random_config: Option<&Path>,
    settings: &[BenchOptions],
    energy_args: &EnergyArgs,
    json: bool,
) -> Result<()> {
    check(settings, None)?;
    let (model, name) = match random_config {
        Some(config) => (
            common.load_random(config)?,
            format!("{} (random weights)", config.display()),
        ),
        None => {
            let (model, dir) = common.load()?;
            (model, dir.display().to_string())
        }
    };
    let mut meter = energy_args.meter(!model.device().is_cpu())?;
    check(settings, Some(&model))?;
    let mut bandwidth = None;
    let mut out = output::stdout();
    for opts in settings {
        let result = bench::run(&model, opts, &mut meter)?;
        // Measured after the first runs, with the weights paged in and the thread pool warm.
        let bandwidth = match bandwidth {
            Some(b) => b,
            None => *bandwidth.insert(bench::read_bandwidth_on(model.device())?),
        };
        report(&mut out, &model, &name, opts, &result, bandwidth, json)?;
    }
    Ok(())
}

/// The flags' counts, before the model loads; then, with the `model`, the lengths against its
/// context and the largest batch's caches against the memory available.
fn check(settings: &[BenchOptions], model: Option<&Model>) -> Result<()> {
    let Some(first) = settings.first() else {
        bail!("--batch lists no batch size");
    };
    let positions = bounds::bench_lengths(
        first.prompt_len,
        first.gen_len,
        model.map(|m| m.config().max_position_embeddings),
    )?;
    let why = "a median over more runs measures nothing new";
    bounds::at_most("--repeats", first.repeats, bounds::MAX_REPEATS, why)?;
    for opts in settings {
        Limits::current().check_batch("--batch", opts.batch)?;
    }
    if let Some(model) = model {
        let batch = settings.iter().map(|o| o.batch).max().unwrap_or(1);
        bounds::caches(model, batch, positions)?;
    }
    Ok(())
}

fn report(
    out: &mut impl Write,
    model: &Model,
    name: &str,
    opts: &BenchOptions,
    result: &BenchResult,
    bandwidth: f64,
    json: bool,
) -> std::io::Result<()> {
    let bytes_per_token = model.decode_read_bytes();
    let limit = bandwidth / bytes_per_token;
    // The bound is that of one sequence: a batch step reads each chosen expert once for all
    // the tokens that chose it, so its bytes per token depend on how the routes overlap.
    let fraction = (opts.batch == 1).then(|| result.decode_tokens_per_s / limit);
    let threads = rayon::current_num_threads();
    if json {
        let report = json!({
            "model": name,
            "dtype": format!("{:?}", model.dtype()).to_lowercase(),
            "quant": model.quant().map(|q| q.name()),
            "weight_formats": model
                .weight_formats()
                .iter()
                .map(|(f, share)| (f.to_string(), json!(share)))
                .collect::<serde_json::Map<_, _>>(),
            "threads": threads,
            "backend": model.backend().name(),
            "cpu_kernels": bench::cpu_kernels(),
            "batch": opts.batch,
            "prompt_len": opts.prompt_len,
            "gen_len": opts.gen_len,
            "repeats": opts.repeats,
            "prefill_tokens_per_s": result.prefill_tokens_per_s,
            "decode_tokens_per_s": result.decode_tokens_per_s,
            "prefill_runs": result.prefill_runs,
            "decode_runs": result.decode_runs,
            "roofline": {
                "bytes_per_token": bytes_per_token,
                "bandwidth_gb_s": bandwidth / 1e9,
                "decode_tokens_per_s_limit": limit,
                "fraction": fraction,
            },
            "energy": result.energy,
        });
        writeln!(out, "{report}")
    } else {
        let formats: Vec<String> = model
            .weight_formats()
            .iter()
            .map(|(f, share)| format!("{f} {:.0}%", 100.0 * share))
            .collect();
        writeln!(
            out,
            "model      {name}, {:?} compute, weights {}, {threads} threads, {} backend ({} CPU \
             kernels)",
            model.dtype(),
            formats.join(" "),
            model.backend().name(),
            bench::cpu_kernels()
        )?;
        writeln!(
            out,
            "prefill    {:.1} tokens/s ({} tokens, median of {})",
            result.prefill_tokens_per_s, opts.prompt_len, opts.repeats
        )?;
        writeln!(
            out,
            "decode     {:.1} tokens/s ({} steps of {} sequences, median of {})",
            result.decode_tokens_per_s, opts.gen_len, opts.batch, opts.repeats
        )?;
        let reached = fraction.map_or("(a batch-1 bound)".into(), |f| format!("reached {f:.2}"));
        writeln!(
            out,
            "roofline   {:.1} MB read per decode token, {:.1} GB/s measured: at most {:.1} tokens/s; {reached}",
            bytes_per_token / 1e6,
            bandwidth / 1e9,
            limit,
        )?;
        energy::print(out, &result.energy)
    }
}
