//! The HTTP cache in front of a handler: a request is answered from the cache when a stored
//! response may be reused, else forwarded to the handler (once for concurrent misses of one
//! URL), and what the handler answers is stored when it may be.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::rules::{self, CacheStatus, Directives, RangeRequest};
use crate::store::{Fill, FillGuard, Found, Key, Meta, Pending, Space, Storable, Tee, UrlPrint};
use crate::{Body, Cache};

static SERVER_TIMING: http::HeaderName = http::HeaderName::from_static("server-timing");

/// Headers a response from the cache gets that its stored copy has not: `Age`,
/// `Cache-Status`, `Content-Length` and the gateway's `x-request-id`.
const ADDED_ON_ANSWER: usize = 4;

/// Hop-by-hop headers, never stored (RFC 9111 §3.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Statuses that make `stale-if-error` serve the stored response instead (RFC 5861 §4).
fn is_error(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The parts of a request that a forwarded copy keeps (extensions stay with the original).
fn copy_request(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// What the cache asks of the handler when revalidating `found`: the request with the
/// stored response's validators (the client's own conditions removed).
fn revalidation(parts: &http::request::Parts, found: &Found) -> http::request::Parts {
    let mut request = copy_request(parts);
    let headers = &mut request.headers;
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        headers.remove(name);
    }
    let stored = &found.meta.headers;
    if let Some(etag) = stored.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
    request
}

/// The headers kept with a stored response: not hop-by-hop ones, nor `Age` (computed on
/// each hit) or `Server-Timing` (the timing of the call that filled the entry).
fn storable_headers(headers: &HeaderMap) -> HeaderMap {
    // Its index (kept by clones) has room for what answering from it adds.
    let mut kept = HeaderMap::with_capacity(headers.len() + ADDED_ON_ANSWER);
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) || name == header::AGE || name == SERVER_TIMING {
            continue;
        }
        kept.append(name.clone(), value.clone());
    }
    kept
}

/// The request as the rules see it ([`rules::policy_request`], as a GET: HEAD is answered
/// from the GET's response), made the first time it is needed.
fn policy_of<'p>(
    made: &'p mut Option<http::request::Parts>,
    parts: &http::request::Parts,
) -> &'p http::request::Parts {
    made.get_or_insert_with(|| {
        let mut request = rules::policy_request(parts);
        request.method = Method::GET;
        request
    })
}

