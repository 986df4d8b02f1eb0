//! One isolate running one bundle: created from the startup snapshot, its modules loaded
//! from the bundle, then serving requests from a queue, many at a time, until the queue
//! closes.
//!
//! Several instances share a worker thread, so an instance's isolate is never left entered:
//! every use is bracketed by [`Entered`] (V8 requires the isolate in use to be the thread's
//! current one, and isolates to be exited in reverse order of entry).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deno_core::{v8, JsRuntime, PollEventLoopOptions, ResourceId, RuntimeOptions};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, Full};
use outpost_bundle::Bundle;
use outpost_pool::{Body, DispatchError, Job, LoadError};
use tokio::sync::{mpsc, oneshot};

use crate::body::{stream_response, RequestBodyResource};
use crate::extensions::{self, ConsoleSink, FailureKind, InFlight, OutBody, Outcome, TenantState};
use crate::limits::{Breach, Limits, Watched};
use crate::loader::{self, BundleLoader};

/// How long an instance whose queue closed may keep running `waitUntil` work and timers.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Why a request fails when its handler awaits something nothing can resolve.
const NEVER_SETTLES: &str = "the fetch handler's promise will never settle: nothing is left \
     that could resolve it (no timer, I/O or other pending work); make sure every code path \
     returns or resolves a Response";

/// How a timed-out request is reported on the terminal.
const TIMED_OUT: &str = "a request timed out: the fetch handler did not start its response within \
     the node's response timeout";

/// How often requests in flight are checked against their deadlines.
const SWEEP: Duration = Duration::from_millis(100);

/// The startup snapshot made by build.rs.
static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/SNAPSHOT.bin"));

/// Enters an isolate for as long as it lives.
struct EnterGuard(v8::UnsafeRawIsolatePtr);

impl EnterGuard {
    fn new(raw: v8::UnsafeRawIsolatePtr) -> Self {
        // SAFETY: `raw` belongs to a runtime owned by the caller, alive on this thread for
        // the guard's lifetime; entering is balanced by `exit` in `drop`.
        unsafe { v8::Isolate::from_raw_isolate_ptr(raw).enter() };
        EnterGuard(raw)
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        // SAFETY: balances the `enter` of `new`, on the same thread.
        unsafe { v8::Isolate::from_raw_isolate_ptr(self.0).exit() };
    }
}

/// A future polled with its isolate entered.
/// A future polled with its isolate entered; each poll is a turn the CPU limit watches.
struct Entered<F> {
    raw: v8::UnsafeRawIsolatePtr,
    watched: Arc<Watched>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Entered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = EnterGuard::new(this.raw);
        let _turn = this.watched.turn();
        this.inner.as_mut().poll(cx)
    }
}

fn entered<F: Future>(
    raw: v8::UnsafeRawIsolatePtr,
    watched: &Arc<Watched>,
    inner: F,
) -> Entered<F> {
    Entered {
        raw,
        watched: watched.clone(),
        inner: Box::pin(inner),
    }
}

/// The host's handles into `js/99_main.js`.
struct Host {
    dispatch: v8::Global<v8::Function>,
}

/// An isolate with a bundle loaded, ready to serve.
pub struct Instance {
    // Field order matters: `host` holds V8 handles that must go before the runtime.
    host: Option<Host>,
    runtime: Option<JsRuntime>,
    raw: v8::UnsafeRawIsolatePtr,
    in_flight: Rc<RefCell<InFlight>>,
    /// The watchdog's view of this isolate: CPU turns and limit breaches.
    watched: Arc<Watched>,
    /// Set once the isolate broke a limit; it then serves nothing more.
    condemned: Option<Breach>,
    /// The next check for requests past their deadline, while any are in flight.
    sweep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Request-body resources of finished requests, closed on the next poll of the loop.
    finished_bodies: Rc<RefCell<Vec<ResourceId>>>,
    console: ConsoleSink,
}

/// Why [`Instance::serve`] returned.
pub enum ServeEnd {
    /// The queue closed and the work left has finished (or ran out of grace).
    Closed,
    /// The event loop failed; the instance must not be used again.
    Failed(String),
}

