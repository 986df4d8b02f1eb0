//! Worker threads, the node-wide budget of live instances, and the scheduler that evicts
//! idle ones.

use std::cell::{Cell, OnceCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use outpost_bundle::{Bundle, Limits};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::deployment::{Deployment, Live, Purpose};
use crate::handle::{EvictReason, InstanceHandle, InstanceState, InstanceStats};
use crate::{DispatchError, Engine, InstanceSpec, Job, LoadError, LocalFuture};

/// How a [`Pool`] is sized.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads; each serves connections and runs instances of any app.
    pub workers: usize,
    /// Requests that may wait for one instance before dispatch tries another.
    pub queue_depth: usize,
    /// Most instances alive at once on the node, over all apps and workers.
    pub max_isolates: usize,
    /// Most bytes of memory (V8 heap plus ArrayBuffers) all instances may hold together;
    /// past it the least recently used idle instances are evicted.
    pub max_memory_bytes: u64,
    /// An instance with nothing to do for this long is evicted.
    pub idle_timeout: Duration,
    /// Most instances of one app version (at most one per worker).
    pub max_instances_per_app: usize,
    /// A live instance with this many requests in flight is busy: the next request starts
    /// another instance of the app on another worker, if the app may have more.
    pub scale_out_at: u32,
    /// After an app version fails to start, no new start is tried for this long (doubling
    /// with each further failure, up to 30 s); requests meanwhile get the load error.
    pub restart_backoff: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 1,
            queue_depth: 256,
            max_isolates: 1_000,
            max_memory_bytes: 3 << 30,
            idle_timeout: Duration::from_secs(300),
            max_instances_per_app: usize::MAX,
            scale_out_at: 8,
            restart_backoff: Duration::from_millis(250),
        }
    }
}

/// Work to run on a worker thread: made there (so it may be `!Send`) by a `Send` closure.
pub type Task = Box<dyn FnOnce() -> LocalFuture<()> + Send>;

pub(crate) enum Command {
    Instantiate {
        spec: InstanceSpec,
        queue_depth: usize,
        permit: OwnedSemaphorePermit,
        reply: oneshot::Sender<Result<mpsc::Sender<Job>, LoadError>>,
    },
    Spawn(Task),
}

/// Commands a worker may have waiting; senders wait beyond that.
const COMMAND_QUEUE: usize = 64;

/// Threads each worker's runtime may start for blocking work.
const BLOCKING_THREADS: usize = 8;

/// A worker in a stretch of work that has not yielded for this long (a long JavaScript turn)
/// is stalled: new connections go elsewhere when they can.
pub(crate) const STALLED: Duration = Duration::from_millis(10);

/// How often a start waiting for room in the budget looks again for an idle instance.
const EVICTION_RETRY: Duration = Duration::from_millis(20);

/// How often the scheduler looks for idle instances and memory over budget.
const HOUSEKEEPING: Duration = Duration::from_millis(250);

/// Distinguishes pools within one process (tests start several).
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The pool and index of the worker running on this thread, if any.
    static CURRENT_WORKER: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
    /// On a worker thread: its pool's busy stamps ([`Shared::busy`]) and its own index.
    static BUSY_STAMP: OnceCell<(Arc<[AtomicU64]>, usize)> = const { OnceCell::new() };
}

/// Marks the calling worker thread busy in a stretch of work that does not yield to its
/// other tasks (an isolate's JavaScript turn), from `start` (a reading of
/// [`outpost_clock::precise_nanos`]) until the returned guard drops. One that lasts longer
/// than [`STALLED`] makes the pool place new connections on other workers first. Off the
/// pool's threads it marks nothing.
pub fn busy_from(start: u64) -> Busy {
    BUSY_STAMP.with(|stamp| {
        if let Some((slots, index)) = stamp.get() {
            slots[*index].store(start.max(1), Ordering::Relaxed);
        }
    });
    Busy {
        _thread: PhantomData,
    }
}

/// The guard of [`busy_from`]: the worker is free again when it drops. Stays on its thread.
pub struct Busy {
    _thread: PhantomData<*const ()>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY_STAMP.with(|stamp| {
            if let Some((slots, index)) = stamp.get() {
                slots[*index].store(0, Ordering::Relaxed);
            }
        });
    }
}

