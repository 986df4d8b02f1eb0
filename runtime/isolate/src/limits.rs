//! Resource limits of an isolate, and the watchdog that enforces the CPU limit.
//!
//! - **CPU**: the longest stretch of JavaScript an isolate may run without returning to its
//!   event loop (a handler call, a timer callback, module evaluation). A watchdog thread
//!   terminates execution past it — an infinite loop cannot hold its worker thread.
//! - **Heap**: V8's heap limit; near it, execution is terminated (and the limit raised a
//!   little, or V8 would abort the process) so the isolate can unwind.
//!
//! An isolate that hit a limit is condemned: its requests in flight fail, and it is replaced
//! by a fresh one. `ArrayBuffer` memory is outside V8's heap and not limited yet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use deno_core::v8;

/// Limits applied to every isolate.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest run of JavaScript without returning to the event loop.
    pub cpu_per_turn: Duration,
    /// Most bytes of V8 heap (objects, strings, code) an isolate may use.
    pub heap_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_per_turn: Duration::from_secs(1),
            heap_bytes: 128 << 20,
        }
    }
}

/// Which limit an isolate broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    Cpu,
    Heap,
}

/// One isolate as the watchdog sees it.
pub struct Watched {
    handle: v8::IsolateHandle,
    limit: Duration,
    heap_limit: usize,
    /// Nanoseconds since [`epoch`] when the current turn started; 0 while idle.
    busy_since: AtomicU64,
    cpu_breached: AtomicBool,
    heap_breached: AtomicBool,
}

impl Watched {
    /// Registers an isolate with the watchdog for as long as the returned value lives.
    pub fn register(handle: v8::IsolateHandle, limits: &Limits) -> Arc<Watched> {
        let watched = Arc::new(Watched {
            handle,
            limit: limits.cpu_per_turn,
            heap_limit: limits.heap_bytes,
            busy_since: AtomicU64::new(0),
            cpu_breached: AtomicBool::new(false),
            heap_breached: AtomicBool::new(false),
        });
        watchdog().add(&watched);
        watched
    }

    /// The CPU limit per turn.
    pub fn cpu_limit(&self) -> Duration {
        self.limit
    }

    /// The heap limit in bytes.
    pub fn heap_limit(&self) -> usize {
        self.heap_limit
    }

    /// Marks a turn of JavaScript as running until the guard is dropped.
    pub fn turn(&self) -> Turn<'_> {
        let now = nanos_since_epoch().max(1);
        self.busy_since.store(now, Ordering::Release);
        Turn(self)
    }

    /// Called from V8's near-heap-limit callback: stops the running script.
    pub fn breach_heap(&self) {
        self.heap_breached.store(true, Ordering::Release);
        self.handle.terminate_execution();
    }

    /// The limit this isolate broke, if any.
    pub fn breach(&self) -> Option<Breach> {
        if self.heap_breached.load(Ordering::Acquire) {
            Some(Breach::Heap)
        } else if self.cpu_breached.load(Ordering::Acquire) {
            Some(Breach::Cpu)
        } else {
            None
        }
    }

    /// Terminates the isolate if its current turn ran past the limit.
    fn check(&self, now: u64) {
        let since = self.busy_since.load(Ordering::Acquire);
        if since == 0 || self.cpu_breached.load(Ordering::Acquire) {
            return;
        }
        if now.saturating_sub(since) > self.limit.as_nanos() as u64 {
            self.cpu_breached.store(true, Ordering::Release);
            self.handle.terminate_execution();
        }
    }
}

/// A running turn; ends when dropped.
pub struct Turn<'a>(&'a Watched);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Release);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The process's one watchdog thread, started on first use.
struct Watchdog {
    watched: Mutex<Vec<Weak<Watched>>>,
}

impl Watchdog {
    fn add(&self, watched: &Arc<Watched>) {
        if let Ok(mut list) = self.watched.lock() {
            list.push(Arc::downgrade(watched));
        }
    }

    fn run(&self) {
        loop {
            let now = nanos_since_epoch();
            let mut shortest = Duration::from_millis(50);
            if let Ok(mut list) = self.watched.lock() {
                list.retain(|weak| match weak.upgrade() {
                    Some(watched) => {
                        watched.check(now);
                        shortest = shortest.min(watched.limit);
                        true
                    }
                    None => false,
                });
            }
            // Check often enough to stop a runaway turn within ~10% of its limit.
            std::thread::sleep(
                (shortest / 10).clamp(Duration::from_millis(1), Duration::from_millis(10)),
            );
        }
    }
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        epoch();
        let watchdog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            watched: Mutex::new(Vec::new()),
        }));
        let spawned = std::thread::Builder::new()
            .name("outpost-watchdog".into())
            .spawn(move || watchdog.run());
        if let Err(e) = spawned {
            tracing::error!("the CPU-limit watchdog could not start: {e}");
        }
        watchdog
    })
}