/// Whether a response that declares freshness may be stored for `request` (the rules'
/// verdict, then its `Vary`: `*` cannot be stored), and if so, its policy and the request
/// headers it varies on.
fn storability(
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<(http_cache_semantics::CachePolicy, Vec<http::HeaderName>), rules::NotStored> {
    let policy = rules::policy(request, status, headers, now);
    rules::storable(&policy, headers)?;
    let vary = rules::vary(headers).ok_or(rules::NotStored::Forbidden)?;
    Ok((policy, vary))
}

/// What a stored response can do for a request.
enum Reuse {
    /// Answer it as it is.
    Fresh,
    /// Answer it once revalidated.
    Stale,
    /// Nothing: the request does not match it.
    Mismatch,
}

/// Whether `found` may answer the request as it is. While it is fresh (its freshness was
/// computed by the rules when it was stored; the key already matched URL, host and
/// variant, and the client's own Cache-Control is not consulted) that is known without
/// asking the rules again, the common case of a hit; else the rules decide.
fn reuse(
    found: &Found,
    policy_request: &mut Option<http::request::Parts>,
    parts: &http::request::Parts,
    now: SystemTime,
) -> Reuse {
    if now < found.meta.fresh_until {
        return Reuse::Fresh;
    }
    match found
        .meta
        .policy
        .before_request(policy_of(policy_request, parts), now)
    {
        http_cache_semantics::BeforeRequest::Fresh(_) => Reuse::Fresh,
        http_cache_semantics::BeforeRequest::Stale { matches: true, .. } => Reuse::Stale,
        http_cache_semantics::BeforeRequest::Stale { matches: false, .. } => Reuse::Mismatch,
    }
}

/// `scheme://authority/path?query` of an absolute URI, without the formatting machinery
/// (`Uri`'s Display): the key of every GET.
pub fn url_of(uri: &http::Uri) -> String {
    let mut url = String::new();
    push_url(uri, &mut url);
    url
}

/// [`url_of`] appended to `url` (a buffer kept for the next one).
pub fn push_url(uri: &http::Uri, url: &mut String) {
    let pieces = url_pieces(uri);
    url.reserve(pieces.iter().map(|piece| piece.len()).sum());
    for piece in pieces {
        url.push_str(piece);
    }
}

/// The pieces [`url_of`] joins: scheme, `://`, authority, path and query.
pub(crate) fn url_pieces(uri: &http::Uri) -> [&str; 4] {
    [
        uri.scheme_str().unwrap_or("http"),
        "://",
        uri.authority().map_or("", |a| a.as_str()),
        uri.path_and_query().map_or("/", |p| p.as_str()),
    ]
}

/// How long a stored response has been stale as of `now`.
fn stale_for(meta: &Meta, now: SystemTime) -> std::time::Duration {
    now.duration_since(meta.fresh_until).unwrap_or_default()
}

/// Whether responses to `method` are looked up and stored here (GET and HEAD); any other
/// goes to the handler, its URL's responses forgotten if it changed something.
fn cacheable_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// The key of a URL on the pass list: at hand, or built from the request's URL when it is
/// needed (most passed responses never need it).
enum PassKey<'a> {
    Known(&'a Key),
    Later { app: &'a str, uri: &'a http::Uri },
}

impl PassKey<'_> {
    /// Its place on the pass list, from what is at hand (no key is built for it).
    fn print(&self) -> UrlPrint {
        match self {
            PassKey::Known(key) => UrlPrint::of_key(key),
            PassKey::Later { app, uri } => UrlPrint::of_uri(app, uri),
        }
    }

    fn key(&self) -> std::borrow::Cow<'_, Key> {
        match self {
            PassKey::Known(key) => std::borrow::Cow::Borrowed(key),
            PassKey::Later { app, uri } => std::borrow::Cow::Owned(Key {
                app: app.to_string(),
                space: Space::Http,
                url: url_of(uri),
                variant: String::new(),
            }),
        }
    }
}

