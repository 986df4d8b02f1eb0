//! What HTTP says about reusing a response, beyond what `http-cache-semantics` decides:
//! which responses this shared cache stores (only those that declare themselves storable
//! by one), `CDN-Cache-Control` (RFC 9213) taking precedence, the stale extensions of
//! RFC 5861, answering a client's conditional and range requests from a stored response,
//! and the `Cache-Status` field (RFC 9211).

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

/// The cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "Outpost";

/// `CDN-Cache-Control`: Cache-Control for CDNs only (RFC 9213).
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Cache-Tag`: comma-separated tags to purge a response by.
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
/// `Cache-Status` (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Headers whose stored values a 304 does not replace (RFC 9111 §3.2).
const KEPT_ON_UPDATE: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// The request as the cache's rules see it: without the client's own `Cache-Control` and
/// `Pragma`, which a shared edge cache does not let one client use against everyone's
/// hit rate (as CDNs do).
pub fn policy_request(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if name != header::CACHE_CONTROL && name != header::PRAGMA {
            headers.append(name.clone(), value.clone());
        }
    }
    request.into_parts().0
}

/// The response headers the rules read: `CDN-Cache-Control`, when present, replaces
/// `Cache-Control` and `Expires` (RFC 9213 §2.1).
fn policy_headers(headers: &HeaderMap) -> HeaderMap {
    let Some(cdn) = headers.get(&CDN_CACHE_CONTROL) else {
        return headers.clone();
    };
    let mut headers = headers.clone();
    headers.remove(header::EXPIRES);
    headers.insert(header::CACHE_CONTROL, cdn.clone());
    headers
}

/// The rules' view of a response to `request`, as of `now`.
pub fn policy(
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> CachePolicy {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = policy_headers(headers);
    CachePolicy::new_options(
        request,
        &response,
        now,
        CacheOptions {
            shared: true,
            ..CacheOptions::default()
        },
    )
}

/// The rules' view after revalidating with a response (a 304 or a new one).
pub fn after_response(
    policy: &CachePolicy,
    request: &http::request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> (CachePolicy, bool) {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = policy_headers(headers);
    match policy.after_response(request, &response, now) {
        http_cache_semantics::AfterResponse::NotModified(policy, _) => (policy, true),
        http_cache_semantics::AfterResponse::Modified(policy, _) => (policy, false),
    }
}

/// The stored headers updated with those of a 304 (RFC 9111 §3.2).
pub fn updated_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    for name in not_modified.keys() {
        if KEPT_ON_UPDATE.contains(name) {
            continue;
        }
        headers.remove(name);
        for value in not_modified.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Why a response is not stored, for `Cache-Status: …; detail=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// The rules forbid it: `no-store`, `private`, an uncacheable status, `Vary: *`, an
    /// authorized request without `public`/`s-maxage`.
    Forbidden,
    /// It does not declare itself storable by a shared cache (`public` with `max-age` or
    /// `Expires`, `s-maxage`, or `CDN-Cache-Control`).
    NotDeclared,
    /// It sets a cookie: one client's cookie is never handed to another.
    SetCookie,
}

impl NotStored {
    pub fn detail(self) -> &'static str {
        match self {
            NotStored::Forbidden => "not-storable",
            NotStored::NotDeclared => "no-shared-freshness",
            NotStored::SetCookie => "set-cookie",
        }
    }
}

/// Whether a response carries anything that could make it storable here
/// (`Cache-Control`, `CDN-Cache-Control` or `Expires`); without, [`storable`] says
/// [`NotStored::NotDeclared`].
pub fn declares_freshness(headers: &HeaderMap) -> bool {
    // A handler's response has a few headers: comparing their names costs less than three
    // hashed lookups (~85 instructions each); a long list is looked up.
    if headers.keys_len() <= FEW_HEADERS {
        return headers.keys().any(|name| {
            *name == header::CACHE_CONTROL || *name == header::EXPIRES || *name == CDN_CACHE_CONTROL
        });
    }
    headers.contains_key(header::CACHE_CONTROL)
        || headers.contains_key(&CDN_CACHE_CONTROL)
        || headers.contains_key(header::EXPIRES)
}

/// Up to this many header names, [`declares_freshness`] compares each.
const FEW_HEADERS: usize = 8;

