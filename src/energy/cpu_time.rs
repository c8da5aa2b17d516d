//! The process's CPU time: user + system seconds of all its threads, the exact, hardware-neutral
//! cost of a run where no energy sensor exists.

/// Core-seconds this process has used so far (every thread, user and system), from
/// `getrusage`; 0 where the platform has no such call.
pub fn process_core_seconds() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes the struct it is given; zeroed is a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return secs(usage.ru_utime) + secs(usage.ru_stime);
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_up_as_core_seconds() {
        let before = process_core_seconds();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = process_core_seconds() - before;
        // At least most of 50 ms spun on this thread; the clock ticks in microseconds.
        assert!(used > 0.02, "{used}");
    }
}
