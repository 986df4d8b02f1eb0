//! The store behind the Workers Cache API (`caches.default`, `caches.open(name)`), scoped
//! per app and per cache name, in the same tiers as the HTTP cache. What it accepts and how
//! `match` answers follow workerd with Cloudflare's cache behind it.

use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderMap, Response};
use http_body_util::BodyExt;

use crate::rules::{self, CacheStatus};
use crate::store::{Key, Meta, Pending, Space, Tee};
use crate::{Body, BoxError, Cache};

/// One app's view of the node's cache, as its isolates hold it.
#[derive(Clone)]
pub struct CacheScope {
    pub cache: Arc<Cache>,
    pub app: String,
}

impl CacheScope {
    fn key(&self, name: Option<&str>, request: &http::request::Parts) -> Key {
        Key {
            app: self.app.clone(),
            space: Space::Api(name.map(str::to_string)),
            url: crate::serve::url_of(&request.uri),
            variant: String::new(),
        }
    }

    /// `cache.match(request)`: the stored response for the request's URL while it is
    /// fresh (never revalidated: a stale one is not found); `304` when the request's
    /// `If-None-Match`/`If-Modified-Since` hold, `206`/`416` for a byte `Range`. The key is
    /// the URL alone: `Vary` is not matched (as in Workers).
    pub async fn lookup(
        &self,
        name: Option<&str>,
        request: &http::request::Parts,
    ) -> Option<Response<Body>> {
        let key = self.key(name, request);
        let found = self.cache.tiers.find(&key, &HeaderMap::new()).await?.ok()?;
        let now = SystemTime::now();
        if found.meta.fresh_until <= now {
            return None;
        }
        let status = CacheStatus {
            hit: true,
            ttl: Some(rules::ttl_secs(found.meta.fresh_until, now)),
            ..CacheStatus::default()
        };
        crate::serve::answer(request, &found, status, now)
            .await
            .ok()
    }

    /// `cache.put(request, response)`: reads the response's body whole and stores it, if
    /// the response may be stored by a shared cache for some time (`Cache-Control`,
    /// `CDN-Cache-Control`, `Expires`; not `private`, `no-store`, or with `Set-Cookie`)
    /// and fits the cache's largest object. The checks Workers makes with a TypeError
    /// (method, 206, `Vary: *`) are made by the caller.
    pub async fn put(
        &self,
        name: Option<&str>,
        request: &http::request::Parts,
        response: Response<Body>,
    ) -> Result<(), BoxError> {
        let now = SystemTime::now();
        let policy_request = rules::policy_request(request);
        let (head, body) = response.into_parts();
        let policy = rules::policy(&policy_request, head.status, &head.headers, now);
        let storable = policy.is_storable()
            && !policy.time_to_live(now).is_zero()
            && !head.headers.contains_key(header::SET_COOKIE);
        let mut body = if storable {
            let meta = Meta {
                key: self.key(name, request),
                fresh_until: rules::fresh_until(&policy, now),
                policy,
                status: head.status,
                headers: head.headers.clone(),
                vary: Vec::new(),
                tags: rules::tags(&head.headers),
                size: 0,
            };
            Tee::wrap(
                body,
                Pending {
                    tiers: self.cache.tiers.clone(),
                    meta,
                    still_valid: self.cache.unpurged(),
                    guard: None,
                },
            )
        } else {
            body
        };
        // Read to its end: the copy is stored once it ended whole.
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok(())
    }

    /// `cache.delete(request)`: whether a response was stored for the request's URL.
    pub fn delete(&self, name: Option<&str>, request: &http::request::Parts) -> bool {
        let key = self.key(name, request);
        self.cache.tiers.remove(&key)
    }

    /// `cache.keys()`: the URLs the cache `name` (`None`: `caches.default`) holds responses
    /// for, sorted.
    pub fn keys(&self, name: Option<&str>) -> Vec<String> {
        let space = Space::Api(name.map(str::to_string));
        self.cache
            .tiers
            .urls(|key| key.app == self.app && key.space == space)
            .into_iter()
            .collect()
    }

    /// `caches.delete(name)`: removes every entry of the app's cache `name`; whether it held
    /// any (a cache is made by its first `put`, so one without entries does not exist).
    pub fn delete_cache(&self, name: &str) -> bool {
        let space = Space::Api(Some(name.to_string()));
        let held = self
            .cache
            .tiers
            .any(|key| key.app == self.app && key.space == space);
        let app = self.app.clone();
        self.cache
            .tiers
            .invalidate(move |key, _| key.app == app && key.space == space);
        held
    }
}