/// Whether a response may be stored: the rules allow it, it declares itself storable by a
/// shared cache, and it sets no cookie.
pub fn storable(policy: &CachePolicy, headers: &HeaderMap) -> Result<(), NotStored> {
    if !policy.is_storable() {
        return Err(NotStored::Forbidden);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if headers.contains_key(&CDN_CACHE_CONTROL) {
        return Ok(());
    }
    let directives = Directives::of(headers.get_all(header::CACHE_CONTROL));
    let declared = directives.has("s-maxage")
        || (directives.has("public")
            && (directives.has("max-age") || headers.contains_key(header::EXPIRES)));
    if declared {
        Ok(())
    } else {
        Err(NotStored::NotDeclared)
    }
}

/// The directives of a Cache-Control-like field, for the few the rules crate leaves out
/// (the stale extensions of RFC 5861).
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    pub fn of<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Directives {
        let mut directives = Vec::new();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for part in value.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (name, argument) = match part.split_once('=') {
                    Some((name, argument)) => (
                        name.trim(),
                        Some(argument.trim().trim_matches('"').to_string()),
                    ),
                    None => (part, None),
                };
                directives.push((name.to_ascii_lowercase(), argument));
            }
        }
        Directives(directives)
    }

    /// The directives that govern a stored response: `CDN-Cache-Control`'s when present.
    pub fn governing(headers: &HeaderMap) -> Directives {
        match headers.get(&CDN_CACHE_CONTROL) {
            Some(cdn) => Directives::of([cdn]),
            None => Directives::of(headers.get_all(header::CACHE_CONTROL)),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    pub fn seconds(&self, name: &str) -> Option<Duration> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, argument)| argument.as_deref()?.parse::<u64>().ok())
            .map(Duration::from_secs)
    }

    /// Whether stale reuse is forbidden outright.
    fn must_revalidate(&self) -> bool {
        self.has("must-revalidate") || self.has("proxy-revalidate") || self.has("no-cache")
    }

    /// How long past freshness the response may be served while it is revalidated in the
    /// background (`stale-while-revalidate`).
    pub fn while_revalidate(&self) -> Option<Duration> {
        if self.must_revalidate() {
            return None;
        }
        self.seconds("stale-while-revalidate")
    }

    /// How long past freshness the response may be served when revalidating fails
    /// (`stale-if-error`).
    pub fn if_error(&self) -> Option<Duration> {
        if self.must_revalidate() {
            return None;
        }
        self.seconds("stale-if-error")
    }
}

/// Until when a response the rules just judged stays fresh.
pub fn fresh_until(policy: &CachePolicy, now: SystemTime) -> SystemTime {
    now + policy.time_to_live(now)
}

/// The tags a response may be purged by (`Cache-Tag: a, b`).
pub fn tags(headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = headers
        .get_all(&CACHE_TAG)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// Request headers the node sets on each request on its way to the handler, after the
/// cache has made its key: `x-request-id`, and `traceparent` when the node traces. A
/// response that varies on one is its request's alone, as with `Vary: *`.
pub const SET_PER_REQUEST: [&str; 2] = ["x-request-id", "traceparent"];

/// The names a response varies on (lowercased, sorted), or `None` for `Vary: *` (or a
/// header in [`SET_PER_REQUEST`]).
pub fn vary(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in value.to_str().unwrap_or("").split(',') {
            let name = name.trim();
            if name == "*"
                || SET_PER_REQUEST
                    .iter()
                    .any(|set| name.eq_ignore_ascii_case(set))
            {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                names.push(name);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The secondary key of a request for a response that varies on `names`: the request's
/// values of them.
pub fn variant(names: &[HeaderName], request: &HeaderMap) -> String {
    let mut variant = String::new();
    for name in names {
        variant.push_str(name.as_str());
        variant.push(':');
        let mut first = true;
        for value in request.get_all(name) {
            if !first {
                variant.push(',');
            }
            first = false;
            variant.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        variant.push('\n');
    }
    variant
}

/// Whether a client's conditional request is satisfied by a stored response it may reuse,
/// so it is answered `304 Not Modified` (RFC 9110 §13.2.2: `If-None-Match` first, weak
/// comparison; else `If-Modified-Since`).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(condition) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let etag = etag.trim().trim_start_matches("W/");
        return condition.to_str().unwrap_or("").split(',').any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    }
    let Some(since) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate)
    else {
        // Unconditional (most requests): the stored date is not read.
        return false;
    };
    let modified = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(httpdate);
    modified.is_some_and(|modified| modified <= since)
}

/// An HTTP date (RFC 9110 §5.6.7).
fn httpdate(value: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(value.trim()).ok()
}

/// One satisfiable byte range of a body `size` long, from `Range: bytes=…` (a single
/// range; several are answered with the whole body, which RFC 9110 allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole body.
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

pub fn range(request: &HeaderMap, size: u64) -> RangeRequest {
    let Some(value) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeRequest::Whole;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = if first.is_empty() {
        // The last N bytes.
        match last.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size.saturating_sub(1))),
            Err(_) => None,
        }
    } else {
        match (first.parse::<u64>(), last) {
            (Ok(start), "") => Some((start, size.saturating_sub(1))),
            (Ok(start), last) => match last.parse::<u64>() {
                Ok(end) if end >= start => Some((start, end.min(size.saturating_sub(1)))),
                _ => None,
            },
            _ => None,
        }
    };
    match parsed {
        None => RangeRequest::Whole,
        Some((start, _)) if start >= size => RangeRequest::Unsatisfiable,
        Some((start, end)) => RangeRequest::Part { start, end },
    }
}

