//! Entering an isolate around every use. Several isolates share a worker thread, so none is
//! left entered: V8 requires the isolate in use to be the thread's current one, and
//! isolates to be exited in reverse order of entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use deno_core::v8;

use crate::limits::Watched;

/// Enters an isolate for as long as it lives.
pub struct EnterGuard(v8::UnsafeRawIsolatePtr);

impl EnterGuard {
    pub fn new(raw: v8::UnsafeRawIsolatePtr) -> Self {
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

/// Drops a runtime that is not entered (every runtime here, between uses). Dropping a
/// runtime exits its isolate once, so it is entered once more first, or V8 kills the process.
pub fn drop_runtime(raw: v8::UnsafeRawIsolatePtr, runtime: deno_core::JsRuntime) {
    // SAFETY: `raw` is `runtime`'s isolate, on this thread; the runtime's drop balances it.
    unsafe { v8::Isolate::from_raw_isolate_ptr(raw).enter() };
    drop(runtime);
}

/// A future polled with its isolate entered; each poll is a turn the CPU limit watches
/// (with the whole per-request limit as its budget: no request is in flight while loading).
///
/// Dropped unfinished (a load that timed out), it drops the inner future with the isolate
/// entered, as the V8 handles inside it require.
pub struct Entered<F> {
    raw: v8::UnsafeRawIsolatePtr,
    watched: Arc<Watched>,
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for Entered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Pending;
        };
        let _entered = EnterGuard::new(this.raw);
        let turn = this.watched.turn(this.watched.cpu_limit());
        let polled = inner.as_mut().poll(cx);
        turn.end();
        if polled.is_ready() {
            this.inner = None;
        }
        polled
    }
}

impl<F> Drop for Entered<F> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _entered = EnterGuard::new(self.raw);
            drop(inner);
        }
    }
}

pub fn entered<F: Future>(
    raw: v8::UnsafeRawIsolatePtr,
    watched: &Arc<Watched>,
    inner: F,
) -> Entered<F> {
    Entered {
        raw,
        watched: watched.clone(),
        inner: Some(Box::pin(inner)),
    }
}
