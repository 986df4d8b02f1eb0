//! The catalog of an origin: immutable versions (locked bundles by id), each app's active
//! version, and the change feed — every activation, rollback and deletion with a monotonic
//! sequence number that PoPs follow. Embedded in SQLite ([`SqliteCatalog`]) for one origin,
//! or in PostgreSQL ([`PgCatalog`]) for several that share it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::postgres::PgCatalog;
use crate::sqlite::SqliteCatalog;
use crate::StoreError;

/// One entry of the change feed: from `seq` on, `app` runs `version` (none: it was
/// deleted); or, with `purge`, a purge of the app's cache (its version unchanged), which
/// PoPs older than purges read as a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub seq: u64,
    pub app: String,
    pub version: Option<String>,
    /// What to purge, as the JSON the client sent (checked by the API before it is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge: Option<serde_json::Value>,
}

/// A version of an app, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub id: String,
    pub app: String,
    /// When it was created, in ms since the Unix epoch.
    pub created_ms: u64,
    /// Whether it is the app's active version.
    pub active: bool,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where the catalog is kept. Both answer alike; the embedded one runs its (blocking) SQLite
/// calls on tokio's blocking threads.
pub enum Catalog {
    Sqlite(SqliteCatalog),
    Postgres(PgCatalog),
}

/// Runs `call` on the embedded catalog off the async threads.
async fn blocking<T: Send + 'static>(
    catalog: &SqliteCatalog,
    call: impl FnOnce(&SqliteCatalog) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let catalog = catalog.clone();
    tokio::task::spawn_blocking(move || call(&catalog))
        .await
        .map_err(|_| StoreError::Poisoned)?
}

impl Catalog {
    /// Records version `id` of `app` (its canonical lock bytes); a no-op if it exists.
    pub async fn insert_version(&self, id: &str, app: &str, lock: &[u8]) -> Result<(), StoreError> {
        match self {
            Catalog::Sqlite(c) => {
                let (id, app, lock) = (id.to_string(), app.to_string(), lock.to_vec());
                blocking(c, move |c| c.insert_version(&id, &app, &lock)).await
            }
            Catalog::Postgres(c) => c.insert_version(id, app, lock).await,
        }
    }

    /// The canonical lock bytes of version `id`.
    pub async fn lock(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Catalog::Sqlite(c) => {
                let id = id.to_string();
                blocking(c, move |c| c.lock(&id)).await
            }
            Catalog::Postgres(c) => c.lock(id).await,
        }
    }

    /// Makes `version` the active version of `app`, in one step, and appends the change.
    pub async fn activate(&self, app: &str, version: &str) -> Result<Change, StoreError> {
        match self {
            Catalog::Sqlite(c) => {
                let (app, version) = (app.to_string(), version.to_string());
                blocking(c, move |c| c.activate(&app, &version)).await
            }
            Catalog::Postgres(c) => c.activate(app, version).await,
        }
    }

    /// Makes the version active before the current one (or `to`) active again.
    pub async fn rollback(&self, app: &str, to: Option<&str>) -> Result<Change, StoreError> {
        match self {
            Catalog::Sqlite(c) => {
                let (app, to) = (app.to_string(), to.map(str::to_string));
                blocking(c, move |c| c.rollback(&app, to.as_deref())).await
            }
            Catalog::Postgres(c) => c.rollback(app, to).await,
        }
    }

    /// Removes `app` from service (its versions stay, for history); appends the change.
    pub async fn delete_app(&self, app: &str) -> Result<Change, StoreError> {
        match self {
            Catalog::Sqlite(c) => {
                let app = app.to_string();
                blocking(c, move |c| c.delete_app(&app)).await
            }
            Catalog::Postgres(c) => c.delete_app(app).await,
        }
    }

    /// Appends a purge of `app`'s cache (`purge`: JSON) to the feed.
    pub async fn purge(&self, app: &str, purge: &str) -> Result<Change, StoreError> {
        match self {
            Catalog::Sqlite(c) => {
                let (app, purge) = (app.to_string(), purge.to_string());
                blocking(c, move |c| c.purge(&app, &purge)).await
            }
            Catalog::Postgres(c) => c.purge(app, purge).await,
        }
    }

    /// Every version of `app`, newest first.
    pub async fn versions(&self, app: &str) -> Result<Vec<VersionInfo>, StoreError> {
        match self {
            Catalog::Sqlite(c) => {
                let app = app.to_string();
                blocking(c, move |c| c.versions(&app)).await
            }
            Catalog::Postgres(c) => c.versions(app).await,
        }
    }

    /// Every app in service and its active version, by name.
    pub async fn active(&self) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            Catalog::Sqlite(c) => blocking(c, |c| c.active()).await,
            Catalog::Postgres(c) => c.active().await,
        }
    }

    /// The changes after `since`, oldest first, at most `limit`.
    pub async fn changes(&self, since: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        match self {
            Catalog::Sqlite(c) => blocking(c, move |c| c.changes(since, limit)).await,
            Catalog::Postgres(c) => c.changes(since, limit).await,
        }
    }

    /// The sequence number of the latest change (0 before any).
    pub async fn head(&self) -> Result<u64, StoreError> {
        match self {
            Catalog::Sqlite(c) => blocking(c, |c| c.head()).await,
            Catalog::Postgres(c) => c.head().await,
        }
    }
}
