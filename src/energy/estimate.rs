//! The estimate: busy core-seconds times a power per core the user gives. It is a time
//! measurement in disguise (joules proportional to CPU time), so it is always labelled
//! `measured: false` and never ranked against a measurement; it exists to put a rough joule
//! figure beside the exact core-seconds where no sensor is, when a user asks for one.

use std::time::Duration;

use super::{process_core_seconds, EnergySource, SourceInfo};
use crate::error::{Error, Result};

pub struct Estimate {
    info: SourceInfo,
    watts_per_core: f64,
    opened_at: f64,
}

impl Estimate {
    /// An estimate at `watts_per_core` per busy core: a power between 0 and 1000 W.
    pub fn new(watts_per_core: f64) -> Result<Estimate> {
        if !(watts_per_core > 0.0 && watts_per_core < 1000.0) {
            return Err(Error::Input(format!(
                "--estimate-watts-per-core {watts_per_core}: expected a power between 0 and \
                 1000 W"
            )));
        }
        Ok(Estimate {
            info: SourceInfo {
                name: "estimate".into(),
                covers: format!(
                    "this process's CPU time x {watts_per_core} W per busy core (an estimate, \
                     not a measurement)"
                ),
                measured: false,
                min_window: Duration::from_millis(10),
            },
            watts_per_core,
            opened_at: process_core_seconds(),
        })
    }

    /// Joules for `core_seconds` of CPU time: the whole model.
    pub fn joules_for(&self, core_seconds: f64) -> f64 {
        core_seconds * self.watts_per_core
    }
}

impl EnergySource for Estimate {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn joules(&mut self) -> Result<f64> {
        Ok(self.joules_for(process_core_seconds() - self.opened_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_core_seconds_times_watts_and_always_says_so() {
        let mut e = Estimate::new(4.0).unwrap();
        assert!(!e.info().measured);
        assert!(e.info().covers.contains("estimate"));
        assert_eq!(e.joules_for(2.5), 10.0);
        let a = e.joules().unwrap();
        let b = e.joules().unwrap();
        assert!(a >= 0.0 && b >= a);
        for bad in [0.0, -1.0, f64::NAN, 1e6] {
            assert!(Estimate::new(bad).is_err(), "{bad}");
        }
        // The meter skips a bad estimate, with the reason, rather than failing.
        let meter = super::super::EnergyMeter::probe(&super::super::EnergyOptions {
            estimate_watts_per_core: Some(0.0),
            ..Default::default()
        });
        let skipped = meter
            .skipped()
            .iter()
            .find(|s| s.source == "estimate")
            .unwrap();
        assert!(skipped.reason.contains("between 0 and 1000"), "{skipped:?}");
    }
}
