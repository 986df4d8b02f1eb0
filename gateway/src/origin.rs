//! The origin's HTTP API: where deploys land and PoPs sync from.
//!
//! | method and path | token | what |
//! |---|---|---|
//! | `PUT /v1/blobs/{sha256}` | deploy | store a module's bytes (idempotent; refused unless they hash to the name) |
//! | `HEAD /v1/blobs/{sha256}` | deploy or pop | 200 if stored, 404 if not |
//! | `GET /v1/blobs/{sha256}` | deploy or pop | the bytes |
//! | `POST /v1/versions` | deploy | body: a locked bundle; 201 `{"id"}` once valid and every blob is stored, else 400/409 with the reason |
//! | `GET /v1/versions/{id}` | deploy or pop | the version's canonical lock |
//! | `PUT /v1/apps/{app}/active` | deploy | body `{"version": id}`: activate it (one step) |
//! | `POST /v1/apps/{app}/rollback` | deploy | body `{}` or `{"to": id}`: the previous (or given) version |
//! | `GET /v1/apps/{app}/versions` | deploy or pop | the app's versions, newest first |
//! | `DELETE /v1/apps/{app}` | deploy | take the app out of service |
//! | `POST /v1/apps/{app}/purge` | deploy | body `"all"`, `{"url": U}`, `{"prefix": P}` or `{"tag": T}`: purge the app's cache on every PoP (through the feed) |
//! | `GET /v1/apps` | deploy or pop | every app in service and its version |
//! | `GET /v1/changes?since=N&wait=S` | deploy or pop | changes after N; waits up to S seconds (≤ 60) for one |
//! | `GET /v1/pops` | deploy or pop | the PoPs that followed the feed in the last two minutes, with their admin URLs (for `outpost tail --origin`) |
//!
//! Tokens travel as `Authorization: Bearer …` and are compared in constant time; a missing
//! or wrong one gets 401 and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use outpost_store::{OriginStore, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use subtle::ConstantTimeEq;

/// Largest blob or lock accepted in one request.
const MAX_UPLOAD: usize = outpost_bundle::MAX_BUNDLE_BYTES as usize;
/// Longest a change-feed request may wait.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most changes one feed response carries.
const FEED_PAGE: usize = 1_000;

/// Who may do what.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Allows writes (and reads).
    pub deploy: Option<String>,
    /// Allows reads.
    pub pop: Option<String>,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    Read,
    Write,
}

/// The origin: its store (blobs, catalog, change signal) behind the API's access rules.
pub struct Origin {
    store: OriginStore,
    tokens: Tokens,
    metrics: OriginMetrics,
    /// PoPs seen following the feed: name → (admin URL, when last seen).
    pops: std::sync::Mutex<std::collections::BTreeMap<String, (String, std::time::Instant)>>,
}

/// How long a PoP stays listed after it last followed the feed.
const POP_SEEN_FOR: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    /// The API call, as a template (`PUT /v1/blobs/{sha256}`).
    call: &'static str,
    status: &'static str,
}

/// The origin's metrics (`/metrics` on its admin listener), prefixed `outpost_origin_`:
/// `requests_total{call, status}`, `feed_followers` (long-polls waiting now) and
/// `feed_head` (the change feed's latest sequence number).
struct OriginMetrics {
    registry: Registry,
    requests: Family<ApiLabels, Counter>,
    followers: Gauge,
    head: Gauge,
}

impl OriginMetrics {
    fn new() -> OriginMetrics {
        let mut registry = Registry::with_prefix("outpost_origin");
        let requests = Family::<ApiLabels, Counter>::default();
        registry.register("requests", "API requests answered", requests.clone());
        let followers = Gauge::default();
        registry.register(
            "feed_followers",
            "Change-feed long-polls waiting now",
            followers.clone(),
        );
        let head = Gauge::default();
        registry.register(
            "feed_head",
            "The change feed's latest sequence number",
            head.clone(),
        );
        OriginMetrics {
            registry,
            requests,
            followers,
            head,
        }
    }
}

