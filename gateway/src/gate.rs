//! Futures a task polls only when one of them woke it.
//!
//! A connection's task waits on its connection and, beside it, on a shutdown signal and an
//! idle timer. `select!` polls every branch on every wake-up: the watch channel and the timer
//! were polled twice per request (their wakers registered again each time), which cost more
//! than routing a hello-world request. Behind a [`Gate`] they are polled only after one of
//! them woke the task (and once at the start, to register).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Polls the futures behind it only after they woke the task. Owned by the task that polls
/// it; the futures behind it get a waker of its [`Shared`] part.
pub(crate) struct Gate {
    shared: Arc<Shared>,
    /// The task's waker as last handed to `shared`: a task keeps its waker from one poll to
    /// the next, so a poll that finds the gate closed costs a comparison and a load, no
    /// atomic read-modify-write (an `AtomicWaker` registered again on every poll was two
    /// `lock cmpxchg` and a swap per poll of a connection, two to three polls per request).
    told: Option<Waker>,
}

/// What the futures behind the gate wake.
struct Shared {
    woken: AtomicBool,
    /// The polling task's waker, woken by reference (never taken): it stays in place for
    /// the next wake. Locked when it changes (rarely) and when a future behind the gate
    /// wakes (a timer or a shutdown signal, not a request).
    task: Mutex<Option<Waker>>,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            shared: Arc::new(Shared {
                // The futures behind it have never been polled: they must be once.
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
            told: None,
        }
    }

    /// Runs `poll` (polling the futures behind the gate, with the gate's waker) if they
    /// woke the task since the last time, else is pending; either way the task is woken
    /// when they next wake.
    pub(crate) fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if !self
            .told
            .as_ref()
            .is_some_and(|told| told.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            *self.shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
            self.told = Some(waker);
        }
        // A wake after the swap sets the flag again (and wakes the task): none is lost.
        if !self.shared.woken.load(Ordering::Acquire)
            || !self.shared.woken.swap(false, Ordering::AcqRel)
        {
            return Poll::Pending;
        }
        let waker = Waker::from(self.shared.clone());
        poll(&mut Context::from_waker(&waker))
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            task.wake_by_ref();
        }
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
        let mut gate = Gate::new();
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

    /// Counts the wakes of the task that polls the gate.
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_wake_behind_the_gate_reaches_the_task_though_it_registers_once() {
        let mut gate = Gate::new();
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let behind: std::sync::Mutex<Option<Waker>> = std::sync::Mutex::new(None);
        let poll_behind = |cx: &mut Context<'_>| {
            *behind.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        };
        assert!(gate.poll(&mut cx, poll_behind).is_pending());
        for round in 1..=3 {
            // The same task waker each poll: the gate hands it over only the first time,
            // and a wake does not use it up.
            let waker = behind
                .lock()
                .unwrap()
                .take()
                .expect("polled after its wake");
            waker.wake();
            assert_eq!(task.0.load(Ordering::Relaxed), round);
            assert!(gate.poll(&mut cx, poll_behind).is_pending());
        }
        // A new task waker (the connection moved to another task) is the one woken then.
        let other = Arc::new(Task(AtomicUsize::new(0)));
        let other_waker = Waker::from(other.clone());
        assert!(gate
            .poll(&mut Context::from_waker(&other_waker), poll_behind)
            .is_pending());
        behind
            .lock()
            .unwrap()
            .take()
            .expect("polled after its wake")
            .wake();
        assert_eq!(other.0.load(Ordering::Relaxed), 1);
        assert_eq!(task.0.load(Ordering::Relaxed), 3);
    }
}
