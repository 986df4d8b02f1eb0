//! Enforcement of an isolate's CPU and memory limits, and the watchdog thread behind it.
//!
//! - **CPU**: every stretch of JavaScript the host runs (a request's dispatch, a poll of the
//!   event loop, module evaluation) is a *turn*, started with a budget: what the most charged
//!   request in flight has left of its CPU limit (or the whole limit when none is in flight).
//!   A watchdog thread terminates a turn that overruns its budget. Short turns are charged
//!   their wall time (cheap to read, and at most their CPU time plus preemption); a turn
//!   that runs past [`LONG_TURN`] is measured on the worker thread's CPU clock, read by the
//!   watchdog, so a long turn on a busy machine is charged only the CPU it got.
//! - **Memory**: V8's heap limit, and the isolate's array-buffer allocator (see
//!   `allocator.rs`). Near the heap limit, execution is terminated (and the limit raised a
//!   little, or V8 would abort the process) so the isolate can unwind.
//!
//! An isolate that broke a limit is condemned: its requests in flight fail, and it is
//! replaced by a fresh one. A condemned isolate is never reused.
//!
//! The watchdog looks every tenth of the shortest CPU limit while any isolate may run; after
//! [`PARK_AFTER`] without a turn in any isolate it parks, and the next turn to start wakes it
//! (an idle node's watchdog costs nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use deno_core::v8;

/// Turns longer than this (wall time) are measured on the thread's CPU clock.
const LONG_TURN: Duration = Duration::from_millis(1);

/// The watchdog parks after this long without a turn in any isolate.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Which limit an isolate broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    Cpu,
    Memory,
}

/// One isolate as the watchdog sees it.
pub struct Watched {
    handle: v8::IsolateHandle,
    /// The watchdog watching this isolate, woken by a turn that starts while it is parked.
    watchdog: Option<&'static Watchdog>,
    /// The CPU clock of the worker thread the isolate lives on.
    clock: Option<libc::clockid_t>,
    cpu_limit: Duration,
    memory_limit: u64,
    /// [`outpost_clock::precise_nanos`] when the current turn started; 0 while idle.
    busy_since: AtomicU64,
    /// [`outpost_clock::precise_nanos`] when the latest turn started (0: none yet).
    last_turn: AtomicU64,
    /// Nanoseconds of CPU the current turn may use.
    budget: AtomicU64,
    /// The thread's CPU clock at the start of the current turn, once the watchdog measured
    /// it (long turns only); 0 otherwise.
    cpu_at_start: AtomicU64,
    cpu_breached: AtomicBool,
    memory_breached: AtomicBool,
}

impl Watched {
    /// Registers an isolate of the calling thread with the watchdog for as long as the
    /// returned value lives.
    pub fn register(
        handle: v8::IsolateHandle,
        cpu_limit: Duration,
        memory_limit: u64,
    ) -> Arc<Watched> {
        let watchdog = watchdog().ok();
        let watched = Arc::new(Watched {
            handle,
            watchdog,
            clock: own_cpu_clock(),
            cpu_limit,
            memory_limit,
            busy_since: AtomicU64::new(0),
            last_turn: AtomicU64::new(0),
            budget: AtomicU64::new(u64::MAX),
            cpu_at_start: AtomicU64::new(0),
            cpu_breached: AtomicBool::new(false),
            memory_breached: AtomicBool::new(false),
        });
        if let Some(watchdog) = watchdog {
            watchdog.add(&watched);
        }
        watched
    }

    /// The CPU limit per request.
    pub fn cpu_limit(&self) -> Duration {
        self.cpu_limit
    }

