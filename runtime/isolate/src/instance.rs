//! One isolate running one app version: a [`Blank`] runtime given the app's state and
//! modules, then serving requests from a queue, many at a time, until the queue closes or
//! the pool evicts it.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use deno_core::{v8, CancelHandle, JsRuntime, PollEventLoopOptions, ResourceId};
use outpost_bundle::{Bundle, Limits};
use outpost_pool::{InstanceHandle, Job, LoadError};
use tokio::sync::mpsc;

use crate::blank::Blank;
use crate::body::RequestBody;
use crate::code_cache::VersionCache;
use crate::egress::{self, Egress};
use crate::enter::{drop_runtime, entered, CryptoBrands, EnterGuard};
use crate::exchange::{self, Finish, ResponseOptions};
use crate::extensions::{
    ConsoleSink, FailureKind, InFlight, Outcome, TenantState, WaitUntilSink, FAILURE_KINDS,
    LOG_LEVELS,
};
use crate::limits::{self, Breach, WatchdogDown, Watched};

/// How long an instance whose queue closed may keep running `waitUntil` work and timers.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Why a request fails when its handler awaits something nothing can resolve.
const NEVER_SETTLES: &str = "the fetch handler's promise will never settle: nothing is left \
     that could resolve it (no timer, I/O or other pending work); make sure every code path \
     returns or resolves a Response";

/// How a timed-out request is reported on the terminal.
const TIMED_OUT: &str = "a request timed out: the fetch handler did not start its response \
     within the app's timeout";

/// How often requests in flight are checked against their deadlines.
const SWEEP: Duration = Duration::from_millis(100);

/// How often the isolate's memory is measured and reported to the pool.
const MEASURE: Duration = Duration::from_millis(500);

/// The host's handles into `js/99_main.js`.
struct Host {
    dispatch: v8::Global<v8::Function>,
    /// The runtime's main context, kept: deno_core's `scope!` clones a global handle of it
    /// on every use.
    context: v8::Global<v8::Context>,
}

/// What an instance needs besides its runtime.
pub struct Tenant {
    pub bundle: Arc<Bundle>,
    pub limits: Limits,
    pub handle: Arc<InstanceHandle>,
    pub console: ConsoleSink,
    pub egress: Egress,
    pub response: ResponseOptions,
    /// The node's cache, which the app's Cache API works on (its own scope of it).
    pub cache: Option<Arc<outpost_cache::Cache>>,
}

/// An isolate with an app loaded, ready to serve.
pub struct Instance {
    // Field order matters: `host` holds V8 handles that must go before the runtime.
    host: Option<Host>,
    runtime: Option<JsRuntime>,
    raw: v8::UnsafeRawIsolatePtr,
    tenant: Tenant,
    budget: Arc<crate::allocator::Budget>,
    in_flight: Rc<RefCell<InFlight>>,
    /// The watchdog's view of this isolate: CPU turns and limit breaches.
    watched: Arc<Watched>,
    /// Set once the isolate broke a limit; it then serves nothing more.
    condemned: Option<Breach>,
    /// The next check for requests past their deadline, while any are in flight.
    sweep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The next measurement of memory, while `measuring`.
    measure: Pin<Box<tokio::time::Sleep>>,
    /// Whether memory is measured every `MEASURE`: not while the isolate is quiet (no request
    /// since the last measurement, none in flight, nothing pending in its event loop), when
    /// nothing in it runs that could grow it; then whatever wakes it is followed by a
    /// measurement, and the next request starts the timer again. An idle isolate thus costs
    /// its worker no wake-ups.
    measuring: bool,
    /// A request started since the last measurement.
    started_since_measure: bool,
    /// Request-body resources of finished requests, closed on the next poll of the loop.
    finished_bodies: Rc<RefCell<Vec<ResourceId>>>,
    /// Cancels every response stream this isolate feeds when it goes away.
    streams: Rc<CancelHandle>,
    /// The serve loop's waker while it waits for a request to finish (at its concurrency).
    parked: Rc<Cell<Option<Waker>>>,
    /// The buffer a request's headers are joined into for JS, kept for the next request.
    header_buffer: Vec<u8>,
    /// The waker registered for the pool's eviction (see `InstanceHandle::evict_requested`).
    evict_waker: Option<Waker>,
}

