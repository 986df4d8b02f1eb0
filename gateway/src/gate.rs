//! Futures a task polls only when one of them woke it.
//!
//! A connection's task waits on its connection and, beside it, on a shutdown signal and an
//! idle timer. `select!` polls every branch on every wake-up: the watch channel and the timer
//! were polled twice per request (their wakers registered again each time), which cost more
//! than routing a hello-world request. Behind a [`Gate`] they are polled only after one of
//! them woke the task (and once at the start, to register).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Wakes the task for the futures behind it, and remembers that it did.
pub(crate) struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Gate {
    pub(crate) fn new() -> Arc<Gate> {
        Arc::new(Gate {
            // The futures behind it have never been polled: they must be once.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        })
    }

    /// Runs `poll` (polling the futures behind the gate, with the gate's waker) if they
    /// woke the task since the last time, else is pending; either way the task is woken
    /// when they next wake.
    pub(crate) fn poll<T>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.clone());
        poll(&mut Context::from_waker(&waker))
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts how often it is polled; ready once told so, woken through `waker`.
    struct Probe {
        polls: AtomicUsize,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    #[test]
    fn the_futures_behind_are_polled_only_after_they_woke_the_task() {
        let gate = Gate::new();
        let probe = Probe {
            polls: AtomicUsize::new(0),
            waker: std::sync::Mutex::new(None),
        };
        let task = futures::task::noop_waker();
        let mut cx = Context::from_waker(&task);
        let poll_probe = |cx: &mut Context<'_>| {
            probe.polls.fetch_add(1, Ordering::Relaxed);
            *probe.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        };
        // Polled the first time (to register), then not while nothing woke it.
        assert!(gate.poll(&mut cx, poll_probe).is_pending());
        assert!(gate.poll(&mut cx, poll_probe).is_pending());
        assert!(gate.poll(&mut cx, poll_probe).is_pending());
        assert_eq!(probe.polls.load(Ordering::Relaxed), 1);
        // Woken through the waker it was given: polled once more.
        let waker = probe.waker.lock().unwrap().take().unwrap();
        waker.wake();
        assert!(gate.poll(&mut cx, poll_probe).is_pending());
        assert!(gate.poll(&mut cx, poll_probe).is_pending());
        assert_eq!(probe.polls.load(Ordering::Relaxed), 2);
    }
}
