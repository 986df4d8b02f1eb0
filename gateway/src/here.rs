//! What the current worker thread holds: its open connections and its requests waiting on a
//! handler, counted while they live. They decide whether a cache hit waits for the rest of
//! the turn before it is answered ([`hold_hit`]).
//!
//! A hit never leaves its connection's task. With many connections on a worker, answering
//! each at once makes the loop alternate read → answer → write, and each response wakes the
//! client on its own. A hit that yields once lets the connections ready in the same turn be
//! read first; the responses then leave together (one kind of work at a time, peers woken
//! once for several): at 64 connections, 10–13% more hits per second at 9–12% less CPU per
//! hit (bench/README.md, "Cache hits"). It does not pay when the hit is alone, nor when
//! requests of the worker's connections are in handlers: their instances run on the same
//! worker unless it is full, and the hit would wait behind their JavaScript turns. (Jobs
//! other workers send to this worker's instances are not counted here.)

use std::cell::Cell;

thread_local! {
    /// Connections served on this thread (HTTP/1.1 and HTTP/2).
    static OPEN: Cell<usize> = const { Cell::new(0) };
    /// Requests of this thread's connections that are in a handler.
    static IN_HANDLERS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one in a per-thread count while it lives (and must be dropped on that thread:
/// connections and their requests live on their worker's current-thread runtime).
pub(crate) struct Counted {
    count: &'static std::thread::LocalKey<Cell<usize>>,
    #[cfg(debug_assertions)]
    thread: std::thread::ThreadId,
}

impl Counted {
    /// A connection served on this thread.
    pub(crate) fn connection() -> Counted {
        Counted::on(&OPEN)
    }

    /// A request of this thread's connections, in its handler.
    pub(crate) fn in_handler() -> Counted {
        Counted::on(&IN_HANDLERS)
    }

    fn on(count: &'static std::thread::LocalKey<Cell<usize>>) -> Counted {
        count.with(|n| n.set(n.get() + 1));
        Counted {
            count,
            #[cfg(debug_assertions)]
            thread: std::thread::current().id(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        debug_assert_eq!(
            self.thread,
            std::thread::current().id(),
            "counted on one thread, dropped on another"
        );
        self.count.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Whether a cache hit on this thread waits for the rest of the turn before it is answered:
/// other connections are open here and no request here is in a handler.
pub(crate) fn hold_hit() -> bool {
    OPEN.with(Cell::get) > 1 && IN_HANDLERS.with(Cell::get) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_hit_only_beside_other_connections_and_no_handler_work() {
        std::thread::spawn(|| {
            let first = Counted::connection();
            assert!(!hold_hit(), "a lone connection is answered at once");
            let second = Counted::connection();
            assert!(hold_hit());
            {
                let _busy = Counted::in_handler();
                assert!(!hold_hit(), "not behind a handler's turn");
            }
            assert!(hold_hit());
            drop(second);
            assert!(!hold_hit());
            drop(first);
            // Counts are per thread.
            let _here = Counted::connection();
            let elsewhere = std::thread::spawn(hold_hit).join().expect("no panic");
            assert!(!elsewhere);
        })
        .join()
        .expect("no panic");
    }
}
