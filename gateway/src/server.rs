//! The HTTP listener: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) through hyper, the
//! route to an app, admission checks against its limits, and dispatch of each request to
//! the app's deployment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outpost_pool::{Body, DispatchError, Pool, Task};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{GatewayError, Kind};
use crate::routes::{Routes, Target};

/// How the node treats requests before they reach an app.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// What a client is told when an app cannot be loaded.
    pub error_detail: ErrorDetail,
    /// The node's name, sent as `x-outpost-pop` with the serving version as
    /// `x-outpost-version` (a PoP's `--name`); nothing when unset.
    pub pop_name: Option<http::HeaderValue>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            error_detail: ErrorDetail::Short,
            pop_name: None,
        }
    }
}

/// How much of an app's load error a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ErrorDetail {
    /// The whole error, file:line included (for `outpost dev`).
    Full,
    /// A short reason; the error itself goes to the node's log.
    Short,
}

/// Accepts connections on `listener` until the task is dropped. Each connection is served on
/// one of the pool's worker threads (round robin), next to that worker's isolates, so its
/// requests cross no thread on the way to the app.
pub async fn serve(
    listener: TcpListener,
    routes: Arc<Routes>,
    config: ServeConfig,
    pool: Arc<Pool>,
) {
    let config = Arc::new(config);
    let local = listener.local_addr().ok();
    let mut next_worker = 0usize;
    loop {
        let stream = match listener
            .accept()
            .await
            .and_then(|(stream, _)| stream.into_std())
        {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let routes = routes.clone();
        let config = config.clone();
        let task: Task =
            Box::new(move || Box::pin(serve_connection(stream, routes, config, local)));
        next_worker = next_worker.wrapping_add(1);
        if pool.spawn_on(next_worker, task).await.is_err() {
            tracing::error!("no worker thread takes connections any more");
            return;
        }
    }
}

/// Serves one connection (HTTP/1.1, or HTTP/2 with prior knowledge) on the current thread.
async fn serve_connection(
    stream: std::net::TcpStream,
    routes: Arc<Routes>,
    config: Arc<ServeConfig>,
    local: Option<SocketAddr>,
) {
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!("connection could not be registered: {e}");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let routes = routes.clone();
        let config = config.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request, &routes, &config, local).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!("connection ended: {e}");
    }
}

async fn handle(
    request: Request<Incoming>,
    routes: &Routes,
    config: &ServeConfig,
    local: Option<SocketAddr>,
) -> Response<Body> {
    match route(request, routes, config, local).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn route(
    request: Request<Incoming>,
    routes: &Routes,
    config: &ServeConfig,
    local: Option<SocketAddr>,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = request.into_parts();
    parts.uri = absolute_uri(&parts, local)?;
    let table = routes.current();
    let host = parts.uri.authority().map_or("", |a| a.as_str());
    let app = table
        .lookup(host, parts.uri.path())
        .ok_or_else(|| GatewayError::new(Kind::NoRoute, "No app is deployed for this host."))?;
    let deployment = match &app.target {
        Target::Serving(deployment) => deployment,
        Target::Broken(reason) => return Err(load_failed(config, &app.name, reason)),
    };
    let limits = deployment.limits();
    let (request, overflow) = admit(parts, body, limits.max_body_bytes)?;
    let deadline = Instant::now() + limits.timeout;
    let result = deployment.dispatch(request, deadline).await;
    if overflow.is_some_and(|overflow| overflow.load(Ordering::Acquire)) {
        // The app failed (or answered) while its body was cut off at the limit.
        return Err(too_large(limits.max_body_bytes));
    }
    match result {
        Ok(mut response) => {
            if let Some(name) = &config.pop_name {
                let headers = response.headers_mut();
                headers.insert("x-outpost-pop", name.clone());
                if let Ok(version) = http::HeaderValue::from_str(&deployment.bundle().label()) {
                    headers.insert("x-outpost-version", version);
                }
            }
            Ok(response)
        }
        Err(DispatchError::LoadFailed(reason)) => Err(load_failed(config, &app.name, &reason)),
        Err(e) => Err(e.into()),
    }
}

/// 503 for an app that cannot be loaded, with as much detail as the node shows clients.
fn load_failed(config: &ServeConfig, app: &str, reason: &str) -> GatewayError {
    tracing::warn!(app, "the app cannot be loaded: {reason}");
    let message = match config.error_detail {
        ErrorDetail::Full => format!("The app cannot be loaded: {reason}"),
        ErrorDetail::Short => "The app cannot be loaded; the node's log says why.".to_string(),
    };
    GatewayError::new(Kind::NoApp, message)
}

/// Checks a request against the app's body limit. A body that turns out larger than it
/// claims (or chunked past the limit) ends with an error where the limit is passed, and the
/// returned flag is set, so the client gets 413 whatever the app did.
fn admit(
    parts: http::request::Parts,
    body: Incoming,
    max_body_bytes: u64,
) -> Result<(Request<Body>, Option<Arc<AtomicBool>>), GatewayError> {
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| GatewayError::new(Kind::BadRequest, "Invalid Content-Length."))?;
        if length > max_body_bytes {
            return Err(too_large(max_body_bytes));
        }
    }
    if hyper::body::Body::is_end_stream(&body) {
        // Nothing to limit (a GET): no wrapper, no flag.
        let body = body
            .map_err(|e| -> outpost_pool::BoxError { e.into() })
            .boxed_unsync();
        return Ok((Request::from_parts(parts, body), None));
    }
    let limit = usize::try_from(max_body_bytes).unwrap_or(usize::MAX);
    let overflow = Arc::new(AtomicBool::new(false));
    let flag = overflow.clone();
    let body = Limited::new(body, limit)
        .map_err(move |e| -> outpost_pool::BoxError {
            if e.is::<http_body_util::LengthLimitError>() {
                flag.store(true, Ordering::Release);
                "the request body is larger than the app accepts".into()
            } else {
                e
            }
        })
        .boxed_unsync();
    Ok((Request::from_parts(parts, body), Some(overflow)))
}

fn too_large(max_body_bytes: u64) -> GatewayError {
    GatewayError::new(
        Kind::BodyTooLarge,
        format!("The request body is larger than {max_body_bytes} bytes."),
    )
}

/// `http://host/path?query`: the authority of an HTTP/2 request, else its Host header, else
/// the listener's address.
fn absolute_uri(
    parts: &http::request::Parts,
    local: Option<SocketAddr>,
) -> Result<Uri, GatewayError> {
    let bad = |what: &str| GatewayError::new(Kind::BadRequest, what.to_string());
    let authority = match parts.uri.authority() {
        Some(authority) => authority.clone(),
        None => match parts.headers.get(header::HOST) {
            Some(host) => host
                .to_str()
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .ok_or_else(|| bad("Invalid Host header."))?,
            None => local
                .map(|a| a.to_string())
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad("Missing Host header."))?,
        },
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| bad("Invalid request target."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn builds_absolute_urls() {
        let local = Some("127.0.0.1:8787".parse().unwrap());
        let uri = absolute_uri(&parts("/a?b=1", Some("example.com")), local).unwrap();
        assert_eq!(uri.to_string(), "http://example.com/a?b=1");
        let uri = absolute_uri(&parts("/", None), local).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:8787/");
        let uri = absolute_uri(&parts("http://h2.example/x", None), local).unwrap();
        assert_eq!(uri.to_string(), "http://h2.example/x");
        let err = absolute_uri(&parts("/", Some("bad host")), local).unwrap_err();
        assert_eq!(err.kind, Kind::BadRequest);
    }
}
