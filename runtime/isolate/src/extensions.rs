//! The extensions every isolate runs, in the one order the startup snapshot was made with.
//!
//! This file is compiled twice: by `build.rs`, which makes the startup snapshot from
//! [`extensions`], and by the library, which creates each runtime from that snapshot and
//! later gives it a tenant's state. It therefore depends on nothing but deno crates, the
//! standard library, `http` (the header map a response leaves with) and its child module
//! `aes_gcm` (RustCrypto's `aes` and `ghash`).

#[path = "aes_gcm.rs"]
mod aes_gcm;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deno_core::convert::ByteString;
use deno_core::{op2, Extension, JsBuffer, OpState, Resource, ResourceId};
use deno_error::JsErrorBox;
use deno_permissions::PermissionsContainer;

/// What a finished request hands back to the host.
pub enum Outcome {
    /// The handler produced a Response.
    Response {
        status: u16,
        headers: http::HeaderMap,
        body: OutBody,
    },
    /// The handler failed; `kind` says how, `message` is the exception with its stack, or
    /// the description of what was returned instead of a Response.
    Failed { kind: FailureKind, message: String },
}

/// A response body as the handler left it.
pub enum OutBody {
    Empty,
    Bytes(Vec<u8>),
    /// A deno_web `ReadableStreamResource` the host reads chunk by chunk.
    Stream(Rc<dyn Resource>),
}

/// How a request failed inside the isolate. The JS side names the kinds it reports with
/// [`FailureKind::from_js`]'s numbers, which `js/20_dispatch.js` takes from
/// [`FAILURE_KINDS`] (handed to it at start), so they are written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler threw or its promise rejected.
    Exception,
    /// The handler returned something other than a Response.
    NotAResponse,
    /// The request's deadline passed before the handler responded.
    Timeout,
    /// The isolate broke a resource limit (CPU, memory) and was stopped.
    LimitExceeded,
}

/// The failure kinds JS reports, by the number it passes to `op_outpost_fail`.
pub const FAILURE_KINDS: [(&str, FailureKind); 2] = [
    ("exception", FailureKind::Exception),
    ("notAResponse", FailureKind::NotAResponse),
];

impl FailureKind {
    /// The kind JS reported as `n` (an index into [`FAILURE_KINDS`]).
    pub fn from_js(n: u32) -> FailureKind {
        FAILURE_KINDS
            .get(n as usize)
            .map_or(FailureKind::Exception, |(_, kind)| *kind)
    }
}

/// Console levels, by the number JS passes to `op_outpost_log` (an index into this list,
/// handed to `js/` at start).
pub const LOG_LEVELS: [&str; 4] = ["debug", "log", "warn", "error"];

pub use crate::timing::{FetchTiming, Timing};

/// Fetches recorded per traced request, at most.
const MAX_TRACED_FETCHES: usize = 128;

/// Where the response to one in-flight request goes.
pub type Responder = Box<dyn FnOnce(Outcome, Timing)>;

struct Entry {
    responder: Responder,
    /// When the response must have started.
    deadline: Instant,
    /// `InFlight::cpu_per_request` when the request arrived.
    cpu_mark: u64,
    /// Nanoseconds of turns charged to this request alone (its dispatch).
    own_cpu: u64,
    /// [`outpost_clock::precise_nanos`] when it was dispatched.
    arrived: u64,
    cold: bool,
    fetches: Vec<FetchTiming>,
}

impl Entry {
    fn charged(&self, cpu_per_request: u64) -> u64 {
        cpu_per_request - self.cpu_mark + self.own_cpu
    }
}

/// Who a turn's CPU is charged to.
#[derive(Clone, Copy)]
enum Sharing {
    /// One request: its dispatch (the handler's synchronous part).
    Alone(u32),
    /// Equal shares of the requests in flight when the turn began (a poll of the event loop
    /// runs whichever promise jobs and timers are due).
    Shared(u64),
}

/// Requests the isolate is handling, by the id the host gave them, and the CPU they were
/// charged.
///
/// A request's dispatch is charged to it alone; each other turn of JavaScript is charged in
/// equal shares to the requests in flight when it began, summed in `cpu_per_request`, so a
/// request's share is the growth of the sum since it arrived.
#[derive(Default)]
pub struct InFlight {
    next_id: u32,
    entries: HashMap<u32, Entry, BuildHasherDefault<IdHasher>>,
    /// Nanoseconds charged to each request in flight, summed over every shared turn so far.
    cpu_per_request: u64,
    /// The turn running now: when it began ([`outpost_clock::precise_nanos`]) and who pays
    /// for it.
    turn: Option<(u64, Sharing)>,
}