/// Longest URL, prefix or tag a purge names.
const MAX_PURGE_TEXT: usize = 16 * 1024;

/// Whether a purge names something: a non-empty tag, an `http(s)://` URL or prefix.
fn check_purge(purge: &outpost_cache::Purge) -> Result<(), String> {
    use outpost_cache::Purge;
    let text = match purge {
        Purge::All => return Ok(()),
        Purge::Url(text) | Purge::Prefix(text) | Purge::Tag(text) => text,
    };
    if text.trim().is_empty() || text.len() > MAX_PURGE_TEXT {
        return Err(format!(
            "a purge's URL, prefix or tag is 1 to {MAX_PURGE_TEXT} bytes"
        ));
    }
    if let Purge::Url(url) = purge {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "purge url {url:?} must be an http:// or https:// URL"
            ));
        }
    }
    Ok(())
}

/// The API call of `method` `path`, as a template, for metrics.
fn api_call(method: &Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("PUT", ["v1", "blobs", _]) => "PUT /v1/blobs/{sha256}",
        ("HEAD", ["v1", "blobs", _]) => "HEAD /v1/blobs/{sha256}",
        ("GET", ["v1", "blobs", _]) => "GET /v1/blobs/{sha256}",
        ("POST", ["v1", "versions"]) => "POST /v1/versions",
        ("GET", ["v1", "versions", _]) => "GET /v1/versions/{id}",
        ("PUT", ["v1", "apps", _, "active"]) => "PUT /v1/apps/{app}/active",
        ("POST", ["v1", "apps", _, "rollback"]) => "POST /v1/apps/{app}/rollback",
        ("GET", ["v1", "apps", _, "versions"]) => "GET /v1/apps/{app}/versions",
        ("DELETE", ["v1", "apps", _]) => "DELETE /v1/apps/{app}",
        ("POST", ["v1", "apps", _, "purge"]) => "POST /v1/apps/{app}/purge",
        ("GET", ["v1", "apps"]) => "GET /v1/apps",
        ("GET", ["v1", "changes"]) => "GET /v1/changes",
        _ => "other",
    }
}

