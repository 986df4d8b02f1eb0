//! Outpost's network side: the HTTP listener and its admission limits, the route table from
//! host and path to an app, the mapping of every failure to a status, the admin listener,
//! and the file watcher of `outpost dev`. The `outpost` binary (src/main.rs) wires these to the pool and isolates.

mod activity;
pub mod admin;
pub mod endpoints;
pub mod error;
mod gate;
mod h1;
mod here;
pub mod metrics;
pub mod origin;
pub mod quic;
pub mod request_log;
pub mod routes;
pub mod server;
pub mod tail;
pub mod tls;
pub mod trace;
pub mod watch;

pub use error::{GatewayError, Kind, Source};
pub use routes::{AppEntry, DuplicateRoute, RouteTable, Routes, Target};
pub use server::{
    serve, ConnectionLimits, ErrorDetail, Http1, Prewarm, ServeConfig, Shutdown, ShutdownSignal,
    Transport,
};
