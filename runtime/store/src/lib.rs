//! Where app versions are kept: blobs by SHA-256 ([`blobs`], or [`s3`] for an origin) and,
//! for an origin, the catalog of versions, active pointers and the change feed ([`catalog`]:
//! embedded SQLite or PostgreSQL), brought together by [`OriginStore`]. No V8.

pub mod blobs;
pub mod catalog;
pub mod origin;
pub mod postgres;
pub mod s3;
pub mod sqlite;

use std::path::{Path, PathBuf};

pub use blobs::{check_digest, digest_of, write_atomically, BlobStore, DirBlobs};
pub use catalog::{Catalog, Change, VersionInfo};
pub use origin::{Locations, OriginStore};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a SHA-256 digest (64 lower-case hex digits)")]
    BadDigest(String),
    #[error("the bytes hash to {actual}, not to {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("{} blob(s) of the version are not stored yet: {}", .0.len(), .0.join(", "))]
    MissingBlobs(Vec<String>),
    #[error(transparent)]
    InvalidLock(#[from] outpost_bundle::BundleError),
    #[error("no version {0}")]
    NoSuchVersion(String),
    #[error("version {version} belongs to app {app}")]
    WrongApp { version: String, app: String },
    #[error("no app {0} is in service")]
    NoSuchApp(String),
    #[error("app {0} has no earlier version to roll back to")]
    NothingToRollBackTo(String),
    #[error("catalog database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("PostgreSQL catalog: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A shared backend (PostgreSQL, S3) did not answer; trying again later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A `--data`, `--database` or `--blobs` location that cannot be used.
    #[error("{0}")]
    BadLocation(String),
    #[error("the catalog's lock was poisoned by a panic")]
    Poisoned,
}

impl StoreError {
    /// Whether the failure is of a shared backend that may answer on a later try (the
    /// request was fine).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            _ => false,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A PostgreSQL error with the server's message, which `tokio_postgres::Error`'s own
/// display leaves out ("db error").
fn postgres_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => error.to_string(),
    }
}