/// The worker this thread is, if it is one of pool `pool`'s.
pub(crate) fn current_worker(pool: u64) -> Option<usize> {
    match CURRENT_WORKER.with(Cell::get) {
        Some((p, index)) if p == pool => Some(index),
        _ => None,
    }
}

/// What deployments share with the pool.
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) config: PoolConfig,
    workers: Vec<mpsc::Sender<Command>>,
    /// One permit per live instance.
    budget: Arc<Semaphore>,
    /// Every instance started and not yet dropped.
    registry: Mutex<Vec<Weak<InstanceHandle>>>,
    /// Round robin for callers that are not on a worker.
    pub(crate) next: AtomicUsize,
    created: AtomicU64,
    evicted: AtomicU64,
    peak: AtomicUsize,
    /// Starts waiting for a place in the budget.
    waiting: AtomicUsize,
    /// Tasks placed on each worker with `spawn_on` (the gateway's connections).
    spawned: Vec<AtomicU64>,
    /// Since when (`outpost_clock::precise_nanos`) each worker has been in a stretch of work
    /// that does not yield ([`busy_from`]); 0 while it is free. Stamped by the work itself: no
    /// timer wakes an idle worker to prove it is free.
    busy: Arc<[AtomicU64]>,
}

/// Counters of the whole pool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    pub workers: usize,
    /// Instances alive now.
    pub live: usize,
    /// The budget: most instances alive at once.
    pub max_isolates: usize,
    /// The most instances ever alive at once.
    pub peak: usize,
    /// Instances started since the pool started.
    pub created: u64,
    /// Instances evicted (idle timeout or budget).
    pub evicted: u64,
    /// Tasks placed on each worker (the gateway places each connection as one).
    pub tasks_per_worker: Vec<u64>,
    pub instances: Vec<InstanceStats>,
}

/// The worker was stopped; the task did not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the worker thread has stopped")]
pub struct WorkerGone;

/// Worker threads that run instances of deployments. The threads end once the pool and
/// every deployment made from it are dropped (their command queues close then).
pub struct Pool {
    shared: Arc<Shared>,
    /// Dropping it stops the housekeeping thread.
    _stop: std::sync::mpsc::SyncSender<()>,
}

impl Pool {
    /// Starts `config.workers` threads (at least one) running `engine`.
    pub fn new(engine: Arc<dyn Engine>, config: PoolConfig) -> std::io::Result<Pool> {
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let mut workers = Vec::new();
        let count = config.workers.max(1);
        let busy: Arc<[AtomicU64]> = (0..count).map(|_| AtomicU64::new(0)).collect();
        for index in 0..count {
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let engine = engine.clone();
            let busy = busy.clone();
            std::thread::Builder::new()
                .name(format!("outpost-worker-{index}"))
                .spawn(move || run_worker(engine, rx, (id, index), busy))?;
            workers.push(tx);
        }
        let config = PoolConfig {
            workers: count,
            max_isolates: config.max_isolates.max(1),
            max_instances_per_app: config.max_instances_per_app.clamp(1, count),
            queue_depth: config.queue_depth.max(1),
            ..config
        };
        let shared = Arc::new(Shared {
            id,
            budget: Arc::new(Semaphore::new(config.max_isolates)),
            config,
            workers,
            registry: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            created: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            spawned: (0..count).map(|_| AtomicU64::new(0)).collect(),
            busy,
        });
        let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(0);
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("outpost-scheduler".into())
            .spawn(move || housekeeping(weak, stopped))?;
        Ok(Pool {
            shared,
            _stop: stop,
        })
    }

    /// How many worker threads the pool runs.
    pub fn worker_count(&self) -> usize {
        self.shared.workers.len()
    }

    /// Runs `task` on worker `index` (modulo the worker count), or on the next worker with
    /// room when that one has many commands queued (it may be busy running JavaScript); waits
    /// only when every worker's queue is full. Returns the worker that took it.
    pub async fn spawn_on(&self, index: usize, task: Task) -> Result<usize, WorkerGone> {
        let workers = &self.shared.workers;
        let first = index % workers.len();
        let mut command = Command::Spawn(task);
        // Workers that are free first, then stalled ones (their queues may still have room).
        let order = (0..workers.len())
            .map(|offset| (first + offset) % workers.len())
            .filter(|&i| !self.shared.stalled(i))
            .chain((0..workers.len()).map(|offset| (first + offset) % workers.len()));
        for index in order {
            match workers[index].try_send(command) {
                Ok(()) => {
                    self.shared.spawned[index].fetch_add(1, Ordering::Relaxed);
                    return Ok(index);
                }
                Err(mpsc::error::TrySendError::Full(back)) => command = back,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(WorkerGone),
            }
        }
        workers[first].send(command).await.map_err(|_| WorkerGone)?;
        self.shared.spawned[first].fetch_add(1, Ordering::Relaxed);
        Ok(first)
    }