/// Hashes the ids of requests in flight: numbers this process hands out one after the other
/// (no client chooses them), spread over the table by one multiplication (Fibonacci
/// hashing) instead of SipHash's rounds.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8 | u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl InFlight {
    /// Registers a responder and returns the id the JS side answers with.
    pub fn insert(&mut self, responder: Responder, deadline: Instant, cold: bool, now: u64) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        let entry = Entry {
            responder,
            deadline,
            cpu_mark: self.cpu_per_request,
            own_cpu: 0,
            arrived: now,
            cold,
            fetches: Vec::new(),
        };
        self.entries.insert(self.next_id, entry);
        self.next_id
    }

    /// Removes a request and returns its responder with what it was charged so far (its part
    /// of the turn running now included).
    pub fn remove(&mut self, id: u32) -> Option<(Responder, Timing)> {
        let entry = self.entries.remove(&id)?;
        let now = outpost_clock::precise_nanos();
        let since = |start: u64| now.saturating_sub(start);
        let running = match self.turn {
            Some((start, Sharing::Alone(alone))) if alone == id => since(start),
            Some((start, Sharing::Shared(shares))) => since(start) / shares.max(1),
            _ => 0,
        };
        let timing = Timing {
            cpu: Duration::from_nanos(entry.charged(self.cpu_per_request) + running),
            wall: Duration::from_nanos(since(entry.arrived)),
            cold: entry.cold,
            fetches: entry.fetches,
        };
        Some((entry.responder, timing))
    }

    /// Removes and returns every request whose deadline is not after `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(Responder, Timing)> {
        let expired: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.remove(id))
            .collect()
    }

    /// Removes and returns every request in flight.
    pub fn take_all(&mut self) -> Vec<(Responder, Timing)> {
        let ids: Vec<u32> = self.entries.keys().copied().collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records the start of an outbound fetch of request `id`; returns its index.
    fn fetch_began(&mut self, id: u32, method: String, url: String) -> Option<u32> {
        let entry = self.entries.get_mut(&id)?;
        if entry.fetches.len() >= MAX_TRACED_FETCHES {
            return None;
        }
        entry.fetches.push(FetchTiming {
            method,
            url,
            start: std::time::SystemTime::now(),
            end: None,
            status: 0,
        });
        Some(entry.fetches.len() as u32 - 1)
    }

    /// Records the end of fetch `index` of request `id`.
    fn fetch_ended(&mut self, id: u32, index: u32, status: u16) {
        if let Some(fetch) = self
            .entries
            .get_mut(&id)
            .and_then(|e| e.fetches.get_mut(index as usize))
        {
            fetch.end = Some(std::time::SystemTime::now());
            fetch.status = status;
        }
    }

    /// Starts a turn shared by the requests in flight: returns the CPU it may use before
    /// the most charged of them passes `limit` (all of `limit` when none is in flight).
    pub fn begin_turn(&mut self, limit: Duration, now: u64) -> Duration {
        let shares = self.entries.len() as u64;
        self.turn = Some((now, Sharing::Shared(shares)));
        let most = self
            .entries
            .values()
            .map(|e| e.charged(self.cpu_per_request))
            .max();
        match most {
            Some(charged) => {
                let left = (limit.as_nanos() as u64).saturating_sub(charged);
                Duration::from_nanos(left.saturating_mul(shares))
            }
            None => limit,
        }
    }

    /// Starts the dispatch of request `id`, charged to it alone: returns what it has left of
    /// `limit`.
    pub fn begin_dispatch(&mut self, id: u32, limit: Duration, now: u64) -> Duration {
        self.turn = Some((now, Sharing::Alone(id)));
        let charged = self
            .entries
            .get(&id)
            .map_or(0, |e| e.charged(self.cpu_per_request));
        limit.saturating_sub(Duration::from_nanos(charged))
    }

    /// Ends the turn begun last, charging `cpu` to whoever it was for.
    pub fn end_turn(&mut self, cpu: Duration) {
        let cpu = cpu.as_nanos() as u64;
        match self.turn.take() {
            Some((_, Sharing::Alone(id))) => {
                if let Some(entry) = self.entries.get_mut(&id) {
                    entry.own_cpu += cpu;
                }
            }
            Some((_, Sharing::Shared(shares))) => {
                if let Some(share) = cpu.checked_div(shares) {
                    self.cpu_per_request += share;
                }
            }
            None => {}
        }
    }
}

/// Console output of the tenant: level (an index into [`LOG_LEVELS`]), the id of the
/// request the code ran for (empty outside a request) and the text.
pub type ConsoleSink = Rc<dyn Fn(u32, &str, &str)>;

