//! The estimate: busy core-seconds times a power per core the user gives. It is a time
//! measurement in disguise (joules proportional to CPU time), so it is always labelled
//! `measured: false` and never ranked against a measurement; it exists to put a rough joule
//! figure beside the exact core-seconds where no sensor is, when a user asks for one.

use std::time::Duration;

use super::{process_core_seconds, EnergySource, SourceInfo};
use crate::error::Result;

pub struct Estimate {
    info: SourceInfo,
    watts_per_core: f64,
    opened_at: f64,
}

impl Estimate {
    pub fn new(watts_per_core: f64) -> Estimate {
        Estimate {
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
        }
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
        let mut e = Estimate::new(4.0);
        assert!(!e.info().measured);
        assert!(e.info().covers.contains("estimate"));
        assert_eq!(e.joules_for(2.5), 10.0);
        let a = e.joules().unwrap();
        let b = e.joules().unwrap();
        assert!(a >= 0.0 && b >= a);
    }
}
