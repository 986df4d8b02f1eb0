//! The HTTP listeners: HTTP/1.1 (the common request through [`crate::h1`], the rest through
//! hyper) and HTTP/2 through hyper, in cleartext (HTTP/2 with prior knowledge) or over TLS
//! (ALPN `h2`, `http/1.1`); the route to an app, admission checks against its limits, and
//! dispatch of each request to the app's deployment. Connections are bounded (count, header
//! size and count, time to send headers, streams per connection) and drained on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use outpost_cache::CacheStatus;
use outpost_pool::{Body, DispatchError, Pool, Stamp, Task};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::activity::{Activity, Tracked, WatchedIo};
use crate::error::{GatewayError, Kind};
use crate::routes::{Routes, Target};

// Header names of the request path, made once (a `&str` name is parsed on every use).
static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static X_OUTPOST_POP: http::HeaderName = http::HeaderName::from_static("x-outpost-pop");
static X_OUTPOST_VERSION: http::HeaderName = http::HeaderName::from_static("x-outpost-version");

/// How the node treats requests before they reach an app.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// What a client is told when an app cannot be loaded.
    pub error_detail: ErrorDetail,
    /// The node's name, sent as `x-outpost-pop` with the serving version as
    /// `x-outpost-version` (a PoP's `--name`); nothing when unset.
    pub pop_name: Option<http::HeaderValue>,
    /// What a client connection may hold and take.
    pub connections: ConnectionLimits,
    /// `Alt-Svc` sent with every response (a TLS listener's, announcing HTTP/3).
    pub alt_svc: Option<http::HeaderValue>,
    /// Whether a TLS or QUIC handshake naming an app's host starts its isolate.
    pub prewarm: Prewarm,
    /// What parses HTTP/1.1 requests.
    pub http1: Http1,
    /// Where answered requests are counted (`/metrics`), if anywhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Where request summaries go to live followers (`/tail`), if anywhere.
    pub tail: Option<Arc<crate::tail::Tail>>,
    /// The HTTP cache in front of apps' handlers (and behind their Cache API), if any.
    pub cache: Option<Arc<outpost_cache::Cache>>,
    /// Where request spans go (`--otlp`), if anywhere.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
}

/// What serves HTTP/1.1 connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1 {
    /// `deno_http_h1` for requests whose body came whole with their head; hyper for the
    /// rest of a connection from its first other request (uploads, chunked bodies,
    /// `Expect: 100-continue`, upgrades, HTTP/2 with prior knowledge, malformed heads).
    DenoH1,
    /// hyper for every request.
    Hyper,
}

/// When isolates start ahead of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prewarm {
    /// When a TLS ClientHello (or QUIC's) names a host whose app has no isolate on the
    /// connection's worker: it starts while the handshake completes.
    Sni,
    /// Only when a request arrives.
    Off,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            error_detail: ErrorDetail::Short,
            pop_name: None,
            connections: ConnectionLimits::default(),
            alt_svc: None,
            prewarm: Prewarm::Sni,
            http1: Http1::DenoH1,
            metrics: None,
            tail: None,
            cache: None,
            tracing: None,
        }
    }
}

/// Bounds on client connections, against clients that hold them open or flood them.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once, per listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time for a client to send a request's headers (HTTP/1.1; also the idle time allowed
    /// between keep-alive requests) and to complete a TLS handshake: a slow client
    /// (slowloris) is cut off after it.
    pub header_read_timeout: Duration,
    /// Headers in one request; more get 431.
    pub max_headers: usize,
    /// Bytes of one request's head (request line and headers); more get 431.
    pub max_header_bytes: usize,
    /// Concurrent streams on one HTTP/2 (or HTTP/3) connection.
    pub max_streams: u32,
    /// How long a connection may hold no request before it is closed (gracefully: HTTP/2
    /// gets GOAWAY). HTTP/1.1 connections idle out sooner, at `header_read_timeout`; QUIC
    /// ones after 30 s of silence.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            max_streams: 128,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// How a listener's connections are secured.
#[derive(Clone)]
pub enum Transport {
    /// Cleartext: HTTP/1.1, or HTTP/2 with prior knowledge. Requests are `http:`.
    Plain,
    /// TLS, the certificate picked by SNI; ALPN `h2` or `http/1.1`. Requests are `https:`.
    Tls(Arc<rustls::ServerConfig>),
}

impl Transport {
    fn scheme(&self) -> http::uri::Scheme {
        match self {
            Transport::Plain => http::uri::Scheme::HTTP,
            Transport::Tls(_) => http::uri::Scheme::HTTPS,
        }
    }
}

