//! The Send-able face of the isolates. A [`Pool`] owns worker threads; each thread runs a
//! current-thread tokio runtime where an [`Engine`] keeps its (`!Send`) instances. Deploying a
//! [`Bundle`] starts one instance of it on every worker and returns a [`Deployment`], whose
//! [`dispatch`](Deployment::dispatch) sends a request through a bounded queue to one of them.
//!
//! Work placed on a worker with [`Pool::spawn_on`] (the gateway serves each HTTP connection
//! that way) dispatches to that worker's own instance first, so a request and its isolate
//! share a thread and a request crosses no thread on its way.
//!
//! Lifetimes: an instance lives while its [`Deployment`] (or a clone) does; when the last
//! handle is dropped its queues close, the instance finishes the requests it holds and is
//! dropped on its own thread.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use outpost_bundle::Bundle;
use tokio::sync::{mpsc, oneshot};

/// Errors carried by bodies that cross the pool.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request or response body that can cross threads.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// A future that stays on the worker thread that made it.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// One request on its way to an instance, with the way back for its response.
pub struct Job {
    pub request: http::Request<Body>,
    /// When the response must have started; past it the instance answers `Timeout`.
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<http::Response<Body>, DispatchError>>,
}

/// Why a dispatched request produced no response from the tenant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    /// Every instance's queue is full; the client may retry shortly.
    #[error("the app is overloaded: every instance's queue is full")]
    Overloaded,
    /// The handler (or the code it awaited) threw; the text is the exception with its stack.
    #[error("the handler threw an exception: {0}")]
    Exception(String),
    /// The handler produced something that is not a Response; the text says what.
    #[error("{0}")]
    BadResponse(String),
    /// The isolate broke a resource limit while the request was in flight; it was stopped
    /// and is replaced. The text says which limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The handler did not produce a response before the request's deadline.
    #[error("the app did not respond in time")]
    Timeout,
    /// The instance went away before it answered (it failed or was stopped).
    #[error("the isolate stopped before it answered: {0}")]
    InstanceGone(String),
}

/// Why an instance could not be started from a bundle: the text is for the developer
/// (a syntax error with its file:line, a missing export, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    pub message: String,
}

impl LoadError {
    pub fn new(message: impl Into<String>) -> Self {
        LoadError {
            message: message.into(),
        }
    }
}

/// What runs bundles. Implemented by the isolate crate; shared by all worker threads, while
/// the instances it starts live on one thread each.
pub trait Engine: Send + Sync + 'static {
    /// Called on the worker thread, inside its tokio runtime and `LocalSet`: loads `bundle`
    /// and returns the instance's serve loop, which takes jobs from `jobs` until it closes.
    fn instantiate(
        &self,
        bundle: Arc<Bundle>,
        jobs: mpsc::Receiver<Job>,
    ) -> LocalFuture<Result<LocalFuture<()>, LoadError>>;
}

/// How a [`Pool`] is sized.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads; each runs one instance of every deployment.
    pub workers: usize,
    /// Requests that may wait for one instance before dispatch answers `Overloaded`.
    pub queue_depth: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 1,
            queue_depth: 256,
        }
    }
}

/// Work to run on a worker thread: made there (so it may be `!Send`) by a `Send` closure.
pub type Task = Box<dyn FnOnce() -> LocalFuture<()> + Send>;

enum Command {
    Instantiate {
        bundle: Arc<Bundle>,
        queue_depth: usize,
        reply: oneshot::Sender<Result<mpsc::Sender<Job>, LoadError>>,
    },
    Spawn(Task),
}

/// Commands a worker may have waiting; senders wait beyond that.
const COMMAND_QUEUE: usize = 64;

/// Distinguishes pools within one process (tests start several).
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The pool and index of the worker running on this thread, if any.
    static CURRENT_WORKER: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
}

/// Worker threads that run instances of deployments.
pub struct Pool {
    id: u64,
    workers: Vec<mpsc::Sender<Command>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    queue_depth: usize,
}

/// The worker was stopped; the task did not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the worker thread has stopped")]
pub struct WorkerGone;

