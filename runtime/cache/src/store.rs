//! Where responses are kept: a memory tier and an optional disk tier, each a size-bounded
//! `moka` cache (TinyLFU admission, LRU eviction) of entries. The memory tier holds bodies
//! up to [`CacheConfig::memory_object_bytes`]; the disk tier holds every stored body as a
//! file beside its metadata (`<hash>-<n>.body`, `<hash>-<n>.meta`), deleted when moka
//! evicts or invalidates the entry, and indexed again when the node restarts.
//!
//! Bodies stream in: a response is passed to its client through a [`Tee`] that keeps a copy
//! of each chunk (in memory while small enough, and in a file written on a blocking thread
//! with backpressure), and the entry becomes visible only once the body ended whole.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use http_cache_semantics::CachePolicy;
use moka::notification::RemovalCause;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use crate::{Body, BoxError, CacheConfig};

/// The hash of every map keyed by [`Key`]: a key is hashed on every request (the memory
/// tier, the pass list, the fills), and std's SipHash costs several times foldhash's.
/// Seeded per process, so a client cannot choose URLs that collide.
type Hasher = foldhash::quality::RandomState;
/// A tier's index.
type TierMap = moka::sync::Cache<Key, Entry, Hasher>;

/// One tier's map, and how many entries it holds.
struct Tier {
    map: TierMap,
    /// Entries inserted and not yet removed: counted before an insert and after a removal
    /// (the map's eviction listener), so never below what the map holds. At 0 a lookup is
    /// skipped: the misses of an app that stores nothing are most requests of a node.
    held: Arc<AtomicU64>,
}

impl Tier {
    fn insert(&self, key: Key, entry: Entry) {
        self.held.fetch_add(1, Ordering::Relaxed);
        self.map.insert(key, entry);
    }

    fn get(&self, key: &Key) -> Option<Entry> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.map.get(key)
    }
}

impl std::ops::Deref for Tier {
    type Target = TierMap;

    /// Removals and invalidations, which the count follows through the eviction listener.
    fn deref(&self) -> &TierMap {
        &self.map
    }
}

/// Where an entry lives in the key space: the HTTP cache in front of an app's handler, or
/// one of the app's Cache API caches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Space {
    Http,
    /// `caches.default` (`None`) or `caches.open(name)`.
    Api(Option<String>),
}

/// What a stored response is found by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    pub app: String,
    pub space: Space,
    /// `scheme://authority/path?query`.
    pub url: String,
    /// For a response that varies on request headers: the request's values of them
    /// (see [`crate::rules::variant`]); empty otherwise.
    pub variant: String,
}

impl Key {
    /// The key of the URL itself, where a response with `Vary` leaves a marker naming the
    /// headers its variants are told apart by.
    pub fn primary(&self) -> Key {
        Key {
            variant: String::new(),
            ..self.clone()
        }
    }

    fn file_stem(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(serde_json::to_vec(self).unwrap_or_default());
        hex::encode(&hash.finalize()[..12])
    }
}

/// Everything of a stored response but its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub key: Key,
    /// The rules' view of it (freshness, validators, what requests it matches).
    pub policy: CachePolicy,
    /// Until when it is fresh.
    pub fresh_until: SystemTime,
    #[serde(with = "http_serde::status_code")]
    pub status: StatusCode,
    /// Its headers as the handler sent them (hop-by-hop ones removed).
    #[serde(with = "http_serde::header_map")]
    pub headers: HeaderMap,
    /// The request headers it varies on (empty: none).
    #[serde(with = "names")]
    pub vary: Vec<HeaderName>,
    /// Its `Cache-Tag`s.
    pub tags: Vec<String>,
    /// Its body's length.
    pub size: u64,
}

mod names {
    use http::HeaderName;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(names.iter().map(HeaderName::as_str))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names
            .into_iter()
            .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// One entry of a tier.
#[derive(Clone)]
pub(crate) enum Entry {
    /// At a URL's primary key: its responses vary on these request headers.
    Vary(Arc<[HeaderName]>),
    /// A response with its body in memory.
    Memory(Arc<Meta>, Bytes),
    /// A response with its body in a file.
    Disk(Arc<Meta>, Arc<PathBuf>),
}

impl Entry {
    fn meta(&self) -> Option<&Meta> {
        match self {
            Entry::Vary(_) => None,
            Entry::Memory(meta, _) | Entry::Disk(meta, _) => Some(meta),
        }
    }