/// One `Cache-Status` entry without numbers that most responses carry: the parts of a
/// [`CacheStatus`] it is made of, its value (made once, at compile time:
/// `HeaderValue::from_static` checks every byte when it runs) and what it says this cache
/// did.
struct Fixed {
    fwd: &'static str,
    detail: Option<&'static str>,
    value: HeaderValue,
    result: CacheResult,
}

static FIXED: [Fixed; 6] = [
    Fixed {
        fwd: "bypass",
        detail: None,
        value: HeaderValue::from_static("Outpost; fwd=bypass"),
        result: CacheResult::Bypass,
    },
    Fixed {
        fwd: "method",
        detail: None,
        value: HeaderValue::from_static("Outpost; fwd=method"),
        result: CacheResult::Bypass,
    },
    Fixed {
        fwd: "uri-miss",
        detail: Some("no-shared-freshness"),
        value: HeaderValue::from_static("Outpost; fwd=uri-miss; detail=no-shared-freshness"),
        result: CacheResult::Miss,
    },
    Fixed {
        fwd: "uri-miss",
        detail: Some("not-storable"),
        value: HeaderValue::from_static("Outpost; fwd=uri-miss; detail=not-storable"),
        result: CacheResult::Miss,
    },
    Fixed {
        fwd: "uri-miss",
        detail: Some("set-cookie"),
        value: HeaderValue::from_static("Outpost; fwd=uri-miss; detail=set-cookie"),
        result: CacheResult::Miss,
    },
    Fixed {
        fwd: "uri-miss",
        detail: None,
        value: HeaderValue::from_static("Outpost; fwd=uri-miss"),
        result: CacheResult::Miss,
    },
];

/// What this node's cache did for a response, as its metrics and request log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Stale,
    Revalidated,
    Miss,
    Bypass,
}