/// Tells listeners and their connections to stop: listeners stop accepting, connections
/// finish the requests they hold (HTTP/2 sends GOAWAY, idle HTTP/1.1 connections close).
pub struct Shutdown {
    signal: watch::Sender<bool>,
}

/// What a listener and each of its connections hold to hear of a [`Shutdown`]; the
/// shutdown knows everything drained when the last of them is dropped.
#[derive(Clone)]
pub struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    pub(crate) fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown begins.
    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl Shutdown {
    pub fn new() -> (Shutdown, ShutdownSignal) {
        let (signal, watcher) = watch::channel(false);
        (Shutdown { signal }, ShutdownSignal(watcher))
    }

    /// Begins shutting down and waits until every listener and connection is done, or
    /// `timeout` passes; returns whether everything drained in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        let _ = self.signal.send(true);
        tokio::time::timeout(timeout, self.signal.closed())
            .await
            .is_ok()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new().0
    }
}

/// How much of an app's load error a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorDetail {
    /// The whole error, file:line included (for `outpost dev`).
    Full,
    /// A short reason; the error itself goes to the node's log.
    Short,
}

/// What every connection of a listener shares.
pub(crate) struct Listening {
    pub(crate) routes: Arc<Routes>,
    pub(crate) config: Arc<ServeConfig>,
    /// `https` for requests that came over TLS or QUIC.
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) local: Option<SocketAddr>,
}

