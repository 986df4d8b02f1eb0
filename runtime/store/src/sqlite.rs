//! The embedded catalog: one SQLite file in the origin's data directory. Every change is one
//! transaction, so a crash at any point leaves either the whole change or none of it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::catalog::{now_ms, Change, VersionInfo};
use crate::StoreError;

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

/// Columns added after the first release, added to older databases when they open.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("feed", "purge", "TEXT")];

/// An origin's catalog in an embedded SQLite database; clones share the connection.
#[derive(Clone)]
pub struct SqliteCatalog {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteCatalog {
    /// Opens (or creates) the catalog at `path`.
    pub fn open(path: &Path) -> Result<SqliteCatalog, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
        conn.execute_batch(SCHEMA)?;
        for (table, column, kind) in ADDED_COLUMNS {
            let present: bool = conn.query_row(
                &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get(0),
            )?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
            }
        }
        Ok(SqliteCatalog {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Records version `id` of `app` (its canonical lock bytes); a no-op if it exists.
    pub fn insert_version(&self, id: &str, app: &str, lock: &[u8]) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT OR IGNORE INTO versions (id, app, lock, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![id, app, lock, now_ms() as i64],
        )?;
        Ok(())
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

    /// Appends a purge of `app`'s cache to the feed; the app's version (and the history
    /// rollbacks walk) stays as it is.
    pub fn purge(&self, app: &str, purge: &str) -> Result<Change, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let Some(active) = active_of(&tx, app)? else {
            return Err(StoreError::NoSuchApp(app.into()));
        };
        tx.execute(
            "INSERT INTO feed (app, version, prev, at_ms, purge) VALUES (?1, ?2, NULL, ?3, ?4)",
            params![app, active, now_ms() as i64, purge],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Change {
            seq: seq as u64,
            app: app.to_string(),
            version: Some(active),
            purge: parse_purge(Some(purge.to_string())),
        })
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
        let mut stmt = conn.prepare(
            "SELECT seq, app, version, purge FROM feed WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since as i64, limit as i64], |r| {
            Ok(Change {
                seq: r.get::<_, i64>(0)? as u64,
                app: r.get(1)?,
                version: r.get(2)?,
                purge: parse_purge(r.get(3)?),
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
        purge: None,
    })
}

/// A stored purge's JSON (written by this origin, so it parses).
pub(crate) fn parse_purge(text: Option<String>) -> Option<serde_json::Value> {
    serde_json::from_str(&text?).ok()
}
