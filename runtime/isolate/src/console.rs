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

/// How tenants' console lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleFormat {
    /// `[app req=ID] text`, for a person at a terminal.
    Human,
    /// One JSON object per line, like the node's own logs with `--log-format json`:
    /// `timestamp`, `level`, `target` (`outpost::console`), `app`, `request_id`, `message`.
    Json,
}

static FORMAT: OnceLock<ConsoleFormat> = OnceLock::new();

/// Sees every tenant console line besides the terminal (the node's live tail): app, level
/// (an index into `LOG_LEVELS`), request id ("" outside a request), the line.
pub type ConsoleTap = std::sync::Arc<dyn Fn(&str, u32, &str, &str) + Send + Sync>;

static TAP: OnceLock<ConsoleTap> = OnceLock::new();

/// Sets the process's console tap (once, at start).
pub fn set_console_tap(tap: ConsoleTap) {
    let _ = TAP.set(tap);
}

/// Chooses the format of every tenant's console lines for the process (once, at start;
/// [`ConsoleFormat::Human`] unless set).
pub fn set_console_format(format: ConsoleFormat) {
    let _ = FORMAT.set(format);
}

/// Console output of an app on the node's terminal, each line tagged with the app and the
/// request it ran for; `console.log`/`info`/`debug` to stdout, `warn`/`error` (and uncaught
/// exceptions) to stderr.
pub fn terminal_console(name: &str) -> ConsoleSink {
    let name = name.to_string();
    let format = FORMAT.get().copied().unwrap_or(ConsoleFormat::Human);
    let writer = writer();
    Rc::new(move |level: u32, request_id: &str, text: &str| {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut out = String::with_capacity(text.len() + name.len() + 24);
        let tap = TAP.get();
        for line in text.split('\n') {
            if let Some(tap) = tap {
                tap(&name, level, request_id, line);
            }
            match format {
                ConsoleFormat::Human if request_id.is_empty() => {
                    out.push_str(&format!("[{name}] {line}\n"));
                }
                ConsoleFormat::Human => {
                    out.push_str(&format!("[{name} req={request_id}] {line}\n"));
                }
                ConsoleFormat::Json => {
                    out.push_str(&json_line(&name, level, request_id, line));
                    out.push('\n');
                }
            }
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

/// One console line as a JSON object.
fn json_line(app: &str, level: u32, request_id: &str, message: &str) -> String {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let level = match level {
        0 => "DEBUG",
        1 => "INFO",
        2 => "WARN",
        _ => "ERROR",
    };
    let mut line = serde_json::json!({
        "timestamp": timestamp,
        "level": level,
        "target": "outpost::console",
        "app": app,
        "message": message,
    });
    if !request_id.is_empty() {
        line["request_id"] = serde_json::Value::from(request_id);
    }
    line.to_string()
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