/// Accepts connections on `listener` until `shutdown` begins (or the task is dropped). Each
/// connection is served on one of the pool's worker threads (round robin), next to that
/// worker's isolates, so its requests cross no thread on the way to the app; a TLS handshake
/// happens there too.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    routes: Arc<Routes>,
    config: ServeConfig,
    pool: Arc<Pool>,
    shutdown: ShutdownSignal,
) {
    let max_connections = config.connections.max_connections;
    let listening = Arc::new(Listening {
        routes,
        config: Arc::new(config),
        scheme: transport.scheme(),
        local: listener.local_addr().ok(),
    });
    let accept = || async {
        loop {
            match listener.accept().await.and_then(|(s, _)| s.into_std()) {
                Ok(stream) => return Some(stream),
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let task = |stream, permit, signal| -> Task {
        let listening = listening.clone();
        let transport = transport.clone();
        Box::new(move || {
            Box::pin(serve_connection(
                stream, transport, listening, signal, permit,
            ))
        })
    };
    place_connections(&pool, max_connections, shutdown, accept, task).await;
}

/// The accept loop of every listener: takes a connection slot (at most `max_connections`
/// open), then the next connection `accept` yields, and places the task `task` makes of it
/// on the next worker (round robin; the pool skips a stalled or full one). Ends when
/// shutdown begins, `accept` yields none, or no worker takes tasks any more.
pub(crate) async fn place_connections<C, F>(
    pool: &Pool,
    max_connections: usize,
    mut shutdown: ShutdownSignal,
    mut accept: impl FnMut() -> F,
    mut task: impl FnMut(C, OwnedSemaphorePermit, ShutdownSignal) -> Task,
) where
    F: std::future::Future<Output = Option<C>>,
{
    let open = Arc::new(Semaphore::new(max_connections));
    let mut next_worker = 0usize;
    loop {
        if shutdown.is_set() {
            return;
        }
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit.expect("never closed"),
            () = shutdown.wait() => return,
        };
        let connection = tokio::select! {
            connection = accept() => connection,
            () = shutdown.wait() => return,
        };
        let Some(connection) = connection else {
            return;
        };
        let task = task(connection, permit, shutdown.clone());
        next_worker = next_worker.wrapping_add(1);
        if pool.spawn_on(next_worker, task).await.is_err() {
            tracing::error!("no worker thread takes connections any more");
            return;
        }
    }
}

/// Serves one connection on the current thread: the TLS handshake if any, then HTTP/1.1 or
/// HTTP/2, until it ends or shutdown drains it.
async fn serve_connection(
    stream: std::net::TcpStream,
    transport: Transport,
    listening: Arc<Listening>,
    shutdown: ShutdownSignal,
    _permit: OwnedSemaphorePermit,
) {
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("connection could not be registered: {e}");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    match transport {
        Transport::Plain => serve_http1(stream, &listening, shutdown).await,
        Transport::Tls(tls) => {
            let handshake = accept_tls(stream, tls, &listening);
            let limit = listening.config.connections.header_read_timeout;
            match tokio::time::timeout(limit, handshake).await {
                Ok(Ok(stream)) => match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => serve_http(stream, Protocol::Http2, &listening, shutdown).await,
                    _ => serve_http1(stream, &listening, shutdown).await,
                },
                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

/// Serves a connection that speaks HTTP/1.1 (or HTTP/2 with prior knowledge) with the
/// listener's [`Http1`].
async fn serve_http1<I>(io: I, listening: &Arc<Listening>, shutdown: ShutdownSignal)
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    match listening.config.http1 {
        Http1::DenoH1 => crate::h1::serve(io, listening, shutdown).await,
        Http1::Hyper => serve_http(io, Protocol::Unknown, listening, shutdown).await,
    }
}

/// Starts an isolate on this worker for the app serving `host` (a TLS ClientHello's name)
/// if it has none here and the listener pre-warms: the request follows the handshake.
pub(crate) fn prewarm(listening: &Listening, host: &str) {
    if listening.config.prewarm == Prewarm::Off {
        return;
    }
    if let Some(app) = listening.routes.current().lookup(host, "/") {
        if let Target::Serving(deployment) = &app.target {
            deployment.prewarm();
        }
    }
}

/// Completes a TLS handshake. Once the ClientHello is in, an app serving the host it names
/// and without an isolate on this worker starts one, while the handshake completes.
async fn accept_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    listening: &Listening,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = rustls::server::Acceptor::default();
    let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
    if let Some(host) = start.client_hello().server_name() {
        prewarm(listening, host);
    }
    start.into_stream(config).await
}

/// Serves HTTP/1.1 or HTTP/2 on `io` with hyper until the connection ends (HTTP/1.1 gets here
/// from [`crate::h1`] with the request it leaves to hyper); once shutdown begins, the
/// connection finishes what it holds and closes.
pub(crate) async fn serve_http<I>(
    io: I,
    protocol: Protocol,
    listening: &Arc<Listening>,
    mut shutdown: ShutdownSignal,
) where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let _open = crate::here::Counted::connection();
    let for_service = listening.clone();
    let activity = Activity::new(protocol == Protocol::Http2);
    let active = activity.clone();
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let listening = for_service.clone();
        // Counted from here until hyper drops the response body (then `WatchedIo` sees
        // whether its last bytes still wait for the socket).
        let open = active.begin(request.version());
        async move {
            let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
            let response = handle(Box::new(request), &listening).await;
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, open)))
        }
    });
    let limits = &listening.config.connections;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // No header timer of hyper's (with a timer set it would default to 30 s): the
        // watcher below keeps the header timeout (see `activity`).
        .header_read_timeout(None::<Duration>)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    if protocol == Protocol::Http1 {
        builder = builder.http1_only();
    }
    let io = WatchedIo::new(io, activity.clone());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    // Polled only when they wake the task, not on every wake-up of the connection.
    let mut watchers = crate::gate::Gate::new();
    let mut stop = std::pin::pin!(shutdown.wait());
    let mut idle = std::pin::pin!(tokio::time::sleep(activity.idle_limit(limits)));
    let mut draining = false;
    let mut unserved_grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
            return Poll::Ready(());
        }
        if draining {
            if let Some(grace) = unserved_grace.as_mut() {
                if grace.as_mut().poll(cx).is_ready() {
                    if !activity.has_served() {
                        tracing::debug!("connection closed before it carried a request");
                        return Poll::Ready(());
                    }
                    // A request came meanwhile (the rest of a head, an HTTP/2 stream before
                    // the GOAWAY took effect): it finishes, as on any served connection.
                    unserved_grace = None;
                }
            }
            return Poll::Pending;
        }
        let watched = watchers.poll(cx, |watch| {
            if stop.as_mut().poll(watch).is_ready() {
                return Poll::Ready(());
            }
            while idle.as_mut().poll(watch).is_ready() {
                let limit = activity.idle_limit(limits);
                match activity.idle_since() {
                    Some(since) if since.elapsed() >= limit => return Poll::Ready(()),
                    Some(since) => idle.as_mut().reset((since + limit).into()),
                    None => idle.as_mut().reset(tokio::time::Instant::now() + limit),
                }
            }
            Poll::Pending
        });
        if watched.is_ready() {
            // Graceful: a response still streaming, or still in hyper's write buffer (its
            // body is gone once its last bytes are buffered), is sent whole first; an
            // HTTP/1.1 connection between requests closes at once, HTTP/2 gets GOAWAY.
            draining = true;
            connection.as_mut().graceful_shutdown();
            if !activity.has_served() {
                unserved_grace = Some(Box::pin(tokio::time::sleep(UNSERVED_GRACE)));
            }
            // The connection makes progress on its shutdown when polled again.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await
}