    fn weight(&self) -> u32 {
        let bytes = match self {
            Entry::Vary(names) => 64 + names.len() as u64 * 16,
            Entry::Memory(meta, body) => 512 + meta.headers.len() as u64 * 64 + body.len() as u64,
            Entry::Disk(meta, _) => 4096 + meta.size,
        };
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// A URL has stored responses, but none for the request's values of the headers they
/// vary on.
#[derive(Debug)]
pub struct VaryMiss;

/// A stored response found for a request.
#[derive(Clone)]
pub struct Found {
    pub meta: Arc<Meta>,
    pub body: FoundBody,
}

#[derive(Clone)]
pub enum FoundBody {
    Memory(Bytes),
    Disk(Arc<PathBuf>),
}

impl Found {
    /// Its body, or the bytes `start..=end` of it, streamed from where it is kept.
    pub async fn body(&self, part: Option<(u64, u64)>) -> std::io::Result<Body> {
        let (start, end) = part.unwrap_or((0, self.meta.size.saturating_sub(1)));
        let length = if self.meta.size == 0 {
            0
        } else {
            end + 1 - start
        };
        match &self.body {
            FoundBody::Memory(bytes) => {
                let slice = if part.is_some() {
                    bytes.slice(start as usize..=end as usize)
                } else {
                    bytes.clone()
                };
                Ok(http_body_util::Full::new(slice)
                    .map_err(|never| match never {})
                    .boxed_unsync())
            }
            FoundBody::Disk(path) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let mut file = tokio::fs::File::open(path.as_path()).await?;
                if start > 0 {
                    file.seek(std::io::SeekFrom::Start(start)).await?;
                }
                let reader =
                    tokio_util::io::ReaderStream::with_capacity(file.take(length), crate::CHUNK);
                let stream = futures::StreamExt::map(reader, |chunk| {
                    chunk.map(Frame::data).map_err(|e| -> BoxError {
                        format!("reading a cached body failed: {e}").into()
                    })
                });
                Ok(http_body_util::StreamBody::new(stream).boxed_unsync())
            }
        }
    }
}

/// The tiers.
pub(crate) struct Tiers {
    memory: Tier,
    disk: Option<Disk>,
    config: CacheConfig,
}

struct Disk {
    dir: PathBuf,
    index: Tier,
    next: AtomicU64,
    /// Body files being written, by their URL's key: a removal of the URL while one is
    /// written cancels it, or the file indexed after the removal would bring back what was
    /// removed (`cache.delete()` right after `cache.put()`, a POST, a purge of the URL).
    writes: Mutex<HashMap<Key, Write>>,
}

/// The body files of one URL being written.
struct Write {
    cancelled: Arc<AtomicBool>,
    writers: usize,
}

impl Disk {
    /// Registers a body file of `key` about to be written; its flag says whether the URL
    /// was removed meanwhile.
    fn begin_write(&self, key: &Key) -> Arc<AtomicBool> {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let write = writes.entry(key.primary()).or_insert_with(|| Write {
            cancelled: Arc::new(AtomicBool::new(false)),
            writers: 0,
        });
        write.writers += 1;
        write.cancelled.clone()
    }

    /// Runs `index` (told whether the write still stands) and unregisters the write, under
    /// the lock [`Disk::cancel_writes`] takes: a removal either cancels the file or finds
    /// it indexed.
    fn end_write(&self, key: &Key, cancelled: &Arc<AtomicBool>, index: impl FnOnce(bool)) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        index(!cancelled.load(Ordering::Acquire));
        let primary = key.primary();
        if let Some(write) = writes.get_mut(&primary) {
            if Arc::ptr_eq(&write.cancelled, cancelled) {
                write.writers -= 1;
                if write.writers == 0 {
                    writes.remove(&primary);
                }
            }
        }
    }

    /// Cancels the body files being written of the URL whose own key is `primary`.
    fn cancel_writes(&self, primary: &Key) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(write) = writes.remove(primary) {
            write.cancelled.store(true, Ordering::Release);
        }
    }

    /// Cancels the body files being written whose URL `doomed` picks (by key alone).
    fn cancel_writes_if(&self, doomed: impl Fn(&Key) -> bool) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.retain(|key, write| {
            let doomed = doomed(key);
            if doomed {
                write.cancelled.store(true, Ordering::Release);
            }
            !doomed
        });
    }

    /// A new file name for a body of `key` (unique within the directory).
    fn body_path(&self, key: &Key) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(
            "{}-{}-{n}.body",
            key.file_stem(),
            std::process::id()
        ))
    }
}

