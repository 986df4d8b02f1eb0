//! The pool's view of one instance: counters the engine keeps up to date, and the eviction
//! request the pool sends back. Shared between the instance's worker thread, dispatchers on
//! any thread, and the scheduler.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::task::Waker;
use std::time::Duration;

use futures::task::AtomicWaker;

/// How long `waitUntil` work may keep an isolate from eviction after its last request.
pub const WAIT_UNTIL_GRACE: Duration = Duration::from_secs(30);

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Loading its modules.
    Starting,
    /// Taking requests.
    Live,
    /// Asked to stop: finishes what it holds, takes nothing new.
    Draining,
    /// Gone; its isolate is dropped.
    Dead,
}

impl InstanceState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => InstanceState::Starting,
            1 => InstanceState::Live,
            2 => InstanceState::Draining,
            _ => InstanceState::Dead,
        }
    }
}

/// Why an instance was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// The node's isolate or memory budget needed room.
    Budget,
    /// It served nothing for the idle timeout.
    Idle,
}

/// One instance (an isolate running one app version on one worker thread), as the pool and
/// the engine share it.
#[derive(Debug)]
pub struct InstanceHandle {
    /// The app version's label (`name@id8`).
    label: String,
    /// The worker thread it lives on.
    worker: usize,
    state: AtomicU8,
    /// Requests accepted and not finished (a request finishes when its response body ends).
    in_flight: AtomicU32,
    /// Requests in its queue, not yet taken by its serve loop.
    queued: AtomicU32,
    /// `ctx.waitUntil` promises not yet settled.
    wait_until: AtomicU32,
    /// Bytes of V8 heap plus external (ArrayBuffer) memory, as last sampled.
    memory: AtomicU64,
    /// Requests it has started.
    served: AtomicU64,
    /// When it last started or finished a request, in ms since the process's epoch.
    last_active_ms: AtomicU64,
    evict: AtomicBool,
    /// Until when (ms since the epoch) it is kept from eviction: a new instance waiting for
    /// the request it was started for.
    reserved_until_ms: AtomicU64,
    /// How long it is kept from eviction once live (ms), if it was started for a request.
    reservation_ms: AtomicU64,
    /// Set when an eviction is requested, so a parked serve loop wakes to see it.
    waker: AtomicWaker,
}

/// Milliseconds by the coarse clock (a tick late at most), for the handle's stamps: read
/// whenever a request finishes.
pub(crate) fn now_ms() -> u64 {
    outpost_clock::millis()
}