impl Instance {
    /// Creates an isolate from the snapshot and loads `bundle`'s main module. Must run
    /// inside a tokio runtime (V8 posts delayed tasks to it).
    pub async fn start(
        bundle: Arc<Bundle>,
        console: ConsoleSink,
        limits: &Limits,
    ) -> Result<Instance, LoadError> {
        let in_flight = Rc::new(RefCell::new(InFlight::default()));
        let permissions = extensions::tenant_permissions().map_err(LoadError::new)?;
        let tenant = TenantState {
            permissions,
            console: console.clone(),
            in_flight: in_flight.clone(),
        };
        let runtime = JsRuntime::try_new(RuntimeOptions {
            extensions: extensions::extensions(Some(tenant)),
            startup_snapshot: Some(SNAPSHOT),
            module_loader: Some(Rc::new(BundleLoader::new(bundle.clone()))),
            custom_module_evaluation_cb: Some(Box::new(loader::evaluate_custom_module)),
            create_params: Some(v8::CreateParams::default().heap_limits(0, limits.heap_bytes)),
            ..Default::default()
        })
        .map_err(|e| LoadError::new(format!("creating the isolate failed: {e}")))?;
        let mut runtime = runtime;
        // SAFETY: the runtime was just created on this thread and is owned here.
        let raw = unsafe { runtime.v8_isolate().as_raw_isolate_ptr() };
        let watched = Watched::register(runtime.v8_isolate().thread_safe_handle(), limits);
        let on_heap_limit = watched.clone();
        runtime.add_near_heap_limit_callback(move |current, _initial| {
            on_heap_limit.breach_heap();
            // V8 aborts the process unless the limit grows; the isolate is replaced anyway.
            current + current / 2
        });
        // A new isolate is entered; leave it so that others on this thread can run.
        // SAFETY: balances the enter done by isolate creation.
        unsafe { runtime.v8_isolate().exit() };
        let mut instance = Instance {
            host: None,
            runtime: Some(runtime),
            raw,
            in_flight,
            watched,
            condemned: None,
            sweep: None,
            finished_bodies: Rc::default(),
            console,
        };
        instance.load(&bundle).await?;
        Ok(instance)
    }

    fn runtime(&mut self) -> &mut JsRuntime {
        self.runtime.as_mut().expect("the runtime lives until drop")
    }

