//! Live tail: tenants' console lines and request summaries, as they happen, to whoever
//! follows them (`GET /tail?app=NAME` on the admin listener, `outpost tail`). Events go
//! through one bounded broadcast channel: publishing never waits, costs nothing while no one
//! follows, and a follower that falls behind by more than the channel holds is dropped (its
//! stream ends with a line saying so) instead of slowing the node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::broadcast;

/// Events a follower may fall behind by before it is dropped.
const BACKLOG: usize = 4096;

/// One event of an app.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TailEvent {
    /// A line the app wrote to its console.
    Console {
        app: Arc<str>,
        level: &'static str,
        #[serde(skip_serializing_if = "str::is_empty")]
        request_id: Arc<str>,
        message: String,
    },
    /// A request the node answered for the app.
    Request {
        app: Arc<str>,
        request_id: Arc<str>,
        method: String,
        path: String,
        status: u16,
        ms: f64,
    },
}

impl TailEvent {
    fn app(&self) -> &str {
        match self {
            TailEvent::Console { app, .. } | TailEvent::Request { app, .. } => app,
        }
    }
}

/// What a follower wants: one app, console lines from a level up, request summaries of a
/// status class.
#[derive(Debug, Clone, Default)]
pub struct TailFilter {
    pub app: String,
    /// Console lines of this level (`debug` 0, `log` 1, `warn` 2, `error` 3) and above.
    pub min_level: Option<u32>,
    /// Request summaries whose status is in this class (2 for `2xx`, … 5 for `5xx`).
    pub status_class: Option<u16>,
}

/// The node's tail.
#[derive(Debug)]
pub struct Tail {
    events: broadcast::Sender<Arc<TailEvent>>,
    /// Its followers now. Kept here because the channel's own count is read under a lock,
    /// and every request asks.
    followers: Arc<AtomicUsize>,
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            events: broadcast::channel(BACKLOG).0,
            followers: Arc::default(),
        }
    }
}

/// A follower's place in the channel, counted among the followers while it lives.
struct Follower {
    receiver: broadcast::Receiver<Arc<TailEvent>>,
    followers: Arc<AtomicUsize>,
}

impl Follower {
    fn new(tail: &Tail) -> Follower {
        tail.followers.fetch_add(1, Ordering::Relaxed);
        Follower {
            receiver: tail.events.subscribe(),
            followers: tail.followers.clone(),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Console levels by number, as the isolate hands them.
const LEVELS: [&str; 4] = ["debug", "log", "warn", "error"];

impl Tail {
    /// Whether anyone follows (events are not even built otherwise).
    pub fn followed(&self) -> bool {
        self.followers.load(Ordering::Relaxed) > 0
    }

    pub fn publish(&self, event: TailEvent) {
        // No receiver: nothing to do. A full channel overwrites the oldest event, which
        // the slowest follower then finds missing (and is dropped).
        let _ = self.events.send(Arc::new(event));
    }

    /// A console line of `app` (level as the isolate numbers them).
    pub fn console(&self, app: &str, level: u32, request_id: &str, message: &str) {
        if !self.followed() {
            return;
        }
        self.publish(TailEvent::Console {
            app: app.into(),
            level: LEVELS[(level as usize).min(LEVELS.len() - 1)],
            request_id: request_id.into(),
            message: message.to_string(),
        });
    }

    /// The level number of a level name (`info` is `log`).
    pub fn level(name: &str) -> Option<u32> {
        let name = if name == "info" { "log" } else { name };
        LEVELS.iter().position(|l| *l == name).map(|i| i as u32)
    }

    /// The events `filter` wants, as NDJSON lines, until the follower falls behind (a last
    /// line says so) or goes away.
    pub fn follow(
        &self,
        filter: TailFilter,
    ) -> impl futures::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>
           + Send
           + 'static {
        let follower = Follower::new(self);
        futures::stream::unfold(Some(follower), move |follower| {
            let filter = filter.clone();
            async move {
                let mut follower = follower?;
                loop {
                    match follower.receiver.recv().await {
                        Ok(event) if wanted(&filter, &event) => {
                            let mut line = serde_json::to_vec(&*event).unwrap_or_default();
                            line.push(b'\n');
                            return Some((
                                Ok(hyper::body::Frame::data(Bytes::from(line))),
                                Some(follower),
                            ));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let line = format!(
                                "{{\"type\":\"dropped\",\"reason\":\"the follower fell {missed} events behind\"}}\n"
                            );
                            return Some((Ok(hyper::body::Frame::data(Bytes::from(line))), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
    }
}

fn wanted(filter: &TailFilter, event: &TailEvent) -> bool {
    if event.app() != filter.app {
        return false;
    }
    match event {
        TailEvent::Console { level, .. } => filter
            .min_level
            .is_none_or(|min| Tail::level(level).is_some_and(|l| l >= min)),
        TailEvent::Request { status, .. } => filter
            .status_class
            .is_none_or(|class| status / 100 == class),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_followed_while_a_follower_lives() {
        let tail = Tail::default();
        assert!(!tail.followed());
        let first = tail.follow(TailFilter::default());
        let second = tail.follow(TailFilter::default());
        assert!(tail.followed());
        drop(first);
        assert!(tail.followed());
        drop(second);
        assert!(!tail.followed());
    }
}