/// How long a connection that never carried a request may take to close after its graceful
/// shutdown began; then it is dropped (it holds no response to cut). hyper's HTTP/1.1
/// graceful shutdown leaves a new connection holding part of a head waiting for the rest (a
/// slowloris client); HTTP/2 with prior knowledge gets its GOAWAY meanwhile.
const UNSERVED_GRACE: Duration = Duration::from_secs(1);

/// What a connection is known to speak before hyper reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1, or HTTP/2 with prior knowledge (cleartext): told by the first request.
    Unknown,
    /// HTTP/1.1: it carried HTTP/1.1 requests before (served by [`crate::h1`]).
    Http1,
    /// TLS with ALPN `h2`.
    Http2,
}

/// What the request path knows of a request, for the app, its metrics and log line.
struct Outcome {
    /// Its id, also handed to the app as `x-request-id`.
    request_id: http::HeaderValue,
    /// The app it was routed to.
    app: Option<Arc<str>>,
    /// Its trace, when the node traces.
    trace: Option<crate::trace::RequestTrace>,
    /// When it was handed to its app (the cache or the isolate), for its trace.
    dispatched: Option<std::time::SystemTime>,
    /// What its isolate measured of it, when one answered it.
    timing: Option<outpost_pool::Timing>,
    /// The cache's result as written on the answer, when the request went past the cache
    /// (else it is read back from the answer's `Cache-Status`).
    cache: Option<outpost_cache::rules::CacheResult>,
}