    async fn load(&mut self, bundle: &Bundle) -> Result<(), LoadError> {
        let raw = self.raw;
        let vars = serde_json::to_string(&bundle.manifest.vars)
            .map_err(|e| LoadError::new(e.to_string()))?;
        let main =
            loader::specifier_of(bundle.main()).map_err(|e| LoadError::new(e.to_string()))?;
        let watched = self.watched.clone();
        // A script stopped for breaking a limit fails with a generic "terminated" error; say
        // which limit instead.
        let breach_error = || {
            watched.breach().map(|breach| {
                LoadError::new(format!(
                    "while loading, the app {}",
                    breach_text(breach, &watched)
                ))
            })
        };
        let breached = |e: String| breach_error().unwrap_or_else(|| LoadError::new(e));
        let runtime = self.runtime.as_mut().expect("the runtime lives until drop");
        let (init, set_handler, dispatch) = {
            let _entered = EnterGuard::new(raw);
            let host = runtime
                .execute_script("[outpost:host]", "globalThis.__outpost_host")
                .map_err(|e| LoadError::new(format!("bootstrap: {e}")))?;
            deno_core::scope!(scope, runtime);
            let host = v8::Local::new(scope, host);
            let host = v8::Local::<v8::Object>::try_from(host)
                .map_err(|_| LoadError::new("bootstrap: no host hooks in the snapshot"))?;
            let init = function(scope, host, "initInstance")?;
            let set_handler = function(scope, host, "setHandler")?;
            let dispatch = function(scope, host, "dispatch")?;
            v8::tc_scope!(let tc, scope);
            let undefined = v8::undefined(tc).into();
            let vars =
                v8::String::new(tc, &vars).ok_or_else(|| LoadError::new("vars too large"))?;
            let init_fn = v8::Local::new(tc, &init);
            if init_fn.call(tc, undefined, &[vars.into()]).is_none() {
                return Err(LoadError::new(format!("bootstrap: {}", exception_text(tc))));
            }
            (init, set_handler, dispatch)
        };
        drop(init);
        let module_id = entered(raw, &watched, runtime.load_main_es_module(&main))
            .await
            .map_err(|e| breached(e.to_string()))?;
        let evaluation = {
            let _entered = EnterGuard::new(raw);
            let _turn = watched.turn();
            runtime.mod_evaluate(module_id)
        };
        entered(
            raw,
            &watched,
            runtime.with_event_loop_promise(Box::pin(evaluation), PollEventLoopOptions::default()),
        )
        .await
        .map_err(|e| breached(e.to_string()))?;
        if let Some(error) = breach_error() {
            return Err(error);
        }
        {
            let _entered = EnterGuard::new(raw);
            let namespace = runtime
                .get_module_namespace(module_id)
                .map_err(|e| LoadError::new(e.to_string()))?;
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let tc, scope);
            let namespace = v8::Local::new(tc, namespace);
            let set_handler = v8::Local::new(tc, &set_handler);
            let undefined = v8::undefined(tc).into();
            let Some(problem) = set_handler.call(tc, undefined, &[namespace.into()]) else {
                return Err(LoadError::new(exception_text(tc)));
            };
            if !problem.is_null_or_undefined() {
                return Err(LoadError::new(problem.to_rust_string_lossy(tc)));
            }
        }
        self.host = Some(Host { dispatch });
        Ok(())
    }

    /// Serves jobs until `jobs` closes and the remaining work finished, or the event loop
    /// fails.
    pub async fn serve(&mut self, jobs: &mut mpsc::Receiver<Job>) -> ServeEnd {
        let mut closed = false;
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let event = poll_fn(|cx| self.poll_turn(cx, jobs, &mut closed, &mut grace)).await;
            match event {
                Turn::Job(job) => self.start_request(job),
                Turn::Done => return ServeEnd::Closed,
                Turn::Failed(message) => {
                    self.fail_in_flight(FailureKind::Exception, &message);
                    return ServeEnd::Failed(message);
                }
                Turn::Breached(breach) => {
                    let message = format!("the app {}", breach_text(breach, &self.watched));
                    self.fail_in_flight(FailureKind::LimitExceeded, &message);
                    return ServeEnd::Failed(message);
                }
            }
        }
    }

    fn poll_turn(
        &mut self,
        cx: &mut Context<'_>,
        jobs: &mut mpsc::Receiver<Job>,
        closed: &mut bool,
        grace: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Poll<Turn> {
        if let Some(breach) = self.condemned.or_else(|| self.watched.breach()) {
            return Poll::Ready(Turn::Breached(breach));
        }
        self.close_finished_bodies();
        if !*closed {
            match jobs.poll_recv(cx) {
                Poll::Ready(Some(job)) => return Poll::Ready(Turn::Job(job)),
                Poll::Ready(None) => *closed = true,
                Poll::Pending => {}
            }
        }
        let raw = self.raw;
        let idle = {
            let _entered = EnterGuard::new(raw);
            let runtime = self.runtime.as_mut().expect("the runtime lives until drop");
            let _turn = self.watched.turn();
            let polled = runtime.poll_event_loop(cx, PollEventLoopOptions::default());
            if let Some(breach) = self.watched.breach() {
                return Poll::Ready(Turn::Breached(breach));
            }
            match polled {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(Turn::Failed(e.to_string())),
                Poll::Pending => false,
            }
        };
        if idle && !self.in_flight.borrow().is_empty() {
            // Nothing is left that could ever settle the handlers' promises.
            self.fail_in_flight(FailureKind::NotAResponse, NEVER_SETTLES);
        }
        self.poll_deadlines(cx);
        if *closed {
            if idle && self.in_flight.borrow().is_empty() {
                return Poll::Ready(Turn::Done);
            }
            let sleep = grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_GRACE)));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Turn::Done);
            }
        }
        Poll::Pending
    }

    /// Every `SWEEP` while requests are in flight, fails those past their deadline. One timer
    /// per isolate instead of one per request: a timer per request costs more than the
    /// hello-world request itself.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) {
        if self.in_flight.borrow().is_empty() {
            // The timer stays armed: re-arming it on every request is what this avoids.
            return;
        }
        let sweep = self
            .sweep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(SWEEP)));
        if sweep.as_mut().poll(cx).is_pending() {
            return;
        }
        self.sweep = None;
        let expired = self.in_flight.borrow_mut().take_expired(Instant::now());
        for responder in expired {
            responder(Outcome::Failed {
                kind: FailureKind::Timeout,
                message: TIMED_OUT.to_string(),
            });
        }
        // Arm the next sweep.
        cx.waker().wake_by_ref();
    }

    fn close_finished_bodies(&mut self) {
        let finished: Vec<ResourceId> = self.finished_bodies.borrow_mut().drain(..).collect();
        if finished.is_empty() {
            return;
        }
        let state = self.runtime().op_state();
        let resources: Vec<_> = {
            let mut state = state.borrow_mut();
            finished
                .into_iter()
                .filter_map(|rid| state.resource_table.take_any(rid).ok())
                .collect()
        };
        for resource in resources {
            resource.close();
        }
    }

    /// Answers every request still in flight with an error.
    fn fail_in_flight(&mut self, kind: FailureKind, message: &str) {
        let responders = self.in_flight.borrow_mut().take_all();
        for responder in responders {
            responder(Outcome::Failed {
                kind,
                message: message.to_string(),
            });
        }
    }

    /// Hands one request to JS; its response arrives through an op, now or later.
    fn start_request(&mut self, job: Job) {
        let deadline = job.deadline;
        let (parts, body) = job.request.into_parts();
        let body_rid = if body.is_end_stream() {
            None
        } else {
            let resource = RequestBodyResource::new(body);
            Some(
                self.runtime()
                    .op_state()
                    .borrow_mut()
                    .resource_table
                    .add(resource),
            )
        };
        let responder = responder(
            job.reply,
            self.console.clone(),
            body_rid,
            self.finished_bodies.clone(),
        );
        let id = self.in_flight.borrow_mut().insert(responder, deadline);
        let raw = self.raw;
        let _entered = EnterGuard::new(raw);
        let (Some(host), Some(runtime)) = (self.host.as_ref(), self.runtime.as_mut()) else {
            return;
        };
        let threw = {
            let _turn = self.watched.turn();
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let tc, scope);
            let args = request_args(tc, id, &parts, body_rid);
            let dispatch = v8::Local::new(tc, &host.dispatch);
            let undefined = v8::undefined(tc).into();
            match dispatch.call(tc, undefined, &args) {
                Some(_) => None,
                None => Some(exception_text(tc)),
            }
        };
        if let Some(breach) = self.watched.breach() {
            // The request that broke the limit fails with the others in flight.
            self.condemned = Some(breach);
            return;
        }
        if let Some(message) = threw {
            if let Some(responder) = self.in_flight.borrow_mut().remove(id) {
                responder(Outcome::Failed {
                    kind: FailureKind::Exception,
                    message,
                });
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        {
            let _entered = EnterGuard::new(self.raw);
            self.host = None;
        }
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime exits its isolate once; enter it once more to balance.
            // SAFETY: the isolate belongs to `runtime`, alive and on this thread.
            unsafe { v8::Isolate::from_raw_isolate_ptr(self.raw).enter() };
            drop(runtime);
        }
    }
}