/// Whether removing a disk tier's entry deletes its files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    Kept,
    Deleted,
}

fn tier(capacity: u64, files: Files) -> Tier {
    let held = Arc::new(AtomicU64::new(0));
    let removed = held.clone();
    let map = moka::sync::Cache::builder()
        .max_capacity(capacity)
        .weigher(|_: &Key, entry: &Entry| entry.weight())
        .support_invalidation_closures()
        .eviction_listener(move |_key: Arc<Key>, entry: Entry, _cause: RemovalCause| {
            removed.fetch_sub(1, Ordering::Relaxed);
            // Evicted, invalidated or replaced: an entry's files are its own (a refresh
            // links the body under a new name first).
            if let (Files::Deleted, Entry::Disk(_, body)) = (files, &entry) {
                let _ = std::fs::remove_file(body.with_extension("meta"));
                let _ = std::fs::remove_file(body.as_path());
            }
        })
        .build_with_hasher(Hasher::default());
    Tier { map, held }
}

impl Tiers {
    /// Opens the tiers; with a disk tier, indexes the entries its directory holds.
    pub(crate) fn open(config: CacheConfig) -> std::io::Result<Tiers> {
        let memory = tier(config.memory_bytes, Files::Kept);
        let disk = match &config.disk {
            None => None,
            Some(disk) => {
                std::fs::create_dir_all(&disk.dir)?;
                let index = tier(disk.bytes, Files::Deleted);
                let found = reindex(&disk.dir, &index)?;
                if found > 0 {
                    tracing::info!(
                        "the disk cache in {} holds {found} responses",
                        disk.dir.display()
                    );
                }
                Some(Disk {
                    dir: disk.dir.clone(),
                    index,
                    next: AtomicU64::new(0),
                    writes: Mutex::new(HashMap::new()),
                })
            }
        };
        Ok(Tiers {
            memory,
            disk,
            config,
        })
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn get(&self, key: &Key) -> Option<Entry> {
        if let Some(entry) = self.memory.get(key) {
            return Some(entry);
        }
        let entry = self.disk.as_ref()?.index.get(key)?;
        if let Entry::Vary(_) = &entry {
            self.memory.insert(key.clone(), entry.clone());
        }
        Some(entry)
    }

    /// The stored response for `key`, following its URL's `Vary` marker: the variant of
    /// `request_headers`. `Err(VaryMiss)` when the URL has responses but none for this
    /// variant.
    pub(crate) async fn find(
        &self,
        key: &Key,
        request_headers: &HeaderMap,
    ) -> Option<Result<Found, VaryMiss>> {
        let mut entry = self.get(key)?;
        if let Entry::Vary(names) = &entry {
            let variant = Key {
                variant: crate::rules::variant(names, request_headers),
                ..key.clone()
            };
            match self.get(&variant) {
                Some(found) => entry = found,
                None => return Some(Err(VaryMiss)),
            }
        }
        match entry {
            Entry::Vary(_) => None,
            Entry::Memory(meta, body) => Some(Ok(Found {
                meta,
                body: FoundBody::Memory(body),
            })),
            Entry::Disk(meta, path) => {
                if meta.size <= self.config.memory_object_bytes {
                    // Small enough to keep in memory: read once, then served from there.
                    let read = tokio::fs::read(path.as_path()).await;
                    if let Ok(bytes) = read {
                        if bytes.len() as u64 == meta.size {
                            let bytes = Bytes::from(bytes);
                            self.memory.insert(
                                meta.key.clone(),
                                Entry::Memory(meta.clone(), bytes.clone()),
                            );
                            return Some(Ok(Found {
                                meta,
                                body: FoundBody::Memory(bytes),
                            }));
                        }
                    }
                }
                Some(Ok(Found {
                    meta,
                    body: FoundBody::Disk(path),
                }))
            }
        }
    }

    /// Replaces the metadata of a stored response (after a 304), keeping its body.
    pub(crate) fn refresh(&self, found: &Found, meta: Meta) -> Found {
        let meta = Arc::new(meta);
        match &found.body {
            FoundBody::Memory(bytes) => {
                self.memory
                    .insert(meta.key.clone(), Entry::Memory(meta.clone(), bytes.clone()));
            }
            FoundBody::Disk(_) => {}
        }
        if let Some(disk) = &self.disk {
            if let Some(Entry::Disk(_, path)) = disk.index.get(&meta.key) {
                // The body under a new name, so that the replaced entry's removal (which
                // deletes its files) leaves it.
                let renamed = disk.body_path(&meta.key);
                if std::fs::hard_link(path.as_path(), &renamed).is_ok() {
                    write_meta(&renamed, &meta);
                    disk.index.insert(
                        meta.key.clone(),
                        Entry::Disk(meta.clone(), Arc::new(renamed)),
                    );
                }
            }
        }
        Found {
            meta,
            body: found.body.clone(),
        }
    }

    /// Removes one key from both tiers.
    pub(crate) fn remove(&self, key: &Key) -> bool {
        let mut removed = self.memory.remove(key).is_some();
        if let Some(disk) = &self.disk {
            // A file still being written would be indexed after the removal.
            disk.cancel_writes(&key.primary());
            removed |= disk.index.remove(key).is_some();
        }
        removed
    }

    /// Every entry of both tiers (a scan: for rare calls).
    fn entries(&self) -> impl Iterator<Item = (Arc<Key>, Entry)> + '_ {
        self.memory
            .iter()
            .chain(self.disk.iter().flat_map(|disk| disk.index.iter()))
    }