/// Answers one request on a listener: routes it, dispatches it, maps failures to statuses;
/// gives it a request id (`x-request-id`, the client's own if it sent a sane one), counts
/// it in the metrics and logs one line for it (target `outpost::request`, level info).
///
/// The request comes boxed (by the protocol that read it) and stays boxed to the isolate:
/// moved from future to future as a pointer, not as its ~240 bytes, which cost ~25 copies
/// a request when it was moved by value (~800 instructions of hello's ~21k).
///
/// A function returning an `async move` block rather than an `async fn`, as are `route` and
/// `admit`: an `async fn`'s future holds its arguments twice (as captured and as locals,
/// rust-lang/rust#62958), so each level would copy them once more per request and reserve
/// room for both copies in its future.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments"
)]
pub(crate) fn handle<'a>(
    request: Box<Request<Body>>,
    listening: &'a Listening,
) -> impl Future<Output = Response<Body>> + 'a {
    async move {
        let started = Instant::now();
        let scheme = listening.scheme.clone();
        let config = &listening.config;
        let version = request.version();
        let method = request.method().clone();
        // The path is read after the answer only for a trace, a log line (either kind, both
        // only when the filter wants request lines) or a tail: the URI is cloned (its bytes
        // shared) only when one of them will want it, not for every request (a clone and
        // its drop: ~70 instructions). A request under way when someone starts following
        // the tail is not in the tail.
        let uri = (config.tracing.is_some()
            || tracing::enabled!(target: "outpost::request", tracing::Level::INFO)
            || config.tail.as_ref().is_some_and(|tail| tail.followed()))
        .then(|| request.uri().clone());
        let mut outcome = Outcome {
            request_id: request_id(request.headers()),
            app: None,
            trace: config
                .tracing
                .as_ref()
                .map(|tracing| tracing.begin(request.headers())),
            dispatched: None,
            timing: None,
            cache: None,
        };
        let routed = route(
            request,
            &listening.routes,
            config,
            scheme,
            listening.local,
            started,
            &mut outcome,
        )
        .await;
        let (mut response, failure, known) = match routed {
            Ok(response) => (response, None, outcome.cache),
            Err(e) => {
                let failure = (e.kind, e.message.clone());
                (e.into_response(), Some(failure), None)
            }
        };
        let cache_result =
            known.or_else(|| outpost_cache::rules::CacheResult::of(response.headers()));
        if cache_result == Some(outpost_cache::rules::CacheResult::Hit) && crate::here::hold_hit() {
            // Answered after the connections ready in this turn were read (see `here`).
            tokio::task::yield_now().await;
        }
        let elapsed = started.elapsed();
        // A response from the store is no handler's answer to this request (a stale one's
        // background refresh may have measured its own).
        let from_store = matches!(
            cache_result,
            Some(outpost_cache::rules::CacheResult::Hit | outpost_cache::rules::CacheResult::Stale)
        );
        let timing = outcome.timing.as_ref().filter(|_| !from_store);
        let cpu = timing.map(|timing| timing.cpu);
        if let (Some(tracing), Some(trace)) = (&config.tracing, &outcome.trace) {
            tracing.finish(
                trace,
                crate::trace::Finished {
                    method: &method,
                    path: uri.as_ref().map_or("", Uri::path),
                    status: response.status().as_u16(),
                    request_id: outcome.request_id.to_str().unwrap_or_default(),
                    app: outcome.app.as_deref(),
                    cache: cache_result.map(outpost_cache::rules::CacheResult::as_str),
                    dispatched: outcome.dispatched,
                    end: std::time::SystemTime::now(),
                    timing,
                },
            );
        }
        if let Some(metrics) = &config.metrics {
            metrics.answered(crate::metrics::Answered {
                app: outcome.app.as_deref(),
                status: response.status(),
                version,
                elapsed,
                cpu,
                failure: failure
                    .as_ref()
                    .map(|(kind, message)| (*kind, message.as_str())),
                cache: cache_result,
            });
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        let cpu_ms = cpu.map_or(0.0, |cpu| cpu.as_secs_f64() * 1000.0);
        if crate::request_log::installed() {
            crate::request_log::offer(crate::request_log::RequestLine {
                at: std::time::SystemTime::now(),
                request_id: outcome.request_id.clone(),
                app: outcome.app.as_deref().map(str::to_string),
                method: method.clone(),
                path: uri.clone().unwrap_or_default(),
                status: response.status().as_u16(),
                ms,
                cpu_ms,
                error: failure.as_ref().map(|(_, message)| message.clone()),
            });
        } else {
            tracing::info!(
                target: "outpost::request",
                request_id = %outcome.request_id.to_str().unwrap_or_default(),
                app = outcome.app.as_deref().unwrap_or("-"),
                method = %method,
                path = uri.as_ref().map_or("", Uri::path),
                status = response.status().as_u16(),
                ms,
                cpu_ms,
                error = failure.as_ref().map(|(_, message)| message.as_str()),
            );
        }
        if let (Some(tail), Some(app), Some(uri)) = (&config.tail, &outcome.app, &uri) {
            if tail.followed() {
                tail.publish(crate::tail::TailEvent::Request {
                    app: app.as_ref().into(),
                    request_id: outcome.request_id.to_str().unwrap_or_default().into(),
                    method: method.to_string(),
                    path: uri.path().to_string(),
                    status: response.status().as_u16(),
                    ms: elapsed.as_secs_f64() * 1000.0,
                });
            }
        }
        let headers = response.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), outcome.request_id);
        // A result read above means the header is there: no second lookup.
        if cache_result.is_none() && !headers.contains_key(&outpost_cache::rules::CACHE_STATUS) {
            // Answered before reaching the cache (no route, a bad request) or failed in the
            // handler.
            let status = match (&failure, &outcome.app) {
                (Some(_), Some(_)) => CacheStatus {
                    fwd: Some("miss"),
                    detail: Some("error"),
                    ..CacheStatus::default()
                },
                _ => CacheStatus::forwarded("bypass"),
            };
            status.add_to(headers);
        }
        if let Some(alt_svc) = &config.alt_svc {
            headers.insert(header::ALT_SVC, alt_svc.clone());
        }
        response
    }
}

