//! A criterion `Measurement` of what an iteration costs: joules from the machine's measured
//! energy sources (`moe_runtime::energy`) where it has any, else CPU core-seconds of the whole
//! process, with the reasons no sensor was found printed once. An estimate is never used: it
//! would only be core-seconds renamed.

use std::cell::RefCell;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;
use moe_runtime::energy::{process_core_seconds, EnergyMeter, EnergyOptions, Window};

pub enum Cost {
    /// The meter and the indices of its measured sources, summed.
    Joules(RefCell<EnergyMeter>, Vec<usize>),
    CoreSeconds,
}

impl Cost {
    /// Measured joules where a sensor exists; core-seconds (and why) where none does. `gpu`:
    /// include GPU boards (for benches that run on one).
    pub fn probe(gpu: bool) -> Cost {
        let meter = EnergyMeter::probe(&EnergyOptions {
            nvml: gpu,
            ..EnergyOptions::default()
        });
        let measured: Vec<usize> = meter
            .sources()
            .enumerate()
            .filter(|(_, s)| s.measured)
            .map(|(i, _)| i)
            .collect();
        if measured.is_empty() {
            eprintln!(
                "energy benches: no energy sensor here, so they report CPU core-seconds per \
                 iteration (exact, not joules). Why:"
            );
            for s in meter.skipped() {
                eprintln!("  {}: {}", s.source, s.reason);
            }
            return Cost::CoreSeconds;
        }
        for i in &measured {
            let s = meter
                .sources()
                .nth(*i)
                .expect("an index from the same list");
            eprintln!("energy benches: joules from {} ({})", s.name, s.covers);
        }
        Cost::Joules(RefCell::new(meter), measured)
    }

    /// The unit, for benchmark names: `joules` or `core-seconds`.
    pub fn unit(&self) -> &'static str {
        match self {
            Cost::Joules(..) => "joules",
            Cost::CoreSeconds => "core-seconds",
        }
    }
}

pub enum Start {
    Joules(Window),
    CoreSeconds(f64),
}

impl Measurement for Cost {
    type Intermediate = Start;
    type Value = f64;

    fn start(&self) -> Start {
        match self {
            Cost::Joules(meter, _) => Start::Joules(
                meter
                    .borrow_mut()
                    .start()
                    .expect("reading the energy counters"),
            ),
            Cost::CoreSeconds => Start::CoreSeconds(process_core_seconds()),
        }
    }

    fn end(&self, start: Start) -> f64 {
        match (self, start) {
            (Cost::Joules(meter, measured), Start::Joules(window)) => {
                let reading = meter
                    .borrow_mut()
                    .stop(&window)
                    .expect("reading the energy counters");
                measured.iter().map(|&i| reading.joules[i]).sum()
            }
            (Cost::CoreSeconds, Start::CoreSeconds(at)) => process_core_seconds() - at,
            _ => unreachable!("a window is closed by the measurement that opened it"),
        }
    }

    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        match self {
            Cost::Joules(..) => &Unit("J"),
            Cost::CoreSeconds => &Unit("core-s"),
        }
    }
}

/// SI prefixes on a base unit; throughput as elements per unit.
struct Unit(&'static str);

impl ValueFormatter for Unit {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match (self.0, typical.abs()) {
            ("J", t) if t < 1e-3 => (1e6, "µJ"),
            ("J", t) if t < 1.0 => (1e3, "mJ"),
            ("J", _) => (1.0, "J"),
            (_, t) if t < 1e-3 => (1e6, "µcore-s"),
            (_, t) if t < 1.0 => (1e3, "mcore-s"),
            _ => (1.0, "core-s"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        _: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let n = match throughput {
            Throughput::Elements(n)
            | Throughput::Bytes(n)
            | Throughput::BytesDecimal(n)
            | Throughput::Bits(n) => *n,
        } as f64;
        values.iter_mut().for_each(|v| *v = n / *v);
        if self.0 == "J" {
            "elem/J"
        } else {
            "elem/core-s"
        }
    }

    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        if self.0 == "J" {
            "J"
        } else {
            "core-s"
        }
    }
}
