//! The energy options of `bench`, and how its energy report prints as text.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use moe_runtime::energy::{EnergyMeter, EnergyOptions, EnergyReport, Estimate, PhaseReport};

#[derive(Args)]
pub struct EnergyArgs {
    /// Seconds of idle baseline measured before the timed runs, where an energy source exists.
    #[arg(long, default_value_t = 2.0)]
    pub idle_seconds: f64,
    /// Where no sensor exists, add an ESTIMATE: CPU time x this many watts per busy core,
    /// labelled `measured: false`.
    #[arg(long)]
    pub estimate_watts_per_core: Option<f64>,
}

impl EnergyArgs {
    /// The meter for a run, on a GPU when `gpu`: NVML only then (a GPU board idling beside a
    /// CPU run is not that run's cost).
    pub fn meter(&self, gpu: bool) -> Result<EnergyMeter> {
        // A bad power is refused here; the library's probe would only skip the estimate.
        if let Some(w) = self.estimate_watts_per_core {
            Estimate::new(w)?;
        }
        Ok(EnergyMeter::probe(&EnergyOptions {
            nvml: gpu,
            estimate_watts_per_core: self.estimate_watts_per_core,
            ..EnergyOptions::default()
        }))
    }
}

/// The report in a few lines: the headline per phase, then what is missing and why.
pub fn print(out: &mut impl Write, report: &EnergyReport) -> std::io::Result<()> {
    let phase = |out: &mut dyn Write, name: &str, p: &PhaseReport| {
        let joules = match (p.joules_per_token, p.net_joules_per_token) {
            (Some(gross), Some(net)) => format!(", {gross:.4} J/token ({net:.4} net of idle)"),
            (Some(gross), None) => format!(", {gross:.4} J/token"),
            _ => String::new(),
        };
        writeln!(
            out,
            "energy     {name}: {:.4} core-seconds/token{joules}",
            p.core_seconds_per_token
        )
    };
    writeln!(out, "energy     source {}: {}", report.source, report.note)?;
    phase(out, "prefill", &report.prefill)?;
    phase(out, "decode", &report.decode)?;
    if let Some(tpj) = report.tokens_per_joule {
        let label = if report.measured { "" } else { " (ESTIMATED)" };
        writeln!(out, "energy     decode {tpj:.2} tokens per joule{label}")?;
    }
    for s in &report.skipped {
        writeln!(out, "energy     skipped {}: {}", s.source, s.reason)?;
    }
    for w in &report.warnings {
        writeln!(out, "warning    {w}")?;
    }
    Ok(())
}
