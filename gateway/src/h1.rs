//! HTTP/1.1 for the common request, without hyper: a request head parsed by `deno_http_h1`
//! (what `deno serve` answers HTTP/1.1 with) into the `http` types the request path takes,
//! its body when it came whole with the head, and the response written in one buffer.
//!
//! hyper's HTTP/1.1 server costs about twice the instructions per request of `deno_http_h1`
//! (7.1k against 3.3k for a static response, `outpost-static --server hyper|deno-h1`, see
//! bench/README.md); on a hello-world request that is a fifth of the node's work. Here a
//! request costs its parse, its `http::Request` (header values share the bytes read, as in
//! hyper) and one write of its response.
//!
//! Everything else stays hyper's, for the rest of the connection: the bytes read so far are
//! handed to [`crate::server::serve_http`] as they came, which answers as it always did.
//! That is a head this parser refuses (malformed: 400; too many or too large headers: 431;
//! no `Host`), HTTP/2 with prior knowledge (its preface is no HTTP/1.1 request), a body
//! that did not arrive whole with its head (uploads, which stream through hyper's body), a
//! chunked body, `Expect: 100-continue`, `Upgrade` and `CONNECT`.
//!
//! A connection here waits at most the header timeout for each head (and between
//! keep-alive requests), as hyper's does under the node's watcher; once shutdown begins it
//! closes between requests, and a request in flight is answered with `connection: close`.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use deno_http_h1::{BodyKind, Header, RequestStatus, Version, MAX_HEADERS};
use http::header::{HeaderName, HeaderValue};
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use outpost_pool::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::server::{handle, Listening, Protocol, ShutdownSignal};

/// What a read asks the socket for at least (a head and a small body fit).
const READ_CAPACITY: usize = 8 * 1024;
/// A response's bytes collected before they are written while its body is still coming.
const WRITE_FLUSH: usize = 64 * 1024;
/// A body frame this large is written from its own buffer, not copied into the response's.
const WRITE_DIRECT: usize = 16 * 1024;

/// Serves HTTP/1.1 on `io` until the connection ends; hands it to hyper (with what was read
/// of it) at the first request this module leaves to hyper.
pub(crate) async fn serve<I>(io: I, listening: &Arc<Listening>, mut shutdown: ShutdownSignal)
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(READ_CAPACITY),
        out: Vec::with_capacity(1024),
        values: Vec::new(),
        scanned: 0,
    };
    let ending = {
        let _open = crate::here::Counted::connection();
        conn.serve(listening, &mut shutdown).await
    };
    match ending {
        Ending::Close => {
            let _ = conn.io.shutdown().await;
        }
        Ending::Hyper(protocol) => {
            let io = Prefixed {
                prefix: conn.buf.freeze(),
                io: conn.io,
            };
            crate::server::serve_http(io, protocol, listening, shutdown).await
        }
    }
}

/// How a connection left this module.
enum Ending {
    /// It is done: closed by the client, timed out, broken, or not kept alive.
    Close,
    /// hyper serves the rest, speaking what it says; `buf` holds what was read and not
    /// consumed.
    Hyper(Protocol),
}

/// What waiting for a request's head gave.
enum Wait {
    /// More bytes (or none: the peer closed).
    Read(std::io::Result<usize>),
    /// Shutdown began.
    Stop,
    /// The header timeout passed.
    TimedOut,
}

/// A parsed head this module serves.
struct Head {
    method: Method,
    /// Where the request target lies in the head.
    target: (usize, usize),
    version: http::Version,
    keep_alive: bool,
    /// The head's length.
    consumed: usize,
    /// The body's length; it is in the buffer after the head.
    body: usize,
}

/// What parsing the buffer gave.
enum Parsed {
    Head(Head),
    /// Not a whole head yet.
    Partial,
    /// A request this module leaves to hyper.
    Hyper,
}

struct Conn<I> {
    io: I,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// A response's bytes not yet written.
    out: Vec<u8>,
    /// The parsed head's header names and where their values lie (reused per request).
    values: Vec<(HeaderName, usize, usize)>,
    /// How much of the buffer is known to hold no end of a head (a head arriving in pieces
    /// is parsed again only once its end may have come, not on every piece).
    scanned: usize,
}