impl Pool {
    /// Starts `config.workers` threads (at least one) running `engine`.
    pub fn new(engine: Arc<dyn Engine>, config: PoolConfig) -> std::io::Result<Pool> {
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for index in 0..config.workers.max(1) {
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let engine = engine.clone();
            let thread = std::thread::Builder::new()
                .name(format!("outpost-worker-{index}"))
                .spawn(move || run_worker(engine, rx, (id, index)))?;
            workers.push(tx);
            threads.push(thread);
        }
        Ok(Pool {
            id,
            workers,
            threads,
            queue_depth: config.queue_depth.max(1),
        })
    }

    /// How many worker threads the pool runs.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Runs `task` on worker `index` (modulo the worker count). Waits while that worker has
    /// many commands queued.
    pub async fn spawn_on(&self, index: usize, task: Task) -> Result<(), WorkerGone> {
        let worker = &self.workers[index % self.workers.len()];
        worker
            .send(Command::Spawn(task))
            .await
            .map_err(|_| WorkerGone)
    }

    /// Starts an instance of `bundle` on every worker. Fails with the first instance's load
    /// error (nothing of the bundle keeps running then).
    pub async fn deploy(&self, bundle: Arc<Bundle>) -> Result<Deployment, LoadError> {
        let mut pending = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (reply, rx) = oneshot::channel();
            let command = Command::Instantiate {
                bundle: bundle.clone(),
                queue_depth: self.queue_depth,
                reply,
            };
            worker
                .send(command)
                .await
                .map_err(|_| LoadError::new("worker thread is gone"))?;
            pending.push(rx);
        }
        let mut instances = Vec::with_capacity(pending.len());
        for rx in pending {
            let sender = rx.await.map_err(|_| {
                LoadError::new("the isolate crashed while loading the app (see the log)")
            })??;
            instances.push(sender);
        }
        Ok(Deployment {
            inner: Arc::new(DeploymentInner {
                pool: self.id,
                bundle,
                instances,
                next: AtomicUsize::new(0),
            }),
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.workers.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn run_worker(
    engine: Arc<dyn Engine>,
    mut commands: mpsc::Receiver<Command>,
    worker: (u64, usize),
) {
    CURRENT_WORKER.with(|current| current.set(Some(worker)));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
        while let Some(command) = commands.recv().await {
            match command {
                Command::Instantiate {
                    bundle,
                    queue_depth,
                    reply,
                } => {
                    let engine = engine.clone();
                    tokio::task::spawn_local(async move {
                        let (tx, rx) = mpsc::channel(queue_depth);
                        match engine.instantiate(bundle, rx).await {
                            Ok(serve) => {
                                if reply.send(Ok(tx)).is_ok() {
                                    serve.await;
                                }
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
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

struct DeploymentInner {
    /// The pool the instances run in.
    pool: u64,
    bundle: Arc<Bundle>,
    /// One instance per worker, in worker order.
    instances: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

/// A bundle running on every worker. Cheap to clone; dropping the last clone stops its
/// instances once they have answered what they hold.
#[derive(Clone)]
pub struct Deployment {
    inner: Arc<DeploymentInner>,
}

impl Deployment {
    /// The bundle this deployment runs.
    pub fn bundle(&self) -> &Arc<Bundle> {
        &self.inner.bundle
    }

    /// Sends `request` to an instance with room in its queue and waits for its response:
    /// the instance on the calling worker thread if there is one, else round robin. An
    /// instance that has not started the response by `deadline` answers `Timeout`.
    pub async fn dispatch(
        &self,
        request: http::Request<Body>,
        deadline: Instant,
    ) -> Result<http::Response<Body>, DispatchError> {
        let instances = &self.inner.instances;
        let start = match CURRENT_WORKER.with(Cell::get) {
            Some((pool, index)) if pool == self.inner.pool => index,
            _ => self.inner.next.fetch_add(1, Ordering::Relaxed),
        };
        let (reply, response) = oneshot::channel();
        let mut job = Job {
            request,
            deadline,
            reply,
        };
        for offset in 0..instances.len() {
            let instance = &instances[(start + offset) % instances.len()];
            match instance.try_send(job) {
                Ok(()) => {
                    return response.await.unwrap_or_else(|_| {
                        Err(DispatchError::InstanceGone("it dropped the request".into()))
                    })
                }
                Err(mpsc::error::TrySendError::Full(back)) => job = back,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(DispatchError::InstanceGone("its queue is closed".into()))
                }
            }
        }
        Err(DispatchError::Overloaded)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    fn bundle(main: &str) -> Arc<Bundle> {
        let manifest = outpost_bundle::Manifest::for_single_file("t", main);
        let files = BTreeMap::from([(main.to_string(), b"x".to_vec())]);
        Arc::new(Bundle::new(manifest, files).unwrap())
    }

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    fn empty() -> Body {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    /// Answers each request with the id of the worker thread's instance; refuses bundles
    /// whose main is `bad.js`; with `hold`, never takes a request off its queue.
    struct Echo {
        next: AtomicUsize,
        hold: bool,
    }

    impl Engine for Echo {
        fn instantiate(
            &self,
            bundle: Arc<Bundle>,
            mut jobs: mpsc::Receiver<Job>,
        ) -> LocalFuture<Result<LocalFuture<()>, LoadError>> {
            let id = self.next.fetch_add(1, Ordering::SeqCst);
            let hold = self.hold;
            Box::pin(async move {
                if bundle.main() == "bad.js" {
                    return Err(LoadError::new("bad.js:1: SyntaxError"));
                }
                let serve: LocalFuture<()> = Box::pin(async move {
                    if hold {
                        // Keeps `jobs` open without ever taking from it.
                        std::future::pending::<()>().await;
                    }
                    while let Some(job) = jobs.recv().await {
                        let body = Full::new(Bytes::from(id.to_string()))
                            .map_err(|never| match never {})
                            .boxed_unsync();
                        let _ = job.reply.send(Ok(http::Response::new(body)));
                    }
                });
                Ok(serve)
            })
        }
    }

    fn pool(workers: usize, queue_depth: usize, hold: bool) -> Pool {
        let engine = Arc::new(Echo {
            next: AtomicUsize::new(0),
            hold,
        });
        Pool::new(
            engine,
            PoolConfig {
                workers,
                queue_depth,
            },
        )
        .unwrap()
    }

    async fn body_of(response: http::Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn dispatch_spreads_requests_over_every_worker() {
        let pool = pool(3, 8, false);
        let deployment = pool.deploy(bundle("main.js")).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let response = deployment
                .dispatch(http::Request::new(empty()), far())
                .await
                .unwrap();
            seen.insert(body_of(response).await);
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[tokio::test]
    async fn load_errors_reach_the_deployer() {
        let pool = pool(2, 8, false);
        let err = pool.deploy(bundle("bad.js")).await.err().unwrap();
        assert_eq!(err.message, "bad.js:1: SyntaxError");
    }

    #[tokio::test]
    async fn full_queues_answer_overloaded() {
        let pool = pool(1, 2, true);
        let deployment = pool.deploy(bundle("main.js")).await.unwrap();
        for _ in 0..2 {
            let d = deployment.clone();
            tokio::spawn(async move { d.dispatch(http::Request::new(empty()), far()).await });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let result = deployment
            .dispatch(http::Request::new(empty()), far())
            .await;
        assert_eq!(result.err(), Some(DispatchError::Overloaded));
    }

    #[tokio::test]
    async fn work_spawned_on_a_worker_dispatches_to_that_workers_instance() {
        let pool = pool(3, 8, false);
        let deployment = pool.deploy(bundle("main.js")).await.unwrap();
        let mut answers = Vec::new();
        for worker in 0..3 {
            let (tx, rx) = oneshot::channel();
            let d = deployment.clone();
            let task: Task = Box::new(move || {
                Box::pin(async move {
                    let mut seen = Vec::new();
                    for _ in 0..4 {
                        let response = d
                            .dispatch(http::Request::new(empty()), far())
                            .await
                            .unwrap();
                        seen.push(body_of(response).await);
                    }
                    let _ = tx.send(seen);
                })
            });
            pool.spawn_on(worker, task).await.unwrap();
            answers.push(rx.await.unwrap());
        }
        for seen in &answers {
            assert!(
                seen.iter().all(|s| s == &seen[0]),
                "one worker, one instance: {seen:?}"
            );
        }
        let distinct: std::collections::BTreeSet<_> =
            answers.iter().map(|s| s[0].clone()).collect();
        assert_eq!(distinct.len(), 3, "{answers:?}");
    }
}