/// Everything an isolate holds for one tenant, put into its `OpState`.
pub struct TenantState {
    pub permissions: PermissionsContainer,
    pub console: ConsoleSink,
    pub in_flight: Rc<RefCell<InFlight>>,
    /// Told how many `ctx.waitUntil` promises are pending whenever that changes.
    pub wait_until: WaitUntilSink,
    /// The app's scope of the node's cache, for the Cache API (none: `match` finds
    /// nothing, `put` stores nothing).
    pub cache: Option<Rc<dyn CacheHost>>,
}

impl TenantState {
    /// Puts the tenant's state where the ops find it.
    pub fn install(self, state: &mut OpState) {
        state.put::<PermissionsContainer>(self.permissions);
        state.put::<ConsoleSink>(self.console);
        state.put::<Rc<RefCell<InFlight>>>(self.in_flight);
        state.put::<WaitUntilSink>(self.wait_until);
        if let Some(cache) = self.cache {
            state.put::<Rc<dyn CacheHost>>(cache);
        }
    }
}

/// Receives the number of pending `ctx.waitUntil` promises.
pub type WaitUntilSink = Rc<dyn Fn(u32)>;

/// The extensions, in snapshot order. Passing a different list at run time than at snapshot
/// time is refused (or worse) by deno_core, so this is the only place the list is written.
/// A runtime is made from them before it is given to a tenant ([`TenantState::install`]).
pub fn extensions() -> Vec<Extension> {
    vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::init(
            Arc::new(deno_web::BlobStore::default()),
            None,
            false,
            Default::default(),
        ),
        deno_crypto::deno_crypto::init(None),
        deno_fetch::deno_fetch::init(deno_fetch::Options {
            user_agent: concat!("Outpost/", env!("CARGO_PKG_VERSION")).to_string(),
            ..Default::default()
        }),
        deno_net_stub::init(),
        outpost::init(),
    ]
}

// deno_fetch's 22_http_client.js loads `ext:deno_net/02_tls.js` for client certificates
// (`Deno.createHttpClient`), which tenants cannot reach; deno_net itself is not in the stack.
deno_core::extension!(
    deno_net_stub,
    lazy_loaded_js = ["ext:deno_net/02_tls.js" = {
        source = "(function () { return { loadTlsKeyPair() { throw new TypeError('TLS client certificates are not supported'); } }; })()"
    }],
);

deno_core::extension!(
    outpost,
    deps = [deno_webidl, deno_web, deno_crypto, deno_fetch],
    ops = [
        op_outpost_log,
        op_outpost_wait_until,
        op_outpost_respond_text,
        op_outpost_respond_fast_text,
        op_outpost_respond_bytes,
        op_outpost_respond_stream,
        op_outpost_fail,
        op_outpost_fetch_began,
        op_outpost_fetch_ended,
        op_outpost_cache_match,
        op_outpost_cache_put,
        op_outpost_cache_delete,
        op_outpost_caches_delete,
        op_outpost_cache_keys,
        aes_gcm::op_outpost_aes_gcm_seal,
        aes_gcm::op_outpost_aes_gcm_open,
    ],
    esm_entry_point = "ext:outpost/99_main.js",
    esm = [
        dir "../../js",
        "00_infra.js",
        "05_request_context.js",
        "08_errors.js",
        "10_globals.js",
        "12_webcrypto.js",
        "20_dispatch.js",
        "30_cache.js",
        "99_main.js",
    ],

);

#[op2(fast)]
fn op_outpost_log(
    state: &mut OpState,
    #[smi] level: u32,
    #[string] text: &str,
    #[string] request_id: &str,
) {
    if let Some(sink) = state.try_borrow::<ConsoleSink>() {
        sink(level, request_id, text);
    }
}

/// An outbound fetch of a traced request began: returns its index (-1: not recorded).
#[op2(fast)]
fn op_outpost_fetch_began(
    state: &mut OpState,
    #[smi] id: u32,
    #[string] method: &str,
    #[string] url: &str,
) -> i32 {
    state
        .try_borrow::<Rc<RefCell<InFlight>>>()
        .and_then(|in_flight| {
            in_flight
                .borrow_mut()
                .fetch_began(id, method.to_string(), url.to_string())
        })
        .map_or(-1, |index| index as i32)
}

/// An outbound fetch of a traced request got its response head (`status`) or failed (0).
#[op2(fast)]
fn op_outpost_fetch_ended(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] index: u32,
    #[smi] status: u32,
) {
    if let Some(in_flight) = state.try_borrow::<Rc<RefCell<InFlight>>>() {
        in_flight
            .borrow_mut()
            .fetch_ended(id, index, u16::try_from(status).unwrap_or(0));
    }
}