/// Why [`Instance::serve`] returned.
pub enum ServeEnd {
    /// The queue closed (or the pool evicted it) and the work left has finished (or ran out
    /// of grace).
    Closed,
    /// It broke a limit or its event loop failed; it must not be used again.
    Failed(String),
}

impl Instance {
    /// Gives `blank` to the tenant and loads its main module. Must run inside a tokio
    /// runtime, on the thread that made `blank`.
    pub async fn start(blank: Blank, tenant: Tenant) -> Result<Instance, LoadError> {
        let in_flight = Rc::new(RefCell::new(InFlight::default()));
        let permissions = egress::tenant_permissions(tenant.egress).map_err(LoadError::new)?;
        let handle = tenant.handle.clone();
        let wait_until: WaitUntilSink = Rc::new(move |pending| handle.set_wait_until(pending));
        let state = TenantState {
            permissions,
            console: tenant.console.clone(),
            in_flight: in_flight.clone(),
            wait_until,
            cache: tenant.cache.clone().map(|cache| {
                let api: Rc<dyn crate::extensions::CacheHost> =
                    Rc::new(crate::cache_api::CacheApi {
                        scope: outpost_cache::api::CacheScope {
                            cache,
                            app: tenant.bundle.manifest.name.clone(),
                        },
                        stream_idle: tenant.limits.stream_idle,
                    });
                api
            }),
        };
        limits::ensure_watchdog().map_err(|WatchdogDown| {
            LoadError::new("the CPU-limit watchdog is not running; refusing to run tenant code")
        })?;
        let code = VersionCache::of(&tenant.bundle);
        blank.loader.assign(tenant.bundle.clone(), code.clone());
        blank.budget.set_limit(tenant.limits.memory_bytes);
        let budget = blank.budget.clone();
        let raw = blank.raw();
        let mut runtime = blank.into_runtime();
        let watched = {
            let _entered = EnterGuard::new(raw);
            state.install(&mut runtime.op_state().borrow_mut());
            runtime.op_state().borrow_mut().put(code);
            runtime
                .op_state()
                .borrow_mut()
                .put(deno_web::StartTime::default());
            // The app's base URL (validated with its manifest): blob URLs take its origin.
            if let Some(location) = tenant.bundle.manifest.location.as_deref() {
                if let Ok(url) = deno_core::url::Url::parse(location) {
                    runtime.op_state().borrow_mut().put(deno_web::Location(url));
                }
            }
            let watched = Watched::register(
                runtime.v8_isolate().thread_safe_handle(),
                tenant.limits.cpu,
                tenant.limits.memory_bytes,
            );
            let on_heap_limit = watched.clone();
            runtime.add_near_heap_limit_callback(move |current, _initial| {
                on_heap_limit.breach_memory();
                // V8 aborts the process unless the limit grows; the isolate is replaced.
                current + current / 2
            });
            watched
        };
        let mut instance = Instance {
            host: None,
            runtime: Some(runtime),
            raw,
            tenant,
            budget,
            in_flight,
            watched,
            condemned: None,
            sweep: None,
            measure: Box::pin(tokio::time::sleep(MEASURE)),
            measuring: true,
            started_since_measure: false,
            finished_bodies: Rc::default(),
            streams: Rc::new(CancelHandle::new()),
            parked: Rc::default(),
            evict_waker: None,
            header_buffer: Vec::new(),
        };
        // A module that never finishes evaluating (a top-level await on nothing) must not
        // hold its place in the budget, or the requests waiting for it, forever.
        let timeout = instance.tenant.limits.timeout;
        match tokio::time::timeout(timeout, instance.load()).await {
            Ok(loaded) => loaded?,
            Err(_elapsed) => {
                return Err(LoadError::new(format!(
                    "the app's modules did not finish evaluating within {} ms (a top-level \
                     await that never settles?)",
                    timeout.as_millis()
                )))
            }
        }
        instance.tenant.handle.replaced();
        Ok(instance)
    }

    fn runtime(&mut self) -> &mut JsRuntime {
        self.runtime.as_mut().expect("the runtime lives until drop")
    }

