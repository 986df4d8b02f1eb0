//! What one HTTP/1.1 or HTTP/2 connection is doing, for its watcher: how many of its
//! requests are not answered yet (a request counts from the moment its head is read until
//! hyper drops its response body, which it does once the body's last bytes are in its write
//! buffer), since when it has none, whether it speaks HTTP/2 and whether it has carried a
//! request. From these the watcher shuts down a connection that waits too long for a
//! request: an HTTP/1.1 one at the header timeout (which also bounds the wait between
//! keep-alive requests, and a head that never completes), an HTTP/2 one at the idle
//! timeout. The shutdown is hyper's graceful one (what is buffered is sent first).
//!
//! The node keeps this itself rather than through hyper's HTTP/1.1 header timer: that timer
//! is a boxed sleep made, registered with tokio's timer wheel and dropped again for every
//! request (~1,400 instructions of a hello-world request's ~29,100); this is two counter
//! updates and a clock reading per request, and the connection's one timer.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Frame, SizeHint};
use outpost_pool::{Body, BoxError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::ConnectionLimits;

pub(crate) struct Activity {
    /// Requests whose response body hyper still holds.
    open: AtomicUsize,
    /// When it was last busy (a request ended, a waiting write went out), or opened.
    last: Mutex<Instant>,
    /// The connection speaks HTTP/2 (its TLS handshake chose `h2`, or a request came so).
    http2: AtomicBool,
    /// A request has come on it.
    served: AtomicBool,
    /// A write is waiting for the socket to take more (a response still being sent after
    /// hyper dropped its body).
    writing: AtomicBool,
}

impl Activity {
    /// A connection that opened now; `http2` if its protocol is known to be HTTP/2.
    pub(crate) fn new(http2: bool) -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            http2: AtomicBool::new(http2),
            served: AtomicBool::new(false),
            writing: AtomicBool::new(false),
        })
    }

    /// A request's head was read: it counts until the returned value is dropped (with its
    /// response body, see [`Tracked`]).
    pub(crate) fn begin(self: &Arc<Self>, version: http::Version) -> Open {
        if version == http::Version::HTTP_2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }

    /// Whether a request has come on the connection (else it holds no response).
    pub(crate) fn has_served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    fn end(&self) {
        self.busy_until_now();
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Records now as the time the connection was last busy.
    fn busy_until_now(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Since when the connection holds no request and sends nothing, if so.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 || self.writing.load(Ordering::Acquire) {
            return None;
        }
        Some(*self.last.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// How long the connection may hold no request: HTTP/1.1 (or not known yet) until its
    /// next head is read, at most the header timeout; HTTP/2 the idle timeout.
    pub(crate) fn idle_limit(&self, limits: &ConnectionLimits) -> Duration {
        if self.is_http2() {
            limits.idle_timeout
        } else {
            limits.header_read_timeout.min(limits.idle_timeout)
        }
    }
}

/// A connection's socket, telling its [`Activity`] while a write waits for the socket: a
/// response whose body hyper has dropped may still be in its write buffer, for as long as
/// the client takes to read it.
pub(crate) struct WatchedIo<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> WatchedIo<I> {
    pub(crate) fn new(io: I, activity: Arc<Activity>) -> WatchedIo<I> {
        WatchedIo { io, activity }
    }

    /// Records whether a write is left waiting; the end of a wait counts as the time the
    /// connection was last busy.
    fn wrote<T>(&self, result: Poll<T>) -> Poll<T> {
        let activity = &self.activity;
        match result {
            Poll::Pending => activity.writing.store(true, Ordering::Release),
            Poll::Ready(_) if activity.writing.load(Ordering::Relaxed) => {
                activity.busy_until_now();
                activity.writing.store(false, Ordering::Release);
            }
            Poll::Ready(_) => {}
        }
        result
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One request counted in its connection's [`Activity`] until dropped.
pub(crate) struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request counted until hyper drops it: once its last bytes
/// are in hyper's write buffer (what is left to send is [`WatchedIo`]'s to see), or unsent.
pub(crate) struct Tracked {
    body: Body,
    _open: Open,
}

impl Tracked {
    pub(crate) fn new(body: Body, open: Open) -> Tracked {
        Tracked { body, _open: open }
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;

    fn body(text: &'static str) -> Body {
        http_body_util::Full::new(bytes::Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    #[tokio::test]
    async fn a_request_counts_until_its_body_is_sent_or_dropped() {
        let activity = Activity::new(false);
        let opened = activity
            .idle_since()
            .expect("a new connection holds nothing");
        let sent = Tracked::new(body("hello"), activity.begin(http::Version::HTTP_11));
        let dropped = Tracked::new(body("unsent"), activity.begin(http::Version::HTTP_11));
        assert!(activity.idle_since().is_none());
        assert_eq!(
            sent.size_hint().exact(),
            Some(5),
            "the length is the body's own"
        );
        assert_eq!(&sent.collect().await.unwrap().to_bytes()[..], b"hello");
        assert!(activity.idle_since().is_none(), "one is still open");
        drop(dropped);
        let since = activity.idle_since().expect("both ended");
        assert!(since >= opened);
    }

    #[tokio::test]
    async fn a_write_waiting_for_the_socket_keeps_the_connection_busy() {
        use tokio::io::AsyncWriteExt;
        let activity = Activity::new(false);
        let (near, mut far) = tokio::io::duplex(16);
        let mut io = WatchedIo::new(near, activity.clone());
        io.write_all(b"0123456789abcdef").await.unwrap();
        let before = activity.idle_since().expect("nothing waits");
        // The pipe is full: the next write waits until the other end reads.
        let write = tokio::spawn(async move {
            io.write_all(b"more").await.unwrap();
            io
        });
        while !activity.writing.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        assert!(
            activity.idle_since().is_none(),
            "a waiting write is activity"
        );
        let mut read = [0u8; 20];
        let mut got = 0;
        while got < 20 {
            got += tokio::io::AsyncReadExt::read(&mut far, &mut read[got..])
                .await
                .unwrap();
        }
        let _io = write.await.unwrap();
        let after = activity.idle_since().expect("the write went out");
        assert!(after > before, "the wait's end is the last activity");
    }

    #[test]
    fn http1_waits_the_header_timeout_and_http2_the_idle_timeout() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        };
        let activity = Activity::new(false);
        assert_eq!(activity.idle_limit(&limits), Duration::from_secs(10));
        drop(activity.begin(http::Version::HTTP_2));
        assert!(activity.is_http2());
        assert_eq!(activity.idle_limit(&limits), Duration::from_secs(60));
        assert_eq!(
            Activity::new(true).idle_limit(&limits),
            Duration::from_secs(60)
        );
    }
}