impl<I> Conn<I>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    async fn serve(&mut self, listening: &Listening, shutdown: &mut ShutdownSignal) -> Ending {
        let limits = &listening.config.connections;
        // As on hyper's connections: the header timeout, or the idle timeout if shorter.
        let limit = limits.header_read_timeout.min(limits.idle_timeout);
        // Read on every request, checked only when the timer fires: the coarse clock (a
        // tick late at most: the timeout ends up to a tick early).
        let mut waiting_since = outpost_clock::now();
        let mut timer = pin!(tokio::time::sleep(limit));
        let begun = shutdown.clone();
        let mut stop = pin!(shutdown.wait());
        // The timer and the shutdown signal are polled only when they woke the task.
        let mut watchers = crate::gate::Gate::new();
        let mut protocol = Protocol::Unknown;
        loop {
            let head = loop {
                match self.parse(listening) {
                    Parsed::Head(head) => break head,
                    Parsed::Hyper => return Ending::Hyper(protocol),
                    Parsed::Partial => {}
                }
                let wait = std::future::poll_fn(|cx| {
                    if let Poll::Ready(read) = self.poll_read(cx) {
                        return Poll::Ready(Wait::Read(read));
                    }
                    watchers.poll(cx, |watch| {
                        if stop.as_mut().poll(watch).is_ready() {
                            return Poll::Ready(Wait::Stop);
                        }
                        // The one timer of the connection: it fires at most once per header
                        // timeout and is moved on if the connection was busy meanwhile.
                        while timer.as_mut().poll(watch).is_ready() {
                            let deadline = waiting_since + limit;
                            if Instant::now() >= deadline {
                                return Poll::Ready(Wait::TimedOut);
                            }
                            timer.as_mut().reset(deadline.into());
                        }
                        Poll::Pending
                    })
                })
                .await;
                match wait {
                    Wait::Read(Ok(0)) | Wait::Read(Err(_)) => return Ending::Close,
                    Wait::Read(Ok(_)) => {}
                    Wait::Stop => return Ending::Close,
                    Wait::TimedOut => {
                        tracing::debug!("connection closed at the header timeout");
                        return Ending::Close;
                    }
                }
            };
            let Some(request) = self.request(&head) else {
                return Ending::Hyper(protocol);
            };
            // HTTP/1.1 from now on: HTTP/2's preface later is no request (hyper's too).
            protocol = Protocol::Http1;
            let mut head = head;
            let response = {
                let mut handling = pin!(handle(request, listening));
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                        return Poll::Ready(Some(response));
                    }
                    // A client that goes away cancels its request, as with hyper.
                    if self.poll_peer_closed(cx, limits.max_header_bytes) {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await
            };
            let Some(response) = response else {
                tracing::debug!("the client closed the connection before its response");
                return Ending::Close;
            };
            head.keep_alive &= !begun.is_set();
            match self.respond(response, &head, limits.max_header_bytes).await {
                Ok(true) => {}
                Ok(_) | Err(_) => return Ending::Close,
            }
            // A request read while this one was served waits for none once shutdown began.
            if !self.buf.is_empty() && begun.is_set() {
                return Ending::Close;
            }
            waiting_since = outpost_clock::now();
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CAPACITY);
        }
        // tokio's read future keeps no state of its own between polls.
        pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }

    /// Whether the client closed the connection (or it broke), reading what it sends
    /// meanwhile (a next request) while the buffer holds less than `room`. Registers for
    /// the next read when it is open.
    fn poll_peer_closed(&mut self, cx: &mut Context<'_>, room: usize) -> bool {
        if self.buf.len() >= room {
            return false;
        }
        match self.poll_read(cx) {
            Poll::Ready(Ok(0) | Err(_)) => true,
            // Bytes of the next request: kept; registered again for more.
            Poll::Ready(Ok(_)) => {
                cx.waker().wake_by_ref();
                false
            }
            Poll::Pending => false,
        }
    }

    /// Parses the head at the start of the buffer.
    fn parse(&mut self, listening: &Listening) -> Parsed {
        let limits = &listening.config.connections;
        if self.buf.is_empty() {
            return Parsed::Partial;
        }
        if self.scanned > 0 {
            // Parsed before without its end: again only if the new bytes may end it
            // (a blank line, CRLF or bare LF).
            let from = self.scanned.saturating_sub(3);
            let ended = self.buf[from..]
                .windows(2)
                .any(|pair| pair == b"\n\n" || pair == b"\n\r");
            if !ended {
                self.scanned = self.buf.len();
                return self.partial(limits.max_header_bytes);
            }
        }
        // Left uninitialized: the parse writes the headers it returns (4 KiB not zeroed per
        // request).
        let mut headers = [const { MaybeUninit::<Header>::uninit() }; MAX_HEADERS];
        let mut scratch = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let parsed = deno_http_h1::Protocol::new().next_request_uninit_all(
            &self.buf,
            &mut headers,
            &mut scratch,
        );
        let status = match parsed {
            Ok(status) => status,
            Err(_) => return Parsed::Hyper,
        };
        let RequestStatus::Complete { request, consumed } = status else {
            self.scanned = self.buf.len();
            return self.partial(limits.max_header_bytes);
        };
        if consumed > limits.max_header_bytes
            || request.headers.len() > limits.max_headers
            || request.expect_continue
            || request.upgrade.is_some()
        {
            return Parsed::Hyper;
        }
        let body = match request.body {
            BodyKind::Empty => 0,
            BodyKind::ContentLength(length) => match usize::try_from(length) {
                Ok(length) if length <= self.buf.len() - consumed => length,
                _ => return Parsed::Hyper,
            },
            BodyKind::Chunked | BodyKind::Upgrade => return Parsed::Hyper,
        };
        let method = match Method::from_bytes(request.method) {
            Ok(method) if method != Method::CONNECT => method,
            _ => return Parsed::Hyper,
        };
        let base = self.buf.as_ptr() as usize;
        let at = |part: &[u8]| {
            let start = part.as_ptr() as usize - base;
            (start, start + part.len())
        };
        self.values.clear();
        let mut length_given = false;
        for field in request.headers {
            let Ok(name) = HeaderName::from_bytes(field.name) else {
                return Parsed::Hyper;
            };
            if name == header::CONTENT_LENGTH {
                // Repeated with the same value (the parse refuses others): kept once, as
                // hyper does.
                if length_given {
                    continue;
                }
                length_given = true;
            }
            let (start, end) = at(field.value);
            self.values.push((name, start, end));
        }
        Parsed::Head(Head {
            method,
            target: at(request.target),
            version: match request.version {
                Version::Http10 => http::Version::HTTP_10,
                Version::Http11 => http::Version::HTTP_11,
            },
            keep_alive: request.keep_alive,
            consumed,
            body,
        })
    }

    /// Not a whole head yet: wait for more, or let hyper refuse it once it is larger than
    /// `max` bytes.
    fn partial(&self, max: usize) -> Parsed {
        if self.buf.len() > max {
            Parsed::Hyper
        } else {
            Parsed::Partial
        }
    }

    /// Takes the head and its body out of the buffer as a request; `None` (with the buffer
    /// as it was) when hyper should answer it.
    fn request(&mut self, head: &Head) -> Option<Box<Request<Body>>> {
        self.scanned = 0;
        let bytes = self.buf.split_to(head.consumed).freeze();
        let (start, end) = head.target;
        let uri = Uri::from_maybe_shared(bytes.slice(start..end));
        // Room for the headers the node adds on the way (`x-request-id` among them).
        let mut headers = http::HeaderMap::with_capacity(self.values.len() + 4);
        let mut valid = uri.is_ok();
        for (name, start, end) in self.values.drain(..) {
            match HeaderValue::from_maybe_shared(bytes.slice(start..end)) {
                Ok(value) => {
                    headers.append(name, value);
                }
                Err(_) => valid = false,
            }
        }
        let uri = match uri {
            Ok(uri) if valid => uri,
            _ => {
                let mut whole = BytesMut::from(&bytes[..]);
                whole.extend_from_slice(&self.buf);
                self.buf = whole;
                return None;
            }
        };
        let body = if head.body == 0 {
            outpost_pool::empty_body()
        } else {
            let body = self.buf.split_to(head.body).freeze();
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        // Boxed once here: the request path moves it as a pointer to the isolate.
        let mut request = Box::new(Request::new(body));
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = head.version;
        *request.headers_mut() = headers;
        Some(request)
    }

    /// Writes `response`; `Ok(true)` when the connection carries another request (kept
    /// alive, and the body was whole and of its length).
    async fn respond(
        &mut self,
        response: http::Response<Body>,
        head: &Head,
        room: usize,
    ) -> std::io::Result<bool> {
        let version = head.version;
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let given_length = || {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        };
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::None
        } else if head.method == Method::HEAD {
            // The length the handler gave (a cached response's, `new Response(null,
            // {headers})`), else its body's if it has one, as hyper writes it.
            let length = body.size_hint().exact().filter(|length| *length > 0);
            Framing::Bodiless(given_length().or(length))
        } else if let Some(length) = body.size_hint().exact() {
            Framing::Length(length)
        } else if let Some(length) = given_length() {
            Framing::Length(length)
        } else if version == http::Version::HTTP_11 {
            Framing::Chunked
        } else {
            Framing::Close
        };
        let keep_alive = head.keep_alive && framing != Framing::Close;
        self.out.clear();
        let keep_alive = write_head(&mut self.out, &parts, framing, version, keep_alive);
        if let Framing::None | Framing::Bodiless(_) = framing {
            drop(body);
            self.flush().await?;
            return Ok(keep_alive);
        }
        let mut left = match framing {
            Framing::Length(length) => length,
            _ => u64::MAX,
        };
        let mut whole = true;
        // Until the declared length is written (a declared 0 is done with the head, its body
        // not polled) or, for chunked and close-delimited bodies, the body ends.
        while left > 0 {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
            let frame = match poll_once(frame) {
                Some(frame) => frame,
                None => {
                    // Not ready: what is collected goes out meanwhile, and a client that
                    // goes away ends the response.
                    self.flush().await?;
                    let next = std::future::poll_fn(|cx| {
                        if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                            return Poll::Ready(Some(frame));
                        }
                        if self.poll_peer_closed(cx, room) {
                            return Poll::Ready(None);
                        }
                        Poll::Pending
                    });
                    match next.await {
                        Some(frame) => frame,
                        None => return Ok(false),
                    }
                }
            };
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_trailers) => continue,
                },
                Some(Err(e)) => {
                    tracing::debug!("response body failed: {}", e);
                    whole = false;
                    break;
                }
            };
            if data.is_empty() {
                continue;
            }
            let data = if framing == Framing::Chunked {
                chunk_size(&mut self.out, data.len());
                data
            } else if data.len() as u64 > left {
                whole = false;
                data.slice(..usize::try_from(left).unwrap_or(usize::MAX))
            } else {
                data
            };
            left -= data.len() as u64;
            if data.len() >= WRITE_DIRECT {
                self.flush().await?;
                self.io.write_all(&data).await?;
            } else {
                self.out.extend_from_slice(&data);
            }
            if framing == Framing::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
            if !whole {
                break;
            }
            if self.out.len() >= WRITE_FLUSH {
                self.flush().await?;
            }
        }
        match framing {
            Framing::Chunked if whole => self.out.extend_from_slice(b"0\r\n\r\n"),
            Framing::Length(_) if left != 0 => whole = false,
            _ => {}
        }
        self.flush().await?;
        if self.out.capacity() > WRITE_FLUSH {
            // A large response's buffer is not kept by an idle connection.
            self.out = Vec::with_capacity(1024);
        }
        Ok(whole && keep_alive)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }
}