impl Cache {
    /// Answers `request` for `app`: from the cache if it may, else through `dispatch` (the
    /// app's handler), storing what it answers when that may be reused. Every response
    /// carries this cache's `Cache-Status` entry. Requests other than GET and HEAD go
    /// straight to the handler; an unsafe one that succeeds removes its URL's responses.
    ///
    /// (A function returning an `async move` block, as is `pass`: an `async fn` would hold
    /// the request twice in its future and copy it once more per request.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would copy its arguments"
    )]
    pub fn serve<'a, E, D, F>(
        self: &'a Arc<Self>,
        app: &'a str,
        request: Box<Request<Body>>,
        dispatch: D,
    ) -> impl Future<Output = Result<Response<Body>, E>> + 'a
    where
        D: Fn(Box<Request<Body>>) -> F + Clone + 'static,
        F: Future<Output = Result<Response<Body>, E>> + 'static,
        E: 'static,
    {
        async move {
            if self.passes(app, &request) {
                let (method, uri) = (request.method().clone(), request.uri().clone());
                let mut response = dispatch(request).await?;
                self.passed(app, &method, &uri, &mut response);
                return Ok(response);
            }
            let (parts, body) = (*request).into_parts();
            let key = Key {
                app: app.to_string(),
                space: Space::Http,
                url: url_of(&parts.uri),
                variant: String::new(),
            };
            // Made when first needed: most requests of a dynamic app never need it.
            let mut policy_request = None;
            let mut collapsed = false;
            loop {
                let why = match self.tiers.find(&key, &parts.headers).await {
                    Some(Ok(found)) => {
                        // The clock is read only when something was found (not for a miss).
                        let now = SystemTime::now();
                        match reuse(&found, &mut policy_request, &parts, now) {
                            Reuse::Fresh => {
                                let status = CacheStatus {
                                    hit: true,
                                    ttl: Some(rules::ttl_secs(found.meta.fresh_until, now)),
                                    collapsed,
                                    ..CacheStatus::default()
                                };
                                match answer(&parts, &found, status, now).await {
                                    Ok(response) => return Ok(response),
                                    Err(e) => {
                                        tracing::warn!("a cached body cannot be read: {e}");
                                        self.tiers.remove(&found.meta.key);
                                        "miss"
                                    }
                                }
                            }
                            Reuse::Stale => {
                                return self.revalidate(&parts, body, found, dispatch).await;
                            }
                            Reuse::Mismatch => "miss",
                        }
                    }
                    Some(Err(crate::store::VaryMiss)) => "vary-miss",
                    None => "uri-miss",
                };
                if collapsed {
                    // Waited once already: no second wait.
                    return self
                        .fill(&key, &parts, body, &mut policy_request, None, why, dispatch)
                        .await;
                }
                match self.fills.begin(&key, self.config().max_collapsed) {
                    Fill::Leader(guard) => {
                        return self
                            .fill(
                                &key,
                                &parts,
                                body,
                                &mut policy_request,
                                Some(guard),
                                why,
                                dispatch,
                            )
                            .await;
                    }
                    Fill::Crowded => {
                        return self
                            .fill(&key, &parts, body, &mut policy_request, None, why, dispatch)
                            .await;
                    }
                    Fill::Pass => {
                        let request = Box::new(Request::from_parts(parts, body));
                        return self.pass(&key, request, why, dispatch).await;
                    }
                    Fill::Wait(mut done) => {
                        let timeout = self.config().collapse_timeout;
                        let _ = tokio::time::timeout(timeout, done.changed()).await;
                        collapsed = true;
                    }
                }
            }
        }
    }

    /// Forwards a miss of `key` (a URL's key) to the handler and stores what it answers if
    /// it may.
    #[allow(clippy::too_many_arguments)]
    async fn fill<E, D, F>(
        self: &Arc<Self>,
        key: &Key,
        parts: &http::request::Parts,
        body: Body,
        policy_request: &mut Option<http::request::Parts>,
        guard: Option<FillGuard>,
        why: &'static str,
        dispatch: D,
    ) -> Result<Response<Body>, E>
    where
        D: Fn(Box<Request<Body>>) -> F,
        F: Future<Output = Result<Response<Body>, E>>,
    {
        let still_valid = self.unpurged();
        let response = dispatch(Box::new(Request::from_parts(copy_request(parts), body))).await?;
        let mut status = CacheStatus::forwarded(why);
        Ok(self.keep(
            key,
            parts,
            policy_request,
            response,
            guard,
            still_valid,
            &mut status,
        ))
    }

    /// Forwards a miss of a key on the pass list (its last response could not be stored) to
    /// the handler as it is: no copy of the request is kept for the rules, which is most of
    /// what a miss costs the cache. Should the response now look storable, the key leaves
    /// the list and the next miss stores it.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would copy its arguments"
    )]
    fn pass<'a, E, D, F>(
        self: &'a Arc<Self>,
        key: &'a Key,
        request: Box<Request<Body>>,
        why: &'static str,
        dispatch: D,
    ) -> impl Future<Output = Result<Response<Body>, E>> + 'a
    where
        D: Fn(Box<Request<Body>>) -> F + 'a,
        F: Future<Output = Result<Response<Body>, E>> + 'a,
        E: 'a,
    {
        async move {
            let method = request.method().clone();
            let mut response = dispatch(request).await?;
            self.label_pass(&PassKey::Known(key), &method, why, &mut response);
            Ok(response)
        }
    }

    /// Whether `app`'s `request` goes to its handler as it is, the cache only labelling the
    /// answer ([`Cache::passed`]): a method other than GET and HEAD (a POST), or a GET or HEAD
    /// while nothing is stored, of a URL whose last response could not be stored (a dynamic
    /// app's). What [`Cache::serve`] would do with it, without a dispatch closure or its
    /// future; a URL is found by its fingerprint, no key is built.
    pub fn passes(&self, app: &str, request: &Request<Body>) -> bool {
        !cacheable_method(request.method())
            || (self.tiers.hold_nothing()
                && self.fills.passes(UrlPrint::of_uri(app, request.uri())))
    }

    /// Labels the handler's answer to a request that [`Cache::passes`] let through, as
    /// [`Cache::serve`] would: its `Cache-Status` (whose result it returns); for a GET, if
    /// the answer could now be stored, its URL leaves the pass list (the key is built only
    /// for an answer that declares freshness); for an unsafe method that succeeded, the
    /// URL's stored responses are forgotten.
    pub fn passed(
        &self,
        app: &str,
        method: &Method,
        uri: &http::Uri,
        response: &mut Response<Body>,
    ) -> rules::CacheResult {
        if cacheable_method(method) {
            return self.label_pass(&PassKey::Later { app, uri }, method, "uri-miss", response);
        }
        let status = response.status();
        if !matches!(*method, Method::OPTIONS | Method::TRACE)
            && (status.is_success() || status.is_redirection())
            && !self.tiers.hold_nothing()
        {
            // RFC 9111 §4.4: what an unsafe method changed is not served from the cache any
            // more. (With nothing stored, as for a dynamic app, there is nothing to forget.)
            self.forget_url(app, url_of(uri));
        }
        CacheStatus::forwarded("method").add_to(response.headers_mut())
    }

    /// `Cache-Status` on a passed response (forwarded for `why`); for a GET, whether it
    /// could be stored, and if it could, its URL leaves the pass list.
    fn label_pass(
        &self,
        key: &PassKey<'_>,
        method: &Method,
        why: &'static str,
        response: &mut Response<Body>,
    ) -> rules::CacheResult {
        let mut status = CacheStatus::forwarded(why);
        if method != Method::HEAD {
            status.detail = match self.could_store(key, response) {
                Ok(()) => {
                    self.fills.note(key.print(), Storable::Yes);
                    Some("pass")
                }
                Err(why) => Some(why.detail()),
            };
        }
        status.add_to(response.headers_mut())
    }

    /// Whether `response` could be stored for a plain GET of `key`'s URL: the request's own
    /// headers (which can only forbid storing: `Authorization`, `Cache-Control: no-store`)
    /// are not at hand.
    fn could_store(
        &self,
        key: &PassKey<'_>,
        response: &Response<Body>,
    ) -> Result<(), rules::NotStored> {
        let headers = response.headers();
        if !rules::declares_freshness(headers) {
            return Err(rules::NotStored::NotDeclared);
        }
        let request = Request::get(key.key().url.as_str())
            .body(())
            .map_err(|_| rules::NotStored::Forbidden)?
            .into_parts()
            .0;
        storability(&request, response.status(), headers, SystemTime::now()).map(|_| ())
    }

    /// Passes a handler's response to a request for `key` (its URL's key) on, storing it on
    /// the way when it may be.
    #[allow(clippy::too_many_arguments)]
    fn keep(
        self: &Arc<Self>,
        key: &Key,
        parts: &http::request::Parts,
        policy_request: &mut Option<http::request::Parts>,
        response: Response<Body>,
        guard: Option<FillGuard>,
        still_valid: crate::Unpurged,
        status: &mut CacheStatus,
    ) -> Response<Body> {
        let now = SystemTime::now();
        let (mut head, body) = response.into_parts();
        let verdict = if parts.method == Method::HEAD {
            // A HEAD response has no body to store.
            Err(None)
        } else if !rules::declares_freshness(&head.headers) {
            // The common case of a dynamic response, decided without building a policy.
            Err(Some(rules::NotStored::NotDeclared))
        } else {
            let request = policy_of(policy_request, parts);
            storability(request, head.status, &head.headers, now).map_err(Some)
        };
        let storable = if verdict.is_ok() {
            Storable::Yes
        } else {
            Storable::No
        };
        // What a leader learns is noted for the URL; others only clear a pass.
        if parts.method == Method::GET && (guard.is_some() || storable == Storable::Yes) {
            self.fills.note(UrlPrint::of_key(key), storable);
        }
        let body = match verdict {
            Ok((policy, vary)) => {
                let meta = Meta {
                    key: Key {
                        variant: if vary.is_empty() {
                            String::new()
                        } else {
                            rules::variant(&vary, &parts.headers)
                        },
                        ..key.clone()
                    },
                    fresh_until: rules::fresh_until(&policy, now),
                    policy,
                    status: head.status,
                    headers: storable_headers(&head.headers),
                    tags: rules::tags(&head.headers),
                    vary,
                    size: 0,
                };
                status.stored = true;
                status.ttl = Some(rules::ttl_secs(meta.fresh_until, now));
                Tee::wrap(
                    body,
                    Pending {
                        tiers: self.tiers.clone(),
                        meta,
                        still_valid,
                        guard,
                    },
                )
            }
            Err(Some(why)) => {
                status.detail = Some(why.detail());
                body
            }
            Err(None) => body,
        };
        status.add_to(&mut head.headers);
        Response::from_parts(head, body)
    }

    /// A stored response that is stale but matches: served stale while it is refreshed in
    /// the background (`stale-while-revalidate`), else revalidated with the handler first
    /// (served stale if that fails and `stale-if-error` allows).
    async fn revalidate<E, D, F>(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        body: Body,
        found: Found,
        dispatch: D,
    ) -> Result<Response<Body>, E>
    where
        D: Fn(Box<Request<Body>>) -> F + Clone + 'static,
        F: Future<Output = Result<Response<Body>, E>> + 'static,
        E: 'static,
    {
        let now = SystemTime::now();
        let directives = Directives::governing(&found.meta.headers);
        let stale = stale_for(&found.meta, now);
        let ttl = Some(rules::ttl_secs(found.meta.fresh_until, now));
        if directives
            .while_revalidate()
            .is_some_and(|window| stale <= window)
        {
            // One background refresh per URL at a time.
            if let Fill::Leader(guard) = self.fills.begin(&found.meta.key.primary(), 0) {
                let cache = self.clone();
                let dispatch = dispatch.clone();
                let request = revalidation(parts, &found);
                let policy_request = rules::policy_request(&request);
                let original = copy_request(parts);
                let found = found.clone();
                tokio::task::spawn_local(async move {
                    let result = dispatch(Box::new(Request::from_parts(request, empty()))).await;
                    if let Ok(response) = result {
                        let updated = cache.update(&original, policy_request, &found, response);
                        if let Updated::Replaced(response) = updated {
                            // Drained so that what it answered is stored.
                            let _ = response.into_body().collect().await;
                        }
                    }
                    drop(guard);
                });
            }
            let status = CacheStatus {
                hit: true,
                ttl,
                detail: Some("stale-while-revalidate"),
                ..CacheStatus::default()
            };
            if let Ok(response) = answer(parts, &found, status, now).await {
                return Ok(response);
            }
        }
        let if_error = directives.if_error().filter(|window| stale <= *window);
        let request = revalidation(parts, &found);
        let revalidation_policy_request = rules::policy_request(&request);
        let result = dispatch(Box::new(Request::from_parts(request, body))).await;
        let failed_status = match &result {
            Err(_) => Some(None),
            Ok(response) if is_error(response.status()) => Some(Some(response.status())),
            Ok(_) => None,
        };
        if let (Some(failed), Some(_)) = (failed_status, if_error) {
            let status = CacheStatus {
                fwd: Some("stale"),
                fwd_status: Some(failed.map_or(500, |s| s.as_u16())),
                ttl,
                detail: Some("stale-if-error"),
                ..CacheStatus::default()
            };
            if let Ok(response) = answer(parts, &found, status, now).await {
                return Ok(response);
            }
        }
        match self.update(parts, revalidation_policy_request, &found, result?) {
            Updated::NotModified(found) => {
                let status = CacheStatus {
                    fwd: Some("stale"),
                    fwd_status: Some(304),
                    ttl: Some(rules::ttl_secs(found.meta.fresh_until, SystemTime::now())),
                    stored: true,
                    ..CacheStatus::default()
                };
                match answer(parts, &found, status, SystemTime::now()).await {
                    Ok(response) => Ok(response),
                    Err(e) => {
                        tracing::warn!("a cached body cannot be read: {e}");
                        self.tiers.remove(&found.meta.key);
                        let mut response = Response::new(empty());
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        CacheStatus::forwarded("stale").add_to(response.headers_mut());
                        Ok(response)
                    }
                }
            }
            Updated::Replaced(response) => Ok(response),
        }
    }

    /// What revalidating `found` with the handler's `response` makes of it: a 304 that
    /// matches refreshes the stored response; anything else replaces it (stored if it may
    /// be, passed on either way).
    fn update(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        policy_request: http::request::Parts,
        found: &Found,
        response: Response<Body>,
    ) -> Updated {
        let now = SystemTime::now();
        if response.status() == StatusCode::NOT_MODIFIED {
            let (policy, matched) = rules::after_response(
                &found.meta.policy,
                &policy_request,
                response.status(),
                response.headers(),
                now,
            );
            if matched {
                let headers = rules::updated_headers(&found.meta.headers, response.headers());
                let meta = Meta {
                    key: found.meta.key.clone(),
                    fresh_until: rules::fresh_until(&policy, now),
                    policy,
                    status: found.meta.status,
                    tags: rules::tags(&headers),
                    headers: storable_headers(&headers),
                    vary: found.meta.vary.clone(),
                    size: found.meta.size,
                };
                let refreshed = self.tiers.refresh(found, meta);
                return Updated::NotModified(refreshed);
            }
        }
        let mut status = CacheStatus {
            fwd: Some("stale"),
            fwd_status: Some(response.status().as_u16()),
            ..CacheStatus::default()
        };
        let still_valid = self.unpurged();
        let mut policy_request = Some(policy_request);
        Updated::Replaced(self.keep(
            &found.meta.key.primary(),
            parts,
            &mut policy_request,
            response,
            None,
            still_valid,
            &mut status,
        ))
    }
}