    /// The memory limit in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Marks a turn of JavaScript that may use `budget` of CPU, until [`Turn::end`] or drop.
    pub fn turn(&self, budget: Duration) -> Turn<'_> {
        self.turn_from(outpost_clock::precise_nanos(), budget)
    }

    /// [`Watched::turn`], for a turn that began at `start` (a reading of
    /// [`outpost_clock::precise_nanos`] the caller just took).
    pub fn turn_from(&self, start: u64, budget: Duration) -> Turn<'_> {
        self.cpu_at_start.store(0, Ordering::Release);
        self.budget.store(
            budget.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Release,
        );
        let since = start.max(1);
        self.last_turn.store(since, Ordering::Relaxed);
        // Sequentially consistent with the watchdog's parking (it sets `parked`, then reads
        // every `busy_since`): either it sees this turn, or this turn sees it parked.
        self.busy_since.store(since, Ordering::SeqCst);
        if let Some(watchdog) = self.watchdog {
            watchdog.wake_if_parked();
        }
        Turn {
            watched: self,
            start,
            ended: false,
            _worker_busy: outpost_pool::busy_from(start),
        }
    }

    /// Called from V8's near-heap-limit callback, or when memory outgrew the limit: stops the
    /// running script.
    pub fn breach_memory(&self) {
        self.memory_breached.store(true, Ordering::Release);
        self.handle.terminate_execution();
    }

    /// The limit this isolate broke, if any.
    pub fn breach(&self) -> Option<Breach> {
        if self.memory_breached.load(Ordering::Acquire) {
            Some(Breach::Memory)
        } else if self.cpu_breached.load(Ordering::Acquire) {
            Some(Breach::Cpu)
        } else {
            None
        }
    }

    /// Terminates the isolate if its current turn ran past its budget.
    fn check(&self, now: u64) {
        let since = self.busy_since.load(Ordering::Acquire);
        if since == 0 || self.cpu_breached.load(Ordering::Acquire) {
            return;
        }
        let wall = now.saturating_sub(since);
        let used = if wall > LONG_TURN.as_nanos() as u64 {
            match self.clock.and_then(outpost_clock::nanos_on) {
                Some(cpu) => {
                    let mut start = self.cpu_at_start.load(Ordering::Acquire);
                    if start == 0 {
                        // The turn has run since `since`; assume it was on the CPU throughout
                        // (an overestimate of at most one watchdog period).
                        let estimate = cpu.saturating_sub(wall).max(1);
                        let _ = self.cpu_at_start.compare_exchange(
                            0,
                            estimate,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        if self.busy_since.load(Ordering::Acquire) != since {
                            // The turn ended meanwhile: the estimate belongs to no turn.
                            let _ = self.cpu_at_start.compare_exchange(
                                estimate,
                                0,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            );
                            return;
                        }
                        start = estimate;
                    }
                    cpu.saturating_sub(start)
                }
                None => wall,
            }
        } else {
            wall
        };
        if used > self.budget.load(Ordering::Acquire) {
            self.cpu_breached.store(true, Ordering::Release);
            self.handle.terminate_execution();
        }
    }
}

/// A running turn.
pub struct Turn<'a> {
    watched: &'a Watched,
    /// [`outpost_clock::precise_nanos`] when it began.
    start: u64,
    ended: bool,
    /// The worker thread is busy in JavaScript until the turn ends: the pool places new
    /// connections elsewhere while a turn runs long.
    _worker_busy: outpost_pool::Busy,
}

impl Turn<'_> {
    /// Ends the turn and returns the CPU time to charge for it.
    pub fn end(mut self) -> Duration {
        self.ended = true;
        let wall = Duration::from_nanos(outpost_clock::precise_nanos().saturating_sub(self.start));
        let watched = self.watched;
        let charge = match watched.cpu_at_start.load(Ordering::Acquire) {
            0 => wall,
            start => watched
                .clock
                .and_then(outpost_clock::nanos_on)
                .map_or(wall, |cpu| Duration::from_nanos(cpu.saturating_sub(start))),
        };
        watched.busy_since.store(0, Ordering::Release);
        charge
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.watched.busy_since.store(0, Ordering::Release);
        }
    }
}

