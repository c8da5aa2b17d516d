//! What a run costs in energy: an [`EnergyMeter`] over whichever sensors this machine has
//! (NVML for GPUs, RAPL through powercap or perf for CPU packages), each reading labelled with
//! what it covers and whether it is measured, plus the process's CPU core-seconds, which are
//! exact everywhere. A labelled estimate (core-seconds times watts per core) is made only when
//! asked for, and never summed or ranked with a measurement.
//!
//! ../shared/reference/energy.md has the method and its pitfalls: counter windows must be long
//! next to the counter's update period (the meter warns), the device must be synchronised
//! before a window closes (the caller's job), and idle power is reported beside, never
//! silently subtracted.

mod cpu_time;
mod estimate;
mod nvml;
mod perf;
mod powercap;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;

pub use cpu_time::process_core_seconds;
pub use estimate::Estimate;
pub use nvml::{NvmlCounter, NvmlEnergy};
pub use perf::PerfEnergy;
pub use powercap::Powercap;
pub use report::{EnergyReport, PhaseEnergy, PhaseReport, SourceReport};

/// What a source's joules cover, and how they come about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInfo {
    /// The method: `nvml`, `rapl.powercap`, `rapl.perf` or `estimate`.
    pub name: String,
    /// The boundary: "gpu 0 board (NVIDIA H100)", "cpu package 0", ...
    pub covers: String,
    /// False for an estimate.
    pub measured: bool,
    /// The shortest window whose reading this source's update period leaves trustworthy.
    #[serde(skip)]
    pub min_window: Duration,
}

/// A cumulative energy counter.
pub trait EnergySource: Send {
    fn info(&self) -> &SourceInfo;
    /// Joules since the source was opened; never decreases (wraparound handled inside).
    fn joules(&mut self) -> Result<f64>;
}

/// A source the meter looked for and did not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub source: String,
    pub reason: String,
}

/// Where to look for sensors, and whether to estimate.
#[derive(Debug, Clone)]
pub struct EnergyOptions {
    /// The powercap tree (`/sys/class/powercap`; a fake one in tests).
    pub powercap_root: PathBuf,
    /// Try NVML: for GPU runs (a GPU board idling beside a CPU run is not that run's cost).
    pub nvml: bool,
    /// Adds the estimate source at this many watts per busy core (`measured: false`).
    pub estimate_watts_per_core: Option<f64>,
}

impl Default for EnergyOptions {
    fn default() -> Self {
        EnergyOptions {
            powercap_root: PathBuf::from("/sys/class/powercap"),
            nvml: true,
            estimate_watts_per_core: None,
        }
    }
}

/// The sensors found, read together at the edges of each window.
pub struct EnergyMeter {
    sources: Vec<Box<dyn EnergySource>>,
    skipped: Vec<Skipped>,
}

/// An open window: when it began and every counter's value then.
#[derive(Debug, Clone)]
pub struct Window {
    started: Instant,
    core_seconds: f64,
    joules: Vec<f64>,
}

/// What one or more closed windows cost: wall and core-seconds, and joules per source (in
/// the meter's source order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub seconds: f64,
    pub core_seconds: f64,
    pub joules: Vec<f64>,
    /// How many windows were added up, and the shortest of them (s).
    pub windows: usize,
    pub shortest_window: f64,
}

impl Reading {
    /// Adds another window's reading (of the same meter).
    pub fn add(&mut self, other: &Reading) {
        if self.joules.is_empty() {
            self.joules = vec![0.0; other.joules.len()];
        }
        for (a, b) in self.joules.iter_mut().zip(&other.joules) {
            *a += b;
        }
        self.shortest_window = if self.windows == 0 {
            other.shortest_window
        } else {
            self.shortest_window.min(other.shortest_window)
        };
        self.seconds += other.seconds;
        self.core_seconds += other.core_seconds;
        self.windows += other.windows;
    }
}

impl EnergyMeter {
    /// Looks for every source this machine has; never fails, and records why each missing
    /// one was skipped. Order: GPUs (NVML), CPU packages (powercap, else perf), then the
    /// estimate when asked for.
    pub fn probe(opts: &EnergyOptions) -> EnergyMeter {
        let mut meter = EnergyMeter::new(Vec::new(), Vec::new());
        if opts.nvml {
            meter.take("nvml", NvmlEnergy::probe());
        } else {
            meter.skip(
                "nvml",
                "not probed: a CPU run (an idle GPU board's energy is not its cost)",
            );
        }
        match Powercap::probe(&opts.powercap_root) {
            Ok(sources) => meter.sources.extend(sources.into_iter().map(boxed)),
            Err(reason) => {
                meter.skip("rapl.powercap", &reason);
                // perf reads the same RAPL counters: only where powercap could not.
                meter.take("rapl.perf", PerfEnergy::probe());
            }
        }
        match opts.estimate_watts_per_core {
            Some(w) => match Estimate::new(w) {
                Ok(estimate) => meter.sources.push(Box::new(estimate)),
                Err(e) => meter.skip("estimate", &e.to_string()),
            },
            None => meter.skip("estimate", "not asked for (--estimate-watts-per-core)"),
        }
        meter
    }