impl Origin {
    /// The API over `store`, open to the holders of `tokens`.
    pub fn new(store: OriginStore, tokens: Tokens) -> Origin {
        Origin {
            store,
            tokens,
            metrics: OriginMetrics::new(),
            pops: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Answers the origin's admin endpoints: `/healthz`, `/readyz` (ready once its store
    /// answers), `/metrics`.
    pub async fn admin(self: &Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let plain = |status: StatusCode, text: String| {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            *response.status_mut() = status;
            response
        };
        match request.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.store.head().await {
                Ok(_) => plain(StatusCode::OK, "ready\n".into()),
                Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
            },
            "/metrics" => {
                if let Ok(head) = self.store.head().await {
                    self.metrics.head.set(head as i64);
                }
                let mut text = String::new();
                let _ =
                    prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry);
                let mut response = plain(StatusCode::OK, text);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ => plain(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    /// Whether writes and reads are open to anyone (no tokens configured).
    pub fn open_to_anyone(&self) -> bool {
        self.tokens.deploy.is_none() && self.tokens.pop.is_none()
    }

    fn allowed(&self, request: &Request<Incoming>) -> Option<Access> {
        if self.open_to_anyone() {
            return Some(Access::Write);
        }
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .as_bytes();
        let matches = |token: &Option<String>| {
            token
                .as_ref()
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(presented)))
        };
        if matches(&self.tokens.deploy) {
            Some(Access::Write)
        } else if matches(&self.tokens.pop) {
            Some(Access::Read)
        } else {
            None
        }
    }

    /// Answers one API request.
    pub async fn handle(self: &Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let call = api_call(request.method(), request.uri().path());
        let response = match self.route(request).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        let status = crate::metrics::status_class(response.status());
        self.metrics
            .requests
            .get_or_create(&ApiLabels { call, status })
            .inc();
        response
    }

    async fn route(
        self: &Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let access = self.allowed(&request).ok_or(ApiError::Unauthorized)?;
        self.note_pop(request.headers());
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let need = |wanted: Access| {
            if access >= wanted {
                Ok(())
            } else {
                Err(ApiError::Forbidden)
            }
        };
        match (&method, segments.as_slice()) {
            (&Method::PUT, ["v1", "blobs", digest]) => {
                need(Access::Write)?;
                let body = read_body(request).await?;
                self.store.put_blob(digest, body).await?;
                Ok(json_response(StatusCode::OK, &json!({ "sha256": digest })))
            }
            (&Method::HEAD, ["v1", "blobs", digest]) => {
                let status = if self.store.has_blob(digest).await? {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                };
                Ok(empty(status))
            }
            (&Method::GET, ["v1", "blobs", digest]) => match self.store.get_blob(digest).await? {
                Some(bytes) => Ok(bytes_response(bytes, "application/octet-stream")),
                None => Err(ApiError::NotFound(format!("no blob {digest}"))),
            },
            (&Method::POST, ["v1", "versions"]) => {
                need(Access::Write)?;
                let body = read_body(request).await?;
                let id = self.store.create_version(&body).await?;
                Ok(json_response(StatusCode::CREATED, &json!({ "id": id })))
            }
            (&Method::GET, ["v1", "versions", id]) => match self.store.lock(id).await? {
                Some(lock) => Ok(bytes_response(lock, "application/json")),
                None => Err(ApiError::NotFound(format!("no version {id}"))),
            },
            (&Method::PUT, ["v1", "apps", app, "active"]) => {
                need(Access::Write)?;
                let body: serde_json::Value = serde_json::from_slice(&read_body(request).await?)
                    .map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
                let version = body["version"]
                    .as_str()
                    .ok_or_else(|| ApiError::BadRequest("body needs {\"version\": id}".into()))?;
                let change = self.store.activate(app, version).await?;
                Ok(json_response(StatusCode::OK, &json!(change)))
            }
            (&Method::POST, ["v1", "apps", app, "rollback"]) => {
                need(Access::Write)?;
                let body = read_body(request).await?;
                let to = if body.is_empty() {
                    None
                } else {
                    let value: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
                    value["to"].as_str().map(str::to_string)
                };
                let change = self.store.rollback(app, to.as_deref()).await?;
                Ok(json_response(StatusCode::OK, &json!(change)))
            }
            (&Method::POST, ["v1", "apps", app, "purge"]) => {
                need(Access::Write)?;
                let purge: outpost_cache::Purge =
                    serde_json::from_slice(&read_body(request).await?).map_err(|e| {
                        ApiError::BadRequest(format!(
                            "body: {e}; expected \"all\", {{\"url\": U}}, {{\"prefix\": P}} or {{\"tag\": T}}"
                        ))
                    })?;
                check_purge(&purge).map_err(ApiError::BadRequest)?;
                let text = serde_json::to_string(&purge).unwrap_or_default();
                let change = self.store.purge(app, &text).await?;
                Ok(json_response(StatusCode::OK, &json!(change)))
            }
            (&Method::DELETE, ["v1", "apps", app]) => {
                need(Access::Write)?;
                let change = self.store.delete_app(app).await?;
                Ok(json_response(StatusCode::OK, &json!(change)))
            }
            (&Method::GET, ["v1", "apps", app, "versions"]) => {
                let versions = self.store.versions(app).await?;
                Ok(json_response(StatusCode::OK, &json!(versions)))
            }
            (&Method::GET, ["v1", "apps"]) => {
                // The head first: a client following the feed from it misses nothing.
                let head = self.store.head().await?;
                let apps: Vec<serde_json::Value> = self
                    .store
                    .active()
                    .await?
                    .into_iter()
                    .map(|(app, version)| json!({ "app": app, "version": version }))
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "head": head, "apps": apps }),
                ))
            }
            (&Method::GET, ["v1", "pops"]) => {
                let mut pops = self.pops.lock().unwrap_or_else(|e| e.into_inner());
                pops.retain(|_, (_, seen)| seen.elapsed() < POP_SEEN_FOR);
                let list: Vec<serde_json::Value> = pops
                    .iter()
                    .map(|(name, (admin, seen))| {
                        json!({ "name": name, "admin": admin, "seen_ms_ago": seen.elapsed().as_millis() as u64 })
                    })
                    .collect();
                Ok(json_response(StatusCode::OK, &json!(list)))
            }
            (&Method::GET, ["v1", "changes"]) => {
                let since = query_param(&query, "since").unwrap_or(0);
                let wait =
                    Duration::from_secs(query_param(&query, "wait").unwrap_or(0)).min(MAX_WAIT);
                let changes = self.changes_after(since, wait).await?;
                // The origin's head, also when it is behind `since` (restored from a backup):
                // a follower then starts over.
                let head = match changes.last() {
                    Some(change) => change.seq,
                    None => self.store.head().await?,
                };
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "head": head, "changes": changes }),
                ))
            }
            _ => Err(ApiError::NotFound(format!("no API {method} {path}"))),
        }
    }

    /// Remembers a PoP that names itself (`x-outpost-pop-name`) and its admin listener
    /// (`x-outpost-pop-admin`) on a request.
    fn note_pop(&self, headers: &http::HeaderMap) {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let (Some(name), Some(admin)) = (text("x-outpost-pop-name"), text("x-outpost-pop-admin"))
        {
            let mut pops = self.pops.lock().unwrap_or_else(|e| e.into_inner());
            if pops.len() < 10_000 || pops.contains_key(name) {
                pops.insert(
                    name.to_string(),
                    (admin.to_string(), std::time::Instant::now()),
                );
            }
        }
    }

    /// The changes after `since`, waiting up to `wait` for one if there are none yet.
    async fn changes_after(
        &self,
        since: u64,
        wait: Duration,
    ) -> Result<Vec<outpost_store::Change>, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let _waiting = Following::new(&self.metrics.followers);
        loop {
            // Register before looking, so a change between the look and the wait wakes us.
            let notified = self.store.changed().notified();
            let changes = self.store.changes(since, FEED_PAGE).await?;
            if !changes.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(changes);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(self.store.changes(since, FEED_PAGE).await?);
            }
        }
    }
}

