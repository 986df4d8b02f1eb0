//! The admin listener: what an operator (or a test) asks a node about itself, on a separate
//! address from tenant traffic.
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | `200 ok` while the process serves |
//! | `/readyz` | `200 ready` once the node has what it should serve (a PoP: after its first sync with the origin), else `503` |
//! | `/isolates` | the scheduler's counters and every live instance, as JSON ([`PoolStats`]) |
//! | `/metrics` | Prometheus metrics ([`Metrics`], OpenMetrics text) |
//! | `/tail?app=NAME[&level=warn][&status=5xx]` | the app's console lines and request summaries as they happen, one JSON object per line ([`Tail`]) |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use outpost_pool::{Pool, PoolStats};
use tokio::net::TcpListener;

use crate::endpoints::serve_endpoints;
use crate::metrics::Metrics;
use crate::tail::{Tail, TailFilter};

/// What the admin endpoints report on.
pub struct Admin {
    pub pool: Arc<Pool>,
    /// Whether the node has what it should serve (`/readyz`).
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub tail: Arc<Tail>,
}

type AdminBody = BoxBody<Bytes, std::convert::Infallible>;

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    serve_endpoints(listener, move |request| {
        let answer = admin.answer(&request);
        async move { answer }
    })
    .await
}

impl Admin {
    fn answer(&self, request: &Request<Incoming>) -> Response<AdminBody> {
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, &self.metrics.encode());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/isolates" => {
                let stats: PoolStats = self.pool.stats();
                match serde_json::to_vec_pretty(&stats) {
                    Ok(json) => {
                        let mut response = Response::new(full(json));
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("application/json"),
                        );
                        response
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
                }
            }
            "/tail" => match tail_filter(request.uri().query().unwrap_or("")) {
                Ok(filter) => {
                    let stream = self.tail.follow(filter);
                    let mut response = Response::new(StreamBody::new(stream).boxed());
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/x-ndjson"),
                    );
                    response
                }
                Err(why) => text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// `app=NAME[&level=warn][&status=5xx]`.
fn tail_filter(query: &str) -> Result<TailFilter, String> {
    let mut filter = TailFilter::default();
    for (key, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        match key {
            "app" => filter.app = value.to_string(),
            "level" => {
                filter.min_level = Some(Tail::level(value).ok_or_else(|| {
                    format!("level {value:?}: one of debug, info (log), warn, error")
                })?)
            }
            "status" => {
                let class = value
                    .strip_suffix("xx")
                    .and_then(|d| d.parse::<u16>().ok())
                    .filter(|d| (1..=5).contains(d))
                    .ok_or_else(|| format!("status {value:?}: one of 1xx … 5xx"))?;
                filter.status_class = Some(class);
            }
            _ => {}
        }
    }
    if filter.app.is_empty() {
        return Err("/tail needs ?app=NAME".into());
    }
    Ok(filter)
}

fn full(bytes: impl Into<Bytes>) -> AdminBody {
    Full::new(bytes.into()).boxed()
}

fn text(status: StatusCode, body: &str) -> Response<AdminBody> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
}