impl CacheResult {
    /// Every result, in the order of their discriminants (`result as usize` indexes it).
    pub const ALL: [CacheResult; 5] = [
        CacheResult::Hit,
        CacheResult::Stale,
        CacheResult::Revalidated,
        CacheResult::Miss,
        CacheResult::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
        }
    }

    /// This cache's entry (the last one) in a response's `Cache-Status`, read; `None` when
    /// the last entry is another cache's or there is none.
    pub fn of(headers: &HeaderMap) -> Option<CacheResult> {
        let value = headers.get(&CACHE_STATUS)?;
        let bytes = value.as_bytes();
        // A hit as this cache writes it, alone in the header: the sign of its ttl decides.
        if let Some(ttl) = bytes.strip_prefix(HIT_PREFIX.as_bytes()) {
            if !bytes.contains(&b',') {
                return Some(match ttl.first() {
                    Some(b'-') => CacheResult::Stale,
                    _ => CacheResult::Hit,
                });
            }
        }
        // Most other responses carry one of the fixed values: no parsing.
        if let Some(fixed) = FIXED.iter().find(|fixed| fixed.value == value) {
            return Some(fixed.result);
        }
        // Ours is the last entry: its parameters are read in one pass, as the bytes that
        // `CacheStatus::value` wrote.
        let ours = match bytes.iter().rposition(|&b| b == b',') {
            Some(comma) => &bytes[comma + 1..],
            None => bytes,
        };
        let mut params = ours.split(|&b| b == b';').map(<[u8]>::trim_ascii);
        if params.next()? != CACHE_NAME.as_bytes() {
            return None;
        }
        let (mut hit, mut expired, mut if_error, mut revalidated, mut bypass) =
            (false, false, false, false, false);
        for param in params {
            match param {
                b"hit" => hit = true,
                b"detail=stale-if-error" => if_error = true,
                b"fwd-status=304" => revalidated = true,
                b"fwd=bypass" | b"fwd=method" => bypass = true,
                ttl if ttl.starts_with(b"ttl=-") => expired = true,
                _ => {}
            }
        }
        Some(match (hit, expired) {
            (true, true) => CacheResult::Stale,
            (true, false) => CacheResult::Hit,
            _ if if_error => CacheResult::Stale,
            _ if revalidated => CacheResult::Revalidated,
            _ if bypass => CacheResult::Bypass,
            _ => CacheResult::Miss,
        })
    }
}

/// How this cache's entry for a hit begins, its ttl next: a hit has no `fwd` or
/// `fwd-status`, which `CacheStatus::value` writes before the ttl (read back by
/// `CacheResult::of` without parsing the entry; any other entry is parsed).
const HIT_PREFIX: &str = "Outpost; hit; ttl=";

/// A header value of a string written here (visible ASCII): its buffer becomes the value's,
/// no copy.
fn owned(value: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .expect("Cache-Status entries are visible ASCII")
}

/// One `Cache-Status` entry of this cache (RFC 9211).
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    /// Served from the cache without going to the handler.
    pub hit: bool,
    /// Why the request went to the handler: `uri-miss`, `vary-miss`, `stale`, `bypass`,
    /// `method`, `request`.
    pub fwd: Option<&'static str>,
    /// The status the handler answered with, when it differs from the one sent.
    pub fwd_status: Option<u16>,
    /// Freshness left, in seconds (negative: served stale).
    pub ttl: Option<i64>,
    /// The handler's response was stored.
    pub stored: bool,
    /// The request waited for another one's handler call and was answered with its result.
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    pub fn forwarded(why: &'static str) -> CacheStatus {
        CacheStatus {
            fwd: Some(why),
            ..CacheStatus::default()
        }
    }

    pub fn value(&self) -> String {
        // Written in place: one allocation, no temporary strings, no formatting machinery.
        let mut numbers = itoa::Buffer::new();
        let mut value = String::with_capacity(64);
        value.push_str(CACHE_NAME);
        if self.hit {
            value.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            value.push_str("; fwd=");
            value.push_str(fwd);
        }
        if let Some(status) = self.fwd_status {
            value.push_str("; fwd-status=");
            value.push_str(numbers.format(status));
        }
        if let Some(ttl) = self.ttl {
            value.push_str("; ttl=");
            value.push_str(numbers.format(ttl));
        }
        if self.stored {
            value.push_str("; stored");
        }
        if self.collapsed {
            value.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            value.push_str("; detail=");
            value.push_str(detail);
        }
        value
    }

    /// The value of the common entries that carry no numbers, made at compile time.
    fn fixed(&self) -> Option<&'static HeaderValue> {
        if self.hit
            || self.ttl.is_some()
            || self.fwd_status.is_some()
            || self.stored
            || self.collapsed
        {
            return None;
        }
        FIXED
            .iter()
            .find(|fixed| self.fwd == Some(fixed.fwd) && self.detail == fixed.detail)
            .map(|fixed| &fixed.value)
    }

    /// What this entry tells of the cache's part, as [`CacheResult::of`] reads it back from
    /// the header.
    pub fn result(&self) -> CacheResult {
        if self.hit {
            return match self.ttl {
                Some(ttl) if ttl < 0 => CacheResult::Stale,
                _ => CacheResult::Hit,
            };
        }
        if self.detail == Some("stale-if-error") {
            CacheResult::Stale
        } else if self.fwd_status == Some(304) {
            CacheResult::Revalidated
        } else if matches!(self.fwd, Some("bypass" | "method")) {
            CacheResult::Bypass
        } else {
            CacheResult::Miss
        }
    }

    /// Appends this entry to the response's `Cache-Status` (caches nearer the handler list
    /// theirs first); returns its [`CacheStatus::result`], which the response now tells.
    pub fn add_to(&self, headers: &mut HeaderMap) -> CacheResult {
        // One lookup of the header, whether or not another cache wrote it first.
        match headers.entry(&CACHE_STATUS) {
            http::header::Entry::Vacant(vacant) => {
                let value = match self.fixed() {
                    Some(fixed) => fixed.clone(),
                    None => owned(self.value()),
                };
                vacant.insert(value);
            }
            http::header::Entry::Occupied(mut occupied) => {
                let value = match occupied.get().to_str() {
                    Ok(earlier) if !earlier.is_empty() => format!("{earlier}, {}", self.value()),
                    _ => self.value(),
                };
                occupied.insert(owned(value));
            }
        }
        self.result()
    }
}

