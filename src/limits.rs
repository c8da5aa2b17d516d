//! `Limits`: the one policy for how much work and memory an input may ask for. Files, templates,
//! requests and flags are checked against these numbers before anything is allocated or looped
//! over, so a hostile or careless input gets one error saying what it asked and what the limit
//! is, not a hang, an out-of-memory kill or a panic. The defaults are far above what any
//! published model or sensible request needs; a library user who needs more sets their own
//! with [`Limits::set`] before loading.

use std::sync::RwLock;

use crate::error::{Error, Result};

/// Work and memory bounds for inputs. Read the ones in force with [`Limits::current`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest JSON file read (config.json, tokenizer.json, generation_config.json, shard
    /// indexes). The largest published tokenizer.json files are about 35 MB.
    pub max_json_bytes: u64,
    /// Instructions a chat template may run for one render (minijinja's fuel): a template
    /// that loops without end stops here. A 200-message conversation through the longest
    /// published templates takes under a million.
    pub template_fuel: u64,
    /// The largest prompt a template may render, in bytes.
    pub max_rendered_bytes: usize,
    /// Worker threads, as a multiple of the cores this process may use.
    pub threads_per_core: usize,
    /// Sequences decoded together in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_bytes: 256 << 20,
            template_fuel: 50_000_000,
            max_rendered_bytes: 64 << 20,
            threads_per_core: 4,
            max_batch: 4096,
        }
    }
}

static CURRENT: RwLock<Option<Limits>> = RwLock::new(None);

impl Limits {
    /// The limits in force: the defaults, or what [`Limits::set`] last set.
    pub fn current() -> Limits {
        let current = CURRENT.read().unwrap_or_else(|e| e.into_inner());
        current.clone().unwrap_or_default()
    }

    /// Makes `limits` the ones in force for this process.
    pub fn set(limits: Limits) {
        let mut current = CURRENT.write().unwrap_or_else(|e| e.into_inner());
        *current = Some(limits);
    }

    /// The most worker threads: `threads_per_core` times the cores available.
    pub fn max_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_mul(self.threads_per_core).max(1)
    }

    /// Checks a thread count asked for by `what` (a flag's name).
    pub fn check_threads(&self, what: &str, threads: usize) -> Result<()> {
        let max = self.max_threads();
        if threads == 0 || threads > max {
            return Err(Error::Input(format!(
                "{what} {threads} is out of range 1..={max} ({} per core this process may use; \
                 raise Limits::threads_per_core to allow more)",
                self.threads_per_core
            )));
        }
        Ok(())
    }

    /// Checks a batch size asked for by `what`.
    pub fn check_batch(&self, what: &str, batch: usize) -> Result<()> {
        if batch == 0 || batch > self.max_batch {
            return Err(Error::Input(format!(
                "{what} {batch} is out of range 1..={} (Limits::max_batch)",
                self.max_batch
            )));
        }
        Ok(())
    }

    /// Checks that `bytes` more memory, needed for `what`, is available now (the kernel's
    /// MemAvailable on Linux; elsewhere the check passes), before anything is allocated.
    pub fn check_memory(&self, what: &str, bytes: u128) -> Result<()> {
        match available_memory() {
            Some(available) if bytes > available as u128 => Err(Error::Input(format!(
                "{what} needs {:.1} GiB, and {:.1} GiB of memory is available",
                bytes as f64 / (1u64 << 30) as f64,
                available as f64 / (1u64 << 30) as f64
            ))),
            _ => Ok(()),
        }
    }
}

/// Bytes of memory the kernel says can be allocated without swapping (`MemAvailable`), where
/// it says (Linux).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_beyond_the_limits_are_one_line_naming_what_and_how_much() {
        let limits = Limits::default();
        let e = limits.check_threads("--threads", 100_000).unwrap_err();
        assert!(
            e.to_string().contains("--threads 100000 is out of range"),
            "{e}"
        );
        assert!(limits.check_threads("--threads", 0).is_err());
        assert!(limits.check_threads("--threads", 1).is_ok());
        let e = limits.check_batch("--batch", 100_000).unwrap_err();
        assert!(e.to_string().contains("--batch"), "{e}");
        if available_memory().is_some() {
            let e = limits.check_memory("a cache", 1 << 60).unwrap_err();
            assert!(e.to_string().contains("GiB of memory is available"), "{e}");
        }
        assert!(limits.check_memory("a byte", 1).is_ok());
    }
}