    /// The URLs of the stored responses whose keys `wanted` picks (a scan: for rare calls).
    pub(crate) fn urls(&self, wanted: impl Fn(&Key) -> bool) -> std::collections::BTreeSet<String> {
        self.entries()
            .filter(|(key, entry)| wanted(key) && !matches!(entry, Entry::Vary(_)))
            .map(|(key, _)| key.url.clone())
            .collect()
    }

    /// Whether either tier holds an entry `wanted` picks (a scan: for rare calls).
    pub(crate) fn any(&self, wanted: impl Fn(&Key) -> bool) -> bool {
        self.entries().any(|(key, _)| wanted(&key))
    }

    /// Removes the responses stored under `key`'s URL: the key itself, or every variant when
    /// the URL's responses vary (found by scanning, which is rare).
    pub(crate) fn remove_url(&self, key: Key) {
        let primary = if key.variant.is_empty() {
            key
        } else {
            key.primary()
        };
        if let Some(disk) = &self.disk {
            disk.cancel_writes(&primary);
        }
        // What the URL's own key held: a response, or the marker of responses with Vary.
        let in_memory = self.memory.remove(&primary);
        let on_disk = self
            .disk
            .as_ref()
            .and_then(|disk| disk.index.remove(&primary));
        if let Some(Entry::Vary(_)) = in_memory.or(on_disk) {
            let (app, space, url) = (primary.app, primary.space, primary.url);
            self.invalidate(move |k, _| k.app == app && k.space == space && k.url == url);
        }
    }

    /// Removes every entry `doomed` picks, from both tiers.
    pub(crate) fn invalidate(
        &self,
        doomed: impl Fn(&Key, Option<&Meta>) -> bool + Clone + Send + Sync + 'static,
    ) {
        if let Some(disk) = &self.disk {
            // Writes of what a key alone dooms (a purge by tag cancels its fills through the
            // purge count instead).
            disk.cancel_writes_if(|key| doomed(key, None));
        }
        let pick = doomed.clone();
        let _ = self
            .memory
            .invalidate_entries_if(move |key, entry| pick(key, entry.meta()));
        if let Some(disk) = &self.disk {
            let _ = disk
                .index
                .invalidate_entries_if(move |key, entry| doomed(key, entry.meta()));
        }
    }

    /// Runs pending maintenance (evictions, invalidations) now; for tests and shutdown.
    pub fn sync(&self) {
        self.memory.run_pending_tasks();
        if let Some(disk) = &self.disk {
            disk.index.run_pending_tasks();
        }
    }

    /// Whether both tiers are empty (by their counts, which are never low).
    pub(crate) fn hold_nothing(&self) -> bool {
        self.held() == 0
    }

    /// Entries the tiers count as held (what decides whether a lookup is skipped).
    pub(crate) fn held(&self) -> u64 {
        self.memory.held.load(Ordering::Relaxed)
            + self
                .disk
                .as_ref()
                .map_or(0, |disk| disk.index.held.load(Ordering::Relaxed))
    }

