//! A deployment (one app version) and where its requests go: to a live instance on the
//! caller's worker if there is one, else to the least busy live instance, else to a new
//! instance started for it.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures::future::{BoxFuture, FutureExt, Shared};
use outpost_bundle::{Bundle, Limits};
use tokio::sync::{mpsc, oneshot};

use crate::handle::InstanceHandle;
use crate::pool::{current_worker, Shared as PoolShared};
use crate::{Answer, Body, DispatchError, InstanceSpec, Job, Stamp};

/// A started instance as dispatch sees it.
pub(crate) struct Live {
    pub(crate) jobs: mpsc::Sender<Job>,
    pub(crate) handle: Arc<InstanceHandle>,
}

impl Live {
    /// Requests it holds: in flight, and waiting in its queue.
    fn load(&self) -> u32 {
        let queued = self.jobs.max_capacity() - self.jobs.capacity();
        self.handle.in_flight() + queued as u32
    }
}

type Starting = Shared<BoxFuture<'static, Result<Arc<Live>, DispatchError>>>;

/// The deployment's place on one worker: its live instance there, or the start under way.
#[derive(Default)]
struct Slot {
    live: ArcSwapOption<Live>,
    starting: Mutex<Option<Starting>>,
}

impl Slot {
    /// The live instance, if it takes requests; forgets one that stopped.
    fn usable(&self) -> Option<Arc<Live>> {
        let live = self.live.load_full()?;
        if live.handle.accepting() && !live.jobs.is_closed() {
            return Some(live);
        }
        self.live.compare_and_swap(&Some(live), None);
        None
    }
}

/// Why an instance starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// For a request waiting for it: kept from eviction until that request reaches it.
    Request,
    /// To have it ready (a deploy's check, a busy app's next instance).
    Spare,
}

/// How long a new instance waits for the request it was started for before it may be
/// evicted.
const RESERVATION: Duration = Duration::from_secs(2);

/// Starts one request may try when the instances started for it are evicted at once.
const START_ATTEMPTS: usize = 3;

/// The longest a failing app waits between start attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Inner {
    pool: Arc<PoolShared>,
    bundle: Arc<Bundle>,
    limits: Limits,
    label: String,
    /// One per worker.
    slots: Box<[Slot]>,
    /// Start failures in a row, and until when (ms since `born`) no start is tried.
    failures: AtomicU32,
    retry_at_ms: AtomicU64,
    last_error: Mutex<String>,
    born: Instant,
}

/// An app version the pool can run. Cheap to clone; dropping the last clone stops its
/// instances once they have answered what they hold.
#[derive(Clone)]
pub struct Deployment {
    inner: Arc<Inner>,
}

impl Deployment {
    pub(crate) fn new(pool: Arc<PoolShared>, bundle: Arc<Bundle>, limits: Limits) -> Self {
        let slots = (0..pool.config.workers).map(|_| Slot::default()).collect();
        Deployment {
            inner: Arc::new(Inner {
                label: bundle.label(),
                pool,
                bundle,
                limits,
                slots,
                failures: AtomicU32::new(0),
                retry_at_ms: AtomicU64::new(0),
                last_error: Mutex::new(String::new()),
                born: Instant::now(),
            }),
        }
    }

    /// The bundle this deployment runs.
    pub fn bundle(&self) -> &Arc<Bundle> {
        &self.inner.bundle
    }

    /// The limits its requests and instances run within.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// How many of its instances take requests now.
    pub fn live_instances(&self) -> usize {
        self.inner
            .slots
            .iter()
            .filter(|s| s.usable().is_some())
            .count()
    }

