//! Outpost's shared cache: the per-app HTTP cache in front of handlers, and the store behind
//! the Workers Cache API (`caches.default`, `caches.open(name)`).
//!
//! - The rules of RFC 9111 come from `http-cache-semantics` (as a shared cache);
//!   [`rules`] adds what it leaves out: what a CDN stores (responses that declare themselves
//!   storable by a shared cache), `CDN-Cache-Control` (RFC 9213), `stale-while-revalidate`
//!   and `stale-if-error` (RFC 5861), conditional and range requests answered from the
//!   cache, and `Cache-Status` (RFC 9211).
//! - Responses are kept in a memory tier and an optional disk tier ([`store`]), both
//!   size-bounded `moka` caches; bodies stream in and out without being held whole.
//! - Concurrent misses of one URL make one handler call ([`Cache::serve`]).
//! - Purges ([`Purge`]) remove by URL, prefix, tag or everything of an app, and cancel fills
//!   under way for it.

pub mod api;
pub mod rules;
mod serve;
pub mod store;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use rules::CacheStatus;
pub use serve::{push_url, url_of};
pub use store::{Key, Space};

use store::{Fills, Tiers};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A body, as the node's HTTP path carries it.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// Largest chunk read from the disk tier at once.
pub const CHUNK: usize = 64 * 1024;

/// The cache's sizes and bounds.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes the memory tier holds (bodies and headers).
    pub memory_bytes: u64,
    /// Largest body kept in memory; larger ones are kept on disk only.
    pub memory_object_bytes: u64,
    /// The disk tier, if any.
    pub disk: Option<DiskConfig>,
    /// Largest body stored at all (Workers: 512 MB).
    pub max_object_bytes: u64,
    /// How long a request waits for another's handler call to fill the same URL before it
    /// calls the handler itself.
    pub collapse_timeout: Duration,
    /// Requests that may wait for one fill; more call the handler themselves.
    pub max_collapsed: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 256 << 20,
            memory_object_bytes: 1 << 20,
            disk: None,
            max_object_bytes: 512 << 20,
            collapse_timeout: Duration::from_secs(10),
            max_collapsed: 1024,
        }
    }
}

/// A disk tier: a directory of bodies and their metadata, at most `bytes` of them.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub dir: PathBuf,
    pub bytes: u64,
}

/// What a purge removes from an app's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purge {
    /// Everything, the Cache API's entries included (as for prefixes and tags).
    All,
    /// The responses of one URL (every variant; `http:` and `https:` alike) in the HTTP
    /// cache and `caches.default`.
    Url(String),
    /// The responses of URLs starting with this (`host/path…`, scheme optional).
    Prefix(String),
    /// The responses tagged so (`Cache-Tag`).
    Tag(String),
}

/// A URL without its scheme, as purges compare them.
fn schemeless(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

impl Purge {
    fn matches(&self, key: &Key, meta: Option<&store::Meta>) -> bool {
        match self {
            Purge::All => true,
            Purge::Url(url) => schemeless(&key.url) == schemeless(url),
            Purge::Prefix(prefix) => schemeless(&key.url).starts_with(schemeless(prefix)),
            Purge::Tag(tag) => meta.is_some_and(|meta| meta.tags.iter().any(|t| t == tag)),
        }
    }
}

/// Whether a purge happened since a fill began (then what it filled is not stored).
pub(crate) struct Unpurged {
    purges: Arc<AtomicU64>,
    at: u64,
}

impl Unpurged {
    pub(crate) fn holds(&self) -> bool {
        self.purges.load(Ordering::Acquire) == self.at
    }
}

/// The node's cache: one per node, its entries scoped by app.
pub struct Cache {
    tiers: Arc<Tiers>,
    fills: Arc<Fills>,
    /// Purges so far: a fill that began before a purge is not stored. (Counted for the node,
    /// not per app: a purge is rare, and a fill costs one atomic read this way.)
    purges: Arc<AtomicU64>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (memory, disk) = self.sizes();
        f.debug_struct("Cache")
            .field("memory_bytes", &memory)
            .field("disk_bytes", &disk)
            .finish()
    }
}

impl Cache {
    /// Opens the cache; with a disk tier, what it held before is found again.
    pub fn open(config: CacheConfig) -> std::io::Result<Arc<Cache>> {
        Ok(Arc::new(Cache {
            tiers: Arc::new(Tiers::open(config)?),
            fills: Arc::new(Fills::default()),
            purges: Arc::default(),
        }))
    }

    pub fn config(&self) -> &CacheConfig {
        self.tiers.config()
    }

    /// A check that no purge happened since it was made.
    fn unpurged(&self) -> Unpurged {
        Unpurged {
            at: self.purges.load(Ordering::Acquire),
            purges: self.purges.clone(),
        }
    }

    /// Removes what `purge` names from `app`'s cache, in both tiers; fills under way for
    /// the app are not stored.
    pub fn purge(&self, app: &str, purge: &Purge) {
        self.purges.fetch_add(1, Ordering::AcqRel);
        if let Purge::Url(url) = purge {
            // Both schemes' keys, directly: no scan of every entry.
            let path = schemeless(url);
            for scheme in ["http", "https"] {
                let url = format!("{scheme}://{path}");
                self.forget_url(app, url.clone());
                self.tiers.remove(&Key {
                    app: app.to_string(),
                    space: Space::Api(None),
                    url,
                    variant: String::new(),
                });
            }
            return;
        }
        let app = app.to_string();
        let purge = purge.clone();
        self.tiers
            .invalidate(move |key, meta| key.app == app && purge.matches(key, meta));
    }

    /// Removes what the HTTP cache holds for `url` (every variant) without cancelling fills
    /// under way for other URLs of the app.
    pub(crate) fn forget_url(&self, app: &str, url: String) {
        self.tiers.remove_url(Key {
            app: app.to_string(),
            space: Space::Http,
            url,
            variant: String::new(),
        });
    }

    /// Completes pending evictions and purges now (they otherwise complete lazily; a purged
    /// entry is never found either way).
    pub fn sync(&self) {
        self.tiers.sync();
    }

    /// Bytes held by the memory and the disk tier.
    pub fn sizes(&self) -> (u64, u64) {
        self.tiers.sizes()
    }
}

#[cfg(test)]
mod tests;