    /// Bytes held by each tier (memory, disk), by their weights (pending maintenance run
    /// first: moka counts lazily).
    pub fn sizes(&self) -> (u64, u64) {
        self.sync();
        (
            self.memory.weighted_size(),
            self.disk.as_ref().map_or(0, |d| d.index.weighted_size()),
        )
    }
}

/// Indexes the responses a disk tier's directory holds; removes what is incomplete.
fn reindex(dir: &Path, index: &Tier) -> std::io::Result<usize> {
    let mut found = 0;
    let mut metas = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !named_by_this_cache(&path) {
            // Not this cache's: left alone (the directory may be shared).
            continue;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("meta") => metas.push(path),
            // A body whose metadata never made it.
            Some("body") if !path.with_extension("meta").exists() => {
                let _ = std::fs::remove_file(&path);
            }
            // Bodies and metadata cut off mid-write.
            Some("partial" | "meta-new") => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
    }
    for meta_path in metas {
        let body = meta_path.with_extension("body");
        let meta = std::fs::read(&meta_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Meta>(&bytes).ok());
        let size = std::fs::metadata(&body).map(|m| m.len()).ok();
        match meta {
            Some(meta) if Some(meta.size) == size => {
                index_file(index, meta, body);
                found += 1;
            }
            _ => {
                let _ = std::fs::remove_file(&meta_path);
                let _ = std::fs::remove_file(&body);
            }
        }
    }
    Ok(found)
}

/// Whether a file's name is one [`Disk::body_path`] makes (`<24 hex>-<pid>-<n>.<ext>`).
fn named_by_this_cache(path: &Path) -> bool {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return false;
    };
    let mut parts = stem.split('-');
    let hash = parts.next().unwrap_or("");
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    hash.len() == 24
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && digits(parts.next())
        && digits(parts.next())
        && parts.next().is_none()
}

/// Puts a response whose body is in the file `body` into the disk tier's index, with its
/// URL's `Vary` marker when it varies.
fn index_file(index: &Tier, meta: Meta, body: PathBuf) {
    if !meta.vary.is_empty() {
        index.insert(meta.key.primary(), Entry::Vary(meta.vary.clone().into()));
    }
    index.insert(
        meta.key.clone(),
        Entry::Disk(Arc::new(meta), Arc::new(body)),
    );
}

fn write_meta(body: &Path, meta: &Meta) {
    let path = body.with_extension("meta");
    let temp = body.with_extension("meta-new");
    let written = serde_json::to_vec(meta)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&temp, bytes))
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = written {
        tracing::warn!("writing cache metadata to {} failed: {e}", path.display());
        let _ = std::fs::remove_file(&temp);
    }
}

/// Concurrent misses of one key: the first fills it, the others wait for it (bounded).
/// A key whose last response could not be stored is remembered for a while
/// ("hit-for-pass", as in Varnish and Fastly): its misses then go to the handler at once
/// instead of queueing behind each other.
#[derive(Default)]
pub(crate) struct Fills {
    filling: Mutex<std::collections::HashMap<Key, watch::Sender<()>, Hasher>>,
    passes: Passes,
}

/// URLs whose last response could not be stored, each until [`PASS_FOR`] after it. A
/// hint, so a map under a lock rather than moka (whose lookup cost three times as much,
/// and this one is on every miss of a dynamic app): a URL it forgets costs one coalesced
/// miss, and past [`MAX_PASSES`] URLs it drops the expired ones, or all when fewer than a
/// quarter had expired. Expiries by the coarse clock (a tick late at most). Held by
/// [`UrlPrint`], which a request's URL gives without the key's strings being built.
#[derive(Default)]
struct Passes(Mutex<std::collections::HashMap<UrlPrint, std::time::Instant, Hasher>>);

impl Passes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<UrlPrint, std::time::Instant, Hasher>>
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, url: UrlPrint) -> bool {
        let passes = self.lock();
        // No clock read for a URL that is not there (most lookups of a cached app).
        passes
            .get(&url)
            .is_some_and(|until| *until > outpost_clock::now())
    }

    /// Remembers `url` for [`PASS_FOR`] unless it is remembered now; one lookup under one
    /// lock.
    fn remember(&self, url: UrlPrint) {
        let now = outpost_clock::now();
        let mut passes = self.lock();
        if passes.get(&url).is_some_and(|until| *until > now) {
            return;
        }
        if passes.len() >= MAX_PASSES && !passes.contains_key(&url) {
            passes.retain(|_, until| *until > now);
            // Unless that freed a good part, start over: a scan per insert would not do.
            if passes.len() >= MAX_PASSES / 4 * 3 {
                passes.clear();
            }
        }
        passes.insert(url, now + PASS_FOR);
    }

    fn remove(&self, url: UrlPrint) {
        self.lock().remove(&url);
    }
}