    async fn load(&mut self) -> Result<(), LoadError> {
        let raw = self.raw;
        let bundle = self.tenant.bundle.clone();
        let config = serde_json::json!({
            "vars": bundle.manifest.vars,
            "location": bundle.manifest.location,
            "subrequests": self.tenant.limits.subrequests,
            "failureKinds": FAILURE_KINDS.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            "logLevels": LOG_LEVELS,
        })
        .to_string();
        let main = crate::loader::specifier_of(bundle.main())
            .map_err(|e| LoadError::new(e.to_string()))?;
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
        let (set_handler, dispatch) = {
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
            let config =
                v8::String::new(tc, &config).ok_or_else(|| LoadError::new("vars too large"))?;
            let init_fn = v8::Local::new(tc, &init);
            if init_fn.call(tc, undefined, &[config.into()]).is_none() {
                return Err(LoadError::new(format!("bootstrap: {}", exception_text(tc))));
            }
            // initInstance handed this isolate's CryptoKey symbols to deno_crypto; this
            // function hands them over again whenever the isolate is entered after another.
            let register = function(tc, host, "claimCryptoBrands")?;
            let context = tc.get_current_context();
            let context = v8::Global::new(tc, context);
            CryptoBrands::install(tc, context, register);
            (set_handler, dispatch)
        };
        let module_id = entered(raw, &watched, runtime.load_main_es_module(&main))
            .await
            .map_err(|e| breached(e.to_string()))?;
        let evaluation = {
            let _entered = EnterGuard::new(raw);
            let turn = watched.turn(watched.cpu_limit());
            let evaluation = runtime.mod_evaluate(module_id);
            turn.end();
            evaluation
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
        let chosen = {
            let _entered = EnterGuard::new(raw);
            let namespace = runtime
                .get_module_namespace(module_id)
                .map_err(|e| LoadError::new(e.to_string()))?;
            // Reading `default.fetch` runs tenant code (a getter, a Proxy): a turn.
            let turn = watched.turn(watched.cpu_limit());
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let tc, scope);
            let namespace = v8::Local::new(tc, namespace);
            let set_handler = v8::Local::new(tc, &set_handler);
            let undefined = v8::undefined(tc).into();
            let chosen = match set_handler.call(tc, undefined, &[namespace.into()]) {
                None => Err(exception_text(tc)),
                Some(problem) if !problem.is_null_or_undefined() => {
                    Err(problem.to_rust_string_lossy(tc))
                }
                Some(_) => Ok(()),
            };
            turn.end();
            chosen
        };
        if let Some(error) = breach_error() {
            return Err(error);
        }
        chosen.map_err(LoadError::new)?;
        let context = self.runtime().main_context();
        self.host = Some(Host { dispatch, context });
        Ok(())
    }

    /// Serves jobs until `jobs` closes (or the pool evicts the instance) and the remaining
    /// work finished, or a limit is broken or the event loop fails.
    pub async fn serve(&mut self, jobs: &mut mpsc::Receiver<Job>) -> ServeEnd {
        let mut closed = false;
        let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // Requests are started inside the turns; a turn ends the loop only when it ends.
        let end = poll_fn(|cx| self.poll_turn(cx, jobs, &mut closed, &mut grace)).await;
        match end {
            TurnEnd::Done => ServeEnd::Closed,
            TurnEnd::Failed(message) => {
                self.fail_in_flight(FailureKind::Exception, &message);
                ServeEnd::Failed(message)
            }
            TurnEnd::Breached(breach) => {
                let message = format!("the app {}", breach_text(breach, &self.watched));
                self.fail_in_flight(FailureKind::LimitExceeded, &message);
                ServeEnd::Failed(message)
            }
        }
    }