    /// Sends `request` (with what `stamp` adds to it) to an instance and waits for its
    /// response. An instance that has not started the response by `deadline` answers
    /// `Timeout`.
    ///
    /// (A function returning an `async move` block: an `async fn` would hold the request
    /// twice in its future and copy it once more per request.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would copy its arguments"
    )]
    pub fn dispatch(
        &self,
        request: Box<http::Request<Body>>,
        stamp: Stamp,
        deadline: Instant,
    ) -> impl Future<Output = Result<Box<Answer>, DispatchError>> + '_ {
        async move {
            let inner = &self.inner;
            let workers = inner.slots.len();
            let here = current_worker(inner.pool.id);
            let first = here.unwrap_or_else(|| inner.pool.next.fetch_add(1, Ordering::Relaxed));
            let (reply, response) = oneshot::channel();
            let mut job = Job {
                request,
                stamp,
                deadline,
                reply,
            };
            let scale_at = inner.pool.config.scale_out_at;
            // With at most one instance per app (always so with one worker) there is nothing to
            // scale out to: busy or not, a live instance here is the one.
            let may_scale = inner.pool.config.max_instances_per_app > 1;
            // The common case: the app is live on this worker and not busy.
            if let Some(index) = here {
                let slot = &inner.slots[index % workers];
                let local = slot.live.load();
                if let Some(live) = local.as_ref() {
                    if live.handle.accepting() && (live.load() < scale_at || !may_scale) {
                        match live.jobs.try_send(job) {
                            Ok(()) => {
                                live.handle.job_queued();
                                return wait(response).await;
                            }
                            Err(mpsc::error::TrySendError::Full(back))
                            | Err(mpsc::error::TrySendError::Closed(back)) => job = back,
                        }
                    }
                }
            }
            // The instance on this worker if it has room and is not busy; else the least busy.
            let mut candidates: Vec<(usize, Arc<Live>)> = Vec::with_capacity(workers);
            for offset in 0..workers {
                let index = (first + offset) % workers;
                if let Some(live) = inner.slots[index].usable() {
                    candidates.push((index, live));
                }
            }
            if let Some(pos) = candidates
                .iter()
                .enumerate()
                .min_by_key(|(pos, (_, live))| {
                    let load = live.load();
                    (load >= scale_at, load, *pos)
                })
                .map(|(pos, _)| pos)
            {
                candidates.swap(0, pos);
            }
            let busy = candidates
                .first()
                .is_none_or(|(_, live)| live.load() >= scale_at);
            if busy && !candidates.is_empty() {
                self.scale_out(&candidates, first, deadline);
            }
            for (index, live) in &candidates {
                match live.jobs.try_send(job) {
                    Ok(()) => {
                        live.handle.job_queued();
                        return wait(response).await;
                    }
                    Err(mpsc::error::TrySendError::Full(back)) => job = back,
                    Err(mpsc::error::TrySendError::Closed(back)) => {
                        inner.slots[*index]
                            .live
                            .compare_and_swap(&Some(live.clone()), None);
                        job = back;
                    }
                }
            }
            // No instance could take it: start one here (or on the next worker without one) and
            // wait for it, joining a start under way there; a new start only while the app has
            // fewer instances (live or starting) than its cap.
            let Some(target) = self.worker_without(&candidates, first) else {
                return Err(DispatchError::Overloaded);
            };
            if !self.is_starting(target)
                && candidates.len() + self.starts_under_way()
                    >= inner.pool.config.max_instances_per_app
            {
                return Err(DispatchError::Overloaded);
            }
            // A new instance may be evicted (for another app's start) before this request
            // reaches it: the request comes back, and another start is tried.
            for _ in 0..START_ATTEMPTS {
                let live = self.start_on(target, deadline, Purpose::Request).await?;
                match live.jobs.try_send(job) {
                    Ok(()) => {
                        live.handle.job_queued();
                        return wait(response).await;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Err(DispatchError::Overloaded)
                    }
                    Err(mpsc::error::TrySendError::Closed(back)) => job = back,
                }
            }
            Err(DispatchError::Overloaded)
        }
    }

    /// Starts an instance on the calling worker if the app has none live or starting there,
    /// without waiting for it: a request for the app is probably on its way (a TLS
    /// ClientHello on this worker named one of its hosts), and its isolate can start while
    /// the handshake completes. Does nothing off the pool's workers, while the app backs
    /// off after failures, or at its instance cap.
    pub fn prewarm(&self) {
        let inner = &self.inner;
        let Some(here) = current_worker(inner.pool.id) else {
            return;
        };
        let worker = here % inner.slots.len();
        if inner.slots[worker].usable().is_some() || self.is_starting(worker) {
            return;
        }
        if self.live_instances() + self.starts_under_way()
            >= inner.pool.config.max_instances_per_app
        {
            return;
        }
        let deadline = Instant::now() + inner.limits.timeout;
        drop(self.starting(worker, deadline, Purpose::Request));
    }

    /// Starts one more instance, on a worker without one, when the app may have more; does
    /// not wait for it.
    fn scale_out(&self, live: &[(usize, Arc<Live>)], first: usize, deadline: Instant) {
        let inner = &self.inner;
        if live.len() + self.starts_under_way() >= inner.pool.config.max_instances_per_app {
            return;
        }
        if let Some(target) = self.worker_without(live, first) {
            drop(self.starting(target, deadline, Purpose::Spare));
        }
    }

    /// The first worker from `first` on (round) where none of `live` runs.
    fn worker_without(&self, live: &[(usize, Arc<Live>)], first: usize) -> Option<usize> {
        let workers = self.inner.slots.len();
        (0..workers)
            .map(|offset| (first + offset) % workers)
            .find(|index| !live.iter().any(|(i, _)| i == index))
    }

    /// Whether an instance is starting on `worker`.
    fn is_starting(&self, worker: usize) -> bool {
        self.inner.slots[worker]
            .starting
            .lock()
            .is_ok_and(|starting| starting.is_some())
    }

    /// How many of its instances are starting.
    fn starts_under_way(&self) -> usize {
        (0..self.inner.slots.len())
            .filter(|&worker| self.is_starting(worker))
            .count()
    }

    /// Starts an instance on `worker` unless one is live or starting there, and waits for it.
    pub(crate) async fn start_on(
        &self,
        worker: usize,
        deadline: Instant,
        purpose: Purpose,
    ) -> Result<Arc<Live>, DispatchError> {
        let slot = &self.inner.slots[worker];
        if let Some(live) = slot.usable() {
            return Ok(live);
        }
        self.starting(worker, deadline, purpose)?.await
    }

    /// The start under way on `worker`, beginning one if there is none. The start runs as
    /// its own task, so it completes (and its instance is recorded) even if the caller goes
    /// away.
    fn starting(
        &self,
        worker: usize,
        deadline: Instant,
        purpose: Purpose,
    ) -> Result<Starting, DispatchError> {
        let inner = &self.inner;
        let now_ms = inner.born.elapsed().as_millis() as u64;
        if inner.failures.load(Ordering::Acquire) > 0
            && now_ms < inner.retry_at_ms.load(Ordering::Acquire)
        {
            let error = inner
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            return Err(DispatchError::LoadFailed(error));
        }
        let slot = &inner.slots[worker];
        let mut starting = slot
            .starting
            .lock()
            .map_err(|_| DispatchError::InstanceGone("scheduler state poisoned".into()))?;
        if let Some(start) = starting.as_ref() {
            return Ok(start.clone());
        }
        let handle = Arc::new(InstanceHandle::new(inner.label.clone(), worker));
        if purpose == Purpose::Request {
            handle.reserve(RESERVATION);
        }
        let spec = InstanceSpec {
            bundle: inner.bundle.clone(),
            limits: inner.limits.clone(),
            handle,
        };
        let pool = inner.pool.clone();
        let weak = Arc::downgrade(inner);
        // The start records its outcome in the slot before anyone awaiting it resumes, so
        // no one sees a finished start still under way.
        let start: Starting = async move {
            let result = pool
                .start_instance(worker, spec, deadline)
                .await
                .map(Arc::new);
            if let Some(inner) = Weak::upgrade(&weak) {
                inner.started(worker, &result);
            }
            result
        }
        .boxed()
        .shared();
        *starting = Some(start.clone());
        // It runs as its own task, so it completes even if every caller goes away.
        tokio::spawn(start.clone());
        Ok(start)
    }
}

impl Inner {
    /// Records how a start on `worker` ended.
    fn started(&self, worker: usize, result: &Result<Arc<Live>, DispatchError>) {
        let slot = &self.slots[worker];
        match result {
            Ok(live) => {
                slot.live.store(Some(live.clone()));
                self.failures.store(0, Ordering::Release);
            }
            Err(DispatchError::LoadFailed(message)) => {
                let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                let backoff = self
                    .pool
                    .config
                    .restart_backoff
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(MAX_BACKOFF);
                let retry_at = self.born.elapsed() + backoff;
                self.retry_at_ms
                    .store(retry_at.as_millis() as u64, Ordering::Release);
                if let Ok(mut last) = self.last_error.lock() {
                    last.clone_from(message);
                }
            }
            Err(_) => {}
        }
        if let Ok(mut starting) = slot.starting.lock() {
            *starting = None;
        }
    }
}

async fn wait(
    response: oneshot::Receiver<Result<Box<Answer>, DispatchError>>,
) -> Result<Box<Answer>, DispatchError> {
    response
        .await
        .unwrap_or_else(|_| Err(DispatchError::InstanceGone("it dropped the request".into())))
}