/// A URL's fingerprint on the pass list: a 64-bit hash (foldhash, fixed seed) of its key's
/// app, space and URL (not its variant: the URL's primary key), the URL as the pieces
/// [`crate::serve::url_of`] writes it from (scheme, authority, path and query). The same
/// from a [`Key`] and from a request's `Uri`, so a dynamic app's request finds its URL on
/// the list without its key's strings being built. Two URLs of one fingerprint (1 in 2⁶⁴)
/// would share their place on the list: the other one's misses would skip coalescing for a
/// while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct UrlPrint(u64);

impl UrlPrint {
    pub(crate) fn of_key(key: &Key) -> UrlPrint {
        // The URL in the pieces a `Uri` gives (a scheme has no ':', an authority no '/').
        let url = key.url.as_str();
        let pieces = match url.split_once("://") {
            Some((scheme, rest)) => match rest.find('/') {
                Some(path) => [scheme, &rest[..path], &rest[path..]],
                None => [scheme, rest, ""],
            },
            // No URL a request has: its own print.
            None => [url, "", ""],
        };
        UrlPrint::of(&key.app, &key.space, pieces)
    }

    /// The fingerprint of `app`'s key of `uri` in the HTTP cache.
    pub(crate) fn of_uri(app: &str, uri: &http::Uri) -> UrlPrint {
        let [scheme, _, authority, path] = crate::serve::url_pieces(uri);
        UrlPrint::of(app, &Space::Http, [scheme, authority, path])
    }

    /// Each piece after its length, through foldhash (a word at a time: FNV-1a over each
    /// byte cost ~230 instructions for a short URL).
    fn of(app: &str, space: &Space, url: [&str; 3]) -> UrlPrint {
        use std::hash::{BuildHasher as _, Hasher as _};
        const SEED: u64 = 0x6f75_7470_6f73_7421;
        let mut hasher = foldhash::fast::FixedState::with_seed(SEED).build_hasher();
        let mut feed = |piece: &str| {
            hasher.write_usize(piece.len());
            hasher.write(piece.as_bytes());
        };
        feed(app);
        // The space as a piece whose length tells it.
        match space {
            Space::Http => feed(""),
            Space::Api(None) => feed("\0"),
            Space::Api(Some(name)) => {
                feed("\0\0");
                feed(name);
            }
        }
        for piece in url {
            feed(piece);
        }
        UrlPrint(hasher.finish())
    }
}

/// How long a key whose response was not storable skips request coalescing.
const PASS_FOR: std::time::Duration = std::time::Duration::from_secs(120);
/// Keys remembered so.
const MAX_PASSES: usize = 100_000;

/// Whether a handler's response could be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storable {
    Yes,
    No,
}

/// What a miss does about others missing the same key.
pub(crate) enum Fill {
    /// Goes to the handler and stores what it answers; others wait until this is dropped.
    Leader(FillGuard),
    /// Waits for the leader (until its guard drops), then looks again.
    Wait(watch::Receiver<()>),
    /// Too many wait already: goes to the handler itself.
    Crowded,
    /// The key's last response could not be stored: goes to the handler itself, and its
    /// response is most likely not stored either.
    Pass,
}

/// Held while a key is being filled; dropping it wakes who waits for it.
pub struct FillGuard {
    fills: Arc<Fills>,
    key: Key,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        // Dropping the sender closes every waiter's receiver.
        let sender = self
            .fills
            .filling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        drop(sender);
    }
}

impl Fills {
    /// Remembers that `url`'s response could not be stored (or, `storable`, that it could).
    pub(crate) fn note(&self, url: UrlPrint, storable: Storable) {
        match storable {
            Storable::No => self.passes.remember(url),
            Storable::Yes => self.passes.remove(url),
        }
    }

    /// Whether `url` is on the pass list now.
    pub(crate) fn passes(&self, url: UrlPrint) -> bool {
        self.passes.contains(url)
    }