/// Counts a feed follower while it waits.
struct Following<'a>(&'a Gauge);

impl<'a> Following<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Following(gauge)
    }
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn query_param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(request.into_body(), MAX_UPLOAD)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge
            } else {
                ApiError::BadRequest(format!("reading the body: {e}"))
            }
        })
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = bytes_response(
        serde_json::to_vec(value).unwrap_or_default(),
        "application/json",
    );
    *response.status_mut() = status;
    response
}

fn bytes_response(bytes: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Why an API request failed; each becomes a status and a JSON `{"error": …}` body.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("a valid token is required (Authorization: Bearer …)")]
    Unauthorized,
    #[error("this token may only read")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the body is larger than {MAX_UPLOAD} bytes")]
    TooLarge,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    fn into_response(self) -> Response<Full<Bytes>> {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Store(e) => match e {
                StoreError::MissingBlobs(_) => StatusCode::CONFLICT,
                StoreError::NoSuchVersion(_) | StoreError::NoSuchApp(_) => StatusCode::NOT_FOUND,
                e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
                StoreError::Io { .. }
                | StoreError::Database(_)
                | StoreError::Postgres(_)
                | StoreError::Unavailable(_)
                | StoreError::BadLocation(_)
                | StoreError::Poisoned => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            },
        };
        let mut response = json_response(status, &json!({ "error": self.to_string() }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Serves the origin API on `listener` (on a multi-threaded tokio runtime) until the task is
/// dropped.
pub async fn serve_origin(listener: tokio::net::TcpListener, origin: Arc<Origin>) {
    crate::endpoints::serve_endpoints(listener, move |request| {
        let origin = origin.clone();
        async move { origin.handle(request).await }
    })
    .await
}
