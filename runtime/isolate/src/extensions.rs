//! The extensions every isolate runs, in the one order the startup snapshot was made with.
//!
//! This file is compiled twice: by `build.rs`, which makes the startup snapshot from
//! [`extensions`] without a tenant, and by the library, which creates each
//! runtime from that snapshot with a tenant's state. It therefore depends on nothing but
//! deno crates and the standard library.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use deno_core::convert::ByteString;
use deno_core::{op2, Extension, JsBuffer, OpState, Resource, ResourceId};
use deno_error::JsErrorBox;
use deno_permissions::{
    Permissions, PermissionsContainer, PermissionsOptions, RuntimePermissionDescriptorParser,
};

/// What a finished request hands back to the host.
pub enum Outcome {
    /// The handler produced a Response.
    Response {
        status: u16,
        headers: Vec<(ByteString, ByteString)>,
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

/// How a request failed inside the isolate (the numbers are the ones `js/20_dispatch.js`
/// passes to `op_outpost_fail`).
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

/// Where the response to one in-flight request goes.
pub type Responder = Box<dyn FnOnce(Outcome)>;

/// Requests the isolate is handling, by the id the host gave them.
#[derive(Default)]
pub struct InFlight {
    next_id: u32,
    /// Each request's responder and the deadline for its response.
    responders: HashMap<u32, (Responder, Instant)>,
}

impl InFlight {
    /// Registers a responder and returns the id the JS side answers with.
    pub fn insert(&mut self, responder: Responder, deadline: Instant) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.responders.insert(self.next_id, (responder, deadline));
        self.next_id
    }

    /// Removes a request without answering it (its responder is dropped).
    pub fn remove(&mut self, id: u32) -> Option<Responder> {
        self.responders.remove(&id).map(|(responder, _)| responder)
    }

    /// Removes and returns the responders of every request whose deadline is not after `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Responder> {
        let expired: Vec<u32> = self
            .responders
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.remove(id))
            .collect()
    }

    /// Removes and returns the responders of every request in flight.
    pub fn take_all(&mut self) -> Vec<Responder> {
        self.responders
            .drain()
            .map(|(_, (responder, _))| responder)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.responders.is_empty()
    }
}

/// Console output of the tenant: level (0 debug, 1 info/log, 2 warn, 3 error) and text.
pub type ConsoleSink = Rc<dyn Fn(u32, &str)>;

/// Everything an isolate holds for one tenant, put into its `OpState`.
pub struct TenantState {
    pub permissions: PermissionsContainer,
    pub console: ConsoleSink,
    pub in_flight: Rc<RefCell<InFlight>>,
}

/// Network access for `fetch` (any host), and nothing else: no file, environment, process
/// or FFI access. `fetch("file:...")` is refused because reads are not allowed.
pub fn tenant_permissions() -> Result<PermissionsContainer, String> {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(
        sys_traits::impls::RealSys,
    ));
    let options = PermissionsOptions {
        allow_net: Some(vec![]),
        prompt: false,
        ..Default::default()
    };
    let permissions =
        Permissions::from_options(parser.as_ref(), &options).map_err(|e| e.to_string())?;
    Ok(PermissionsContainer::new(parser, permissions))
}

/// The extensions, in snapshot order. Passing a different list at run time than at snapshot
/// time is refused (or worse) by deno_core, so this is the only place the list is written.
pub fn extensions(tenant: Option<TenantState>) -> Vec<Extension> {
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
        outpost::init(tenant),
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
        op_outpost_respond_text,
        op_outpost_respond_bytes,
        op_outpost_respond_stream,
        op_outpost_fail,
    ],
    esm_entry_point = "ext:outpost/99_main.js",
    esm = [
        dir "../../js",
        "00_infra.js",
        "10_globals.js",
        "20_dispatch.js",
        "99_main.js",
    ],
    options = { tenant: Option<TenantState> },
    state = |state, options| {
        if let Some(tenant) = options.tenant {
            state.put::<PermissionsContainer>(tenant.permissions);
            state.put::<ConsoleSink>(tenant.console);
            state.put::<Rc<RefCell<InFlight>>>(tenant.in_flight);
        }
    },
);

#[op2(fast)]
fn op_outpost_log(state: &mut OpState, #[smi] level: u32, #[string] text: &str) {
    if let Some(sink) = state.try_borrow::<ConsoleSink>() {
        sink(level, text);
    }
}

fn respond(state: &mut OpState, id: u32, outcome: Outcome) {
    let responder = state
        .try_borrow::<Rc<RefCell<InFlight>>>()
        .and_then(|in_flight| in_flight.borrow_mut().remove(id));
    if let Some(responder) = responder {
        responder(outcome);
    }
}

fn status_of(status: u32) -> u16 {
    u16::try_from(status).unwrap_or(500)
}

fn respond_static(
    state: &mut OpState,
    id: u32,
    status: u32,
    headers: Vec<(ByteString, ByteString)>,
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
    respond_static(state, id, status, headers, body.into_bytes());
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
    respond_static(state, id, status, headers, body);
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
            headers,
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
    let kind = if kind == 1 {
        FailureKind::NotAResponse
    } else {
        FailureKind::Exception
    };
    respond(state, id, Outcome::Failed { kind, message });
}
