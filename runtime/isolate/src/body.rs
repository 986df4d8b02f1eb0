//! Bodies crossing the isolate boundary, streamed both ways with backpressure:
//! the request body as a resource JS reads (`request.body`), and a JS `ReadableStream`
//! response body pumped chunk by chunk into a bounded channel the HTTP server drains.

use std::borrow::Cow;
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use deno_core::{AsyncRefCell, AsyncResult, BufView, CancelFuture, CancelHandle, RcRef, Resource};
use deno_error::JsErrorBox;
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use outpost_pool::{Body, BoxError};
use tokio::sync::mpsc;

/// Largest chunk handed to JS or to the HTTP server in one piece.
pub const CHUNK: usize = 64 * 1024;
/// Chunks a response stream may run ahead of the client.
const RESPONSE_CHANNEL_CHUNKS: usize = 4;

/// How an incoming request's body is handed to JS.
pub enum RequestBody {
    None,
    /// Already received whole (the gateway collects small bodies with a Content-Length).
    Whole(Bytes),
    /// Read by JS as it arrives.
    Stream(RequestBodyResource),
}

impl From<Body> for RequestBody {
    /// Takes what is already there without waiting: a body whose frames are all ready now
    /// (a `Full`) becomes `Whole`; anything that would wait streams, keeping what was taken.
    fn from(mut body: Body) -> Self {
        if body.is_end_stream() {
            return RequestBody::None;
        }
        let fits = body
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= CHUNK as u64);
        if !fits {
            return RequestBody::Stream(RequestBodyResource::new(body));
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut whole = Vec::new();
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => break,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        whole.push(data);
                    }
                    if body.is_end_stream() {
                        break;
                    }
                }
                // A frame not here yet, or an error: JS reads the rest (or the error) as a
                // stream, starting with what was taken.
                Poll::Pending => {
                    let resource = RequestBodyResource::new(body);
                    resource.put_back(concat(whole));
                    return RequestBody::Stream(resource);
                }
                Poll::Ready(Some(Err(e))) => {
                    let resource = RequestBodyResource::new(body);
                    resource.put_back(concat(whole));
                    *resource.failed.borrow_mut() = Some(e.to_string());
                    return RequestBody::Stream(resource);
                }
            }
        }
        RequestBody::Whole(concat(whole))
    }
}

fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    }
}

/// The body of an incoming request, read by JS through `readableStreamForRid`.
pub struct RequestBodyResource {
    body: AsyncRefCell<Body>,
    pending: RefCell<Option<Bytes>>,
    /// An error met before JS started reading, reported after `pending`.
    failed: RefCell<Option<String>>,
    cancel: CancelHandle,
}

impl RequestBodyResource {
    pub fn new(body: Body) -> Self {
        RequestBodyResource {
            body: AsyncRefCell::new(body),
            pending: RefCell::new(None),
            failed: RefCell::new(None),
            cancel: CancelHandle::new(),
        }
    }

    /// Makes `data` the first bytes JS reads.
    fn put_back(&self, data: Bytes) {
        if !data.is_empty() {
            *self.pending.borrow_mut() = Some(data);
        }
    }

    /// Takes at most `limit` bytes of what was received but not yet read.
    fn take_pending(&self, limit: usize) -> Option<Bytes> {
        let mut pending = self.pending.borrow_mut();
        let mut chunk = pending.take()?;
        if chunk.len() > limit {
            *pending = Some(chunk.split_off(limit));
        }
        Some(chunk)
    }

    async fn read_chunk(self: Rc<Self>, limit: usize) -> Result<BufView, JsErrorBox> {
        let limit = limit.clamp(1, CHUNK);
        if let Some(chunk) = self.take_pending(limit) {
            return Ok(BufView::from(chunk));
        }
        if let Some(e) = self.failed.borrow_mut().take() {
            return Err(read_failed(e));
        }
        let mut body = RcRef::map(&self, |r| &r.body).borrow_mut().await;
        loop {
            let cancel = RcRef::map(&self, |r| &r.cancel);
            let Ok(frame) = body.frame().or_cancel(cancel).await else {
                return Err(JsErrorBox::new(
                    "Interrupted",
                    "the request body was closed",
                ));
            };
            match frame {
                None => return Ok(BufView::empty()),
                Some(Err(e)) => return Err(read_failed(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    *self.pending.borrow_mut() = Some(data);
                    let chunk = self.take_pending(limit).unwrap_or_default();
                    return Ok(BufView::from(chunk));
                }
            }
        }
    }
}

fn read_failed(e: impl std::fmt::Display) -> JsErrorBox {
    JsErrorBox::new("Http", format!("reading the request body failed: {e}"))
}

impl Resource for RequestBodyResource {
    fn name(&self) -> Cow<'_, str> {
        "requestBody".into()
    }

    fn read(self: Rc<Self>, limit: usize) -> AsyncResult<BufView> {
        Box::pin(self.read_chunk(limit))
    }

    fn close(self: Rc<Self>) {
        self.cancel.cancel();
    }
}

/// A response body fed by the isolate thread through a bounded channel.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(Frame::data)))
    }
}

/// Starts pumping a JS response stream (a deno_web `ReadableStreamResource`) into a body the
/// HTTP server can send from any thread. When the client goes away the stream is closed,
/// which cancels it on the JS side. `done` runs on this thread once the stream ended.
///
/// The stream fails (the client sees the response cut off: HTTP/1.1 closes the connection,
/// HTTP/2 resets the stream) when `isolate_gone` is cancelled (the isolate that feeds it was
/// stopped) or when it produces nothing for `idle`.
pub fn stream_response(
    resource: Rc<dyn Resource>,
    done: impl Sized + 'static,
    isolate_gone: Rc<CancelHandle>,
    idle: Duration,
) -> Body {
    let (tx, rx) = mpsc::channel(RESPONSE_CHANNEL_CHUNKS);
    tokio::task::spawn_local(async move {
        pump(resource, tx, isolate_gone, idle).await;
        drop(done);
    });
    ChannelBody { rx }.boxed_unsync()
}

async fn pump(
    resource: Rc<dyn Resource>,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    isolate_gone: Rc<CancelHandle>,
    idle: Duration,
) {
    loop {
        let next = resource.clone().read(CHUNK).or_cancel(isolate_gone.clone());
        let read = tokio::select! {
            _ = tx.closed() => {
                resource.close();
                return;
            }
            read = tokio::time::timeout(idle, next) => read,
        };
        let read = match read {
            Ok(Ok(read)) => read,
            Ok(Err(_cancelled)) => {
                let _ = tx
                    .send(Err("the isolate producing the response was stopped".into()))
                    .await;
                return;
            }
            Err(_elapsed) => {
                let _ = tx
                    .send(Err(format!(
                        "the response stream produced nothing for {} ms",
                        idle.as_millis()
                    )
                    .into()))
                    .await;
                resource.close();
                return;
            }
        };
        match read {
            Ok(chunk) if chunk.is_empty() => {
                resource.close();
                return;
            }
            Ok(chunk) => {
                if tx.send(Ok(Bytes::copy_from_slice(&chunk))).await.is_err() {
                    resource.close();
                    return;
                }
            }
            Err(e) => {
                let _ = tx
                    .send(Err(format!("the response stream failed: {e}").into()))
                    .await;
                resource.close();
                return;
            }
        }
    }
}