/// `ctx.waitUntil` promises pending in the isolate, as JS counts them.
#[op2(fast)]
fn op_outpost_wait_until(state: &mut OpState, #[smi] pending: u32) {
    if let Some(sink) = state.try_borrow::<WaitUntilSink>() {
        sink(pending);
    }
}

fn respond(state: &mut OpState, id: u32, outcome: Outcome) {
    let removed = state
        .try_borrow::<Rc<RefCell<InFlight>>>()
        .and_then(|in_flight| in_flight.borrow_mut().remove(id));
    if let Some((responder, timing)) = removed {
        responder(outcome, timing);
    }
}

/// Header pairs from JS as a map; pairs that are not a valid header are left out.
pub(crate) fn header_map(pairs: HeaderPairs) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(pairs.len() + GATEWAY_HEADERS);
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&name),
            http::HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// Headers the node adds to a response on its way out (`Cache-Status`, `x-request-id`,
/// maybe `Server-Timing`): room is made for them at once.
const GATEWAY_HEADERS: usize = 3;

fn status_of(status: u32) -> u16 {
    u16::try_from(status).unwrap_or(500)
}

fn respond_static(
    state: &mut OpState,
    id: u32,
    status: u32,
    headers: http::HeaderMap,
    body: Vec<u8>,
) {
    let body = if body.is_empty() {
        OutBody::Empty
    } else {
        OutBody::Bytes(body)
    };
    let status = status_of(status);
    respond(
        state,
        id,
        Outcome::Response {
            status,
            headers,
            body,
        },
    );
}

#[op2]
fn op_outpost_respond_text(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[string] body: String,
) {
    respond_static(state, id, status, header_map(headers), body.into_bytes());
}

/// deno_fetch's "header kinds" of a Response made by `new Response(text)` or
/// `Response.json(...)` whose headers were never touched (`SERVE_FAST_HEADER_*` of its
/// 23_response.js): its only header is a content type, the default one or its own.
const FAST_HEADER_DEFAULT_TEXT: u32 = 1;
const FAST_HEADER_CONTENT_TYPE: u32 = 2;

/// `Content-Type` of `new Response("text")`.
static DEFAULT_TEXT: http::HeaderValue = http::HeaderValue::from_static("text/plain;charset=UTF-8");

/// A text response whose only header is described by `kind` (the most common responses):
/// no header list crosses from JS. `content_type` is read only for
/// [`FAST_HEADER_CONTENT_TYPE`] (the caller passes `""` otherwise): its bytes are borrowed,
/// and a body of up to 8 KiB is read through a buffer on the stack, so the body's own
/// buffer is the one allocation. A fast-call op: the dispatch JS calls the fast function
/// once an isolate has served `FAST_OPS_AFTER` requests (js/20_dispatch.js; the snapshot
/// holds only the regular one, V8 cannot serialize fast-call overloads).
#[op2(fast)]
fn op_outpost_respond_fast_text(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[smi] kind: u32,
    #[string(onebyte)] content_type: Cow<[u8]>,
    #[string] body: Cow<str>,
) {
    let mut headers = http::HeaderMap::with_capacity(1 + GATEWAY_HEADERS);
    let value = match kind {
        FAST_HEADER_DEFAULT_TEXT => Some(DEFAULT_TEXT.clone()),
        FAST_HEADER_CONTENT_TYPE => http::HeaderValue::from_bytes(&content_type).ok(),
        _ => None,
    };
    if let Some(value) = value {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    respond_static(state, id, status, headers, body.into_owned().into_bytes());
}

#[op2]
fn op_outpost_respond_bytes(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[buffer] body: Option<JsBuffer>,
) {
    let body = body.map(|bytes| bytes.to_vec()).unwrap_or_default();
    respond_static(state, id, status, header_map(headers), body);
}

#[op2]
fn op_outpost_respond_stream(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u32,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[smi] rid: ResourceId,
) -> Result<(), JsErrorBox> {
    let resource = state
        .resource_table
        .take_any(rid)
        .map_err(|e| JsErrorBox::type_error(format!("response body stream: {e}")))?;
    let body = OutBody::Stream(resource);
    respond(
        state,
        id,
        Outcome::Response {
            status: status_of(status),
            headers: header_map(headers),
            body,
        },
    );
    Ok(())
}

#[op2(fast)]
fn op_outpost_fail(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] kind: u32,
    #[string] message: String,
) {
    let kind = FailureKind::from_js(kind);
    respond(state, id, Outcome::Failed { kind, message });
}