    pub(crate) fn begin(self: &Arc<Self>, key: &Key, max_waiters: usize) -> Fill {
        if self.passes.contains(UrlPrint::of_key(key)) {
            return Fill::Pass;
        }
        let mut filling = self.filling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(leader) = filling.get(key) {
            if leader.receiver_count() >= max_waiters {
                return Fill::Crowded;
            }
            return Fill::Wait(leader.subscribe());
        }
        let (sender, _) = watch::channel(());
        filling.insert(key.clone(), sender);
        Fill::Leader(FillGuard {
            fills: self.clone(),
            key: key.clone(),
        })
    }
}

/// What a [`Tee`] stores once its body has ended whole.
pub(crate) struct Pending {
    pub(crate) tiers: Arc<Tiers>,
    pub(crate) meta: Meta,
    /// Still true when the body ends: no purge happened meanwhile.
    pub(crate) still_valid: crate::Unpurged,
    pub(crate) guard: Option<FillGuard>,
}

/// Passes a response body through to its client while keeping a copy to store.
pub(crate) struct Tee {
    inner: Body,
    pending: Option<Pending>,
    /// The copy in memory, while it fits in the memory tier.
    memory: Option<Vec<Bytes>>,
    /// The copy on its way to a file.
    file: Option<tokio_util::sync::PollSender<ToFile>>,
    received: u64,
    /// The body's length when it was known in advance.
    expected: Option<u64>,
}

/// What the file writer is sent.
pub(crate) enum ToFile {
    Chunk(Bytes),
    /// The body ended whole: keep it.
    End(Box<Pending>),
}

impl Tee {
    /// Tees `body` into `pending`'s tiers.
    pub(crate) fn wrap(body: Body, pending: Pending) -> Body {
        let tiers = pending.tiers.clone();
        let expected = http_body::Body::size_hint(&body).exact();
        let max = tiers.config.max_object_bytes;
        if expected.is_some_and(|n| n > max) {
            // Too large to store: passes through untouched.
            return body;
        }
        let memory = (expected.unwrap_or(0) <= tiers.config.memory_object_bytes).then(Vec::new);
        let file = tiers.disk.as_ref().and_then(|disk| {
            let path = disk.body_path(&pending.meta.key);
            match std::fs::File::create(path.with_extension("partial")) {
                Ok(file) => {
                    let (sender, receiver) = mpsc::channel(8);
                    let tiers = tiers.clone();
                    let key = pending.meta.key.clone();
                    let cancelled = disk.begin_write(&key);
                    tokio::task::spawn_blocking(move || {
                        write_file(file, path, receiver, &tiers, &key, &cancelled)
                    });
                    Some(tokio_util::sync::PollSender::new(sender))
                }
                Err(e) => {
                    tracing::warn!("the disk cache cannot create a file: {e}");
                    None
                }
            }
        });
        if memory.is_none() && file.is_none() {
            return body;
        }
        Tee {
            inner: body,
            pending: Some(pending),
            memory,
            file,
            received: 0,
            expected,
        }
        .boxed_unsync()
    }

    fn abandon(&mut self) {
        self.pending = None;
        self.memory = None;
        if let Some(mut file) = self.file.take() {
            file.close();
        }
    }

    fn keep(&mut self, chunk: &Bytes) {
        self.received += chunk.len() as u64;
        let Some(pending) = &self.pending else { return };
        let config = &pending.tiers.config;
        if self.received > config.max_object_bytes {
            return self.abandon();
        }
        if self.received > config.memory_object_bytes {
            self.memory = None;
        }
        if let Some(memory) = &mut self.memory {
            memory.push(chunk.clone());
        }
        if let Some(file) = &mut self.file {
            if file.send_item(ToFile::Chunk(chunk.clone())).is_err() {
                self.file = None;
            }
        }
        if self.memory.is_none() && self.file.is_none() {
            self.abandon();
        }
    }

