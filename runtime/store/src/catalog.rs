//! The catalog of an origin: immutable versions (locked bundles by id), each app's active
//! version, and the change feed — every activation, rollback and deletion with a monotonic
//! sequence number that PoPs follow. Embedded in one SQLite file: every change is one
//! transaction, so a crash at any point leaves either the whole change or none of it.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use outpost_bundle::Lock;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::blobs::BlobStore;
use crate::StoreError;

/// One entry of the change feed: from `seq` on, `app` runs `version` (none: it was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub seq: u64,
    pub app: String,
    pub version: Option<String>,
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

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS versions (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        lock BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS versions_by_app ON versions (app, created_ms);
    CREATE TABLE IF NOT EXISTS apps (
        name TEXT PRIMARY KEY,
        active TEXT REFERENCES versions (id),
        seq INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS feed (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        app TEXT NOT NULL,
        version TEXT REFERENCES versions (id),
        prev INTEGER,
        at_ms INTEGER NOT NULL
    );
";

/// An origin's catalog in an embedded SQLite database.
pub struct Catalog {
    conn: Mutex<Connection>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Catalog {
    /// Opens (or creates) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Catalog {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Records a version from its lock's bytes. The lock must be valid and every module's
    /// blob already stored; creating a version that exists is a no-op. Returns its id.
    pub fn create_version(&self, lock: &[u8], blobs: &dyn BlobStore) -> Result<String, StoreError> {
        let parsed = Lock::from_bytes(lock)?;
        let mut missing = Vec::new();
        for module in &parsed.modules {
            if !blobs.has(&module.sha256)? {
                missing.push(module.sha256.clone());
            }
        }
        if !missing.is_empty() {
            return Err(StoreError::MissingBlobs(missing));
        }
        // Every PoP must be able to load it: the modules rebuild into the bundle it describes.
        outpost_bundle::Bundle::from_lock(&parsed, |digest| blobs.get(digest).ok().flatten())?;
        // The id is of the canonical bytes, whatever bytes were sent.
        let canonical = parsed.to_bytes();
        let id = parsed.id();
        self.conn()?.execute(
            "INSERT OR IGNORE INTO versions (id, app, lock, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![id, parsed.name, canonical, now_ms() as i64],
        )?;
        Ok(id)
    }

    /// The canonical lock bytes of version `id`.
    pub fn lock(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()?
            .query_row("SELECT lock FROM versions WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()?)
    }

    /// Makes `version` the active version of `app`, in one step, and appends the change.
    pub fn activate(&self, app: &str, version: &str) -> Result<Change, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let owner: Option<String> = tx
            .query_row("SELECT app FROM versions WHERE id = ?1", [version], |r| {
                r.get(0)
            })
            .optional()?;
        match owner {
            None => return Err(StoreError::NoSuchVersion(version.to_string())),
            Some(owner) if owner != app => {
                return Err(StoreError::WrongApp {
                    version: version.to_string(),
                    app: owner,
                })
            }
            Some(_) => {}
        }
        let change = set_active(&tx, app, Some(version))?;
        tx.commit()?;
        Ok(change)
    }

    /// Makes the version active before the current one (or `to`) active again.
    pub fn rollback(&self, app: &str, to: Option<&str>) -> Result<Change, StoreError> {
        if let Some(to) = to {
            return self.activate(app, to);
        }
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        if active_of(&tx, app)?.is_none() {
            return Err(StoreError::NoSuchApp(app.into()));
        }
        // Each feed row remembers the row it replaced: rolling back restores that row's
        // version and inherits its predecessor, so repeated rollbacks walk back in history.
        let current_seq: i64 =
            tx.query_row("SELECT seq FROM apps WHERE name = ?1", [app], |r| r.get(0))?;
        let prev: Option<i64> =
            tx.query_row("SELECT prev FROM feed WHERE seq = ?1", [current_seq], |r| {
                r.get(0)
            })?;
        let target: Option<(Option<String>, Option<i64>)> = match prev {
            Some(prev) => tx
                .query_row(
                    "SELECT version, prev FROM feed WHERE seq = ?1",
                    [prev],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?,
            None => None,
        };
        let Some((Some(version), inherited)) = target else {
            return Err(StoreError::NothingToRollBackTo(app.into()));
        };
        let change = append(&tx, app, Some(&version), inherited)?;
        tx.commit()?;
        Ok(change)
    }

    /// Removes `app` from service (its versions stay, for history); appends the change.
    pub fn delete_app(&self, app: &str) -> Result<Change, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        if active_of(&tx, app)?.is_none() {
            return Err(StoreError::NoSuchApp(app.into()));
        }
        let change = set_active(&tx, app, None)?;
        tx.commit()?;
        Ok(change)
    }

    /// Every version of `app`, newest first.
    pub fn versions(&self, app: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let conn = self.conn()?;
        let active = active_of(&conn, app)?;
        let mut stmt = conn.prepare(
            "SELECT id, created_ms FROM versions WHERE app = ?1 ORDER BY created_ms DESC, id",
        )?;
        let rows = stmt.query_map([app], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut versions = Vec::new();
        for row in rows {
            let (id, created) = row?;
            versions.push(VersionInfo {
                active: active.as_deref() == Some(id.as_str()),
                id,
                app: app.to_string(),
                created_ms: created as u64,
            });
        }
        Ok(versions)
    }

    /// Every app in service and its active version, by name.
    pub fn active(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT name, active FROM apps WHERE active IS NOT NULL ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The changes after `since`, oldest first, at most `limit`.
    pub fn changes(&self, since: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT seq, app, version FROM feed WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = stmt.query_map(params![since as i64, limit as i64], |r| {
            Ok(Change {
                seq: r.get::<_, i64>(0)? as u64,
                app: r.get(1)?,
                version: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The sequence number of the latest change (0 before any).
    pub fn head(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = self
            .conn()?
            .query_row("SELECT MAX(seq) FROM feed", [], |r| r.get(0))?;
        Ok(seq.unwrap_or(0) as u64)
    }
}

fn active_of(conn: &Connection, app: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT active FROM apps WHERE name = ?1", [app], |r| {
            r.get::<_, Option<String>>(0)
        })
        .optional()?
        .flatten())
}

/// Activates `version` (none: deletes) as a new change that replaces the current one.
fn set_active(conn: &Connection, app: &str, version: Option<&str>) -> Result<Change, StoreError> {
    let current: Option<i64> = conn
        .query_row("SELECT seq FROM apps WHERE name = ?1", [app], |r| r.get(0))
        .optional()?;
    append(conn, app, version, current)
}

/// Appends a change whose predecessor (for rollbacks) is `prev`, and points the app at it.
fn append(
    conn: &Connection,
    app: &str,
    version: Option<&str>,
    prev: Option<i64>,
) -> Result<Change, StoreError> {
    conn.execute(
        "INSERT INTO feed (app, version, prev, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![app, version, prev, now_ms() as i64],
    )?;
    let seq = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO apps (name, active, seq) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET active = excluded.active, seq = excluded.seq",
        params![app, version, seq],
    )?;
    Ok(Change {
        seq: seq as u64,
        app: app.to_string(),
        version: version.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outpost_bundle::{Bundle, Manifest};

    use super::*;
    use crate::blobs::DirBlobs;

    /// A bundle of app `name` whose module says `text`, its blobs stored.
    fn version(blobs: &DirBlobs, name: &str, text: &str) -> Vec<u8> {
        let manifest = Manifest::for_single_file(name, "index.js");
        let files = BTreeMap::from([("index.js".to_string(), text.as_bytes().to_vec())]);
        let bundle = Bundle::new(manifest, files).unwrap();
        for module in bundle.modules.values() {
            blobs.put(&module.sha256, &module.bytes).unwrap();
        }
        bundle.lock().to_bytes()
    }

    fn setup() -> (tempfile::TempDir, Catalog, DirBlobs) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        let blobs = DirBlobs::open(&dir.path().join("blobs")).unwrap();
        (dir, catalog, blobs)
    }

    #[test]
    fn versions_need_their_blobs() {
        let (_dir, catalog, blobs) = setup();
        let manifest = Manifest::for_single_file("a", "index.js");
        let files = BTreeMap::from([("index.js".to_string(), b"x".to_vec())]);
        let lock = Bundle::new(manifest, files).unwrap().lock().to_bytes();
        let err = catalog.create_version(&lock, &blobs).unwrap_err();
        assert!(
            matches!(err, StoreError::MissingBlobs(ref m) if m.len() == 1),
            "{err}"
        );
        let err = catalog
            .create_version(b"{\"schema\":9}", &blobs)
            .unwrap_err();
        assert!(err.to_string().contains("schema 9"), "{err}");
    }

    #[test]
    fn activation_rollback_and_deletion_append_to_the_feed() {
        let (dir, catalog, blobs) = setup();
        let v1 = catalog
            .create_version(&version(&blobs, "a", "one"), &blobs)
            .unwrap();
        let v2 = catalog
            .create_version(&version(&blobs, "a", "two"), &blobs)
            .unwrap();
        assert_eq!(
            catalog
                .create_version(&version(&blobs, "a", "two"), &blobs)
                .unwrap(),
            v2,
            "idempotent"
        );
        assert_eq!(catalog.activate("a", &v1).unwrap().seq, 1);
        assert_eq!(catalog.activate("a", &v2).unwrap().seq, 2);
        let back = catalog.rollback("a", None).unwrap();
        assert_eq!((back.seq, back.version.as_deref()), (3, Some(v1.as_str())));
        let err = catalog.rollback("a", None).unwrap_err();
        assert!(matches!(err, StoreError::NothingToRollBackTo(_)), "{err}");
        assert_eq!(catalog.active().unwrap(), [("a".to_string(), v1.clone())]);
        assert!(
            catalog.activate("b", &v1).is_err(),
            "a version belongs to its app"
        );
        let gone = catalog.delete_app("a").unwrap();
        assert_eq!(gone.version, None);
        assert!(catalog.active().unwrap().is_empty());
        let feed = catalog.changes(1, 10).unwrap();
        assert_eq!(feed.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(catalog.head().unwrap(), 4);
        // Everything is still there after reopening.
        drop(catalog);
        let catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        assert_eq!(catalog.head().unwrap(), 4);
        let versions = catalog.versions("a").unwrap();
        assert_eq!(versions.len(), 2);
        assert!(versions.iter().all(|v| !v.active));
        let lock = catalog.lock(&v1).unwrap().unwrap();
        assert_eq!(Lock::from_bytes(&lock).unwrap().id(), v1);
    }
}

#[cfg(test)]
mod rollback_tests {
    use std::collections::BTreeMap;

    use outpost_bundle::{Bundle, Manifest};

    use super::*;
    use crate::blobs::DirBlobs;

    #[test]
    fn repeated_rollbacks_walk_back_through_history() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
        let blobs = DirBlobs::open(&dir.path().join("blobs")).unwrap();
        let mut ids = Vec::new();
        for text in ["one", "two", "three"] {
            let manifest = Manifest::for_single_file("a", "index.js");
            let files = BTreeMap::from([("index.js".to_string(), text.as_bytes().to_vec())]);
            let bundle = Bundle::new(manifest, files).unwrap();
            for module in bundle.modules.values() {
                blobs.put(&module.sha256, &module.bytes).unwrap();
            }
            let id = catalog
                .create_version(&bundle.lock().to_bytes(), &blobs)
                .unwrap();
            catalog.activate("a", &id).unwrap();
            ids.push(id);
        }
        let back = |c: &Catalog| c.rollback("a", None).unwrap().version.unwrap();
        assert_eq!(back(&catalog), ids[1]);
        assert_eq!(back(&catalog), ids[0]);
        assert!(catalog.rollback("a", None).is_err());
        // Activating again starts a new line of history.
        catalog.activate("a", &ids[2]).unwrap();
        assert_eq!(back(&catalog), ids[0]);
    }
}