/// What a revalidation made of a stored response.
enum Updated {
    /// Still valid (304): the stored response, its headers refreshed.
    NotModified(Found),
    /// The handler's new response.
    Replaced(Response<Body>),
}

/// A response from the cache: `304` when the client's conditions hold, `206`/`416` for a
/// single byte range of a `200`, else the stored status; with `Age` and `Cache-Status`.
pub(crate) async fn answer(
    parts: &http::request::Parts,
    found: &Found,
    status: CacheStatus,
    now: SystemTime,
) -> std::io::Result<Response<Body>> {
    let meta = &found.meta;
    let mut headers = meta.headers.clone();
    // A clone's list has no room to spare: made once for what is added below and by the
    // gateway (`x-request-id`), instead of growing with each.
    headers.reserve(ADDED_ON_ANSWER);
    let age = meta.policy.age(now).as_secs();
    headers.insert(header::AGE, HeaderValue::from(age));
    status.add_to(&mut headers);
    let mut code = meta.status;
    let mut part = None;
    if !headers.contains_key(header::CONTENT_LENGTH) && meta.status != StatusCode::NO_CONTENT {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    }
    if rules::not_modified(&parts.headers, &meta.headers) {
        code = StatusCode::NOT_MODIFIED;
        headers.remove(header::CONTENT_LENGTH);
    } else if meta.status == StatusCode::OK {
        match rules::range(&parts.headers, meta.size) {
            RangeRequest::Whole => {}
            RangeRequest::Part { start, end } => {
                code = StatusCode::PARTIAL_CONTENT;
                part = Some((start, end));
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes {start}-{end}/{}", meta.size))
                        .expect("digits are a header value"),
                );
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
            }
            RangeRequest::Unsatisfiable => {
                code = StatusCode::RANGE_NOT_SATISFIABLE;
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{}", meta.size))
                        .expect("digits are a header value"),
                );
                headers.remove(header::CONTENT_LENGTH);
            }
        }
    }
    let body = if code == StatusCode::NOT_MODIFIED
        || code == StatusCode::RANGE_NOT_SATISFIABLE
        || parts.method == Method::HEAD
    {
        empty()
    } else {
        found.body(part).await?
    };
    let mut response = Response::new(body);
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    Ok(response)
}