    /// The body ended whole: store it (the memory copy now, the file once it is written).
    fn end(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if !pending.still_valid.holds() {
            return self.abandon();
        }
        let memory = self.memory.take().map(|chunks| match chunks.len() {
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.received as usize);
                for chunk in chunks {
                    all.extend_from_slice(&chunk);
                }
                all.freeze()
            }
        });
        let mut pending = pending;
        pending.meta.size = self.received;
        if pending.meta.status != StatusCode::NO_CONTENT {
            // Written once here rather than on every answer.
            pending
                .meta
                .headers
                .entry(http::header::CONTENT_LENGTH)
                .or_insert_with(|| http::HeaderValue::from(self.received));
        }
        // The memory copy is visible at once; with a file, the writer holds the fill guard
        // until the file is indexed.
        if let Some(bytes) = memory {
            store_memory(&pending, bytes);
        }
        if let Some(mut file) = self.file.take() {
            let sender = file.get_ref().cloned();
            file.close();
            if let Some(sender) = sender {
                if let Err(mpsc::error::TrySendError::Full(end)) =
                    sender.try_send(ToFile::End(Box::new(pending)))
                {
                    tokio::spawn(async move {
                        let _ = sender.send(end).await;
                    });
                }
            }
        }
    }
}

fn store_memory(pending: &Pending, body: Bytes) {
    let meta = Arc::new(pending.meta.clone());
    if !meta.vary.is_empty() {
        pending
            .tiers
            .memory
            .insert(meta.key.primary(), Entry::Vary(meta.vary.clone().into()));
    }
    pending
        .tiers
        .memory
        .insert(meta.key.clone(), Entry::Memory(meta, body));
}

/// Writes a body's chunks to its file, then indexes it unless the body did not end whole,
/// a purge happened or its URL was removed meanwhile; removes the file otherwise.
fn write_file(
    file: std::fs::File,
    path: PathBuf,
    receiver: mpsc::Receiver<ToFile>,
    tiers: &Tiers,
    key: &Key,
    cancelled: &Arc<AtomicBool>,
) {
    let Some(disk) = &tiers.disk else {
        return;
    };
    let Some(pending) = write_body(file, &path, receiver) else {
        disk.end_write(key, cancelled, |_| ());
        return;
    };
    let Pending {
        meta,
        still_valid,
        guard,
        ..
    } = *pending;
    write_meta(&path, &meta);
    #[cfg(test)]
    tests_hook::before_indexing();
    disk.end_write(key, cancelled, |uncancelled| {
        if uncancelled && still_valid.holds() {
            index_file(&disk.index, meta, path);
        } else {
            let _ = std::fs::remove_file(path.with_extension("meta"));
            let _ = std::fs::remove_file(&path);
        }
    });
    // The fill guard drops here, after the entry is visible: waiters find it.
    drop(guard);
}

/// Writes a body's chunks to its file: the body's pending entry once it ended whole and the
/// file is in place at `path`, or `None` (and no file) when it did not.
fn write_body(
    file: std::fs::File,
    path: &Path,
    mut receiver: mpsc::Receiver<ToFile>,
) -> Option<Box<Pending>> {
    let partial = path.with_extension("partial");
    let mut file = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut failed = false;
    while let Some(write) = receiver.blocking_recv() {
        match write {
            ToFile::Chunk(bytes) => {
                if !failed {
                    if let Err(e) = file.write_all(&bytes) {
                        tracing::warn!("writing to the disk cache failed: {e}");
                        failed = true;
                    }
                }
            }
            ToFile::End(pending) if !failed => {
                let flushed = file.flush();
                drop(file);
                let stored = flushed.and_then(|()| std::fs::rename(&partial, path));
                if let Err(e) = stored {
                    tracing::warn!("writing to the disk cache failed: {e}");
                    let _ = std::fs::remove_file(&partial);
                    return None;
                }
                return Some(pending);
            }
            ToFile::End(..) => break,
        }
    }
    let _ = std::fs::remove_file(&partial);
    None
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Room for the next chunk in the file writer's queue first: the client waits for a
        // slow disk rather than the copy piling up in memory.
        if let Some(file) = &mut this.file {
            match file.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => this.file = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.abandon();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    this.keep(&data);
                    if this.expected == Some(this.received) {
                        // Known length reached: the server may stop polling here.
                        this.end();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never claimed early: the end is seen (and the copy stored) by polling to it.
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Cut off before its end: nothing is stored.
        self.abandon();
    }
}

/// A pause before a written body is indexed, for tests of what happens meanwhile.
#[cfg(test)]
pub(crate) mod tests_hook {
    use std::sync::atomic::{AtomicU64, Ordering};

    pub(crate) static PAUSE_MS: AtomicU64 = AtomicU64::new(0);

    pub(crate) fn before_indexing() {
        let ms = PAUSE_MS.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}
