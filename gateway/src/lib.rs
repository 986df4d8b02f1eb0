//! Outpost's network side: the HTTP listener and its admission limits, the route to the
//! current deployment, the mapping of every failure to a status, and the file watcher of
//! `outpost dev`. The `outpost` binary (src/main.rs) wires these to the pool and isolates.

pub mod error;
pub mod server;
pub mod watch;

pub use error::{GatewayError, Kind, Source};
pub use server::{serve, Admission, Routes};
