//! The catalog in PostgreSQL, for several origin processes behind a load balancer: they share
//! the database, so any of them answers any request the same way.
//!
//! Every change is one transaction that first takes the next sequence number from the one
//! row of `outpost_head` (`UPDATE … RETURNING`): the row stays locked until the commit, so
//! changes commit in sequence order, and a follower that has seen change N never later finds
//! a change below N appear. The same transaction sends `NOTIFY outpost_changes`; every origin
//! process LISTENs on a connection of its own and wakes its long-polling followers, so a
//! change made through one replica reaches followers of all of them at once.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::catalog::{now_ms, Change, VersionInfo};
use crate::StoreError;

/// The channel changes are announced on.
const CHANNEL: &str = "outpost_changes";
/// Key of the advisory lock held while the schema is created, so that origins starting
/// together do not race on `CREATE TABLE`.
const SCHEMA_LOCK: i64 = 0x6f75_7470_6f73_7401;
/// Connections per origin process.
const POOL_SIZE: usize = 16;
/// Longest wait for a connection (to open, or from the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS outpost_versions (
        id TEXT PRIMARY KEY,
        app TEXT NOT NULL,
        lock BYTEA NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS outpost_versions_by_app ON outpost_versions (app, created_ms);
    CREATE TABLE IF NOT EXISTS outpost_head (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        seq BIGINT NOT NULL
    );
    INSERT INTO outpost_head (one, seq) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
    CREATE TABLE IF NOT EXISTS outpost_feed (
        seq BIGINT PRIMARY KEY,
        app TEXT NOT NULL,
        version TEXT REFERENCES outpost_versions (id),
        prev BIGINT,
        at_ms BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS outpost_apps (
        name TEXT PRIMARY KEY,
        active TEXT REFERENCES outpost_versions (id),
        seq BIGINT NOT NULL REFERENCES outpost_feed (seq)
    );
    ALTER TABLE outpost_feed ADD COLUMN IF NOT EXISTS purge TEXT;
";

/// An origin's catalog in PostgreSQL.
pub struct PgCatalog {
    pool: Pool,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgCatalog {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgCatalog {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`), creates
    /// the tables if missing, and starts listening for changes made by any origin process:
    /// each wakes `changed`. Must be called on a tokio runtime.
    pub async fn connect(url: &str, changed: Arc<Notify>) -> Result<PgCatalog, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::BadLocation(format!("--database: {e}")))?;
        let mut connect_config = config.clone();
        connect_config.connect_timeout(CONNECT_TIMEOUT);
        let manager = Manager::from_config(
            connect_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL pool: {e}")))?;
        let catalog = PgCatalog {
            listener: tokio::spawn(listen(connect_config, changed)),
            pool,
        };
        let mut client = catalog.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        tx.batch_execute(SCHEMA).await?;
        tx.commit().await?;
        Ok(catalog)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL: {e}")))
    }

    /// Records version `id` of `app` (its canonical lock bytes); a no-op if it exists.
    pub async fn insert_version(&self, id: &str, app: &str, lock: &[u8]) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO outpost_versions (id, app, lock, created_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                &[&id, &app, &lock, &(now_ms() as i64)],
            )
            .await?;
        Ok(())
    }

    /// The canonical lock bytes of version `id`.
    pub async fn lock(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT lock FROM outpost_versions WHERE id = $1", &[&id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Makes `version` the active version of `app`, in one step, and appends the change.
    pub async fn activate(&self, app: &str, version: &str) -> Result<Change, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = next_seq(&tx).await?;
        let owner: Option<String> = tx
            .query_opt(
                "SELECT app FROM outpost_versions WHERE id = $1",
                &[&version],
            )
            .await?
            .map(|r| r.get(0));
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
        let current = current_seq(&tx, app).await?;
        let change = append(&tx, seq, app, Some(version), current).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Makes the version active before the current one (or `to`) active again.
    pub async fn rollback(&self, app: &str, to: Option<&str>) -> Result<Change, StoreError> {
        if let Some(to) = to {
            return self.activate(app, to).await;
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = next_seq(&tx).await?;
        if active_of(&tx, app).await?.is_none() {
            return Err(StoreError::NoSuchApp(app.into()));
        }
        // As in the embedded catalog: each feed row remembers the row it replaced.
        let current = current_seq(&tx, app).await?;
        let prev: Option<i64> = tx
            .query_opt("SELECT prev FROM outpost_feed WHERE seq = $1", &[&current])
            .await?
            .and_then(|r| r.get(0));
        let target = match prev {
            Some(prev) => tx
                .query_opt(
                    "SELECT version, prev FROM outpost_feed WHERE seq = $1",
                    &[&prev],
                )
                .await?
                .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, Option<i64>>(1))),
            None => None,
        };
        let Some((Some(version), inherited)) = target else {
            return Err(StoreError::NothingToRollBackTo(app.into()));
        };
        let change = append(&tx, seq, app, Some(&version), inherited).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Removes `app` from service (its versions stay, for history); appends the change.
    pub async fn delete_app(&self, app: &str) -> Result<Change, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = next_seq(&tx).await?;
        if active_of(&tx, app).await?.is_none() {
            return Err(StoreError::NoSuchApp(app.into()));
        }
        let current = current_seq(&tx, app).await?;
        let change = append(&tx, seq, app, None, current).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Appends a purge of `app`'s cache to the feed; the app's version (and the history
    /// rollbacks walk) stays as it is.
    pub async fn purge(&self, app: &str, purge: &str) -> Result<Change, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = next_seq(&tx).await?;
        let Some(active) = active_of(&tx, app).await? else {
            return Err(StoreError::NoSuchApp(app.into()));
        };
        tx.execute(
            "INSERT INTO outpost_feed (seq, app, version, prev, at_ms, purge) \
             VALUES ($1, $2, $3, NULL, $4, $5)",
            &[&seq, &app, &active, &(now_ms() as i64), &purge],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
            .await?;
        tx.commit().await?;
        Ok(Change {
            seq: seq as u64,
            app: app.to_string(),
            version: Some(active),
            purge: crate::sqlite::parse_purge(Some(purge.to_string())),
        })
    }

    /// Every version of `app`, newest first.
    pub async fn versions(&self, app: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let client = self.client().await?;
        let active = active_of(&client, app).await?;
        let rows = client
            .query(
                "SELECT id, created_ms FROM outpost_versions WHERE app = $1 \
                 ORDER BY created_ms DESC, id",
                &[&app],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let id: String = row.get(0);
                VersionInfo {
                    active: active.as_deref() == Some(id.as_str()),
                    id,
                    app: app.to_string(),
                    created_ms: row.get::<_, i64>(1) as u64,
                }
            })
            .collect())
    }

    /// Every app in service and its active version, by name.
    pub async fn active(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT name, active FROM outpost_apps WHERE active IS NOT NULL \
                 ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The changes after `since`, oldest first, at most `limit`.
    pub async fn changes(&self, since: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT seq, app, version, purge FROM outpost_feed WHERE seq > $1 \
                 ORDER BY seq LIMIT $2",
                &[&(since as i64), &(limit as i64)],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| Change {
                seq: r.get::<_, i64>(0) as u64,
                app: r.get(1),
                version: r.get(2),
                purge: crate::sqlite::parse_purge(r.get(3)),
            })
            .collect())
    }

    /// The sequence number of the latest change (0 before any).
    pub async fn head(&self) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT seq FROM outpost_head", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// Takes the next sequence number, locking the head row until the transaction ends: writers
/// of every origin process go one at a time, in sequence order.
async fn next_seq(tx: &deadpool_postgres::Transaction<'_>) -> Result<i64, StoreError> {
    let row = tx
        .query_one("UPDATE outpost_head SET seq = seq + 1 RETURNING seq", &[])
        .await?;
    Ok(row.get(0))
}

async fn current_seq(
    tx: &deadpool_postgres::Transaction<'_>,
    app: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .query_opt("SELECT seq FROM outpost_apps WHERE name = $1", &[&app])
        .await?
        .map(|r| r.get(0)))
}

async fn active_of(client: &impl GenericClient, app: &str) -> Result<Option<String>, StoreError> {
    Ok(client
        .query_opt("SELECT active FROM outpost_apps WHERE name = $1", &[&app])
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0)))
}

/// Appends change `seq` (predecessor `prev`, for rollbacks), points the app at it, and
/// announces it to every origin process once the transaction commits.
async fn append(
    tx: &deadpool_postgres::Transaction<'_>,
    seq: i64,
    app: &str,
    version: Option<&str>,
    prev: Option<i64>,
) -> Result<Change, StoreError> {
    tx.execute(
        "INSERT INTO outpost_feed (seq, app, version, prev, at_ms) VALUES ($1, $2, $3, $4, $5)",
        &[&seq, &app, &version, &prev, &(now_ms() as i64)],
    )
    .await?;
    tx.execute(
        "INSERT INTO outpost_apps (name, active, seq) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET active = excluded.active, seq = excluded.seq",
        &[&app, &version, &seq],
    )
    .await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
        .await?;
    Ok(Change {
        seq: seq as u64,
        app: app.to_string(),
        version: version.map(str::to_string),
        purge: None,
    })
}

/// Listens for changes on a connection of its own and wakes `changed` for each; reconnects
/// with backoff when the connection drops, and wakes `changed` after every (re)connection
/// too, since changes made while it was down were not announced to it.
async fn listen(config: tokio_postgres::Config, changed: Arc<Notify>) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = FIRST_BACKOFF;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let statement = format!("LISTEN {CHANNEL}");
                let mut subscribe = std::pin::pin!(client.batch_execute(&statement));
                let mut subscribed = false;
                loop {
                    tokio::select! {
                        result = &mut subscribe, if !subscribed => {
                            if let Err(e) = result {
                                tracing::warn!("PostgreSQL LISTEN failed: {e}");
                                break;
                            }
                            subscribed = true;
                            backoff = FIRST_BACKOFF;
                            changed.notify_waiters();
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(_))) => changed.notify_waiters(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!("PostgreSQL change listener: {e}");
                                break;
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(e) => tracing::warn!("PostgreSQL change listener cannot connect: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
