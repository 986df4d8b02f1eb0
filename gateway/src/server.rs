//! The HTTP listener: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) through hyper,
//! admission checks, and dispatch of each request to the app's deployment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use outpost_pool::{Body, Deployment, Pool, Task};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{GatewayError, Kind};

/// Limits applied to every request before it reaches an app.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long an app may take to produce response headers; then 504.
    pub response_timeout: Duration,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            max_body_bytes: 100 << 20,
            response_timeout: Duration::from_secs(60),
        }
    }
}

/// What the listener serves: the current deployment (swapped atomically on reload), or the
/// reason there is none.
#[derive(Default)]
pub struct Routes {
    current: ArcSwapOption<Deployment>,
    problem: ArcSwapOption<String>,
}

impl Routes {
    /// Serves `deployment` from the next request on.
    pub fn activate(&self, deployment: Deployment) {
        self.current.store(Some(Arc::new(deployment)));
        self.problem.store(None);
    }

    /// Records why nothing (new) could be activated; shown while no deployment serves.
    pub fn set_problem(&self, problem: String) {
        self.problem.store(Some(Arc::new(problem)));
    }

    /// The deployment serving now.
    pub fn current(&self) -> Option<Arc<Deployment>> {
        self.current.load_full()
    }

    fn missing(&self) -> GatewayError {
        let reason = self
            .problem
            .load_full()
            .map(|p| format!("No app is loaded: {p}"))
            .unwrap_or_else(|| "No app is loaded.".to_string());
        GatewayError::new(Kind::NoApp, reason)
    }
}

/// Accepts connections on `listener` until the task is dropped. Each connection is served on
/// one of the pool's worker threads (round robin), next to that worker's isolates, so its
/// requests cross no thread on the way to the app.
pub async fn serve(
    listener: TcpListener,
    routes: Arc<Routes>,
    admission: Admission,
    pool: Arc<Pool>,
) {
    let admission = Arc::new(admission);
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
        let admission = admission.clone();
        let task: Task =
            Box::new(move || Box::pin(serve_connection(stream, routes, admission, local)));
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
    admission: Arc<Admission>,
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
        let admission = admission.clone();
        async move {
            Ok::<_, std::convert::Infallible>(handle(request, &routes, &admission, local).await)
        }
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
    admission: &Admission,
    local: Option<SocketAddr>,
) -> Response<Body> {
    match route(request, routes, admission, local).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn route(
    request: Request<Incoming>,
    routes: &Routes,
    admission: &Admission,
    local: Option<SocketAddr>,
) -> Result<Response<Body>, GatewayError> {
    let request = admit(request, admission, local)?;
    let deployment = routes.current().ok_or_else(|| routes.missing())?;
    let deadline = Instant::now() + admission.response_timeout;
    Ok(deployment.dispatch(request, deadline).await?)
}

/// Checks a request against the admission limits and gives it an absolute URL.
fn admit(
    request: Request<Incoming>,
    admission: &Admission,
    local: Option<SocketAddr>,
) -> Result<Request<Body>, GatewayError> {
    let (mut parts, body) = request.into_parts();
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| GatewayError::new(Kind::BadRequest, "Invalid Content-Length."))?;
        if length > admission.max_body_bytes as u64 {
            return Err(too_large(admission));
        }
    }
    parts.uri = absolute_uri(&parts, local)?;
    let body = Limited::new(body, admission.max_body_bytes)
        .map_err(|e| -> outpost_pool::BoxError {
            if e.is::<http_body_util::LengthLimitError>() {
                "the request body is larger than the node accepts".into()
            } else {
                e
            }
        })
        .boxed_unsync();
    Ok(Request::from_parts(parts, body))
}

fn too_large(admission: &Admission) -> GatewayError {
    GatewayError::new(
        Kind::BodyTooLarge,
        format!(
            "The request body is larger than {} bytes.",
            admission.max_body_bytes
        ),
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
