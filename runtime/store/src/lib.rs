//! Where app versions are kept: blobs by SHA-256 ([`blobs`]) and, for an origin, the catalog
//! of versions, active pointers and the change feed ([`catalog`]). No V8, no network.

pub mod blobs;
pub mod catalog;

use std::path::{Path, PathBuf};

pub use blobs::{check_digest, digest_of, write_atomically, BlobStore, DirBlobs};
pub use catalog::{Catalog, Change, VersionInfo};

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
    #[error("the catalog's lock was poisoned by a panic")]
    Poisoned,
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
