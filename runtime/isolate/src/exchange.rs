//! One request's crossing of the isolate boundary: its arguments for `js/20_dispatch.js`
//! on the way in, and on the way out the responder that turns what the handler produced
//! into an HTTP response (with `Server-Timing` when the node asks for it).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use deno_core::{v8, CancelHandle, ResourceId};
use http_body_util::{BodyExt, Full};
use outpost_pool::{Answer, Body, DispatchError, InstanceHandle};
use tokio::sync::oneshot;

use crate::body::stream_response;
use crate::extensions::{self, ConsoleSink, FailureKind, OutBody, Outcome, Timing};

/// What the node adds to every response.
#[derive(Debug, Clone, Default)]
pub struct ResponseOptions {
    /// Adds `Server-Timing: cpu;dur=…, wall;dur=…` (and `cold` for an isolate's first
    /// request).
    pub server_timing: bool,
}

/// What happens when a request is finished (its response body ended, failed or was never
/// made): the instance's count of requests drops, a serve loop waiting at its concurrency
/// wakes, and the request body's resource is closed on the next turn. Runs when dropped, so
/// it happens exactly once whichever way the request ends.
pub struct Finish {
    pub handle: Arc<InstanceHandle>,
    pub parked: Rc<Cell<Option<Waker>>>,
    pub body_rid: Option<ResourceId>,
    pub finished_bodies: Rc<RefCell<Vec<ResourceId>>>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(rid) = self.body_rid {
            self.finished_bodies.borrow_mut().push(rid);
        }
        self.handle.request_finished();
        if let Some(waker) = self.parked.take() {
            waker.wake();
        }
    }
}

/// How a request's body reaches `dispatch`.
pub enum BodyArg {
    None,
    /// Received whole: handed over as a `Uint8Array`.
    Whole(bytes::Bytes),
    /// Received whole, declared as text or JSON, and UTF-8 without a byte order mark:
    /// handed over as the string it decodes to, which is what `text()` and `json()` read
    /// (deno_fetch's bodies hold strings as they hold bytes; `arrayBuffer()` encodes it back
    /// to the same bytes). Spares an `ArrayBuffer` and a decode: ~2.7k instructions of a
    /// JSON echo's ~58k.
    Text(bytes::Bytes),
    /// Still arriving: the resource JS reads it from.
    Stream(ResourceId),
}

impl BodyArg {
    /// A body received whole: as text when the request says it is text (`headers`) and its
    /// bytes are UTF-8 that `text()` would decode to exactly them (no byte order mark,
    /// which decoding strips).
    pub fn whole(bytes: bytes::Bytes, headers: &RequestHeaders) -> BodyArg {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        if headers.textual && !bytes.starts_with(BOM) && std::str::from_utf8(&bytes).is_ok() {
            BodyArg::Text(bytes)
        } else {
            BodyArg::Whole(bytes)
        }
    }
}

/// Whether a `Content-Type` declares text: `text/*`, `application/json` or `*/*+json`.
fn textual(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let ends_with = |suffix: &[u8]| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    (essence.len() > 5 && essence[..5].eq_ignore_ascii_case(b"text/"))
        || essence.eq_ignore_ascii_case(b"application/json")
        || ends_with(b"+json")
}

/// A request's headers as `dispatch` takes them, read in one pass: every name and value
/// followed by a NUL (which no header contains), for JS to split only if the handler reads
/// the headers; and the request's context (its id, its trace).
pub struct RequestHeaders {
    pub joined: Vec<u8>,
    /// The gateway's `x-request-id` (empty without).
    pub id: http::HeaderValue,
    pub traceparent: Option<http::HeaderValue>,
    pub tracestate: Option<http::HeaderValue>,
    /// Whether its (first) `Content-Type` declares text.
    pub textual: bool,
}

