//! Per-phase energy figures as `moe bench --json` and `moe explore` report them: gross joules
//! per token from the headline sources (the measured ones; the estimate only where nothing
//! measures), idle-subtracted joules beside, core-seconds per token always, and every source,
//! skipped source and too-short window spelled out.

use serde::Serialize;

use super::{EnergyMeter, Reading, Skipped, SourceInfo};

/// One phase's windows added up, and the tokens made in them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseEnergy {
    pub reading: Reading,
    pub tokens: usize,
}

impl PhaseEnergy {
    pub fn add(&mut self, reading: &Reading, tokens: usize) {
        self.reading.add(reading);
        self.tokens += tokens;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    pub tokens: usize,
    pub seconds: f64,
    /// CPU time of the whole process (every thread) per token: exact on any machine.
    pub core_seconds_per_token: f64,
    /// The headline sources' joules per token, idle power included; null without a source.
    pub joules_per_token: Option<f64>,
    /// The same less idle power over the phase's time: what the work itself added.
    pub net_joules_per_token: Option<f64>,
    pub tokens_per_joule: Option<f64>,
}

/// One source's share, in the meter's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    #[serde(flatten)]
    pub info: SourceInfo,
    pub prefill_joules: f64,
    pub decode_joules: f64,
    pub idle_watts: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergyReport {
    /// The sources behind the headline figures, joined by `+`; `none` when nothing was found.
    pub source: String,
    /// False for an estimate, and when there is no source.
    pub measured: bool,
    /// What the figures are, in a sentence.
    pub note: String,
    pub prefill: PhaseReport,
    pub decode: PhaseReport,
    /// Decode tokens per joule of the headline sources (gross): throughput per watt.
    pub tokens_per_joule: Option<f64>,
    /// The headline sources' power with nothing running, measured before the run.
    pub idle_watts: Option<f64>,
    pub idle_seconds: Option<f64>,
    pub sources: Vec<SourceReport>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

impl EnergyReport {
    pub fn new(
        meter: &EnergyMeter,
        prefill: &PhaseEnergy,
        decode: &PhaseEnergy,
        idle: Option<&Reading>,
    ) -> EnergyReport {
        let infos: Vec<&SourceInfo> = meter.sources().collect();
        // Measured sources when there are any; the estimate only where nothing measures.
        let measured = infos.iter().any(|s| s.measured);
        let headline: Vec<usize> = (0..infos.len())
            .filter(|&i| infos[i].measured == measured)
            .collect();
        let sum = |r: &Reading| -> Option<f64> {
            (!headline.is_empty()).then(|| headline.iter().map(|&i| r.joules[i]).sum())
        };
        let idle_watts = idle.and_then(|r| sum(r).map(|j| j / r.seconds.max(f64::MIN_POSITIVE)));
        let phase = |p: &PhaseEnergy| -> PhaseReport {
            let tokens = p.tokens.max(1) as f64;
            let joules = if p.reading.windows == 0 {
                None
            } else {
                sum(&p.reading)
            };
            PhaseReport {
                tokens: p.tokens,
                seconds: p.reading.seconds,
                core_seconds_per_token: p.reading.core_seconds / tokens,
                joules_per_token: joules.map(|j| j / tokens),
                net_joules_per_token: joules
                    .zip(idle_watts)
                    .map(|(j, w)| (j - w * p.reading.seconds) / tokens),
                tokens_per_joule: joules.filter(|&j| j > 0.0).map(|j| tokens / j),
            }
        };
        let (prefill_report, decode_report) = (phase(prefill), phase(decode));
        let source = if headline.is_empty() {
            "none".to_string()
        } else {
            let mut names: Vec<&str> = headline.iter().map(|&i| infos[i].name.as_str()).collect();
            names.dedup();
            names.join("+")
        };
        let note = if headline.is_empty() {
            "no energy sensor found (see skipped): the figures are CPU core-seconds per token, \
             which are exact"
                .to_string()
        } else if measured {
            format!(
                "measured: {}; gross joules include idle power, net ones subtract the idle \
                 power measured before the run",
                headline
                    .iter()
                    .map(|&i| infos[i].covers.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "no energy sensor found: the joules are an ESTIMATE (CPU time x watts per core), \
             proportional to core-seconds; never compare them with measured figures"
                .to_string()
        };
        let mut warnings = Vec::new();
        for &i in &headline {
            let min = infos[i].min_window.as_secs_f64();
            for (name, p) in [("prefill", prefill), ("decode", decode)] {
                let shortest = p.reading.shortest_window;
                if p.reading.windows > 0 && shortest < min {
                    warnings.push(format!(
                        "{name} windows as short as {shortest:.2} s are under the {min:.1} s \
                         that {} ({}) needs for a trustworthy reading: use longer runs",
                        infos[i].name, infos[i].covers
                    ));
                }
            }
        }
        EnergyReport {
            source,
            measured,
            note,
            tokens_per_joule: decode_report.tokens_per_joule,
            prefill: prefill_report,
            decode: decode_report,
            idle_watts,
            idle_seconds: idle.map(|r| r.seconds),
            sources: infos
                .iter()
                .enumerate()
                .map(|(i, info)| SourceReport {
                    info: (*info).clone(),
                    prefill_joules: prefill.reading.joules.get(i).copied().unwrap_or(0.0),
                    decode_joules: decode.reading.joules.get(i).copied().unwrap_or(0.0),
                    idle_watts: idle.map(|r| r.joules[i] / r.seconds.max(f64::MIN_POSITIVE)),
                })
                .collect(),
            skipped: meter.skipped().to_vec(),
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Stepping;
    use super::*;

    fn reading(seconds: f64, core_seconds: f64, joules: Vec<f64>) -> Reading {
        Reading {
            seconds,
            core_seconds,
            joules,
            windows: 1,
            shortest_window: seconds,
        }
    }

    #[test]
    fn measured_sources_make_the_headline_and_the_estimate_stays_aside() {
        let meter = EnergyMeter::new(
            vec![
                Box::new(Stepping::new("rapl.powercap", true, 1.0)),
                Box::new(Stepping::new("estimate", false, 1.0)),
            ],
            vec![],
        );
        let mut prefill = PhaseEnergy::default();
        prefill.add(&reading(2.0, 3.0, vec![40.0, 99.0]), 100);
        let mut decode = PhaseEnergy::default();
        decode.add(&reading(0.05, 0.1, vec![1.0, 99.0]), 10);
        let idle = reading(1.0, 0.0, vec![5.0, 0.0]);
        let r = EnergyReport::new(&meter, &prefill, &decode, Some(&idle));
        assert_eq!(r.source, "rapl.powercap");
        assert!(r.measured);
        assert_eq!(r.prefill.joules_per_token, Some(0.4));
        assert_eq!(r.prefill.tokens_per_joule, Some(2.5));
        // 40 J - 5 W x 2 s, over 100 tokens.
        assert_eq!(r.prefill.net_joules_per_token, Some(0.3));
        assert_eq!(r.prefill.core_seconds_per_token, 0.03);
        assert_eq!(r.idle_watts, Some(5.0));
        assert_eq!(r.tokens_per_joule, Some(10.0));
        assert_eq!(r.sources[1].decode_joules, 99.0);
        assert!(!r.sources[1].info.measured);
        // 0.05 s decode windows are under the 0.1 s the source needs.
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].starts_with("decode windows"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn an_estimate_alone_is_labelled_and_nothing_at_all_reports_core_seconds() {
        let estimate = EnergyMeter::new(
            vec![Box::new(Stepping::new("estimate", false, 1.0))],
            vec![],
        );
        let mut decode = PhaseEnergy::default();
        decode.add(&reading(1.0, 2.0, vec![8.0]), 4);
        let r = EnergyReport::new(&estimate, &PhaseEnergy::default(), &decode, None);
        assert_eq!(r.source, "estimate");
        assert!(!r.measured);
        assert!(r.note.contains("ESTIMATE"));
        assert_eq!(r.decode.joules_per_token, Some(2.0));
        assert_eq!(r.prefill.joules_per_token, None);

        let none = EnergyMeter::new(
            vec![],
            vec![Skipped {
                source: "nvml".into(),
                reason: "no driver".into(),
            }],
        );
        let mut decode = PhaseEnergy::default();
        decode.add(&reading(1.0, 2.0, vec![]), 4);
        let r = EnergyReport::new(&none, &PhaseEnergy::default(), &decode, None);
        assert_eq!(r.source, "none");
        assert!(!r.measured);
        assert_eq!(r.decode.joules_per_token, None);
        assert_eq!(r.tokens_per_joule, None);
        assert_eq!(r.decode.core_seconds_per_token, 0.5);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.note.contains("core-seconds"));
    }
}