    /// Makes `bundle` servable with `limits`: starts one instance to prove it loads (the
    /// load error otherwise), then returns the deployment; more instances start on demand.
    pub async fn deploy(
        &self,
        bundle: Arc<Bundle>,
        limits: Limits,
    ) -> Result<Deployment, LoadError> {
        let deployment = Deployment::new(self.shared.clone(), bundle, limits);
        let worker = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.worker_count();
        let deadline = Instant::now() + Duration::from_secs(60);
        deployment
            .start_on(worker, deadline, Purpose::Spare)
            .await
            .map_err(|e| match e {
                DispatchError::LoadFailed(message) => LoadError::new(message),
                other => LoadError::new(other.to_string()),
            })?;
        Ok(deployment)
    }

    #[cfg(test)]
    pub(crate) fn shared_for_tests(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Counters of the pool and a snapshot of every instance.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }
}

impl Shared {
    /// Whether worker `index` has been running JavaScript without a break for a while.
    pub(crate) fn stalled(&self, index: usize) -> bool {
        let since = self.busy[index].load(Ordering::Relaxed);
        since != 0
            && outpost_clock::precise_nanos().saturating_sub(since) > STALLED.as_nanos() as u64
    }

    fn live(&self) -> usize {
        self.config.max_isolates - self.budget.available_permits()
    }

    fn stats(&self) -> PoolStats {
        let instances = self
            .registry
            .lock()
            .map(|list| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .map(|h| InstanceStats::from(h.as_ref()))
                    .collect()
            })
            .unwrap_or_default();
        PoolStats {
            workers: self.workers.len(),
            live: self.live(),
            max_isolates: self.config.max_isolates,
            peak: self.peak.load(Ordering::Relaxed),
            created: self.created.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            tasks_per_worker: self
                .spawned
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            instances,
        }
    }

    /// A permit for one more live instance: at once if the budget has room, else after
    /// evicting the least recently used idle instance, waiting until `deadline` for it.
    async fn admit_instance(
        &self,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, DispatchError> {
        if let Ok(permit) = self.budget.clone().try_acquire_owned() {
            self.peak.fetch_max(self.live(), Ordering::Relaxed);
            return Ok(permit);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let waited = self.wait_for_room(deadline).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = waited?;
        self.peak.fetch_max(self.live(), Ordering::Relaxed);
        Ok(permit)
    }

    /// Waits for a place in the budget, asking idle instances to make room, until
    /// `deadline`.
    async fn wait_for_room(
        &self,
        deadline: Instant,
    ) -> Result<OwnedSemaphorePermit, DispatchError> {
        loop {
            if let Ok(permit) = self.budget.clone().try_acquire_owned() {
                return Ok(permit);
            }
            // Every instance may be busy now and idle a moment later: ask again while waiting.
            self.evict_lru(EvictReason::Budget);
            let now = Instant::now();
            if now >= deadline {
                return Err(DispatchError::Overloaded);
            }
            let wait = (deadline - now).min(EVICTION_RETRY);
            let acquire = self.budget.clone().acquire_owned();
            if let Ok(Ok(permit)) = tokio::time::timeout(wait, acquire).await {
                return Ok(permit);
            }
        }
    }

    /// Asks the least recently used idle instance to stop, unless as many are stopping
    /// already as there are starts waiting for room. Returns whether it asked one.
    fn evict_lru(&self, reason: EvictReason) -> bool {
        let Ok(list) = self.registry.lock() else {
            return false;
        };
        let draining = list
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|h| h.state() == InstanceState::Draining)
            .count();
        if draining >= self.waiting.load(Ordering::Acquire) {
            return false;
        }
        let victim = list
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|h| h.evictable())
            .min_by_key(|h| h.last_active_ms());
        drop(list);
        match victim {
            Some(handle) => {
                self.evict(&handle, reason);
                true
            }
            None => false,
        }
    }

    /// Asks `handle`'s instance to stop, and counts it.
    fn evict(&self, handle: &InstanceHandle, reason: EvictReason) {
        handle.request_evict(reason);
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts an instance of `spec` on `worker` and waits until it takes requests.
    pub(crate) async fn start_instance(
        &self,
        worker: usize,
        spec: InstanceSpec,
        deadline: Instant,
    ) -> Result<Live, DispatchError> {
        let permit = self.admit_instance(deadline).await?;
        let handle = spec.handle.clone();
        if let Ok(mut list) = self.registry.lock() {
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&handle));
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let command = Command::Instantiate {
            spec,
            queue_depth: self.config.queue_depth,
            permit,
            reply,
        };
        let gone = || DispatchError::InstanceGone("the worker thread has stopped".into());
        self.workers[worker % self.workers.len()]
            .send(command)
            .await
            .map_err(|_| gone())?;
        match answer.await {
            Ok(Ok(jobs)) => Ok(Live { jobs, handle }),
            Ok(Err(e)) => Err(DispatchError::LoadFailed(e.message)),
            Err(_) => Err(DispatchError::LoadFailed(
                "the isolate crashed while loading the app (see the log)".into(),
            )),
        }
    }

    /// One pass of the scheduler: evicts instances idle past the timeout, then idle ones
    /// (least recently used first) while the node holds more memory than its budget.
    fn housekeep(&self) {
        let handles: Vec<Arc<InstanceHandle>> = match self.registry.lock() {
            Ok(mut list) => {
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        let mut memory: u64 = 0;
        for handle in &handles {
            if handle.evictable() && handle.idle_for() >= self.config.idle_timeout {
                self.evict(handle, EvictReason::Idle);
            } else {
                memory += handle.memory();
            }
        }
        let mut by_age: Vec<&Arc<InstanceHandle>> =
            handles.iter().filter(|h| h.evictable()).collect();
        by_age.sort_by_key(|h| h.last_active_ms());
        for handle in by_age {
            if memory <= self.config.max_memory_bytes {
                break;
            }
            memory = memory.saturating_sub(handle.memory());
            self.evict(handle, EvictReason::Budget);
        }
    }
}

fn housekeeping(shared: Weak<Shared>, stop: std::sync::mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(HOUSEKEEPING) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match shared.upgrade() {
            Some(shared) => shared.housekeep(),
            None => return,
        }
    }
}