impl RequestHeaders {
    /// The request's `headers` with the node's `stamp` in place of the client's headers of
    /// its names, joined into `buffer` (emptied first: an isolate passes the one
    /// [`RequestHeaders::recycle`] gave back, so a request allocates no buffer of its own).
    pub fn of(
        headers: &http::HeaderMap,
        stamp: &outpost_pool::Stamp,
        mut buffer: Vec<u8>,
    ) -> RequestHeaders {
        const X_REQUEST_ID: &str = "x-request-id";
        const TRACEPARENT: &str = "traceparent";
        buffer.clear();
        let mut read = RequestHeaders {
            joined: buffer,
            id: http::HeaderValue::from_static(""),
            traceparent: None,
            tracestate: None,
            textual: false,
        };
        let push = |joined: &mut Vec<u8>, name: &str, value: &http::HeaderValue| {
            joined.extend_from_slice(name.as_bytes());
            joined.push(0);
            joined.extend_from_slice(value.as_bytes());
            joined.push(0);
        };
        let mut content_type = false;
        for (name, value) in headers {
            let name = name.as_str();
            // The first of each, as `HeaderMap::get` would; a stamped one is the node's.
            match name {
                X_REQUEST_ID if stamp.request_id.is_some() => continue,
                TRACEPARENT if stamp.traceparent.is_some() => continue,
                X_REQUEST_ID if read.id.is_empty() => read.id = value.clone(),
                TRACEPARENT if read.traceparent.is_none() => {
                    read.traceparent = Some(value.clone());
                }
                "tracestate" if read.tracestate.is_none() => read.tracestate = Some(value.clone()),
                "content-type" if !content_type => {
                    content_type = true;
                    read.textual = textual(value.as_bytes());
                }
                _ => {}
            }
            push(&mut read.joined, name, value);
        }
        if let Some(id) = &stamp.request_id {
            push(&mut read.joined, X_REQUEST_ID, id);
            read.id = id.clone();
        }
        if let Some(traceparent) = &stamp.traceparent {
            push(&mut read.joined, TRACEPARENT, traceparent);
            read.traceparent = Some(traceparent.clone());
        }
        read
    }

    /// The buffer of `joined`, for the next request's [`RequestHeaders::of`]; a new one
    /// after headers larger than [`HEADERS_KEPT`].
    pub fn recycle(self) -> Vec<u8> {
        if self.joined.capacity() > HEADERS_KEPT {
            Vec::new()
        } else {
            self.joined
        }
    }
}

/// The largest buffer of joined headers kept for the next request.
const HEADERS_KEPT: usize = 16 * 1024;

/// The methods passed to `dispatch` by their index here (`METHODS` in
/// `js/20_dispatch.js`, in the same order); any other as its name.
const METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::OPTIONS,
    http::Method::PATCH,
];

thread_local! {
    /// The buffer a request's URL is written into on its way to a JS string (no allocation
    /// per request).
    static URL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The largest [`URL`] buffer kept for the next request.
const URL_KEPT: usize = 8 * 1024;

/// The arguments of `dispatch(id, method, url, headers, body, traceparent, tracestate,
/// bodyLength)`. The request's id is not one of them: it is among the headers, where JS
/// looks for it only when a log line needs it (one string fewer made a request).
pub fn request_args<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    id: u32,
    request: &http::Request<Body>,
    headers: &RequestHeaders,
    body: BodyArg,
) -> [v8::Local<'s, v8::Value>; 8] {
    let id = v8::Integer::new_from_unsigned(scope, id).into();
    let method = match METHODS.iter().position(|known| known == request.method()) {
        Some(index) => v8::Integer::new(scope, index as i32).into(),
        None => one_byte(scope, request.method().as_str().as_bytes()),
    };
    let url = URL.with_borrow_mut(|url| {
        url.clear();
        outpost_cache::push_url(request.uri(), url);
        let string = one_byte(scope, url.as_bytes());
        if url.capacity() > URL_KEPT {
            *url = String::new();
        }
        string
    });
    let mut context = |value: &Option<http::HeaderValue>| match value {
        Some(value) => one_byte(scope, value.as_bytes()),
        None => v8::null(scope).into(),
    };
    let traceparent = context(&headers.traceparent);
    let tracestate = context(&headers.tracestate);
    let headers = one_byte(scope, &headers.joined);
    // The byte length of a body passed as text (a string's length counts UTF-16 units).
    let mut body_length = v8::undefined(scope).into();
    let body = match body {
        BodyArg::None => v8::null(scope).into(),
        BodyArg::Text(bytes) => {
            match v8::String::new_from_utf8(scope, &bytes, v8::NewStringType::Normal) {
                Some(text) => {
                    body_length = v8::Number::new(scope, bytes.len() as f64).into();
                    text.into()
                }
                // Too long for a string: as bytes.
                None => uint8_array(scope, &bytes),
            }
        }
        BodyArg::Stream(rid) => v8::Integer::new_from_unsigned(scope, rid).into(),
        BodyArg::Whole(bytes) => uint8_array(scope, &bytes),
    };
    [
        id,
        method,
        url,
        headers,
        body,
        traceparent,
        tracestate,
        body_length,
    ]
}

