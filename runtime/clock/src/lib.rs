//! Coarse clocks: the time as of the kernel's last timer tick, a few milliseconds old at
//! most (`CLOCK_MONOTONIC_COARSE`, `CLOCK_REALTIME_COARSE`).
//!
//! For what the request path stamps on every request but needs only to a few milliseconds:
//! the `Date` header, when a connection began to wait for its next request (its header
//! timeout), when an instance last served (idle eviction), a cache pass's expiry. A coarse
//! read costs ~7 ns on this project's 2-core machine where `Instant::now()` costs ~25 ns
//! (both through the vDSO with the TSC clock source), and the readings here are plain
//! integers where `Instant` arithmetic takes ~40 instructions a subtraction. What measures
//! a request (its duration, its CPU time, the CPU limit's turns) keeps the precise clock.
//!
//! Elsewhere than Linux and Android these read the precise clocks. [`nanos_on`] reads any
//! clock by its id (the CPU limit reads a thread's CPU clock with it).

use std::time::{Duration, Instant};

/// The monotonic time as of the last tick, as an [`Instant`] comparable with
/// `Instant::now()`: earlier than it by up to a tick (plus the time between the two reads).
pub fn now() -> Instant {
    let (base_nanos, base) = imp::base();
    // Before the base right after it was taken (the tick had not come yet): the base.
    base + Duration::from_nanos(imp::monotonic_nanos().saturating_sub(base_nanos))
}

/// Milliseconds of the monotonic clock as of the last tick, from an arbitrary origin fixed
/// for the process: for stamps compared with each other.
pub fn millis() -> u64 {
    imp::monotonic_nanos() / 1_000_000
}

/// Nanoseconds of the monotonic clock, precise (the clock `Instant` reads), from an origin
/// fixed for the process and never 0 (0 can stand for "none"): for durations measured many
/// times a request (an isolate's turns, its requests' CPU and wall time). A reading is a
/// plain integer: a difference of two is one subtraction, where `Instant` arithmetic takes
/// ~40 instructions.
pub fn precise_nanos() -> u64 {
    imp::precise_nanos()
}

/// Whole seconds since the Unix epoch as of the last tick (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    imp::unix_secs()
}

/// How old a coarse reading may be: the coarse clock's resolution (a tick: 4 ms at the
/// usual 250 Hz; zero where the precise clocks are read).
pub fn resolution() -> Duration {
    imp::resolution()
}

/// Nanoseconds on `clock` (any clock `clock_gettime` reads, a thread's CPU clock among
/// them), or `None` if it cannot be read (a CPU clock whose thread is gone) or reads before
/// its origin.
#[cfg(unix)]
pub fn nanos_on(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; an invalid clock makes the call fail, not UB.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).ok().filter(|_| rc == 0)?;
    Some(secs * 1_000_000_000 + ts.tv_nsec as u64)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::nanos_on;

    /// The clocks read here exist on every Linux since 2.6.32 (a failure, or a wall clock
    /// set before 1970, reads 0).
    fn read(clock: libc::clockid_t) -> u64 {
        nanos_on(clock).unwrap_or(0)
    }

    /// A precise reading of `CLOCK_MONOTONIC` (what `Instant` reads on Linux) and the
    /// `Instant` read right after it: a coarse reading maps to an `Instant` by its distance
    /// from the first.
    pub fn base() -> (u64, Instant) {
        static BASE: OnceLock<(u64, Instant)> = OnceLock::new();
        *BASE.get_or_init(|| (read(libc::CLOCK_MONOTONIC), Instant::now()))
    }

    pub fn monotonic_nanos() -> u64 {
        read(libc::CLOCK_MONOTONIC_COARSE)
    }

    pub fn precise_nanos() -> u64 {
        // The kernel's monotonic clock starts at boot: past 0 by the time anything runs.
        read(libc::CLOCK_MONOTONIC).max(1)
    }

    pub fn unix_secs() -> u64 {
        read(libc::CLOCK_REALTIME_COARSE) / 1_000_000_000
    }

    pub fn resolution() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `read`.
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant, SystemTime};

    pub fn base() -> (u64, Instant) {
        static BASE: OnceLock<Instant> = OnceLock::new();
        (0, *BASE.get_or_init(Instant::now))
    }

    pub fn monotonic_nanos() -> u64 {
        base().1.elapsed().as_nanos() as u64
    }

    pub fn precise_nanos() -> u64 {
        monotonic_nanos() + 1
    }

    pub fn unix_secs() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }

    pub fn resolution() -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn slack() -> Duration {
        resolution() + Duration::from_millis(20)
    }

    /// A coarse reading lies within a tick (plus scheduling slack) before a precise one.
    #[test]
    fn coarse_readings_trail_precise_ones_by_at_most_a_tick() {
        let mut millis_then = millis();
        let precise_then = Instant::now();
        for _ in 0..1000 {
            let coarse = now();
            let precise = Instant::now();
            assert!(
                coarse <= precise + Duration::from_micros(1),
                "{coarse:?} {precise:?}"
            );
            assert!(
                precise.duration_since(coarse) <= slack(),
                "{coarse:?} {precise:?}"
            );
            let unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap();
            let secs = unix_secs();
            assert!(secs <= unix.as_secs(), "{secs} {unix:?}");
            assert!(unix - Duration::from_secs(secs) <= Duration::from_secs(1) + slack());
            let millis_now = millis();
            assert!(millis_now >= millis_then);
            millis_then = millis_now;
        }
        // Milliseconds pass as the precise clock's do (to a tick).
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = precise_then.elapsed().as_millis() as u64;
        let counted = millis() - millis_then;
        assert!(
            counted + slack().as_millis() as u64 >= elapsed - 1,
            "{counted} {elapsed}"
        );
    }

    #[test]
    fn coarse_readings_never_go_back_and_do_move_on() {
        let start = now();
        let mut last = start;
        let until = Instant::now() + resolution() * 3 + Duration::from_millis(30);
        while Instant::now() < until {
            let next = now();
            assert!(next >= last);
            last = next;
        }
        assert!(last > start, "the coarse clock did not advance in 3 ticks");
    }

    /// Precise readings measure what `Instant` measures between the same two moments.
    #[test]
    fn precise_readings_measure_what_instant_measures() {
        let (from, instant_from) = (precise_nanos(), Instant::now());
        assert!(from > 0);
        let mut last = from;
        for _ in 0..1000 {
            let now = precise_nanos();
            assert!(now >= last, "went back: {last} → {now}");
            last = now;
        }
        std::thread::sleep(Duration::from_millis(30));
        let instant_took = instant_from.elapsed();
        let took = Duration::from_nanos(precise_nanos() - from);
        let instant_after = instant_from.elapsed();
        assert!(
            took >= Duration::from_millis(30) && took <= instant_after + Duration::from_millis(5),
            "precise {took:?}, Instant {instant_took:?}..{instant_after:?}"
        );
    }
}