// A short-lived value moved once per turn; boxing the job would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Turn {
    Job(Job),
    Done,
    Failed(String),
    Breached(Breach),
}

/// What a breach of a limit is called in errors and logs.
fn breach_text(breach: Breach, watched: &Watched) -> String {
    match breach {
        Breach::Cpu => format!(
            "exceeded its CPU limit: JavaScript ran for more than {} ms without returning to the event loop",
            watched.cpu_limit().as_millis()
        ),
        Breach::Heap => format!("exceeded its memory limit of {} MiB", watched.heap_limit() >> 20),
    }
}

fn function(
    scope: &mut v8::PinScope,
    object: v8::Local<v8::Object>,
    name: &str,
) -> Result<v8::Global<v8::Function>, LoadError> {
    let key = v8::String::new(scope, name).ok_or_else(|| LoadError::new("bootstrap: string"))?;
    let value = object
        .get(scope, key.into())
        .ok_or_else(|| LoadError::new(format!("bootstrap: no {name}")))?;
    let function = v8::Local::<v8::Function>::try_from(value)
        .map_err(|_| LoadError::new(format!("bootstrap: {name} is not a function")))?;
    Ok(v8::Global::new(scope, function))
}

fn exception_text(tc: &mut v8::PinnedRef<'_, v8::TryCatch<v8::HandleScope>>) -> String {
    if tc.has_terminated() {
        return "execution terminated".into();
    }
    match tc.exception() {
        Some(e) => deno_core::error::JsError::from_v8_exception(tc, e).to_string(),
        None => "unknown exception".into(),
    }
}