fn run_worker(
    engine: Arc<dyn Engine>,
    mut commands: mpsc::Receiver<Command>,
    worker: (u64, usize),
    busy: Arc<[AtomicU64]>,
) {
    CURRENT_WORKER.with(|current| current.set(Some(worker)));
    BUSY_STAMP.with(|stamp| {
        let _ = stamp.set((busy, worker.1));
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Blocking work of the isolates on this worker (WebCrypto, DNS lookups, the cache's
        // disk writes) runs on at most this many threads; tokio's default of 512 let 64
        // concurrent `crypto.subtle.digest` calls start ~40 threads, each with its own stack
        // and allocator heap (RSS 2× Deno's) fighting over the cores.
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("outpost-blocking")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("worker thread could not start its runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        tokio::task::spawn_local(engine.worker_started());
        while let Some(command) = commands.recv().await {
            match command {
                Command::Instantiate {
                    spec,
                    queue_depth,
                    permit,
                    reply,
                } => {
                    let engine = engine.clone();
                    tokio::task::spawn_local(async move {
                        let handle = spec.handle.clone();
                        let (tx, rx) = mpsc::channel(queue_depth);
                        match engine.instantiate(spec, rx).await {
                            Ok(serve) => {
                                handle.set_live();
                                if reply.send(Ok(tx)).is_ok() {
                                    serve.await;
                                }
                            }
                            Err(e) => {
                                // Its place in the budget is free before the starter hears.
                                handle.set_dead();
                                drop(permit);
                                let _ = reply.send(Err(e));
                                return;
                            }
                        }
                        handle.set_dead();
                        // The instance is dropped: its place in the budget is free.
                        drop(permit);
                    });
                }
                Command::Spawn(task) => {
                    tokio::task::spawn_local(task());
                }
            }
        }
    });
    // The LocalSet is dropped here, after the loop: instances still running are dropped on
    // this thread.
}