/// A `Uint8Array` with a copy of `bytes`, allocated by the isolate's array buffer allocator
/// (so it counts towards the isolate's memory like any other `ArrayBuffer`); null if V8
/// cannot make one.
fn uint8_array<'s>(scope: &mut v8::PinScope<'s, '_>, bytes: &[u8]) -> v8::Local<'s, v8::Value> {
    let buffer = v8::ArrayBuffer::new(scope, bytes.len());
    if let Some(data) = buffer.data() {
        // SAFETY: the buffer was just made with `bytes.len()` bytes and nothing else refers
        // to it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.as_ptr().cast::<u8>(), bytes.len());
        }
    }
    match v8::Uint8Array::new(scope, buffer, 0, bytes.len()) {
        Some(array) => array.into(),
        None => v8::null(scope).into(),
    }
}

/// A JS string of bytes read as Latin-1 (how the Fetch standard maps header bytes).
fn one_byte<'s>(scope: &mut v8::PinScope<'s, '_>, bytes: &[u8]) -> v8::Local<'s, v8::Value> {
    v8::String::new_from_one_byte(scope, bytes, v8::NewStringType::Normal)
        .map(Into::into)
        .unwrap_or_else(|| v8::String::empty(scope).into())
}

/// What to do with the outcome of one request: build the HTTP response (starting a stream
/// pump if needed) and send it back to the dispatcher.
pub fn responder(
    reply: oneshot::Sender<Result<Box<Answer>, DispatchError>>,
    console: ConsoleSink,
    finish: Finish,
    options: ResponseOptions,
    streams: Rc<CancelHandle>,
    stream_idle: Duration,
    request_id: http::HeaderValue,
) -> extensions::Responder {
    Box::new(move |outcome, timing| {
        let result = match outcome {
            Outcome::Response {
                status,
                headers,
                body,
            } => {
                let body = match body {
                    OutBody::Empty => {
                        drop(finish);
                        outpost_pool::empty_body()
                    }
                    OutBody::Bytes(bytes) => {
                        drop(finish);
                        Full::new(Bytes::from(bytes))
                            .map_err(|never| match never {})
                            .boxed_unsync()
                    }
                    OutBody::Stream(resource) => {
                        stream_response(resource, finish, streams, stream_idle)
                    }
                };
                let mut response = build_response(status, headers, body);
                if options.server_timing {
                    add_server_timing(&mut response, &timing);
                }
                Ok(Box::new(Answer { response, timing }))
            }
            Outcome::Failed { kind, message } => {
                drop(finish);
                console(
                    3,
                    request_id.to_str().unwrap_or_default(),
                    &format!("{message}\n"),
                );
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

/// `Server-Timing: cpu;dur=0.042, wall;dur=0.120` (milliseconds), plus `cold` when the
/// request was its isolate's first.
fn add_server_timing(response: &mut http::Response<Body>, timing: &Timing) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut value = format!(
        "cpu;dur={:.3}, wall;dur={:.3}",
        ms(timing.cpu),
        ms(timing.wall)
    );
    if timing.cold {
        value.push_str(", cold");
    }
    if let Ok(value) = http::HeaderValue::from_str(&value) {
        response.headers_mut().append("server-timing", value);
    }
}
/// A response of `status` (500 if it is not one), `headers` and `body`.
pub(crate) fn build_response(
    status: u16,
    headers: http::HeaderMap,
    body: Body,
) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(content_type: Option<&'static str>, bytes: &'static [u8]) -> &'static str {
        let mut headers = http::HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
        }
        let read = RequestHeaders::of(&headers, &outpost_pool::Stamp::default(), Vec::new());
        match BodyArg::whole(Bytes::from_static(bytes), &read) {
            BodyArg::Text(_) => "text",
            BodyArg::Whole(_) => "bytes",
            BodyArg::None | BodyArg::Stream(_) => "other",
        }
    }

    #[test]
    fn the_nodes_stamp_takes_the_place_of_the_clients_headers_of_its_names() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", "client id".parse().unwrap());
        headers.insert("traceparent", "client-trace".parse().unwrap());
        headers.insert("tracestate", "vendor=1".parse().unwrap());
        headers.insert("accept", "*/*".parse().unwrap());
        let split = |read: &RequestHeaders| -> Vec<String> {
            let text = String::from_utf8(read.joined.clone()).unwrap();
            let parts: Vec<&str> = text.trim_end_matches('\0').split('\0').collect();
            let mut pairs: Vec<String> = parts.chunks(2).map(|p| p.join(": ")).collect();
            pairs.sort();
            pairs
        };
        // Without a stamp, the client's are the request's.
        let read = RequestHeaders::of(&headers, &outpost_pool::Stamp::default(), Vec::new());
        assert_eq!(read.id, "client id");
        assert_eq!(read.traceparent.as_ref().unwrap(), "client-trace");
        assert_eq!(
            split(&read),
            [
                "accept: */*",
                "traceparent: client-trace",
                "tracestate: vendor=1",
                "x-request-id: client id"
            ]
        );
        // Stamped: the node's values, each once.
        let stamp = outpost_pool::Stamp {
            request_id: Some(http::HeaderValue::from_static("0123456789abcdef")),
            traceparent: Some(http::HeaderValue::from_static("node-trace")),
        };
        let read = RequestHeaders::of(&headers, &stamp, Vec::new());
        assert_eq!(read.id, "0123456789abcdef");
        assert_eq!(read.traceparent.as_ref().unwrap(), "node-trace");
        assert_eq!(read.tracestate.as_ref().unwrap(), "vendor=1");
        assert_eq!(
            split(&read),
            [
                "accept: */*",
                "traceparent: node-trace",
                "tracestate: vendor=1",
                "x-request-id: 0123456789abcdef"
            ]
        );
    }

    #[test]
    fn text_and_json_bodies_cross_as_text_when_they_decode_to_their_bytes() {
        for content_type in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/plain",
            "TEXT/html;charset=UTF-8",
            "application/ld+json",
            " application/json ",
        ] {
            assert_eq!(
                body_of(Some(content_type), "é✓😀".as_bytes()),
                "text",
                "{content_type}"
            );
        }
        for content_type in [
            "application/octet-stream",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/",
            "application/jsonx",
            "",
        ] {
            assert_eq!(
                body_of(Some(content_type), b"{}"),
                "bytes",
                "{content_type}"
            );
        }
        assert_eq!(body_of(None, b"{}"), "bytes");
        // Not UTF-8, or with a byte order mark (which text() strips): bytes.
        assert_eq!(
            body_of(Some("application/json"), b"{\"a\":\"\xFF\"}"),
            "bytes"
        );
        assert_eq!(body_of(Some("text/plain"), b"\xEF\xBB\xBFhi"), "bytes");
        assert_eq!(body_of(Some("text/plain"), b""), "text");
    }
}