impl InstanceHandle {
    /// A handle for an instance about to start on `worker`.
    pub fn new(label: String, worker: usize) -> Self {
        InstanceHandle {
            label,
            worker,
            state: AtomicU8::new(0),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            wait_until: AtomicU32::new(0),
            memory: AtomicU64::new(0),
            served: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(now_ms()),
            evict: AtomicBool::new(false),
            reserved_until_ms: AtomicU64::new(0),
            reservation_ms: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// Keeps it from eviction for `time` after it becomes live, or until its first request
    /// starts.
    pub fn reserve(&self, time: Duration) {
        self.reservation_ms
            .store(time.as_millis() as u64, Ordering::Release);
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn worker(&self) -> usize {
        self.worker
    }

    pub fn state(&self) -> InstanceState {
        InstanceState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Engine: the instance loaded and takes requests.
    pub fn set_live(&self) {
        let reservation = self.reservation_ms.load(Ordering::Acquire);
        if reservation > 0 {
            self.reserved_until_ms
                .store(now_ms() + reservation, Ordering::Release);
        }
        let _ = self
            .state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Engine: a new isolate took over this handle (the first one, or a replacement of a
    /// failed one); its counts start over.
    pub fn replaced(&self) {
        self.served.store(0, Ordering::Release);
        self.wait_until.store(0, Ordering::Release);
    }

    /// Engine: the instance is gone.
    pub fn set_dead(&self) {
        self.state.store(3, Ordering::Release);
    }

    /// Whether dispatch may send it new requests.
    pub fn accepting(&self) -> bool {
        self.state.load(Ordering::Acquire) <= 1 && !self.evict.load(Ordering::Acquire)
    }

    /// Engine: a request started. Returns whether it is the instance's first (a cold start).
    pub fn request_started(&self) -> bool {
        // While a request is in flight the instance is not idle; `last_active_ms` moves when
        // it finishes (one clock read per request instead of two).
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.reserved_until_ms.store(0, Ordering::Release);
        self.served.fetch_add(1, Ordering::AcqRel) == 0
    }

    /// Engine: a request finished (its response body ended or failed).
    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.last_active_ms.store(now_ms(), Ordering::Release);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Deployment: a request was put in its queue.
    pub(crate) fn job_queued(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// Engine: its serve loop took a request from its queue.
    pub fn job_taken(&self) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Requests waiting in its queue now.
    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    /// Engine: `waitUntil` promises pending now.
    pub fn set_wait_until(&self, pending: u32) {
        self.wait_until.store(pending, Ordering::Release);
    }

    pub fn wait_until(&self) -> u32 {
        self.wait_until.load(Ordering::Acquire)
    }

    /// Engine: the memory the isolate holds now.
    pub fn set_memory(&self, bytes: u64) {
        self.memory.store(bytes, Ordering::Release);
    }

    pub fn memory(&self) -> u64 {
        self.memory.load(Ordering::Acquire)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Acquire)
    }

    /// How long it has had nothing to do: no request in flight, and no `waitUntil` work
    /// pending (work pending longer than [`WAIT_UNTIL_GRACE`] after the last request does
    /// not count: a promise that never settles must not pin an isolate).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(
            now_ms().saturating_sub(self.last_active_ms.load(Ordering::Acquire)),
        );
        if self.wait_until() > 0 && since < WAIT_UNTIL_GRACE {
            return Duration::ZERO;
        }
        since
    }

    /// Whether it could be evicted now without failing anything.
    pub fn evictable(&self) -> bool {
        self.state() == InstanceState::Live
            && !self.evict.load(Ordering::Acquire)
            && self.in_flight() == 0
            && (self.wait_until() == 0 || self.idle_for() > Duration::ZERO)
            && now_ms() >= self.reserved_until_ms.load(Ordering::Acquire)
    }

    /// Pool: asks the instance to finish what it holds and stop.
    pub fn request_evict(&self, reason: EvictReason) {
        tracing::debug!(instance = %self.label, worker = self.worker, ?reason, "evicting");
        self.evict.store(true, Ordering::Release);
        let _ = self
            .state
            .compare_exchange(1, 2, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Engine: whether the pool asked it to stop. Registers `waker` to be woken when it does,
    /// unless `registered` (the waker the engine last registered here, kept by the engine)
    /// would wake the same task: a registration stays until the eviction wakes it, and an
    /// engine that asks on every turn of its task would otherwise pay for one each turn
    /// (~150 instructions, a request's share of them at one connection).
    pub fn evict_requested(&self, waker: &Waker, registered: &mut Option<Waker>) -> bool {
        if self.evict.load(Ordering::Acquire) {
            return true;
        }
        if registered
            .as_ref()
            .is_some_and(|last| last.will_wake(waker))
        {
            return false;
        }
        self.waker.register(waker);
        *registered = Some(waker.clone());
        self.evict.load(Ordering::Acquire)
    }

    /// When it was last active, for least-recently-used order.
    pub(crate) fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Acquire)
    }
}

/// A snapshot of one instance for status pages and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceStats {
    pub app: String,
    pub worker: usize,
    pub state: InstanceState,
    pub in_flight: u32,
    /// Requests waiting in its queue.
    pub queued: u32,
    pub wait_until: u32,
    pub memory_bytes: u64,
    pub served: u64,
    pub idle_ms: u64,
}

impl From<&InstanceHandle> for InstanceStats {
    fn from(h: &InstanceHandle) -> Self {
        InstanceStats {
            app: h.label.clone(),
            worker: h.worker,
            state: h.state(),
            in_flight: h.in_flight(),
            queued: h.queued(),
            wait_until: h.wait_until(),
            memory_bytes: h.memory(),
            served: h.served(),
            idle_ms: h.idle_for().as_millis() as u64,
        }
    }
}