/// Seconds of freshness left as of `now` (negative once stale), for `ttl=`.
pub fn ttl_secs(fresh_until: SystemTime, now: SystemTime) -> i64 {
    match fresh_until.duration_since(now) {
        Ok(left) => left.as_secs() as i64,
        // Stale by less than a second is still stale: -1, not 0.
        Err(past) => -(past.duration().as_secs().max(1) as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn get(url: &str) -> http::request::Parts {
        http::Request::get(url).body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_entrys_result_is_what_its_header_tells() {
        let statuses = [
            CacheStatus::forwarded("bypass"),
            CacheStatus::forwarded("method"),
            CacheStatus::forwarded("uri-miss"),
            CacheStatus {
                detail: Some("not-storable"),
                ..CacheStatus::forwarded("uri-miss")
            },
            CacheStatus {
                stored: true,
                ttl: Some(60),
                ..CacheStatus::forwarded("vary-miss")
            },
            CacheStatus {
                hit: true,
                ttl: Some(30),
                ..CacheStatus::default()
            },
            CacheStatus {
                hit: true,
                ttl: Some(-2),
                detail: Some("stale-while-revalidate"),
                ..CacheStatus::default()
            },
            CacheStatus {
                fwd_status: Some(304),
                ttl: Some(60),
                ..CacheStatus::forwarded("stale")
            },
            CacheStatus {
                detail: Some("stale-if-error"),
                ..CacheStatus::forwarded("stale")
            },
            CacheStatus {
                collapsed: true,
                ..CacheStatus::forwarded("uri-miss")
            },
        ];
        for status in statuses {
            // Alone, and after another cache's entry.
            for earlier in [None, Some("Upstream; hit")] {
                let mut map = HeaderMap::new();
                if let Some(earlier) = earlier {
                    map.insert(CACHE_STATUS.clone(), HeaderValue::from_static(earlier));
                }
                let result = status.add_to(&mut map);
                assert_eq!(Some(result), CacheResult::of(&map), "{status:?} {map:?}");
            }
        }
    }

    #[test]
    fn freshness_is_declared_by_any_of_its_three_headers_in_short_and_long_lists() {
        let filler: Vec<(String, String)> = (0..FEW_HEADERS + 4)
            .map(|i| (format!("x-filler-{i}"), "1".to_string()))
            .collect();
        for declared in ["cache-control", "CDN-Cache-Control", "expires"] {
            for many in [0, FEW_HEADERS + 4] {
                let mut pairs: Vec<(&str, &str)> = filler[..many]
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                pairs.push(("content-type", "text/plain"));
                assert!(!declares_freshness(&headers(&pairs)), "{many} headers");
                pairs.push((declared, "max-age=60"));
                assert!(declares_freshness(&headers(&pairs)), "{declared}, {many}");
            }
        }
        assert!(!declares_freshness(&HeaderMap::new()));
        // Around the boundary, and many values under few names (`keys_len` counts names).
        for names in [FEW_HEADERS - 1, FEW_HEADERS, FEW_HEADERS + 1] {
            let mut pairs: Vec<(&str, &str)> = filler[..names - 1]
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            pairs.push(("expires", "0"));
            assert_eq!(headers(&pairs).keys_len(), names);
            assert!(declares_freshness(&headers(&pairs)), "{names} names");
            pairs.pop();
            pairs.push(("x-other", "0"));
            assert!(!declares_freshness(&headers(&pairs)), "{names} names");
        }
        let mut pairs = vec![("set-cookie", "a=1"); 3 * FEW_HEADERS];
        pairs.push(("cache-control", "max-age=60"));
        assert!(declares_freshness(&headers(&pairs)));
        pairs.pop();
        assert!(!declares_freshness(&headers(&pairs)));
    }

    fn check(response: &[(&str, &str)]) -> Result<(), NotStored> {
        let headers = headers(response);
        let policy = policy(
            &get("http://a.test/"),
            StatusCode::OK,
            &headers,
            SystemTime::now(),
        );
        storable(&policy, &headers)
    }

    #[test]
    fn stores_only_what_declares_itself_shared() {
        assert_eq!(check(&[("cache-control", "public, max-age=60")]), Ok(()));
        assert_eq!(check(&[("cache-control", "s-maxage=60")]), Ok(()));
        assert_eq!(check(&[("cdn-cache-control", "max-age=60")]), Ok(()));
        assert_eq!(
            check(&[("cache-control", "max-age=60")]),
            Err(NotStored::NotDeclared)
        );
        assert_eq!(check(&[]), Err(NotStored::NotDeclared));
        assert_eq!(
            check(&[("cache-control", "private, max-age=60")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            check(&[("cache-control", "public, max-age=60, no-store")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            check(&[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "a=b")
            ]),
            Err(NotStored::SetCookie)
        );
        // CDN-Cache-Control wins over Cache-Control, both ways.
        assert_eq!(
            check(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60")
            ]),
            Ok(())
        );
        assert_eq!(
            check(&[
                ("cache-control", "public, max-age=60"),
                ("cdn-cache-control", "no-store")
            ]),
            Err(NotStored::Forbidden)
        );
    }

    #[test]
    fn cdn_cache_control_sets_freshness() {
        let now = SystemTime::now();
        let headers = headers(&[
            ("cache-control", "public, max-age=5"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        let policy = policy(&get("http://a.test/"), StatusCode::OK, &headers, now);
        assert_eq!(policy.time_to_live(now).as_secs(), 600);
    }

    #[test]
    fn conditionals() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v1\"")]),
            &stored
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "W/\"v1\"")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        assert!(not_modified(
            &headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")]),
            &stored
        ));
        // If-None-Match decides alone when present.
        assert!(!not_modified(
            &headers(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            &stored
        ));
    }

    #[test]
    fn ranges() {
        let r = |v: &str| range(&headers(&[("range", v)]), 100);
        assert_eq!(r("bytes=0-9"), RangeRequest::Part { start: 0, end: 9 });
        assert_eq!(r("bytes=90-"), RangeRequest::Part { start: 90, end: 99 });
        assert_eq!(r("bytes=-10"), RangeRequest::Part { start: 90, end: 99 });
        assert_eq!(r("bytes=95-200"), RangeRequest::Part { start: 95, end: 99 });
        assert_eq!(r("bytes=100-"), RangeRequest::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), RangeRequest::Whole);
        assert_eq!(r("items=0-1"), RangeRequest::Whole);
        assert_eq!(range(&HeaderMap::new(), 100), RangeRequest::Whole);
    }

    #[test]
    fn stale_directives() {
        let d = Directives::of(&[HeaderValue::from_static(
            "public, max-age=1, stale-while-revalidate=30, stale-if-error=\"60\"",
        )]);
        assert_eq!(d.while_revalidate(), Some(Duration::from_secs(30)));
        assert_eq!(d.if_error(), Some(Duration::from_secs(60)));
        let d = Directives::of(&[HeaderValue::from_static(
            "max-age=1, must-revalidate, stale-if-error=60",
        )]);
        assert_eq!(d.if_error(), None);
    }

    #[test]
    fn cache_status_values() {
        let hit = CacheStatus {
            hit: true,
            ttl: Some(42),
            ..CacheStatus::default()
        };
        assert_eq!(hit.value(), "Outpost; hit; ttl=42");
        let miss = CacheStatus {
            fwd: Some("uri-miss"),
            stored: true,
            ..CacheStatus::default()
        };
        let mut headers = headers(&[("cache-status", "Upstream; hit")]);
        miss.add_to(&mut headers);
        assert_eq!(
            headers["cache-status"],
            "Upstream; hit, Outpost; fwd=uri-miss; stored"
        );
        // The fixed values read as the formatted ones would.
        for entry in &FIXED {
            let status = CacheStatus {
                fwd: Some(entry.fwd),
                detail: entry.detail,
                ..CacheStatus::default()
            };
            let fixed = status.fixed().expect("a fixed value");
            assert_eq!(fixed, &entry.value);
            assert_eq!(fixed.to_str().ok(), Some(status.value().as_str()));
            // ... and are read back as they would be parsed.
            let mut headers = HeaderMap::new();
            headers.insert(CACHE_STATUS.clone(), fixed.clone());
            let parsed = HeaderValue::from_str(&format!("Other; hit, {}", status.value())).ok();
            let mut other = HeaderMap::new();
            other.insert(CACHE_STATUS.clone(), parsed.expect("a header value"));
            assert_eq!(CacheResult::of(&headers), Some(entry.result));
            assert_eq!(CacheResult::of(&other), Some(entry.result));
        }
        // Entries with numbers are parsed: ours is the last, another cache's is not read.
        let read = |value: &str| CacheResult::of(&self::tests::headers(&[("cache-status", value)]));
        assert_eq!(read("Outpost; hit; ttl=59"), Some(CacheResult::Hit));
        assert_eq!(
            read("Outpost; hit; ttl=-3; detail=stale-while-revalidate"),
            Some(CacheResult::Stale)
        );
        assert_eq!(
            read("Outpost; fwd=stale; fwd-status=500; ttl=-3; detail=stale-if-error"),
            Some(CacheResult::Stale)
        );
        assert_eq!(
            read("Outpost; fwd=stale; fwd-status=304; ttl=60; stored"),
            Some(CacheResult::Revalidated)
        );
        assert_eq!(
            read("Outpost; fwd=uri-miss; collapsed"),
            Some(CacheResult::Miss)
        );
        assert_eq!(
            read("Outpost; fwd=uri-miss; stored; ttl=60"),
            Some(CacheResult::Miss)
        );
        assert_eq!(
            read("Other; fwd=bypass, Outpost; hit; ttl=1"),
            Some(CacheResult::Hit)
        );
        assert_eq!(read("Outpost; hit; ttl=1, Other; fwd=uri-miss"), None);
        assert_eq!(read("OutpostX; hit"), None);
        // Just past its freshness is stale, and reads so.
        let now = SystemTime::now();
        assert_eq!(ttl_secs(now, now + Duration::from_millis(300)), -1);
        assert_eq!(ttl_secs(now + Duration::from_millis(1_500), now), 1);
        // A response varying on what the node sets per request is not shared.
        assert_eq!(
            vary(&self::tests::headers(&[("vary", "Accept, X-Request-Id")])),
            None
        );
        assert_eq!(
            vary(&self::tests::headers(&[("vary", "traceparent")])),
            None
        );
        assert_eq!(
            vary(&self::tests::headers(&[(
                "vary",
                "Accept-Encoding, accept"
            )])),
            Some(vec![header::ACCEPT, header::ACCEPT_ENCODING])
        );
        // A hit is written the way the short cut in `of` reads it.
        let hit = CacheStatus {
            hit: true,
            ttl: Some(-2),
            collapsed: true,
            ..CacheStatus::default()
        };
        assert_eq!(hit.value(), "Outpost; hit; ttl=-2; collapsed");
        assert!(hit.value().starts_with(HIT_PREFIX) && HIT_PREFIX.starts_with(CACHE_NAME));
        assert_eq!(read(&hit.value()), Some(CacheResult::Stale));
        // `ALL` is in discriminant order (the metrics index their series by it).
        for (index, result) in CacheResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, index);
        }
        // A collapsed or stored entry is formatted, not fixed.
        let collapsed = CacheStatus {
            fwd: Some("uri-miss"),
            collapsed: true,
            ..CacheStatus::default()
        };
        assert_eq!(collapsed.fixed(), None);
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }
}
