//! What `GET /metrics` reports, in Prometheus' text format: requests by outcome, the queue and
//! the batch, tokens and their rates, time to first token, and what the served tokens cost in
//! energy (joules from the machine's sensors, labelled as `moe bench` labels them, and the
//! process's core-seconds).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

use crate::energy::{EnergyMeter, Window};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The server's counters, shared by the scheduler (which updates them) and the HTTP layer
/// (which reports them).
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    queue_depth: Gauge,
    running: Gauge,
    batch_sequences: Histogram,
    prefill_tokens: Counter,
    decode_tokens: Counter,
    prefill_rate: FloatGauge,
    decode_rate: FloatGauge,
    first_token: Histogram,
    step_seconds: Histogram,
    /// The steps of the last `RATE_WINDOW_SECS`: (end, prefill tokens, decode tokens).
    recent: Mutex<VecDeque<(Instant, usize, usize)>>,
    energy: Option<Energy>,
    core_seconds: FloatGauge,
    /// The process's CPU time when the server started (loading the model is not serving).
    core_seconds_at_start: f64,
    tokens_per_core_second: FloatGauge,
}

/// The window of the served rates.
const RATE_WINDOW_SECS: f64 = 10.0;

/// The meter, a window open since the server started, and what it reports.
struct Energy {
    meter: Mutex<(EnergyMeter, Window)>,
    joules: Family<Labels, FloatGauge>,
    tokens_per_joule: Family<Labels, FloatGauge>,
    /// Each source's labels, in the meter's order.
    labels: Vec<Labels>,
}

impl Metrics {
    /// Counters at zero, reporting energy through `meter` when it has a source that works
    /// (its window opens now).
    pub fn new(meter: Option<EnergyMeter>) -> Metrics {
        let mut registry = Registry::with_prefix("moe");
        let r = &mut registry;
        let requests = add(
            r,
            "requests",
            "Requests that left the batch, by outcome: stop, length, tool_calls, cancelled or error",
            Family::default(),
        );
        let rejected = add(
            r,
            "rejected_requests",
            "Requests answered with an error before reaching the batch, by HTTP status",
            Family::default(),
        );
        let queue_depth = add(
            r,
            "queue_depth",
            "Requests waiting for a place in the batch",
            Gauge::default(),
        );
        let running = add(
            r,
            "running_sequences",
            "Sequences in the running batch",
            Gauge::default(),
        );
        let batch_sequences = add(
            r,
            "batch_sequences",
            "Sequences per forward step",
            Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        );
        let prefill_tokens = add(
            r,
            "prefill_tokens",
            "Prompt tokens read",
            Counter::default(),
        );
        let decode_tokens = add(
            r,
            "decode_tokens",
            "Tokens fed back while decoding (one per new token after each request's first)",
            Counter::default(),
        );
        let prefill_rate = add(
            r,
            "prefill_tokens_per_second",
            "Prompt tokens read per second of wall time over the last 10 s",
            FloatGauge::default(),
        );
        let decode_rate = add(
            r,
            "decode_tokens_per_second",
            "Decode tokens per second of wall time over the last 10 s, all sequences together",
            FloatGauge::default(),
        );
        let first_token = add(
            r,
            "time_to_first_token_seconds",
            "From a request's arrival (its wait in the queue included) to its first new token",
            Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        );
        let step_seconds = add(
            r,
            "step_seconds",
            "Wall time of one forward step of the batch",
            Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        );
        let core_seconds = add(
            r,
            "process_core_seconds",
            "CPU time of the process since the server started (user and system, every thread)",
            FloatGauge::default(),
        );
        let tokens_per_core_second = add(
            r,
            "tokens_per_core_second",
            "Prefill and decode tokens per core-second of the process since it started",
            FloatGauge::default(),
        );
        let energy = meter.and_then(|mut meter| {
            let window = meter.start().ok()?;
            let labels: Vec<Labels> = meter
                .sources()
                .map(|s| {
                    vec![
                        ("source".to_string(), s.name.clone()),
                        ("covers".to_string(), s.covers.clone()),
                        ("measured".to_string(), s.measured.to_string()),
                    ]
                })
                .collect();
            if labels.is_empty() {
                return None;
            }
            let joules = add(
                r,
                "energy_joules",
                "Energy since the server started, idle time included, per source (measured \
                 false: an ESTIMATE from CPU time, not a sensor)",
                Family::default(),
            );
            let tokens_per_joule = add(
                r,
                "tokens_per_joule",
                "Prefill and decode tokens per joule since the server started, idle included \
                 (measured false: ESTIMATED)",
                Family::default(),
            );
            Some(Energy {
                meter: Mutex::new((meter, window)),
                joules,
                tokens_per_joule,
                labels,
            })
        });
        Metrics {
            registry,
            requests,
            rejected,
            queue_depth,
            running,
            batch_sequences,
            prefill_tokens,
            decode_tokens,
            prefill_rate,
            decode_rate,
            first_token,
            step_seconds,
            recent: Mutex::new(VecDeque::new()),
            energy,
            core_seconds,
            core_seconds_at_start: crate::energy::process_core_seconds(),
            tokens_per_core_second,
        }
    }

