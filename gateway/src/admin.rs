//! The admin listener: what an operator (or a test) asks a node about itself, on a separate
//! address from tenant traffic.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | `200 ok` while the process serves |
//! | `/readyz` | `200 ready` once the node has what it should serve (a PoP: after its first sync with the origin), else `503` |
//! | `/isolates` | the scheduler's counters and every live instance, as JSON ([`PoolStats`]) |
//! | `/metrics` | Prometheus metrics ([`Metrics`], OpenMetrics text) |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use outpost_pool::{Pool, PoolStats};
use tokio::net::TcpListener;

use crate::endpoints::serve_endpoints;
use crate::metrics::Metrics;

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve_admin(
    listener: TcpListener,
    pool: Arc<Pool>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    serve_endpoints(listener, move |request| {
        let answer = answer(&request, &pool, ready.load(Ordering::Acquire), &metrics);
        async move { answer }
    })
    .await
}

fn answer(
    request: &Request<Incoming>,
    pool: &Pool,
    ready: bool,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, &metrics.encode());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/isolates" => {
            let stats: PoolStats = pool.stats();
            match serde_json::to_vec_pretty(&stats) {
                Ok(json) => {
                    let mut response = Response::new(Full::new(Bytes::from(json)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}
