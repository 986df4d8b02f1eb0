//! What the host measures of each request: kept apart from the rest of the crate (std only)
//! because the isolate crate's build script, which makes its snapshot, compiles the module
//! that records it too.

use std::time::Duration;

/// What the host measured of one request when its response started.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// CPU time charged to the request.
    pub cpu: Duration,
    /// Wall time since the isolate received it.
    pub wall: Duration,
    /// Whether it was its isolate's first request.
    pub cold: bool,
    /// Its outbound fetches, recorded when its trace is sampled (its `traceparent` says so):
    /// those begun before the response started.
    pub fetches: Vec<FetchTiming>,
}

/// One outbound `fetch` of a traced request.
#[derive(Debug, Clone)]
pub struct FetchTiming {
    pub method: String,
    pub url: String,
    pub start: std::time::SystemTime,
    /// When its response head arrived (or it failed); none while under way.
    pub end: Option<std::time::SystemTime>,
    /// Its status; 0 when it failed.
    pub status: u16,
}