    fn poll_turn(
        &mut self,
        cx: &mut Context<'_>,
        jobs: &mut mpsc::Receiver<Job>,
        closed: &mut bool,
        grace: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    ) -> Poll<TurnEnd> {
        if let Some(breach) = self.condemned.or_else(|| self.watched.breach()) {
            return Poll::Ready(TurnEnd::Breached(breach));
        }
        // Entered once for the requests started and the event loop's turn (an entry costs
        // ~150 instructions even when the isolate is the thread's resident one).
        let entered = EnterGuard::new(self.raw);
        self.close_finished_bodies();
        let evicted = self
            .tenant
            .handle
            .evict_requested(cx.waker(), &mut self.evict_waker);
        if !*closed {
            if evicted {
                // Whatever is queued still gets served; then the queue reads as closed.
                jobs.close();
            }
            // Every request waiting is started before the event loop turns once for all of
            // them (one poll of this task per wake-up, however many arrived).
            if let Some(breach) = self.start_requests(cx, jobs, closed, &entered) {
                return Poll::Ready(TurnEnd::Breached(breach));
            }
        }
        let idle = {
            let limit = self.tenant.limits.cpu;
            let now = outpost_clock::precise_nanos();
            let budget = self.in_flight.borrow_mut().begin_turn(limit, now);
            let turn = self.watched.turn_from(now, budget);
            let runtime = self.runtime.as_mut().expect("the runtime lives until drop");
            let polled = runtime.poll_event_loop(cx, PollEventLoopOptions::default());
            let cpu = turn.end();
            self.in_flight.borrow_mut().end_turn(cpu);
            if let Some(breach) = self.watched.breach() {
                return Poll::Ready(TurnEnd::Breached(breach));
            }
            match polled {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(e)) => return Poll::Ready(TurnEnd::Failed(e.to_string())),
                Poll::Pending => false,
            }
        };
        drop(entered);
        if idle && !self.in_flight.borrow().is_empty() {
            // Nothing is left that could ever settle the handlers' promises.
            self.fail_in_flight(FailureKind::NotAResponse, NEVER_SETTLES);
        }
        self.poll_deadlines(cx);
        let quiet = idle && self.in_flight.borrow().is_empty();
        if let Some(breach) = self.poll_measure(cx, quiet) {
            return Poll::Ready(TurnEnd::Breached(breach));
        }
        if *closed {
            // An evicted isolate was idle: its timers are not waited for.
            let quiet = idle || evicted;
            if quiet && self.in_flight.borrow().is_empty() && self.tenant.handle.in_flight() == 0 {
                return Poll::Ready(TurnEnd::Done);
            }
            let sleep = grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_GRACE)));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(TurnEnd::Done);
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
        for (responder, timing) in expired {
            responder(
                Outcome::Failed {
                    kind: FailureKind::Timeout,
                    message: TIMED_OUT.to_string(),
                },
                timing,
            );
        }
        // Arm the next sweep.
        cx.waker().wake_by_ref();
    }

    /// Every `MEASURE` while `measuring`, reads the isolate's memory, reports it to the pool,
    /// and returns a breach when it is past the limit (memory outside V8's heap limit: Wasm
    /// memories and buffers made by ops). `quiet`: nothing is in flight or pending in the
    /// event loop.
    fn poll_measure(&mut self, cx: &mut Context<'_>, quiet: bool) -> Option<Breach> {
        if self.measuring {
            if self.measure.as_mut().poll(cx).is_pending() {
                return None;
            }
            if quiet && !self.started_since_measure {
                // Measured after its last work; the next wake-up measures again.
                self.measuring = false;
            } else {
                self.rearm_measure(cx);
            }
        } else if !quiet {
            // Not a request (those re-arm the timer) but a V8 task (a garbage collection, a
            // `FinalizationRegistry` callback) woke it and left work behind.
            self.measuring = true;
            self.rearm_measure(cx);
        }
        // Otherwise woken while quiet, by whatever ran (such a V8 task, done): measured now,
        // which also reads the heap after the collection that made it quiet.
        self.started_since_measure = false;
        let raw = self.raw;
        let (heap, external) = {
            let _entered = EnterGuard::new(raw);
            let isolate = self.runtime().v8_isolate();
            let stats = isolate.get_heap_statistics();
            // Wasm memories and other memory V8 was told about.
            let managed = isolate.adjust_amount_of_external_allocated_memory(0).max(0) as u64;
            (
                stats.used_heap_size() as u64,
                stats.external_memory() as u64 + managed,
            )
        };
        self.budget.set_heap(heap);
        let total = heap + external.max(self.budget.used());
        self.tenant.handle.set_memory(total);
        if total > self.tenant.limits.memory_bytes {
            self.watched.breach_memory();
            return Some(Breach::Memory);
        }
        None
    }

    /// Sets the next measurement `MEASURE` from now (polled with `cx`, so it wakes the loop).
    fn rearm_measure(&mut self, cx: &mut Context<'_>) {
        self.schedule_measure();
        let _ = self.measure.as_mut().poll(cx);
    }

    /// Sets the next measurement `MEASURE` from now.
    fn schedule_measure(&mut self) {
        self.measure
            .as_mut()
            .reset(tokio::time::Instant::now() + MEASURE);
    }

    fn close_finished_bodies(&mut self) {
        if self.finished_bodies.borrow().is_empty() {
            return;
        }
        let finished: Vec<ResourceId> = self.finished_bodies.borrow_mut().drain(..).collect();
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
        for (responder, timing) in responders {
            responder(
                Outcome::Failed {
                    kind,
                    message: message.to_string(),
                },
                timing,
            );
        }
    }

    /// The next request waiting, while the isolate is below its concurrency (else it
    /// waits for one to finish); marks the queue `closed` when it is.
    fn take_job(
        &mut self,
        cx: &mut Context<'_>,
        jobs: &mut mpsc::Receiver<Job>,
        closed: &mut bool,
    ) -> Option<Job> {
        if self.tenant.handle.in_flight() >= self.tenant.limits.concurrency {
            // At its concurrency: wait for a request to finish.
            self.parked.set(Some(cx.waker().clone()));
            return None;
        }
        match jobs.poll_recv(cx) {
            Poll::Ready(Some(job)) => {
                self.tenant.handle.job_taken();
                Some(job)
            }
            Poll::Ready(None) => {
                *closed = true;
                None
            }
            Poll::Pending => None,
        }
    }

    /// Hands every request waiting to JS (`_entered`: the isolate is entered), one call of
    /// the dispatch function each; their responses arrive through an op, now or later.
    /// Up to [`START_BATCH`] of them share one V8 handle scope, context scope and
    /// `TryCatch` (opened and closed per request, together they cost ~500 instructions of
    /// a hello-world request). Returns the limit a request broke, if one did.
    fn start_requests(
        &mut self,
        cx: &mut Context<'_>,
        jobs: &mut mpsc::Receiver<Job>,
        closed: &mut bool,
        _entered: &EnterGuard,
    ) -> Option<Breach> {
        loop {
            let mut job = self.take_job(cx, jobs, closed)?;
            let op_state = self.runtime().op_state();
            // Out of `self` while the scopes borrow them, so that each request's own
            // bookkeeping can still use the rest of the instance.
            let (Some(host), Some(mut runtime)) = (self.host.take(), self.runtime.take()) else {
                unreachable!("the runtime and its host live until drop");
            };
            let mut started = 0;
            let breach = {
                let isolate = &mut *runtime.v8_isolate();
                v8::scope_with_context!(scope, isolate, &host.context);
                v8::tc_scope!(let tc, scope);
                let dispatch = v8::Local::new(tc, &host.dispatch);
                loop {
                    let request = self.prepare_request(job, &op_state);
                    started += 1;
                    if let Some(breach) = self.call_dispatch(tc, dispatch, request) {
                        break Some(breach);
                    }
                    if started == START_BATCH {
                        break None;
                    }
                    match self.take_job(cx, jobs, closed) {
                        Some(next) => job = next,
                        None => break None,
                    }
                }
            };
            self.host = Some(host);
            self.runtime = Some(runtime);
            if breach.is_some() || started < START_BATCH {
                return breach;
            }
        }
    }

    /// A request's bookkeeping before JS sees it: its body (a resource in `op_state` when
    /// it streams), its responder and its entry among the requests in flight.
    fn prepare_request(
        &mut self,
        job: Job,
        op_state: &Rc<RefCell<deno_core::OpState>>,
    ) -> Prepared {
        let Job {
            request,
            stamp,
            deadline,
            reply,
        } = job;
        self.started_since_measure = true;
        if !self.measuring {
            // Polled (and so armed) after this turn's event loop.
            self.measuring = true;
            self.schedule_measure();
        }
        // Read where it lies (the request is boxed all the way from the connection); only
        // its body is taken out.
        let mut request = request;
        let body = std::mem::replace(request.body_mut(), outpost_pool::empty_body());
        let headers = exchange::RequestHeaders::of(
            request.headers(),
            &stamp,
            std::mem::take(&mut self.header_buffer),
        );
        let (body, body_rid) = match RequestBody::from(body) {
            RequestBody::Stream(resource) => {
                let rid = op_state.borrow_mut().resource_table.add(resource);
                (exchange::BodyArg::Stream(rid), Some(rid))
            }
            RequestBody::Whole(bytes) => (exchange::BodyArg::whole(bytes, &headers), None),
            RequestBody::None => (exchange::BodyArg::None, None),
        };
        let handle = &self.tenant.handle;
        let cold = handle.request_started();
        let finish = Finish {
            handle: handle.clone(),
            parked: self.parked.clone(),
            body_rid,
            finished_bodies: self.finished_bodies.clone(),
        };
        let responder = exchange::responder(
            reply,
            self.tenant.console.clone(),
            finish,
            self.tenant.response.clone(),
            self.streams.clone(),
            self.tenant.limits.stream_idle,
            // The gateway's id of the request, for the tenant's log lines about it.
            headers.id.clone(),
        );
        let now = outpost_clock::precise_nanos();
        let id = self
            .in_flight
            .borrow_mut()
            .insert(responder, deadline, cold, now);
        Prepared {
            id,
            request,
            headers,
            body,
            now,
        }
    }

    /// Calls the dispatch function for one prepared request, its CPU charged to it alone;
    /// answers it with the exception if the call threw. Returns the limit it broke, if it
    /// did (the instance is then condemned).
    fn call_dispatch(
        &mut self,
        tc: &mut v8::PinnedRef<'_, v8::TryCatch<v8::HandleScope>>,
        dispatch: v8::Local<v8::Function>,
        request: Prepared,
    ) -> Option<Breach> {
        let Prepared {
            id,
            request,
            headers,
            body,
            now,
        } = request;
        let budget = self
            .in_flight
            .borrow_mut()
            .begin_dispatch(id, self.tenant.limits.cpu, now);
        let turn = self.watched.turn_from(now, budget);
        let threw = {
            let args = exchange::request_args(tc, id, &request, &headers, body);
            let undefined = v8::undefined(tc).into();
            match dispatch.call(tc, undefined, &args) {
                Some(_) => None,
                None => {
                    let text = exception_text(tc);
                    // The next request's call starts with nothing caught.
                    tc.reset();
                    Some(text)
                }
            }
        };
        self.header_buffer = headers.recycle();
        let cpu = turn.end();
        self.in_flight.borrow_mut().end_turn(cpu);
        if let Some(breach) = self.watched.breach() {
            // The request that broke the limit fails with the others in flight.
            self.condemned = Some(breach);
            return Some(breach);
        }
        if let Some(message) = threw {
            let removed = self.in_flight.borrow_mut().remove(id);
            if let Some((responder, timing)) = removed {
                responder(
                    Outcome::Failed {
                        kind: FailureKind::Exception,
                        message,
                    },
                    timing,
                );
            }
        }
        None
    }
}