/// The calling thread's CPU clock.
fn own_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self` is the calling thread, alive; `clock` is a valid out pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (rc == 0).then_some(clock)
}

/// The process's one watchdog thread, started on first use.
struct Watchdog {
    watched: Mutex<Vec<Weak<Watched>>>,
    /// Set by the watchdog thread before it parks; a turn that finds it set wakes it.
    parked: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

impl Watchdog {
    fn add(&self, watched: &Arc<Watched>) {
        if let Ok(mut list) = self.watched.lock() {
            list.push(Arc::downgrade(watched));
        }
    }

    /// Wakes the watchdog thread if it is parked (one load when it is not).
    fn wake_if_parked(&self) {
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            if let Some(thread) = self.thread.get() {
                thread.unpark();
            }
        }
    }

    /// Checks every watched isolate (terminating those past their budget).
    fn scan(&self) -> Scan {
        let now = outpost_clock::precise_nanos();
        let mut scan = Scan {
            busy: false,
            idle_for: Duration::from_nanos(now),
            shortest_limit: Duration::from_millis(50),
        };
        if let Ok(mut list) = self.watched.lock() {
            list.retain(|weak| match weak.upgrade() {
                Some(watched) => {
                    scan.busy |= watched.busy_since.load(Ordering::SeqCst) != 0;
                    let last = watched.last_turn.load(Ordering::Relaxed);
                    scan.idle_for = scan
                        .idle_for
                        .min(Duration::from_nanos(now.saturating_sub(last)));
                    watched.check(now);
                    scan.shortest_limit = scan.shortest_limit.min(watched.cpu_limit);
                    true
                }
                None => false,
            });
        }
        scan
    }

    fn run(&self) {
        // Before any park, so a turn that finds the watchdog parked finds its thread too.
        let _ = self.thread.set(std::thread::current());
        loop {
            let scan = self.scan();
            if !scan.busy && scan.idle_for >= PARK_AFTER {
                // Woken by a turn, it watches for PARK_AFTER at least: a node serving now
                // and then wakes it at most once a second.
                self.park();
                continue;
            }
            // Check often enough to stop a runaway turn within ~10% of its limit.
            std::thread::sleep(
                (scan.shortest_limit / 10)
                    .clamp(Duration::from_millis(1), Duration::from_millis(10)),
            );
        }
    }

    /// Parks until a turn starts (returns at once if one started meanwhile).
    fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
        // A turn that started before it could see `parked` is seen here.
        if self.scan().busy {
            self.parked.store(false, Ordering::SeqCst);
            return;
        }
        while self.parked.load(Ordering::SeqCst) {
            std::thread::park();
        }
    }
}

/// What one look at every watched isolate found.
struct Scan {
    /// Some isolate is in a turn.
    busy: bool,
    /// Since the latest turn of any isolate started.
    idle_for: Duration,
    /// The shortest CPU limit of the isolates (at most 50 ms).
    shortest_limit: Duration,
}

/// The watchdog thread could not be started: tenant code must not run.
#[derive(Debug, Clone, Copy)]
pub struct WatchdogDown;

/// Starts the watchdog if it is not running; fails if it cannot run.
pub fn ensure_watchdog() -> Result<(), WatchdogDown> {
    watchdog().map(|_| ())
}

fn watchdog() -> Result<&'static Watchdog, WatchdogDown> {
    static WATCHDOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();
    let started = WATCHDOG.get_or_init(|| {
        let watchdog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            watched: Mutex::new(Vec::new()),
            parked: AtomicBool::new(false),
            thread: OnceLock::new(),
        }));
        match std::thread::Builder::new()
            .name("outpost-watchdog".into())
            .spawn(move || watchdog.run())
        {
            Ok(_) => Some(watchdog),
            Err(e) => {
                tracing::error!("the CPU-limit watchdog could not start: {e}");
                None
            }
        }
    });
    started.ok_or(WatchdogDown)
}
