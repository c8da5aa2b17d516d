//! Keeping rayon's other workers awake through a forward pass. A decode step is about ten
//! parallel loops a layer with serial work between them (norms, rotary, routing); a worker
//! that finds no work sleeps within microseconds, and waking it for the next loop costs tens
//! of microseconds on the VMs we run on (a loop of 8 tasks of 2 µs after 20 µs of serial
//! work: 44 µs with rayon's wake-ups, 29.5 with a spinning worker; ideal 28). Each other
//! worker instead runs a helper for the length of the pass that takes pending work as soon as
//! it appears (`rayon::yield_now`) and spins between, as llama.cpp's threads spin between
//! graph nodes. Measured (q3-mini, decode at batch 1, Intel Xeon without AMX, 2 threads,
//! five interleaved rounds): BF16 75.9 -> 82.5 tokens/s, Q4_K_M 162.6 -> 190.6.
//!
//! The cost is the spin itself: the other cores stay busy for the whole pass (core-seconds
//! and energy count it, honestly).

use std::sync::atomic::{AtomicBool, Ordering};

/// Pauses between a helper's looks for work when it found none.
const IDLE_PAUSES: usize = 32;

/// Runs `f` on a thread of rayon's pool while every other worker of the pool takes its
/// parallel loops' tasks without sleeping; returns when `f` has and the helpers have stopped.
pub fn run_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let stop = AtomicBool::new(false);
    let stop = &stop;
    rayon::scope(|s| {
        let caller = rayon::current_thread_index();
        // One helper on each worker (broadcast, so that none lands on the caller's thread
        // but its own, which returns at once: the caller must stay free to run `f`).
        s.spawn_broadcast(move |_, _| {
            if rayon::current_thread_index() == caller {
                return;
            }
            while !stop.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    // Looking for work touches the other deques' lines: pause between looks.
                    for _ in 0..IDLE_PAUSES {
                        std::hint::spin_loop();
                    }
                }
            }
        });
        // Stops the helpers however `f` ends, a panic included (the scope waits for them).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(stop);
        f()
    })
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    #[test]
    fn loops_inside_run_and_the_helpers_stop() {
        let sum: u64 = run_awake(|| {
            (0..50)
                .map(|_| (0..1000u64).into_par_iter().sum::<u64>())
                .sum()
        });
        assert_eq!(sum, 50 * 999 * 1000 / 2);
        // Nested and concurrent passes finish too.
        let sums: Vec<u64> = (0..4u64)
            .into_par_iter()
            .map(|i| run_awake(|| (0..100 * i).into_par_iter().sum::<u64>()))
            .collect();
        assert_eq!(sums, [0, 4950, 19900, 44850]);
    }

    #[test]
    fn a_panic_inside_stops_the_helpers_and_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            run_awake(|| {
                (0..64)
                    .into_par_iter()
                    .for_each(|i| assert!(i < 63, "task {i}"));
            })
        });
        assert!(r.is_err());
    }
}
