//! The one JSON line per request (`--log-format json`, target `outpost::request`), formatted
//! off the request path: the worker that served the request queues its few fields on a
//! bounded queue, and a thread of its own turns them into the line and hands it to the
//! node's log writer, whole, so it never interleaves with other lines. A full queue drops
//! the line (counted, and said in a line of its own) rather than hold up a worker. The
//! thread takes what is queued every 20 ms and writes it in one piece.
//!
//! The line is what `tracing`'s JSON format wrote for it before, key for key: `timestamp`,
//! `level`, `request_id`, `app`, `method`, `path`, `status`, `ms`, `cpu_ms`, `error` (when
//! the request failed), `target`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Lines waiting to be formatted before new ones are dropped.
const QUEUE: usize = 64 * 1024;

/// One request, as the line says it.
pub struct RequestLine {
    pub at: SystemTime,
    pub request_id: http::HeaderValue,
    pub app: Option<String>,
    pub method: http::Method,
    pub path: http::Uri,
    pub status: u16,
    pub ms: f64,
    pub cpu_ms: f64,
    pub error: Option<String>,
}

#[derive(Serialize)]
struct Json<'a> {
    timestamp: &'a str,
    level: &'static str,
    request_id: &'a str,
    app: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    ms: f64,
    cpu_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    target: &'static str,
}

struct RequestLog {
    queue: SyncSender<RequestLine>,
    dropped: Arc<AtomicU64>,
}

static LOG: OnceLock<RequestLog> = OnceLock::new();

/// Makes request lines JSON, written to `writer` by a thread of their own. Once per process;
/// without it, request lines go through `tracing` like every other line.
pub fn install<W: Write + Send + 'static>(writer: W) {
    let (queue, lines) = sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = dropped.clone();
    let started = std::thread::Builder::new()
        .name("outpost-request-log".into())
        .spawn(move || write_lines(&lines, writer, &counted));
    if started.is_ok() {
        let _ = LOG.set(RequestLog { queue, dropped });
    }
}

/// Whether request lines are JSON lines of this module (else they go through `tracing`).
pub fn installed() -> bool {
    LOG.get().is_some()
}

/// Queues a request's line, if the log filter wants request lines.
pub fn offer(line: RequestLine) {
    let Some(log) = LOG.get() else {
        return;
    };
    if !tracing::enabled!(target: "outpost::request", tracing::Level::INFO) {
        return;
    }
    match log.queue.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            log.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How long the log thread sleeps between batches. It polls instead of waiting on the queue
/// so that queueing a line never has to wake it (a futex call per request, and a context
/// switch on a busy machine); a line reaches the log within this.
const BATCH_EVERY: Duration = Duration::from_millis(20);

fn write_lines<W: Write>(lines: &Receiver<RequestLine>, mut writer: W, dropped: &AtomicU64) {
    let mut out = Vec::with_capacity(64 * 1024);
    let mut reported = 0;
    loop {
        out.clear();
        loop {
            match lines.try_recv() {
                Ok(line) => format_line(&line, &mut out),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped != reported {
            let _ = writeln!(
                out,
                "{{\"level\":\"WARN\",\"message\":\"{} request log lines were dropped: the log queue was full\",\"target\":\"outpost::request\"}}",
                now_dropped - reported
            );
            reported = now_dropped;
        }
        if !out.is_empty() {
            // Whole lines in one write: the node's writer keeps each write whole.
            let _ = writer.write_all(&out);
        }
        std::thread::sleep(BATCH_EVERY);
    }
}

/// Appends the line (and its newline) to `out`.
fn format_line(line: &RequestLine, out: &mut Vec<u8>) {
    let timestamp = time::OffsetDateTime::from(line.at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let json = Json {
        timestamp: &timestamp,
        level: "INFO",
        request_id: line.request_id.to_str().unwrap_or_default(),
        app: line.app.as_deref().unwrap_or("-"),
        method: line.method.as_str(),
        path: line.path.path(),
        status: line.status,
        ms: line.ms,
        cpu_ms: line.cpu_ms,
        error: line.error.as_deref(),
        target: "outpost::request",
    };
    let start = out.len();
    if serde_json::to_writer(&mut *out, &json).is_ok() {
        out.push(b'\n');
    } else {
        out.truncate(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_keys_of_the_tracing_json_format_in_order() {
        let line = RequestLine {
            at: SystemTime::UNIX_EPOCH,
            request_id: http::HeaderValue::from_static("00ff"),
            app: Some("site".into()),
            method: http::Method::POST,
            path: "http://site.localhost/a?b=1".parse().unwrap(),
            status: 500,
            ms: 1.5,
            cpu_ms: 0.25,
            error: Some("Uncaught \"boom\"".into()),
        };
        let mut out = Vec::new();
        format_line(&line, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"timestamp\":\"1970-01-01T00:00:00Z\",\"level\":\"INFO\",\"request_id\":\"00ff\",\
             \"app\":\"site\",\"method\":\"POST\",\"path\":\"/a\",\"status\":500,\"ms\":1.5,\
             \"cpu_ms\":0.25,\"error\":\"Uncaught \\\"boom\\\"\",\"target\":\"outpost::request\"}\n"
        );
    }
}
