//! Blobs by SHA-256: module bytes stored once, named by their digest, verified on the way
//! in. [`DirBlobs`] keeps them as files (`blobs/ab/abcdef…`), written to a temporary file,
//! synced and renamed into place, so a crash never leaves a partial blob under its name.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::StoreError;

/// Where blobs live.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` under `digest`, refusing bytes that do not hash to it. Storing a blob
    /// that is already there is a no-op.
    fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The bytes under `digest`, if stored.
    fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether `digest` is stored.
    fn has(&self, digest: &str) -> Result<bool, StoreError>;
}

/// Checks that `digest` is a hex SHA-256 (so it is safe as a file name too).
pub fn check_digest(digest: &str) -> Result<(), StoreError> {
    let ok = digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadDigest(digest.chars().take(80).collect()))
    }
}

/// Checks that `bytes` are what `digest` (a hex SHA-256) names.
pub fn verify(digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
    check_digest(digest)?;
    let actual = digest_of(bytes);
    if actual != digest {
        return Err(StoreError::DigestMismatch {
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Hex SHA-256 of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the whole new
/// one: a temporary file in the same directory, synced, renamed over `path`, and the
/// directory synced so that the rename is durable.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| StoreError::io(temp.path(), e))?;
    temp.persist(path)
        .map_err(|e| StoreError::io(path, e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Blobs as files under a directory.
#[derive(Clone)]
pub struct DirBlobs {
    root: PathBuf,
}

impl DirBlobs {
    /// Blobs under `root` (created if missing).
    pub fn open(root: &Path) -> Result<DirBlobs, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
        Ok(DirBlobs {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, digest: &str) -> PathBuf {
        self.root.join(&digest[..2]).join(digest)
    }
}

impl BlobStore for DirBlobs {
    fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        verify(digest, bytes)?;
        let path = self.path_of(digest);
        // A stored blob is kept only if it is intact; a damaged one is replaced.
        if std::fs::read(&path).is_ok_and(|stored| digest_of(&stored) == digest) {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        write_atomically(&path, bytes)
    }

    fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_digest(digest)?;
        let path = self.path_of(digest);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    fn has(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        Ok(self.path_of(digest).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_verified_blobs_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = DirBlobs::open(dir.path()).unwrap();
        let digest = digest_of(b"hello");
        assert!(!blobs.has(&digest).unwrap());
        blobs.put(&digest, b"hello").unwrap();
        blobs.put(&digest, b"hello").unwrap();
        assert_eq!(blobs.get(&digest).unwrap().unwrap(), b"hello");
        let err = blobs.put(&digest, b"jello").unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(blobs.put("../../etc/passwd", b"x").is_err());
        assert_eq!(blobs.get(&digest_of(b"other")).unwrap(), None);
        // Nothing but the blob itself is left in its directory.
        let entries: Vec<_> = std::fs::read_dir(dir.path().join(&digest[..2]))
            .unwrap()
            .collect();
        assert_eq!(entries.len(), 1);
    }
}