/// The request's id: the client's `x-request-id` when it is 1 to 128 characters of
/// `[A-Za-z0-9._:-]`, else a new one (16 hex digits, unique within the process and
/// unlikely to repeat across processes).
fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    if let Some(given) = headers.get(&X_REQUEST_ID) {
        let sane = !given.is_empty()
            && given.len() <= 128
            && given
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b));
        if sane {
            return given.clone();
        }
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        now ^ (u64::from(std::process::id()) << 32)
    });
    // A counter mixed with the seed (splitmix64): distinct per request, scattered.
    let count = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut x = seed.wrapping_add(count.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((x >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Its bytes in one allocation that its clones share (the request, the response, the
    // app's view and the log each hold one): a `Bytes` of a `Vec` would allocate again when
    // first cloned.
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
        .expect("hex digits are a header value")
}

/// Routes a request to its app and hands it over (through the CDN cache when the app uses
/// it). An `async move` block, not an `async fn`: see `handle`.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments"
)]
fn route<'a>(
    mut request: Box<Request<Body>>,
    routes: &'a Routes,
    config: &'a ServeConfig,
    scheme: http::uri::Scheme,
    local: Option<SocketAddr>,
    arrived: Instant,
    outcome: &'a mut Outcome,
) -> impl Future<Output = Result<Response<Body>, GatewayError>> + 'a {
    async move {
        *request.uri_mut() = absolute_uri(request.uri(), request.headers(), scheme, local)?;
        let table = routes.current();
        let host = request.uri().authority().map_or("", |a| a.as_str());
        let app = table
            .lookup(host, request.uri().path())
            .ok_or_else(|| GatewayError::new(Kind::NoRoute, "No app is deployed for this host."))?;
        outcome.app = Some(app.name.clone());
        // What the handler is told besides the request's headers (a cache hit never goes
        // there): the app's view of the request id, and the trace its fetches forward (this
        // trace, the handler's span).
        let stamp = Stamp {
            request_id: Some(outcome.request_id.clone()),
            traceparent: outcome.trace.as_ref().map(|trace| trace.traceparent()),
        };
        let deployment = match &app.target {
            Target::Serving(deployment) => deployment,
            Target::Broken(reason) => return Err(load_failed(config, &app.name, reason)),
        };
        let limits = deployment.limits();
        // The app's time runs from the request's arrival.
        let deadline = arrived + limits.timeout;
        let overflow = admit(&mut request, limits.max_body_bytes, deadline).await?;
        if outcome.trace.is_some() {
            outcome.dispatched = Some(std::time::SystemTime::now());
        }
        let cache = config
            .cache
            .as_ref()
            .filter(|_| deployment.bundle().manifest.cache.enabled);
        let result = match cache {
            // A fresh hit is answered here: no isolate is touched.
            Some(cache) if !cache.passes(&app.name, &request) => {
                let deployment = deployment.clone();
                // The timing of the isolate's answer, if the cache asks for one.
                let measured: Arc<std::sync::Mutex<Option<outpost_pool::Timing>>> = Arc::default();
                let timing = measured.clone();
                let dispatch = move |request: Box<Request<Body>>| {
                    let stamp = stamp.clone();
                    let deployment = deployment.clone();
                    let timing = timing.clone();
                    async move {
                        let _busy = crate::here::Counted::in_handler();
                        let answer = deployment.dispatch(request, stamp, deadline).await?;
                        *timing.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer.timing);
                        Ok::<_, DispatchError>(answer.response)
                    }
                };
                let result = cache.serve(&app.name, request, dispatch).await;
                outcome.timing = measured.lock().unwrap_or_else(|e| e.into_inner()).take();
                result
            }
            // Straight to the handler: no cache, or one that only labels the answer (a dynamic
            // app's URL, on its pass list while nothing is stored).
            _ => {
                let passed = cache.map(|cache| {
                    let (method, uri) = (request.method().clone(), request.uri().clone());
                    (cache, method, uri)
                });
                let _busy = crate::here::Counted::in_handler();
                deployment
                    .dispatch(request, stamp, deadline)
                    .await
                    .map(|answer| {
                        let mut response = answer.response;
                        outcome.timing = Some(answer.timing);
                        outcome.cache = Some(match &passed {
                            Some((cache, method, uri)) => {
                                cache.passed(&app.name, method, uri, &mut response)
                            }
                            None => CacheStatus::forwarded("bypass").add_to(response.headers_mut()),
                        });
                        response
                    })
            }
        };
        if overflow.is_some_and(|overflow| overflow.load(Ordering::Acquire)) {
            // The app failed (or answered) while its body was cut off at the limit.
            return Err(too_large(limits.max_body_bytes));
        }
        match result {
            Ok(mut response) => {
                if let Some(name) = &config.pop_name {
                    let headers = response.headers_mut();
                    headers.insert(X_OUTPOST_POP.clone(), name.clone());
                    if let Ok(version) = http::HeaderValue::from_str(&deployment.bundle().label()) {
                        headers.insert(X_OUTPOST_VERSION.clone(), version);
                    }
                }
                Ok(response)
            }
            Err(DispatchError::LoadFailed(reason)) => Err(load_failed(config, &app.name, &reason)),
            Err(e) => Err(e.into()),
        }
    }
}

/// 503 for an app that cannot be loaded, with as much detail as the node shows clients.
fn load_failed(config: &ServeConfig, app: &str, reason: &str) -> GatewayError {
    tracing::warn!(app, "the app cannot be loaded: {reason}");
    let message = match config.error_detail {
        ErrorDetail::Full => format!("The app cannot be loaded: {reason}"),
        ErrorDetail::Short => "The app cannot be loaded; the node's log says why.".to_string(),
    };
    GatewayError::new(Kind::NoApp, message)
}

/// Request bodies of at most this many bytes, with a Content-Length, are received whole
/// before the request goes to the isolate, which then gets them in one piece (no stream, no
/// resource, no op); larger ones and chunked ones stream.
const WHOLE_BODY_MAX: u64 = 64 * 1024;