/// The arguments of `dispatch(id, method, url, headers, bodyRid)`.
fn request_args<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    id: u32,
    parts: &http::request::Parts,
    body_rid: Option<ResourceId>,
) -> [v8::Local<'s, v8::Value>; 5] {
    let id = v8::Integer::new_from_unsigned(scope, id).into();
    let method = one_byte(scope, parts.method.as_str().as_bytes());
    let url = one_byte(scope, absolute_url(&parts.uri).as_bytes());
    let mut flat = Vec::with_capacity(parts.headers.len() * 2);
    for (name, value) in &parts.headers {
        flat.push(one_byte(scope, name.as_str().as_bytes()));
        flat.push(one_byte(scope, value.as_bytes()));
    }
    let headers = v8::Array::new_with_elements(scope, &flat).into();
    let rid = match body_rid {
        Some(rid) => v8::Integer::new_from_unsigned(scope, rid).into(),
        None => v8::null(scope).into(),
    };
    [id, method, url, headers, rid]
}

/// `scheme://authority/path?query` of an absolute URI, without the formatting machinery.
fn absolute_url(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut url = String::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    url.push_str(scheme);
    url.push_str("://");
    url.push_str(authority);
    url.push_str(path);
    url
}

/// A JS string of bytes read as Latin-1 (how the Fetch standard maps header bytes).
fn one_byte<'s>(scope: &mut v8::PinScope<'s, '_>, bytes: &[u8]) -> v8::Local<'s, v8::Value> {
    v8::String::new_from_one_byte(scope, bytes, v8::NewStringType::Normal)
        .map(Into::into)
        .unwrap_or_else(|| v8::String::empty(scope).into())
}

/// What to do with the outcome of one request: build the HTTP response (starting a stream
/// pump if needed) and send it back to the dispatcher.
fn responder(
    reply: oneshot::Sender<Result<http::Response<Body>, DispatchError>>,
    console: ConsoleSink,
    body_rid: Option<ResourceId>,
    finished_bodies: Rc<RefCell<Vec<ResourceId>>>,
) -> extensions::Responder {
    Box::new(move |outcome| {
        let finish = move || {
            if let Some(rid) = body_rid {
                finished_bodies.borrow_mut().push(rid);
            }
        };
        let result = match outcome {
            Outcome::Response {
                status,
                headers,
                body,
            } => {
                let body = match body {
                    OutBody::Empty => {
                        finish();
                        Empty::new().map_err(|never| match never {}).boxed_unsync()
                    }
                    OutBody::Bytes(bytes) => {
                        finish();
                        Full::new(Bytes::from(bytes))
                            .map_err(|never| match never {})
                            .boxed_unsync()
                    }
                    OutBody::Stream(resource) => stream_response(resource, finish),
                };
                Ok(build_response(status, headers, body))
            }
            Outcome::Failed { kind, message } => {
                finish();
                console(3, &format!("{message}\n"));
                Err(match kind {
                    FailureKind::Exception => DispatchError::Exception(message),
                    FailureKind::NotAResponse => DispatchError::BadResponse(message),
                    FailureKind::Timeout => DispatchError::Timeout,
                    FailureKind::LimitExceeded => DispatchError::LimitExceeded(message),
                })
            }
        };
        let _ = reply.send(result);
    })
}

fn build_response(
    status: u16,
    headers: Vec<(
        deno_core::convert::ByteString,
        deno_core::convert::ByteString,
    )>,
    body: Body,
) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    map.reserve(headers.len());
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&name),
            http::HeaderValue::from_bytes(&value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    response
}
