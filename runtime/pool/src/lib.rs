//! The Send-able face of the isolates: a scheduler that places app versions on worker
//! threads.
//!
//! A [`Pool`] owns worker threads; each runs a current-thread tokio runtime where an
//! [`Engine`] keeps its (`!Send`) instances. Deploying a [`Bundle`] starts one instance (to
//! prove it loads) and returns a [`Deployment`]; further instances start on demand, one per
//! (app version, worker) at most, when a request arrives on a worker that has none and no
//! other instance has room, or when the live ones are busy. A node-wide budget caps live
//! instances ([`PoolConfig::max_isolates`]) and their memory; idle instances are evicted
//! least recently used first when room is needed, and after an idle timeout.
//!
//! Work placed on a worker with [`Pool::spawn_on`] (the gateway serves each HTTP connection
//! that way) dispatches to that worker's own instance first, so a request and its isolate
//! share a thread whenever the app is live there.
//!
//! Lifetimes: an instance lives while its [`Deployment`] (or a clone) does and the scheduler
//! keeps it; when the last handle is dropped its queues close, the instance finishes the
//! requests it holds and is dropped on its own thread.

mod deployment;
mod handle;
mod pool;
pub mod timing;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use outpost_bundle::{Bundle, Limits};
use tokio::sync::{mpsc, oneshot};

pub use deployment::Deployment;
pub use handle::{EvictReason, InstanceHandle, InstanceState, InstanceStats};
pub use pool::{busy_from, Busy, Pool, PoolConfig, PoolStats, Task, WorkerGone};
pub use timing::{FetchTiming, Timing};

/// Errors carried by bodies that cross the pool.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request or response body that can cross threads.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
/// A body with nothing in it (no allocation: the empty body is a zero-sized value).
pub fn empty_body() -> Body {
    use http_body_util::BodyExt as _;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A future that stays on the worker thread that made it.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// One request on its way to an instance, with the way back for its response.
///
/// The request is boxed from where it was parsed to the isolate, and the answer comes back
/// boxed: a request is ~240 bytes and an answer ~170, which the channels, tasks and futures
/// between the gateway and the isolate would otherwise copy at each step. A job itself
/// (~110 bytes, most of it the stamp) crosses the instance's queue once, unboxed.
pub struct Job {
    pub request: Box<http::Request<Body>>,
    /// What the node tells the handler of the request besides its headers.
    pub stamp: Stamp,
    /// When the response must have started; past it the instance answers `Timeout`.
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Box<Answer>, DispatchError>>,
}

/// What the node tells a handler of a request besides the request's own headers: handed
/// to it as request headers, in place of any the client sent under their names. Passed
/// beside the request, not inserted into its `HeaderMap` (a custom name's hash and insert
/// cost ~240 instructions a request).
#[derive(Debug, Clone, Default)]
pub struct Stamp {
    /// The request's id, as `x-request-id`.
    pub request_id: Option<http::HeaderValue>,
    /// The trace its fetches forward (the node's trace, the handler's span), as
    /// `traceparent`.
    pub traceparent: Option<http::HeaderValue>,
}

/// An instance's answer to one request: its response, and what the host measured of it
/// (for the node's metrics, logs and traces).
#[derive(Debug)]
pub struct Answer {
    pub response: http::Response<Body>,
    pub timing: Timing,
}

/// Why a dispatched request produced no response from the tenant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    /// No instance can take the request now (queues full, or no room to start one in time);
    /// the client may retry shortly.
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
    /// No instance of the app could be started; the text is the load error.
    #[error("the app could not be started: {0}")]
    LoadFailed(String),
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

/// What an engine needs to start one instance.
pub struct InstanceSpec {
    pub bundle: Arc<Bundle>,
    /// The app's limits (the node's, lowered by the app's `[limits]`).
    pub limits: Limits,
    /// Counters the instance keeps up to date, and the pool's eviction requests.
    pub handle: Arc<InstanceHandle>,
}

/// What runs bundles. Implemented by the isolate crate; shared by all worker threads, while
/// the instances it starts live on one thread each.
pub trait Engine: Send + Sync + 'static {
    /// Called once on each worker thread as it starts, inside its tokio runtime and
    /// `LocalSet`; the future runs alongside the worker's instances (e.g. to keep warm spare
    /// runtimes ready).
    fn worker_started(&self) -> LocalFuture<()> {
        Box::pin(async {})
    }

    /// Called on the worker thread, inside its tokio runtime and `LocalSet`: loads the
    /// bundle and returns the instance's serve loop, which takes jobs from `jobs` until it
    /// closes or the handle asks for eviction, and keeps the handle's counters current.
    fn instantiate(
        &self,
        spec: InstanceSpec,
        jobs: mpsc::Receiver<Job>,
    ) -> LocalFuture<Result<LocalFuture<()>, LoadError>>;
}

#[cfg(test)]
mod tests;
