//! What the current worker thread holds: its open connections and its requests waiting on a
//! handler, counted while they live. They decide whether a cache hit waits for the rest of
//! the turn before it is answered ([`hold_hit`]).
//!
//! A hit never leaves its connection's task. With many connections on a worker, answering
//! each at once makes the loop alternate read → answer → write, and each response wakes the
//! client on its own. A hit that yields once lets the connections ready in the same turn be
//! read first; the responses then leave together (one kind of work at a time, peers woken
//! once for several): at 64 connections, 13% more hits per second at 12% less CPU per hit
//! (bench/README.md, "Cache hits"). It does not pay when the hit is alone, nor when the
//! worker has requests in handlers, whose JavaScript turns the hit would wait behind.

use std::cell::Cell;

thread_local! {
    /// Connections served on this thread (HTTP/1.1 and HTTP/2).
    static OPEN: Cell<usize> = const { Cell::new(0) };
    /// Requests of this thread's connections that are in a handler.
    static IN_HANDLERS: Cell<usize> = const { Cell::new(0) };
}

/// Counts one in a per-thread count while it lives.
pub(crate) struct Counted(&'static std::thread::LocalKey<Cell<usize>>);

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
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.with(|n| n.set(n.get().saturating_sub(1)));
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