/// Checks a request against the app's body limit. A body that turns out larger than it
/// claims (or chunked past the limit) ends with an error where the limit is passed, and the
/// returned flag is set, so the client gets 413 whatever the app did. A small body with a
/// Content-Length is received here, by `deadline`, and put back whole.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments"
)]
fn admit(
    request: &mut Request<Body>,
    max_body_bytes: u64,
    deadline: Instant,
) -> impl Future<Output = Result<Option<Arc<AtomicBool>>, GatewayError>> + '_ {
    async move {
        let mut declared = None;
        if let Some(length) = request.headers().get(header::CONTENT_LENGTH) {
            let length: u64 = length
                .to_str()
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| GatewayError::new(Kind::BadRequest, "Invalid Content-Length."))?;
            if length > max_body_bytes {
                return Err(too_large(max_body_bytes));
            }
            declared = Some(length);
        }
        let body = std::mem::replace(request.body_mut(), outpost_pool::empty_body());
        if let Some(length) = declared.filter(|length| *length > 0 && *length <= WHOLE_BODY_MAX) {
            let bytes = receive_whole(body, length, deadline).await?;
            *request.body_mut() = http_body_util::Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync();
            return Ok(None);
        }
        if hyper::body::Body::is_end_stream(&body) {
            // Nothing to limit (a GET): no wrapper, no flag; the body stays the empty one.
            return Ok(None);
        }
        let limit = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = overflow.clone();
        *request.body_mut() = Limited::new(body, limit)
            .map_err(move |e| -> outpost_pool::BoxError {
                let e: outpost_pool::BoxError = e;
                if e.is::<http_body_util::LengthLimitError>() {
                    flag.store(true, Ordering::Release);
                    "the request body is larger than the app accepts".into()
                } else {
                    e
                }
            })
            .boxed_unsync();
        Ok(Some(overflow))
    }
}

/// Receives a body of `length` declared bytes by `deadline`. Bounded by the declared length
/// whatever the transport checks (HTTP/3's body is a plain stream of DATA frames): more is a
/// 400, not more memory.
async fn receive_whole(
    body: Body,
    length: u64,
    deadline: Instant,
) -> Result<bytes::Bytes, GatewayError> {
    let bad = |what: String| GatewayError::new(Kind::BadRequest, what);
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    // A body in one frame (one that came with its head) is kept as it came; one in pieces is
    // gathered into one buffer.
    let mut first: Option<bytes::Bytes> = None;
    let mut whole = bytes::BytesMut::new();
    let mut body = std::pin::pin!(body);
    loop {
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(bad(format!("The request body could not be read: {e}")));
            }
            Err(_elapsed) => {
                return Err(GatewayError::new(
                    Kind::Timeout,
                    "The request body did not arrive within the app's timeout.",
                ))
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let have = first.as_ref().map_or(whole.len(), bytes::Bytes::len);
        if have + data.len() > length {
            return Err(bad(format!(
                "The request body is longer than its Content-Length ({length})."
            )));
        }
        if first.is_none() && whole.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(first) = first.take() {
            whole.reserve(length);
            whole.extend_from_slice(&first);
        }
        whole.extend_from_slice(&data);
    }
    let whole = first.unwrap_or_else(|| whole.freeze());
    if whole.len() < length {
        return Err(bad(format!(
            "The request body ended before its Content-Length ({length})."
        )));
    }
    Ok(whole)
}

fn too_large(max_body_bytes: u64) -> GatewayError {
    GatewayError::new(
        Kind::BodyTooLarge,
        format!("The request body is larger than {max_body_bytes} bytes."),
    )
}

/// `scheme://host/path?query`: the authority of an HTTP/2 request, else its Host header,
/// else the listener's address; the scheme is the listener's (`https` over TLS).
fn absolute_uri(
    uri: &Uri,
    headers: &http::HeaderMap,
    scheme: http::uri::Scheme,
    local: Option<SocketAddr>,
) -> Result<Uri, GatewayError> {
    let bad = |what: &str| GatewayError::new(Kind::BadRequest, what.to_string());
    let authority = match uri.authority() {
        Some(authority) => authority.clone(),
        None => match headers.get(header::HOST) {
            Some(host) => host_authority(host).ok_or_else(|| bad("Invalid Host header."))?,
            None => local
                .map(|a| a.to_string())
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad("Missing Host header."))?,
        },
    };
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut absolute = http::uri::Parts::default();
    absolute.scheme = Some(scheme);
    absolute.authority = Some(authority);
    absolute.path_and_query = Some(path);
    Uri::from_parts(absolute).map_err(|_| bad("Invalid request target."))
}