    pub(crate) fn finished(&self, outcome: &str) {
        let labels = vec![("outcome".to_string(), outcome.to_string())];
        self.requests.get_or_create(&labels).inc();
    }

    /// A request refused with HTTP `status` before it reached the batch.
    pub fn rejected(&self, status: u16) {
        let labels = vec![("status".to_string(), status.to_string())];
        self.rejected.get_or_create(&labels).inc();
    }

    pub(crate) fn set_load(&self, waiting: usize, running: usize) {
        self.queue_depth.set(waiting as i64);
        self.running.set(running as i64);
    }

    pub(crate) fn step(&self, sequences: usize, prefill: usize, decode: usize, secs: f64) {
        self.batch_sequences.observe(sequences as f64);
        self.prefill_tokens.inc_by(prefill as u64);
        self.decode_tokens.inc_by(decode as u64);
        self.step_seconds.observe(secs);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back((Instant::now(), prefill, decode));
        // Bounded by the steps of one window (a step takes at least some microseconds).
        while recent
            .front()
            .is_some_and(|(t, _, _)| t.elapsed().as_secs_f64() > RATE_WINDOW_SECS)
        {
            recent.pop_front();
        }
    }

    /// Tokens per second of wall time over the last window: (prefill, decode).
    fn rates(&self) -> (f64, f64) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let within = recent
            .iter()
            .filter(|(t, _, _)| t.elapsed().as_secs_f64() <= RATE_WINDOW_SECS);
        let (prefill, decode) = within.fold((0, 0), |(p, d), (_, a, b)| (p + a, d + b));
        (
            prefill as f64 / RATE_WINDOW_SECS,
            decode as f64 / RATE_WINDOW_SECS,
        )
    }

    pub(crate) fn first_token(&self, secs: f64) {
        self.first_token.observe(secs);
    }

    /// Whether joules are reported (a source was found).
    pub fn has_energy(&self) -> bool {
        self.energy.is_some()
    }

    /// Reads the energy counters now. Called at each report, and often enough in between
    /// (`Server` every 30 s) that a counter that wraps (RAPL's, every quarter hour or so at
    /// package power) is never read a whole wrap apart.
    pub fn read_energy(&self) {
        let Some(energy) = &self.energy else { return };
        let tokens = (self.prefill_tokens.get() + self.decode_tokens.get()) as f64;
        let mut guard = energy.meter.lock().unwrap_or_else(|e| e.into_inner());
        let (meter, window) = &mut *guard;
        if let Ok(reading) = meter.stop(window) {
            for (labels, joules) in energy.labels.iter().zip(&reading.joules) {
                energy.joules.get_or_create(labels).set(*joules);
                let per_joule = if *joules > 0.0 { tokens / joules } else { 0.0 };
                energy.tokens_per_joule.get_or_create(labels).set(per_joule);
            }
        }
    }

    /// The report, with the energy and CPU time read now and `waiting` requests in the queue.
    pub fn render(&self, waiting: usize) -> String {
        let (prefill, decode) = self.rates();
        self.prefill_rate.set(prefill);
        self.decode_rate.set(decode);
        self.queue_depth.set(waiting as i64);
        self.read_energy();
        let tokens = (self.prefill_tokens.get() + self.decode_tokens.get()) as f64;
        let core_seconds = crate::energy::process_core_seconds() - self.core_seconds_at_start;
        self.core_seconds.set(core_seconds);
        let per_core_second = if core_seconds > 0.0 {
            tokens / core_seconds
        } else {
            0.0
        };
        self.tokens_per_core_second.set(per_core_second);
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Registers `metric` under `name` with its `help`, and returns it (metrics are handles: the
/// registry's copy and the one returned count together).
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}
