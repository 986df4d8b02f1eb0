//! Tenant console output on the node's terminal, through a bounded queue drained by one
//! writer thread: a tenant that floods `console.log` never stalls its worker thread (when
//! the queue is full, lines are dropped and counted, and the count is reported).

use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use crate::extensions::ConsoleSink;

/// Lines the writer may have waiting.
const QUEUE_LINES: usize = 4096;

/// Where a line goes.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

struct Writer {
    queue: SyncSender<(Stream, String)>,
    dropped: AtomicU64,
}

fn writer() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (queue, lines) = sync_channel(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name("outpost-console".into())
            .spawn(move || write_lines(lines));
        if let Err(e) = spawned {
            tracing::error!("the console writer could not start: {e}");
        }
        Writer {
            queue,
            dropped: AtomicU64::new(0),
        }
    })
}

fn write_lines(lines: Receiver<(Stream, String)>) {
    loop {
        match lines.recv_timeout(Duration::from_millis(500)) {
            Ok((stream, text)) => {
                let _ = match stream {
                    Stream::Stdout => std::io::stdout().lock().write_all(text.as_bytes()),
                    Stream::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
                };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let dropped = writer().dropped.swap(0, Ordering::AcqRel);
        if dropped > 0 {
            let _ = writeln!(
                std::io::stderr().lock(),
                "outpost: {dropped} console lines of tenants were dropped (output too fast)"
            );
        }
    }
}

/// Console lines dropped since the process started, and not yet reported.
pub fn dropped_lines() -> u64 {
    writer().dropped.load(Ordering::Acquire)
}

/// Console output of an app on the node's terminal: each line prefixed with `[name]`;
/// `console.log`/`info`/`debug` to stdout, `warn`/`error` (and uncaught exceptions) to stderr.
pub fn terminal_console(name: &str) -> ConsoleSink {
    let prefix = format!("[{name}] ");
    let writer = writer();
    Rc::new(move |level: u32, text: &str| {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut out = String::with_capacity(text.len() + prefix.len() + 1);
        for line in text.split('\n') {
            out.push_str(&prefix);
            out.push_str(line);
            out.push('\n');
        }
        let stream = if level >= 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        writer.offer(stream, out);
    })
}

impl Writer {
    /// Queues a line for the terminal, or drops and counts it when the queue is full.
    fn offer(&self, stream: Stream, text: String) {
        match self.queue.try_send((stream, text)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, _lines) = sync_channel(2);
        let writer = Writer {
            queue,
            dropped: AtomicU64::new(0),
        };
        for i in 0..5 {
            writer.offer(Stream::Stdout, format!("line {i}\n"));
        }
        assert_eq!(writer.dropped.load(Ordering::Acquire), 3);
    }
}
