//! Everything an origin keeps, in one place: blobs (a directory or an S3 bucket) and the
//! catalog (SQLite in the data directory, or PostgreSQL), plus the signal that wakes
//! followers of the change feed when anything changes — through this process, or, with
//! PostgreSQL, through any origin process sharing the database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use outpost_bundle::{Bundle, Lock};
use tokio::sync::Notify;

use crate::blobs::{BlobStore, DirBlobs};
use crate::catalog::{Catalog, Change, VersionInfo};
use crate::postgres::PgCatalog;
use crate::s3::S3Blobs;
use crate::sqlite::SqliteCatalog;
use crate::StoreError;

/// Where an origin keeps its state, as given on its command line.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// The data directory: the default home of both the catalog (`catalog.db`) and the
    /// blobs (`blobs/`).
    pub data: Option<PathBuf>,
    /// `postgres://…`: the catalog in PostgreSQL instead.
    pub database: Option<String>,
    /// `s3://bucket[/prefix]?endpoint=…`: the blobs in S3-compatible storage instead.
    pub blobs: Option<String>,
}

/// Where blobs are kept.
enum Blobs {
    Dir(DirBlobs),
    S3(S3Blobs),
}

/// An origin's blobs and catalog.
pub struct OriginStore {
    blobs: Blobs,
    catalog: Catalog,
    changed: Arc<Notify>,
    description: String,
}

