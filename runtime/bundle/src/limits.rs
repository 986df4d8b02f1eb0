//! Resource limits: the node's values ([`Limits`], from the command line, defaults here) and
//! what an app asks for in its `outpost.toml` `[limits]` table ([`AppLimits`]). An app may
//! lower any limit, never raise it above the node's: [`Limits::for_app`].
//!
//! This file is the one place the defaults are written.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits one request and one isolate run within, after the app's `[limits]` were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// CPU time one request may use, summed over every turn of JavaScript it runs (the
    /// handler, the callbacks and promise jobs it awaits). Past it the isolate is stopped,
    /// its requests get 503, and it is replaced. JavaScript running with no request in flight
    /// (timers, `waitUntil` work) gets the same budget per turn.
    pub cpu: Duration,
    /// Memory one isolate may hold: V8's heap plus `ArrayBuffer` and `WebAssembly.Memory`
    /// backing stores. An allocation that would pass it fails in JavaScript (`RangeError`);
    /// a heap that grows past it stops the isolate (503, replaced).
    pub memory_bytes: u64,
    /// Wall time from the request's arrival to the response head; then 504.
    pub timeout: Duration,
    /// Longest wait for the next chunk of a streamed response body; then the response is
    /// cut off (HTTP/1.1: the connection closes; HTTP/2: the stream is reset).
    pub stream_idle: Duration,
    /// Outbound `fetch` calls one request may make; the next one rejects with a TypeError.
    pub subrequests: u32,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Requests one isolate works on at once (a request counts until its response body has
    /// been sent); more wait in the isolate's queue or go to another isolate of the app.
    pub concurrency: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu: Duration::from_millis(1_000),
            memory_bytes: 128 << 20,
            timeout: Duration::from_secs(30),
            stream_idle: Duration::from_secs(30),
            subrequests: 50,
            max_body_bytes: 100 << 20,
            concurrency: 128,
        }
    }
}

/// Smallest memory limit: an isolate from the startup snapshot needs a few MiB.
pub const MIN_MEMORY_MB: u64 = 16;

/// An app's `[limits]` table: each key lowers the node's limit of the same meaning (see
/// [`Limits`]); a value above the node's is clamped to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLimits {
    /// CPU milliseconds per request, summed over every turn it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// MiB of V8 heap plus `ArrayBuffer`/Wasm memory per isolate (at least 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Milliseconds from a request's arrival to the response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Milliseconds a streamed response body may go without producing a chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_ms: Option<u64>,
    /// Outbound `fetch` calls per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subrequests: Option<u32>,
    /// Largest request body in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Requests one isolate works on at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl AppLimits {
    /// Whether the table sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == AppLimits::default()
    }

    /// Checks each value is usable; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("cpu_ms", self.cpu_ms),
            ("timeout_ms", self.timeout_ms),
            ("stream_idle_ms", self.stream_idle_ms),
            ("concurrency", self.concurrency.map(u64::from)),
        ];
        for (key, value) in positive {
            if value == Some(0) {
                return Err(format!("limits.{key} must be at least 1"));
            }
        }
        if let Some(mb) = self.memory_mb {
            if mb < MIN_MEMORY_MB {
                return Err(format!("limits.memory_mb must be at least {MIN_MEMORY_MB}"));
            }
        }
        Ok(())
    }
}

impl Limits {
    /// The limits for an app: the node's, lowered where the app asks for less. Also returns
    /// a note for each key the app set above the node's value.
    pub fn for_app(&self, app: &AppLimits) -> (Limits, Vec<String>) {
        let mut notes = Vec::new();
        let mut clamp = |key: &str, asked: Option<u64>, node: u64| -> u64 {
            match asked {
                Some(v) if v > node => {
                    notes.push(format!(
                        "limits.{key} = {v} is above the node's {node}; using {node}"
                    ));
                    node
                }
                Some(v) => v,
                None => node,
            }
        };
        let ms = |d: Duration| d.as_millis() as u64;
        let limits = Limits {
            cpu: Duration::from_millis(clamp("cpu_ms", app.cpu_ms, ms(self.cpu))),
            memory_bytes: clamp("memory_mb", app.memory_mb, self.memory_bytes >> 20) << 20,
            timeout: Duration::from_millis(clamp("timeout_ms", app.timeout_ms, ms(self.timeout))),
            stream_idle: Duration::from_millis(clamp(
                "stream_idle_ms",
                app.stream_idle_ms,
                ms(self.stream_idle),
            )),
            subrequests: clamp(
                "subrequests",
                app.subrequests.map(u64::from),
                self.subrequests.into(),
            ) as u32,
            max_body_bytes: clamp("max_body_bytes", app.max_body_bytes, self.max_body_bytes),
            concurrency: clamp(
                "concurrency",
                app.concurrency.map(u64::from),
                self.concurrency.into(),
            ) as u32,
        };
        (limits, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_lower_limits_and_never_raise_them() {
        let node = Limits::default();
        let app = AppLimits {
            cpu_ms: Some(50),
            memory_mb: Some(100_000),
            ..Default::default()
        };
        let (limits, notes) = node.for_app(&app);
        assert_eq!(limits.cpu, Duration::from_millis(50));
        assert_eq!(limits.memory_bytes, node.memory_bytes);
        assert_eq!(limits.timeout, node.timeout);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("limits.memory_mb = 100000"), "{notes:?}");
    }
}