/// A boxed future of the isolate's thread.
pub type LocalFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

/// Header pairs as they cross the boundary.
pub type HeaderPairs = Vec<(ByteString, ByteString)>;

/// A response found by the Cache API's `match`, for JS to build a `Response` of.
#[derive(deno_core::ToV8)]
pub struct CacheMatch {
    pub status: u16,
    pub headers: HeaderPairs,
    /// The body's resource (read with `readableStreamForRid`); none for a null body.
    pub rid: Option<ResourceId>,
}

/// What `cache.put` hands over: the key request and the response.
pub struct CachePut {
    pub name: Option<String>,
    pub url: String,
    pub request_headers: HeaderPairs,
    pub status: u16,
    pub headers: HeaderPairs,
    /// A static body.
    pub bytes: Option<Vec<u8>>,
    /// A stream body's resource (`resourceForReadableStream`).
    pub rid: Option<ResourceId>,
}

/// The host side of the Cache API (`js/30_cache.js`): the app's scope of the node's cache.
pub trait CacheHost {
    fn lookup(
        &self,
        state: Rc<RefCell<OpState>>,
        name: Option<String>,
        url: String,
        headers: HeaderPairs,
    ) -> LocalFuture<Result<Option<CacheMatch>, JsErrorBox>>;
    fn put(
        &self,
        state: Rc<RefCell<OpState>>,
        put: CachePut,
    ) -> LocalFuture<Result<(), JsErrorBox>>;
    fn delete(&self, name: Option<String>, url: String) -> Result<bool, JsErrorBox>;
    /// `caches.delete(name)`: whether the named cache held entries (now removed).
    fn delete_cache(&self, name: String) -> bool;
    /// `cache.keys()`: the URLs a cache holds responses for.
    fn keys(&self, name: Option<String>) -> Vec<String>;
}

fn cache_host(state: &Rc<RefCell<OpState>>) -> Option<Rc<dyn CacheHost>> {
    state.borrow().try_borrow::<Rc<dyn CacheHost>>().cloned()
}

/// A cache's name as JS passes it: `named` is false for `caches.default`.
fn cache_name(named: bool, name: String) -> Option<String> {
    named.then_some(name)
}

#[op2]
async fn op_outpost_cache_match(
    state: Rc<RefCell<OpState>>,
    named: bool,
    #[string] name: String,
    #[string] url: String,
    #[scoped] headers: HeaderPairs,
) -> Result<Option<CacheMatch>, JsErrorBox> {
    let name = cache_name(named, name);
    match cache_host(&state) {
        Some(host) => host.lookup(state, name, url, headers).await,
        None => Ok(None),
    }
}

#[op2]
#[allow(clippy::too_many_arguments)]
async fn op_outpost_cache_put(
    state: Rc<RefCell<OpState>>,
    named: bool,
    #[string] name: String,
    #[string] url: String,
    #[scoped] request_headers: HeaderPairs,
    #[smi] status: u32,
    #[scoped] headers: HeaderPairs,
    #[buffer] bytes: Option<JsBuffer>,
    #[smi] rid: Option<ResourceId>,
) -> Result<(), JsErrorBox> {
    let put = CachePut {
        name: cache_name(named, name),
        url,
        request_headers,
        status: u16::try_from(status).unwrap_or(500),
        headers,
        bytes: bytes.map(|b| b.to_vec()),
        rid,
    };
    match cache_host(&state) {
        Some(host) => host.put(state, put).await,
        None => {
            if let Some(rid) = put.rid {
                if let Ok(resource) = state.borrow_mut().resource_table.take_any(rid) {
                    resource.close();
                }
            }
            Ok(())
        }
    }
}

#[op2]
#[serde]
fn op_outpost_cache_keys(
    state: Rc<RefCell<OpState>>,
    named: bool,
    #[string] name: String,
) -> Vec<String> {
    cache_host(&state).map_or_else(Vec::new, |host| host.keys(cache_name(named, name)))
}

#[op2(fast)]
fn op_outpost_caches_delete(state: Rc<RefCell<OpState>>, #[string] name: String) -> bool {
    cache_host(&state).is_some_and(|host| host.delete_cache(name))
}

#[op2]
async fn op_outpost_cache_delete(
    state: Rc<RefCell<OpState>>,
    named: bool,
    #[string] name: String,
    #[string] url: String,
) -> Result<bool, JsErrorBox> {
    match cache_host(&state) {
        Some(host) => host.delete(cache_name(named, name), url),
        None => Ok(false),
    }
}