    /// A meter over the given sources (tests, or a caller with its own).
    pub fn new(sources: Vec<Box<dyn EnergySource>>, skipped: Vec<Skipped>) -> EnergyMeter {
        EnergyMeter { sources, skipped }
    }

    fn take<S: EnergySource + 'static>(
        &mut self,
        name: &str,
        found: std::result::Result<Vec<S>, String>,
    ) {
        match found {
            Ok(sources) => self.sources.extend(sources.into_iter().map(boxed)),
            Err(reason) => self.skip(name, &reason),
        }
    }

    fn skip(&mut self, source: &str, reason: &str) {
        self.skipped.push(Skipped {
            source: source.into(),
            reason: reason.into(),
        });
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourceInfo> {
        self.sources.iter().map(|s| s.info())
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Whether any source measures (rather than estimates).
    pub fn measures(&self) -> bool {
        self.sources().any(|s| s.measured)
    }

    /// Opens a window: every counter read back to back, the clock between them.
    pub fn start(&mut self) -> Result<Window> {
        let joules = self.read_all()?;
        Ok(Window {
            started: Instant::now(),
            core_seconds: process_core_seconds(),
            joules,
        })
    }

    /// Closes a window. Synchronise the device first: work still queued on a GPU is neither
    /// timed nor metered otherwise.
    pub fn stop(&mut self, window: &Window) -> Result<Reading> {
        let core_seconds = process_core_seconds() - window.core_seconds;
        let seconds = window.started.elapsed().as_secs_f64();
        let joules = self.read_all()?;
        Ok(Reading {
            seconds,
            core_seconds,
            joules: joules
                .iter()
                .zip(&window.joules)
                .map(|(end, start)| end - start)
                .collect(),
            windows: 1,
            shortest_window: seconds,
        })
    }

    /// A window of `duration` with nothing running: the baseline power.
    pub fn idle(&mut self, duration: Duration) -> Result<Reading> {
        let window = self.start()?;
        std::thread::sleep(duration);
        self.stop(&window)
    }

    fn read_all(&mut self) -> Result<Vec<f64>> {
        self.sources.iter_mut().map(|s| s.joules()).collect()
    }
}

fn boxed<S: EnergySource + 'static>(s: S) -> Box<dyn EnergySource> {
    Box::new(s)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A counter that advances by fixed joules per read, labelled as measured or not.
    pub struct Stepping {
        pub info: SourceInfo,
        pub step: f64,
        pub total: f64,
    }

    impl Stepping {
        pub fn new(name: &str, measured: bool, step: f64) -> Stepping {
            Stepping {
                info: SourceInfo {
                    name: name.into(),
                    covers: format!("{name} test"),
                    measured,
                    min_window: Duration::from_millis(100),
                },
                step,
                total: 0.0,
            }
        }
    }

    impl EnergySource for Stepping {
        fn info(&self) -> &SourceInfo {
            &self.info
        }
        fn joules(&mut self) -> Result<f64> {
            self.total += self.step;
            Ok(self.total)
        }
    }

    #[test]
    fn windows_read_differences_and_readings_add_up() {
        let mut meter = EnergyMeter::new(
            vec![
                Box::new(Stepping::new("a", true, 2.0)),
                Box::new(Stepping::new("b", false, 0.5)),
            ],
            vec![],
        );
        let w = meter.start().unwrap();
        let r1 = meter.stop(&w).unwrap();
        assert_eq!(r1.joules, vec![2.0, 0.5]);
        assert!(r1.seconds >= 0.0 && r1.core_seconds >= 0.0);
        let mut total = Reading::default();
        total.add(&r1);
        total.add(&r1);
        assert_eq!(total.joules, vec![4.0, 1.0]);
        assert_eq!(total.windows, 2);
        assert_eq!(total.shortest_window, r1.seconds);
        assert!(meter.measures());
    }

    #[test]
    fn a_machine_without_sensors_says_why_for_each_source() {
        let dir = tempfile::tempdir().unwrap();
        let meter = EnergyMeter::probe(&EnergyOptions {
            powercap_root: dir.path().join("absent"),
            nvml: false,
            estimate_watts_per_core: None,
        });
        let names: Vec<&str> = meter.skipped().iter().map(|s| s.source.as_str()).collect();
        assert!(names.contains(&"nvml") && names.contains(&"rapl.powercap"));
        assert!(names.contains(&"estimate"));
        assert!(meter.skipped().iter().all(|s| !s.reason.is_empty()));
        // (perf may find a `power` PMU on a bare-metal test machine; nothing else may appear.)
        assert!(meter.sources().all(|s| s.name == "rapl.perf"));
    }
}