impl OriginStore {
    /// Opens (creating what is missing) the store at `locations`. Must be called on a tokio
    /// runtime: the PostgreSQL catalog keeps a listening task on it.
    pub async fn open(locations: &Locations) -> Result<OriginStore, StoreError> {
        let in_data = |what: &str, flag: &str| {
            locations
                .data
                .as_ref()
                .map(|d| d.join(what))
                .ok_or_else(|| {
                    StoreError::BadLocation(format!("give --data DIR or {flag} for the {what}"))
                })
        };
        let changed = Arc::new(Notify::new());
        let (blobs, blobs_at) = match &locations.blobs {
            Some(url) => {
                let blobs = S3Blobs::open(url)?;
                let at = url.split('?').next().unwrap_or(url).to_string();
                (Blobs::S3(blobs), at)
            }
            None => {
                let dir = in_data("blobs", "--blobs s3://…")?;
                (Blobs::Dir(DirBlobs::open(&dir)?), dir.display().to_string())
            }
        };
        let (catalog, catalog_at) = match &locations.database {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let catalog = PgCatalog::connect(url, changed.clone()).await?;
                (Catalog::Postgres(catalog), redact(url))
            }
            Some(other) => {
                return Err(StoreError::BadLocation(format!(
                    "--database {}: expected postgres://USER:PASSWORD@HOST:PORT/DB (without \
                     --database the catalog is DATA/catalog.db)",
                    redact(other)
                )))
            }
            None => {
                let path = in_data("catalog.db", "--database postgres://…")?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
                }
                let catalog = SqliteCatalog::open(&path)?;
                (Catalog::Sqlite(catalog), path.display().to_string())
            }
        };
        Ok(OriginStore {
            blobs,
            catalog,
            changed,
            description: format!("catalog in {catalog_at}, blobs in {blobs_at}"),
        })
    }

    /// Where the catalog and the blobs are, without secrets, for the origin's startup line.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Woken whenever the change feed may have grown.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Stores a blob, refusing bytes that do not hash to `digest` (idempotent).
    pub async fn put_blob(&self, digest: &str, bytes: bytes::Bytes) -> Result<(), StoreError> {
        match &self.blobs {
            Blobs::Dir(dir) => {
                let (dir, digest) = (dir.clone(), digest.to_string());
                run_blocking(move || dir.put(&digest, &bytes)).await
            }
            Blobs::S3(s3) => s3.put(digest, &bytes).await,
        }
    }

    /// A blob's bytes, if stored.
    pub async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.blobs {
            Blobs::Dir(dir) => {
                let (dir, digest) = (dir.clone(), digest.to_string());
                run_blocking(move || dir.get(&digest)).await
            }
            Blobs::S3(s3) => s3.get(digest).await,
        }
    }

    /// Whether a blob is stored.
    pub async fn has_blob(&self, digest: &str) -> Result<bool, StoreError> {
        match &self.blobs {
            Blobs::Dir(dir) => {
                let (dir, digest) = (dir.clone(), digest.to_string());
                run_blocking(move || dir.has(&digest)).await
            }
            Blobs::S3(s3) => s3.has(digest).await,
        }
    }

    /// Records a version from its lock's bytes. The lock must be valid and every module's
    /// blob already stored, and the modules must rebuild into the bundle it describes (so
    /// every PoP can load it); creating a version that exists is a no-op. Returns its id,
    /// the SHA-256 of the canonical lock, whatever bytes were sent.
    pub async fn create_version(&self, lock: &[u8]) -> Result<String, StoreError> {
        let parsed = Lock::from_bytes(lock)?;
        let mut modules = HashMap::new();
        let mut missing = Vec::new();
        for module in &parsed.modules {
            if modules.contains_key(&module.sha256) {
                continue;
            }
            match self.get_blob(&module.sha256).await? {
                Some(bytes) => {
                    modules.insert(module.sha256.clone(), bytes);
                }
                None => missing.push(module.sha256.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(StoreError::MissingBlobs(missing));
        }
        Bundle::from_lock(&parsed, |digest| modules.get(digest).cloned())?;
        let id = parsed.id();
        self.catalog
            .insert_version(&id, &parsed.name, &parsed.to_bytes())
            .await?;
        Ok(id)
    }

    /// The canonical lock bytes of version `id`.
    pub async fn lock(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.catalog.lock(id).await
    }

    /// Makes `version` the active version of `app`, in one step, and appends the change.
    pub async fn activate(&self, app: &str, version: &str) -> Result<Change, StoreError> {
        self.announced(self.catalog.activate(app, version).await)
    }

    /// Makes the version active before the current one (or `to`) active again.
    pub async fn rollback(&self, app: &str, to: Option<&str>) -> Result<Change, StoreError> {
        self.announced(self.catalog.rollback(app, to).await)
    }

    /// Removes `app` from service (its versions stay, for history); appends the change.
    pub async fn delete_app(&self, app: &str) -> Result<Change, StoreError> {
        self.announced(self.catalog.delete_app(app).await)
    }

    /// Appends a purge of `app`'s cache (`purge`: JSON) to the feed.
    pub async fn purge(&self, app: &str, purge: &str) -> Result<Change, StoreError> {
        self.announced(self.catalog.purge(app, purge).await)
    }

    /// Every version of `app`, newest first.
    pub async fn versions(&self, app: &str) -> Result<Vec<VersionInfo>, StoreError> {
        self.catalog.versions(app).await
    }

    /// Every app in service and its active version, by name.
    pub async fn active(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.catalog.active().await
    }

    /// The changes after `since`, oldest first, at most `limit`.
    pub async fn changes(&self, since: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.catalog.changes(since, limit).await
    }

    /// The sequence number of the latest change (0 before any).
    pub async fn head(&self) -> Result<u64, StoreError> {
        self.catalog.head().await
    }

    fn announced(&self, change: Result<Change, StoreError>) -> Result<Change, StoreError> {
        if change.is_ok() {
            self.changed.notify_waiters();
        }
        change
    }
}

/// Runs blocking file I/O off the async threads.
async fn run_blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|_| StoreError::Poisoned)?
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("…"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(an unparsable URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outpost_bundle::Manifest;

    use super::*;

    /// A bundle of app `name` whose module says `text`.
    fn bundle(name: &str, text: &str) -> Bundle {
        let manifest = Manifest::for_single_file(name, "index.js");
        let files = BTreeMap::from([("index.js".to_string(), text.as_bytes().to_vec())]);
        Bundle::new(manifest, files).unwrap()
    }

    /// Uploads `bundle`'s blobs and creates its version.
    async fn publish(store: &OriginStore, bundle: &Bundle) -> String {
        for module in bundle.modules.values() {
            store
                .put_blob(&module.sha256, bytes::Bytes::copy_from_slice(&module.bytes))
                .await
                .unwrap();
        }
        store
            .create_version(&bundle.lock().to_bytes())
            .await
            .unwrap()
    }

    async fn open(dir: &std::path::Path) -> OriginStore {
        OriginStore::open(&Locations {
            data: Some(dir.to_path_buf()),
            ..Locations::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn versions_need_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let lock = bundle("a", "x").lock().to_bytes();
        let err = store.create_version(&lock).await.unwrap_err();
        assert!(
            matches!(err, StoreError::MissingBlobs(ref m) if m.len() == 1),
            "{err}"
        );
        let err = store.create_version(b"{\"schema\":9}").await.unwrap_err();
        assert!(err.to_string().contains("schema 9"), "{err}");
    }

    #[tokio::test]
    async fn activation_rollback_and_deletion_append_to_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let v1 = publish(&store, &bundle("a", "one")).await;
        let v2 = publish(&store, &bundle("a", "two")).await;
        assert_eq!(publish(&store, &bundle("a", "two")).await, v2, "idempotent");
        assert_eq!(store.activate("a", &v1).await.unwrap().seq, 1);
        assert_eq!(store.activate("a", &v2).await.unwrap().seq, 2);
        let back = store.rollback("a", None).await.unwrap();
        assert_eq!((back.seq, back.version.as_deref()), (3, Some(v1.as_str())));
        let err = store.rollback("a", None).await.unwrap_err();
        assert!(matches!(err, StoreError::NothingToRollBackTo(_)), "{err}");
        assert_eq!(
            store.active().await.unwrap(),
            [("a".to_string(), v1.clone())]
        );
        assert!(
            store.activate("b", &v1).await.is_err(),
            "a version belongs to its app"
        );
        let gone = store.delete_app("a").await.unwrap();
        assert_eq!(gone.version, None);
        assert!(store.active().await.unwrap().is_empty());
        let feed = store.changes(1, 10).await.unwrap();
        assert_eq!(feed.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(store.head().await.unwrap(), 4);
        // Everything is still there after reopening.
        drop(store);
        let store = open(dir.path()).await;
        assert_eq!(store.head().await.unwrap(), 4);
        let versions = store.versions("a").await.unwrap();
        assert_eq!(versions.len(), 2);
        assert!(versions.iter().all(|v| !v.active));
        let lock = store.lock(&v1).await.unwrap().unwrap();
        assert_eq!(Lock::from_bytes(&lock).unwrap().id(), v1);
    }

    #[tokio::test]
    async fn repeated_rollbacks_walk_back_through_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let mut ids = Vec::new();
        for text in ["one", "two", "three"] {
            let id = publish(&store, &bundle("a", text)).await;
            store.activate("a", &id).await.unwrap();
            ids.push(id);
        }
        let back = || async { store.rollback("a", None).await.unwrap().version.unwrap() };
        assert_eq!(back().await, ids[1]);
        assert_eq!(back().await, ids[0]);
        assert!(store.rollback("a", None).await.is_err());
        // Activating again starts a new line of history.
        store.activate("a", &ids[2]).await.unwrap();
        assert_eq!(back().await, ids[0]);
    }

    #[tokio::test]
    async fn locations_are_checked() {
        let err = OriginStore::open(&Locations::default())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("--data DIR"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = OriginStore::open(&Locations {
            data: Some(dir.path().to_path_buf()),
            database: Some("mysql://u:hunter2@h/db".into()),
            blobs: None,
        })
        .await
        .err()
        .unwrap();
        let message = err.to_string();
        assert!(message.contains("expected postgres://"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let err = OriginStore::open(&Locations {
            data: Some(dir.path().to_path_buf()),
            database: None,
            blobs: Some("s3://bucket?no_such_option=1".into()),
        })
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("no_such_option"), "{err}");
    }
}