/// The authority a `Host` header names, or `None` if it names none. Parsing checks the host
/// and copies it into a new buffer; the connections of a worker thread mostly name the same
/// host, so the last authority parsed on this thread is kept (it owns its bytes: nothing
/// holds a connection's read buffer) and a request naming the same bytes again gets a clone
/// (a reference count).
fn host_authority(host: &http::HeaderValue) -> Option<http::uri::Authority> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<http::uri::Authority>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        // An authority parsed from a whole header value holds exactly its bytes.
        if let Some(authority) = last.as_ref() {
            if authority.as_str().as_bytes() == host.as_bytes() {
                return Some(authority.clone());
            }
        }
        let authority = host.to_str().ok()?.parse::<http::uri::Authority>().ok()?;
        *last = Some(authority.clone());
        Some(authority)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_parsed_alike_whether_or_not_it_was_the_last_one() {
        let host = |value: &'static str| http::HeaderValue::from_static(value);
        std::thread::spawn(move || {
            let values = [
                "a.test",
                "a.test",
                "a.test:8080",
                "A.Test:8080",
                "A.Test:8080",
                "b.test",
                "[::1]:80",
                "[::1]:80",
                "a.test",
            ];
            for _ in 0..2 {
                for value in values {
                    // The same authority (text and port) as a fresh parse, kept or not.
                    let fresh: http::uri::Authority = value.parse().unwrap();
                    let authority = host_authority(&host(value)).expect(value);
                    assert_eq!(authority.as_str(), value);
                    assert_eq!(authority.host(), fresh.host());
                    assert_eq!(authority.port_u16(), fresh.port_u16());
                }
                assert!(host_authority(&host("a b")).is_none());
                assert!(host_authority(&host("a.test/x")).is_none());
                // A bad one in between does not change what a good one parses to.
                assert_eq!(host_authority(&host("a.test")).unwrap().as_str(), "a.test");
                let with_port = host_authority(&host("a.test:81")).unwrap();
                assert_eq!(
                    (with_port.as_str(), with_port.port_u16()),
                    ("a.test:81", Some(81))
                );
            }
        })
        .join()
        .unwrap();
    }

    fn frames(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, outpost_pool::BoxError>> = parts
            .iter()
            .map(|part| {
                Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                    part.as_bytes(),
                )))
            })
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn a_whole_body_is_exactly_its_declared_length() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let whole = receive_whole(frames(&["abc", "def"]), 6, deadline).await;
        assert_eq!(whole.unwrap(), "abcdef");
        let longer = receive_whole(frames(&["abc", "def"]), 4, deadline).await;
        assert!(longer
            .unwrap_err()
            .message
            .contains("longer than its Content-Length"));
        // In one frame (as a body that came with its head): taken as it came.
        let one = receive_whole(frames(&["abcdef"]), 6, deadline).await;
        assert_eq!(one.unwrap(), "abcdef");
        let one_then_more = receive_whole(frames(&["abcdef", "g"]), 6, deadline).await;
        assert!(one_then_more
            .unwrap_err()
            .message
            .contains("longer than its Content-Length"));
        let shorter = receive_whole(frames(&["abc"]), 8, deadline).await;
        assert!(shorter
            .unwrap_err()
            .message
            .contains("ended before its Content-Length"));
    }

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn absolute(
        parts: &http::request::Parts,
        scheme: http::uri::Scheme,
        local: Option<SocketAddr>,
    ) -> Result<Uri, GatewayError> {
        absolute_uri(&parts.uri, &parts.headers, scheme, local)
    }

    #[test]
    fn builds_absolute_urls() {
        let local = Some("127.0.0.1:8787".parse().unwrap());
        let http = || http::uri::Scheme::HTTP;
        let uri = absolute(&parts("/a?b=1", Some("example.com")), http(), local).unwrap();
        assert_eq!(uri.to_string(), "http://example.com/a?b=1");
        let uri = absolute(&parts("/", None), http(), local).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:8787/");
        let uri = absolute(&parts("http://h2.example/x", None), http(), local).unwrap();
        assert_eq!(uri.to_string(), "http://h2.example/x");
        let uri = absolute(
            &parts("/s", Some("a.test")),
            http::uri::Scheme::HTTPS,
            local,
        );
        assert_eq!(uri.unwrap().to_string(), "https://a.test/s");
        let err = absolute(&parts("/", Some("bad host")), http(), local).unwrap_err();
        assert_eq!(err.kind, Kind::BadRequest);
    }
}