/// A request ready for JS: its id among the requests in flight, and its parts as
/// `dispatch` takes them.
struct Prepared {
    id: u32,
    request: Box<http::Request<outpost_pool::Body>>,
    headers: exchange::RequestHeaders,
    body: exchange::BodyArg,
    /// When its bookkeeping was done ([`outpost_clock::precise_nanos`]).
    now: u64,
}

/// The most requests started in one V8 scope: the handles their arguments make stay until
/// the scope closes.
const START_BATCH: usize = 32;

impl Drop for Instance {
    fn drop(&mut self) {
        // Response streams this isolate feeds end now, with an error to their clients.
        self.streams.cancel();
        {
            let _entered = EnterGuard::new(self.raw);
            self.host = None;
        }
        if let Some(runtime) = self.runtime.take() {
            drop_runtime(self.raw, runtime);
        }
    }
}

/// Why the serve loop's turns end.
enum TurnEnd {
    Done,
    Failed(String),
    Breached(Breach),
}

/// What a breach of a limit is called in errors and logs.
fn breach_text(breach: Breach, watched: &Watched) -> String {
    match breach {
        Breach::Cpu => format!(
            "exceeded its CPU limit of {} ms",
            watched.cpu_limit().as_millis()
        ),
        Breach::Memory => format!(
            "exceeded its memory limit of {} MiB",
            watched.memory_limit() >> 20
        ),
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
