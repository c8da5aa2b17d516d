//! CPU package energy from RAPL through perf_event's `power` PMU (`power/energy-pkg/`): the
//! kernel keeps a 64-bit count, so there is no wraparound to track. Needs
//! `perf_event_paranoid <= 0` or CAP_PERFMON; one counter per package, on the CPUs the PMU's
//! cpumask names.

use std::path::Path;
use std::time::Duration;

use perf_event::events::Dynamic;
use perf_event::{Builder, Counter};

use super::{EnergySource, SourceInfo};
use crate::error::{Error, Result};

const PMU: &str = "/sys/bus/event_source/devices/power";

pub struct PerfEnergy {
    info: SourceInfo,
    counter: Counter,
    /// Joules per count (2^-32 on current kernels).
    scale: f64,
    first: u64,
}

impl PerfEnergy {
    /// One source per package, or why there is none.
    pub fn probe() -> std::result::Result<Vec<PerfEnergy>, String> {
        if !Path::new(PMU).exists() {
            return Err(format!(
                "no `power` PMU at {PMU}: the kernel exposes no RAPL events here, as in most VMs"
            ));
        }
        let mut builder = Dynamic::builder("power").map_err(|e| format!("{PMU}: {e}"))?;
        builder
            .event("energy-pkg")
            .map_err(|e| format!("the `power` PMU has no energy-pkg event ({e})"))?;
        let scale = builder
            .scale()
            .map_err(|e| format!("{PMU}/events/energy-pkg.scale: {e}"))?
            .unwrap_or(1.0);
        let event = builder.build().map_err(|e| format!("{PMU}: {e}"))?;
        let mask = std::fs::read_to_string(format!("{PMU}/cpumask"))
            .map_err(|e| format!("{PMU}/cpumask: {e}"))?;
        parse_cpus(&mask)
            .map_err(|e| format!("{PMU}/cpumask: {e}"))?
            .into_iter()
            .enumerate()
            .map(|(package, cpu)| {
                let mut counter =
                    Builder::new(event)
                        .one_cpu(cpu)
                        .any_pid()
                        .build()
                        .map_err(|e| {
                            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                                " (needs perf_event_paranoid <= 0 or CAP_PERFMON)"
                            } else {
                                ""
                            };
                            format!("opening power/energy-pkg on cpu {cpu}: {e}{hint}")
                        })?;
                counter
                    .enable()
                    .map_err(|e| format!("enabling energy-pkg: {e}"))?;
                let first = counter
                    .read()
                    .map_err(|e| format!("reading energy-pkg: {e}"))?;
                Ok(PerfEnergy {
                    info: SourceInfo {
                        name: "rapl.perf".into(),
                        covers: format!("cpu package {package} (perf energy-pkg on cpu {cpu})"),
                        measured: true,
                        min_window: Duration::from_millis(100),
                    },
                    counter,
                    scale,
                    first,
                })
            })
            .collect()
    }
}

/// "0", "0,64" or "0-1" -> the CPUs named.
fn parse_cpus(mask: &str) -> std::result::Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in mask.trim().split(',').filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("bad CPU list {mask:?}"))
        };
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(num(a)?..=num(b)?),
            None => cpus.push(num(part)?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("empty CPU list {mask:?}"));
    }
    Ok(cpus)
}

impl EnergySource for PerfEnergy {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn joules(&mut self) -> Result<f64> {
        let now = self
            .counter
            .read()
            .map_err(|e| Error::Input(format!("reading perf power/energy-pkg: {e}")))?;
        Ok(now.wrapping_sub(self.first) as f64 * self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_parse() {
        assert_eq!(parse_cpus("0\n").unwrap(), vec![0]);
        assert_eq!(parse_cpus("0,64").unwrap(), vec![0, 64]);
        assert_eq!(parse_cpus("2-4").unwrap(), vec![2, 3, 4]);
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("x").is_err());
    }
}