/// Writes a chunk's size line (hexadecimal).
fn chunk_size(out: &mut Vec<u8>, len: usize) {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(len >> (shift * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// Polls `future` once, with a waker that does nothing (it is polled again, awaited, if not
/// ready).
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body and no length (1xx, 204).
    None,
    /// No body, with the length the body would have had if known (HEAD, 304).
    Bodiless(Option<u64>),
    /// `content-length`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

/// Writes the status line and headers: the response's own, then the framing hyper would
/// add (`content-length` or `transfer-encoding: chunked`), `date` unless given, and
/// `connection` when it differs from the version's default. Returns whether the connection
/// stays open: `keep_alive`, unless the handler said `connection: close`.
fn write_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    framing: Framing,
    version: http::Version,
    mut keep_alive: bool,
) -> bool {
    // The request's version, as hyper answers.
    match (version, parts.status) {
        // The usual status line in one piece.
        (http::Version::HTTP_11, StatusCode::OK) => out.extend_from_slice(b"HTTP/1.1 200 OK\r\n"),
        _ => {
            out.extend_from_slice(match version {
                http::Version::HTTP_10 => b"HTTP/1.0 ",
                _ => b"HTTP/1.1 ",
            });
            out.extend_from_slice(parts.status.as_str().as_bytes());
            out.push(b' ');
            out.extend_from_slice(
                parts
                    .status
                    .canonical_reason()
                    .unwrap_or("<none>")
                    .as_bytes(),
            );
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut has_date = false;
    for (name, value) in &parts.headers {
        // The framing and the connection's fate are the node's; a handler's `connection:
        // close` is heeded.
        if name == header::CONNECTION {
            keep_alive &= !value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            continue;
        }
        has_date |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(length) | Framing::Bodiless(Some(length)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Bodiless(None) | Framing::Close => {}
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive && version == http::Version::HTTP_11 {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep_alive && version == http::Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    keep_alive
}

/// Hands the current `date` value (IMF-fixdate, formatted once a second per thread) to `f`.
/// The coarse clock is a tick late at most: the second turns over a few milliseconds late.
fn date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
    }
    let second = outpost_clock::unix_secs();
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(second);
            *text = httpdate::fmt_http_date(now).into_bytes();
        }
        f(text)
    })
}

/// An I/O stream whose first bytes were already read: they are read again first.
struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lowercase_hex_without_leading_zeros() {
        for (len, line) in [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (65_536, "10000\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_size(&mut out, len);
            assert_eq!(String::from_utf8(out).unwrap(), line);
        }
    }

    fn head(response: http::Response<()>, framing: Framing, version: http::Version) -> String {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let keep_alive = framing != Framing::Close;
        write_head(&mut out, &parts, framing, version, keep_alive);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_head_carries_the_framing_a_date_and_the_handlers_headers() {
        let response = http::Response::builder()
            .header("content-type", "text/plain")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let text = head(response, Framing::Length(5), http::Version::HTTP_11);
        assert!(
            text.starts_with(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ndate: "
            ),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert!(!text.contains("chunked") && !text.contains("999"), "{text}");

        let response = http::Response::builder()
            .status(404)
            .header("date", "Tue, 01 Dec 2026 00:00:00 GMT")
            .body(())
            .unwrap();
        assert_eq!(
            head(response, Framing::Chunked, http::Version::HTTP_11),
            "HTTP/1.1 404 Not Found\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );

        // An HTTP/1.0 client: kept alive only when it asked, closed after a body of
        // unknown length.
        let response = http::Response::builder().status(599).body(()).unwrap();
        let text = head(response, Framing::Close, http::Version::HTTP_10);
        assert!(text.starts_with("HTTP/1.0 599 <none>\r\ndate: "), "{text}");
        assert!(!text.contains("connection"), "{text}");
        let response = http::Response::builder().body(()).unwrap();
        let text = head(response, Framing::Length(0), http::Version::HTTP_10);
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    }

    #[test]
    fn a_bodiless_answer_keeps_the_length_it_would_have_had_and_the_node_decides_closing() {
        // A HEAD answer: the length a GET's body would have.
        let response = http::Response::builder()
            .header("content-length", "42")
            .header("connection", "keep-alive")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let framing = Framing::Bodiless(Some(42));
        write_head(&mut out, &parts, framing, http::Version::HTTP_11, true);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 42\r\n"),
            "{text}"
        );
        assert!(!text.contains("connection"), "{text}");
        // 204 and 304: no length; a connection that closes says so, whatever the handler
        // said.
        let mut out = Vec::new();
        write_head(
            &mut out,
            &parts,
            Framing::None,
            http::Version::HTTP_11,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(!text.contains("keep-alive"), "{text}");
        // A handler's `connection: close` closes the connection.
        let response = http::Response::builder()
            .header("connection", "Upgrade, Close")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let open = write_head(
            &mut out,
            &parts,
            Framing::Length(0),
            http::Version::HTTP_11,
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(!open);
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(!text.contains("Upgrade"), "{text}");
    }
}
