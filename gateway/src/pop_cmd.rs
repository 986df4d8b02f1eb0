//! `outpost pop`: a point of presence. It serves the apps of its local store at once, then
//! follows the origin's change feed: for each change it fetches the version's lock and the
//! blobs it lacks (bounded concurrency, every digest verified, each written atomically),
//! loads the version, and switches the node's route table in one step. While the origin is
//! unreachable it keeps serving what it has and retries with backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use outpost_bundle::{Bundle, Limits, Lock};
use outpost_gateway::admin::Admin;
use outpost_gateway::metrics::Metrics;
use outpost_gateway::{AppEntry, ErrorDetail, RouteTable, Routes, ServeConfig};

use crate::front_door::{self, FrontDoor, Role};
use outpost_isolate::IsolateEngine;
use outpost_pool::{Deployment, Pool};
use outpost_store::{write_atomically, BlobStore, DirBlobs};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::{EgressArg, NodeArgs};

/// Blobs fetched at once from the origin.
const FETCHES: usize = 8;
/// How long one long-poll of the feed may wait.
const POLL_WAIT_SECS: u64 = 25;
/// The longest pause between attempts while the origin is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct PopArgs {
    /// The origin's URL (http://HOST:PORT).
    #[arg(long, env = "OUTPOST_ORIGIN")]
    pub origin: String,
    /// The PoP token (else $OUTPOST_TOKEN).
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Directory of the PoP's store (blobs/, locks/, state.json); created if missing.
    #[arg(long)]
    pub data: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// This PoP's name, sent as `x-outpost-pop` on every response.
    #[arg(long, default_value = "pop")]
    pub name: String,
    /// Whether responses carry `x-outpost-pop: NAME` and `x-outpost-version: APP@VERSION`
    /// (who answered, with what).
    #[arg(long, value_enum, default_value = "on")]
    pub identity_headers: crate::Switch,
    /// Address of the admin listener (/healthz, /readyz, /isolates, /metrics, /tail).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// The admin listener's URL as others reach it, told to the origin so that
    /// `outpost tail --origin` finds this PoP (default: http:// and the address it listens
    /// on).
    #[arg(long)]
    pub admin_url: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where tenants' outbound fetch may go.
    #[arg(long, value_enum, default_value = "public")]
    pub egress: EgressArg,
    /// What a client sees of an app's load error.
    #[arg(long, value_enum, default_value = "short")]
    pub error_detail: ErrorDetail,
    #[command(flatten)]
    pub front: crate::front_door::FrontDoorArgs,
}

/// What the PoP serves, as kept on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The last change of the feed applied.
    seq: u64,
    /// Each app's version.
    apps: BTreeMap<String, String>,
}

/// The PoP's local store: verified blobs, locks, and the state, each written atomically.
/// Its file I/O (hashing, fsync) runs through [`off_thread`], never on the thread that
/// accepts connections.
#[derive(Clone)]
struct LocalStore {
    root: PathBuf,
    blobs: DirBlobs,
}

impl LocalStore {
    fn open(root: &Path) -> anyhow::Result<LocalStore> {
        std::fs::create_dir_all(root.join("locks"))
            .with_context(|| format!("creating {}", root.display()))?;
        Ok(LocalStore {
            root: root.to_path_buf(),
            blobs: DirBlobs::open(&root.join("blobs"))?,
        })
    }

    fn state(&self) -> anyhow::Result<State> {
        match std::fs::read(self.root.join("state.json")) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).context("state.json")?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).context("reading state.json"),
        }
    }

    /// Writes the state (as serialized JSON).
    fn save_state(&self, state: &[u8]) -> anyhow::Result<()> {
        Ok(write_atomically(&self.root.join("state.json"), state)?)
    }

    fn lock_path(&self, id: &str) -> anyhow::Result<PathBuf> {
        outpost_store::check_digest(id)?;
        Ok(self.root.join("locks").join(format!("{id}.json")))
    }

    fn lock(&self, id: &str) -> anyhow::Result<Option<Lock>> {
        match std::fs::read(self.lock_path(id)?) {
            Ok(bytes) => Ok(Some(Lock::from_bytes(&bytes)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading a lock"),
        }
    }

    fn save_lock(&self, lock: &Lock) -> anyhow::Result<()> {
        Ok(write_atomically(
            &self.lock_path(&lock.id())?,
            &lock.to_bytes(),
        )?)
    }

    /// The bundle of a stored version; every blob is read back and checked.
    fn bundle(&self, id: &str) -> anyhow::Result<Bundle> {
        let lock = self
            .lock(id)?
            .with_context(|| format!("version {id} is not in the local store"))?;
        Ok(Bundle::from_lock(&lock, |digest| {
            self.blobs.get(digest).ok().flatten()
        })?)
    }
}

/// The origin's read API.
struct OriginClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl OriginClient {
    async fn get(&self, path: &str) -> anyhow::Result<bytes::Bytes> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {path}: the origin answered {status}");
        }
        Ok(response.bytes().await?)
    }

    /// Fetches what version `id` needs into `store` (its lock, the blobs it lacks) and
    /// returns its bundle, verified.
    async fn fetch(&self, store: &LocalStore, id: &str) -> anyhow::Result<Bundle> {
        let lock = match off_thread(store, {
            let id = id.to_string();
            move |store| store.lock(&id)
        })
        .await?
        {
            Some(lock) => lock,
            None => {
                let lock = Lock::from_bytes(&self.get(&format!("/v1/versions/{id}")).await?)?;
                if lock.id() != id {
                    bail!(
                        "the origin sent a lock for {} when asked for {id}",
                        lock.id()
                    );
                }
                lock
            }
        };
        // Blobs absent here, or damaged: fetched (again).
        let modules: Vec<(String, u64)> = lock
            .modules
            .iter()
            .map(|m| (m.sha256.clone(), m.size))
            .collect();
        let missing = off_thread(store, move |store| {
            Ok(modules
                .into_iter()
                .filter(|(digest, _)| {
                    store
                        .blobs
                        .get(digest)
                        .ok()
                        .flatten()
                        .is_none_or(|bytes| outpost_store::digest_of(&bytes) != *digest)
                })
                .collect::<Vec<_>>())
        })
        .await?;
        futures::stream::iter(missing)
            .map(|(digest, size)| async move {
                let bytes = self.get(&format!("/v1/blobs/{digest}")).await?;
                if bytes.len() as u64 != size {
                    bail!(
                        "blob {digest}: {} bytes where the lock says {size}",
                        bytes.len()
                    );
                }
                // Verified against its digest, written to a temporary file, then renamed.
                off_thread(store, move |store| Ok(store.blobs.put(&digest, &bytes)?)).await
            })
            .buffer_unordered(FETCHES)
            .try_collect::<Vec<()>>()
            .await?;
        let id = id.to_string();
        off_thread(store, move |store| {
            store.save_lock(&lock)?;
            store.bundle(&id)
        })
        .await
    }
}

/// Runs `call` on the local store on tokio's blocking threads.
async fn off_thread<T: Send + 'static>(
    store: &LocalStore,
    call: impl FnOnce(&LocalStore) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(&store))
        .await
        .context("a store task panicked")?
}

pub fn main(args: PopArgs) -> anyhow::Result<()> {
    let cache = args.node.cache(Some(&args.data.join("cache")))?;
    let engine = Arc::new(IsolateEngine::new(
        args.node.engine(args.egress, cache.clone()),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args, engine, cache))
}

/// The apps the PoP serves, and what builds its route table.
struct Serving {
    store: LocalStore,
    pool: Arc<Pool>,
    routes: Arc<Routes>,
    node_limits: Limits,
    state: State,
    apps: BTreeMap<String, Served>,
    name: String,
    /// With --https: the node's certificates, which serve the apps' own too.
    certificates: Option<Arc<outpost_gateway::tls::Certificates>>,
    metrics: Arc<Metrics>,
    /// The node's cache: purged through the feed, and of an app's responses when a new
    /// version of it activates (unless its `[cache] purge_on_deploy` is false).
    cache: Arc<outpost_cache::Cache>,
}

/// An app version in service: its deployment, and the certificates it brought (parsed and
/// checked once, when it was loaded).
#[derive(Clone)]
struct Served {
    deployment: Deployment,
    certificates: Vec<outpost_gateway::tls::Certificate>,
}

impl Serving {
    async fn load(&self, bundle: Bundle) -> anyhow::Result<Served> {
        // Certificates it brings must check out before it serves anything.
        let certificates = outpost_gateway::tls::app_certificates(&bundle)?;
        let (limits, _) = self.node_limits.for_app(&bundle.manifest.limits);
        let deployment = self.pool.deploy(Arc::new(bundle), limits).await?;
        Ok(Served {
            deployment,
            certificates,
        })
    }

    /// Swaps in the table of the apps served now; an app whose routes collide with
    /// another's is left out of it (and logged).
    fn publish(&self) {
        let mut published = self.apps.clone();
        loop {
            let entries: Vec<AppEntry> = published
                .iter()
                .map(|(name, s)| AppEntry::serving(name.clone(), s.deployment.clone()))
                .collect();
            match RouteTable::new(entries) {
                Ok(table) => {
                    if let Some(certificates) = &self.certificates {
                        certificates.set_apps(
                            published
                                .iter()
                                .filter(|(_, s)| !s.certificates.is_empty())
                                .map(|(name, s)| (name.clone(), s.certificates.clone()))
                                .collect(),
                        );
                    }
                    self.metrics.serving(
                        published
                            .iter()
                            .map(|(name, s)| (name.clone(), s.deployment.bundle().id.clone())),
                    );
                    return self.routes.swap(table);
                }
                Err(duplicate) => {
                    // Left out of this table only: it is served again once the clash is gone.
                    eprintln!(
                        "outpost pop {}: {duplicate}; {} is not served while it lasts",
                        self.name, duplicate.second
                    );
                    published.remove(&duplicate.second);
                }
            }
        }
    }

    /// Applies one page of the feed: the last change of each app wins.
    /// Returns whether every change applied; the feed position advances only then, so a
    /// change that failed (an unreachable origin, a blob that does not verify) is tried again.
    async fn apply(&mut self, client: &OriginClient, head: u64, changes: Vec<FeedChange>) -> bool {
        let mut complete = true;
        let mut latest: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut purges: Vec<(String, outpost_cache::Purge)> = Vec::new();
        for change in changes {
            match change.purge {
                Some(purge) => match serde_json::from_value(purge) {
                    Ok(purge) => purges.push((change.app, purge)),
                    Err(e) => eprintln!(
                        "outpost pop {}: a purge of {} this PoP does not understand: {e}",
                        self.name, change.app
                    ),
                },
                None => {
                    latest.insert(change.app, change.version);
                }
            }
        }
        for (app, version) in latest {
            match version {
                None => {
                    self.apps.remove(&app);
                    self.state.apps.remove(&app);
                    purges.push((app.clone(), outpost_cache::Purge::All));
                    println!("outpost pop {}: {app} removed", self.name);
                }
                Some(id)
                    if self.state.apps.get(&app) == Some(&id) && self.apps.contains_key(&app) => {}
                Some(id) => {
                    let loaded = match client.fetch(&self.store, &id).await {
                        Ok(bundle) => self.load(bundle).await,
                        Err(e) => Err(e),
                    };
                    match loaded {
                        Ok(served) => {
                            println!(
                                "outpost pop {}: serving {}",
                                self.name,
                                served.deployment.bundle().label()
                            );
                            if served.deployment.bundle().manifest.cache.purge_on_deploy {
                                purges.push((app.clone(), outpost_cache::Purge::All));
                            }
                            self.apps.insert(app.clone(), served);
                            self.state.apps.insert(app, id);
                        }
                        Err(e) => {
                            complete = false;
                            eprintln!(
                                "outpost pop {}: version {id} of {app} not activated: {e:#}; the previous one keeps serving",
                                self.name
                            );
                        }
                    }
                }
            }
        }
        if complete {
            self.state.seq = head;
        }
        let state = serde_json::to_vec(&self.state).unwrap_or_default();
        let saved = off_thread(&self.store, move |store| store.save_state(&state)).await;
        if let Err(e) = saved {
            eprintln!("outpost pop {}: saving its state failed: {e:#}", self.name);
        }
        self.publish();
        // After the new table is in: nothing the previous version answers from now on is
        // stored (purges also cancel fills under way).
        for (app, purge) in purges {
            self.cache.purge(&app, &purge);
            println!("outpost pop {}: purged {app}: {purge:?}", self.name);
        }
        complete
    }
}

#[derive(Deserialize)]
struct Feed {
    head: u64,
    changes: Vec<FeedChange>,
}

#[derive(Deserialize)]
struct FeedChange {
    app: String,
    version: Option<String>,
    /// A purge of the app's cache (its version unchanged).
    #[serde(default)]
    purge: Option<serde_json::Value>,
}

async fn run(
    args: PopArgs,
    engine: Arc<IsolateEngine>,
    cache: Arc<outpost_cache::Cache>,
) -> anyhow::Result<()> {
    let store = LocalStore::open(&args.data)?;
    let tracing = front_door::tracing(&args.front, "outpost-pop", &args.name)?;
    let state = store.state()?;
    let pool = Arc::new(Pool::new(engine, args.node.pool()).context("starting worker threads")?);
    let routes = Arc::new(Routes::default());
    let label = format!("outpost pop {}", args.name);
    let certificates = front_door::certificates(&args.front, &Role::Pop, &label)?;
    let metrics = Arc::new(Metrics::new(
        pool.clone(),
        cache.clone(),
        args.front.metrics_max_apps,
    ));
    let tail = crate::front_door::tail();
    let mut serving = Serving {
        cache: cache.clone(),
        metrics: metrics.clone(),
        certificates: certificates.clone(),
        store,
        pool: pool.clone(),
        routes: routes.clone(),
        node_limits: args.node.limits(),
        state: State::default(),
        apps: BTreeMap::new(),
        name: args.name.clone(),
    };
    // Serve what the store has before the origin answers; an app that cannot be loaded
    // from it is fetched again, by following the whole feed once more.
    let mut state = state;
    let mut damaged = false;
    for (app, id) in &state.apps {
        let loaded = match serving.store.bundle(id) {
            Ok(bundle) => serving.load(bundle).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(served) => {
                serving.apps.insert(app.clone(), served);
            }
            Err(e) => {
                damaged = true;
                eprintln!("outpost pop {}: {app} from the store: {e:#}", args.name);
            }
        }
    }
    if damaged {
        state.seq = 0;
    }
    serving.state = state;
    serving.publish();

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut admin_url = None;
    if let Some(admin_addr) = args.admin {
        let admin = Admin {
            pool: pool.clone(),
            ready: ready.clone(),
            metrics: metrics.clone(),
            tail: tail.clone(),
        };
        admin_url = Some(front_door::open_admin(admin_addr, &label, admin).await?);
    }
    // Who follows the feed, and where its tail is, for `outpost tail --origin`.
    let mut identity = reqwest::header::HeaderMap::new();
    if let Some(admin_url) = args.admin_url.clone().or(admin_url) {
        if let (Ok(name), Ok(admin)) = (
            reqwest::header::HeaderValue::from_str(&args.name),
            reqwest::header::HeaderValue::from_str(&admin_url),
        ) {
            identity.insert("x-outpost-pop-name", name);
            identity.insert("x-outpost-pop-admin", admin);
        }
    }
    let client = OriginClient {
        http: reqwest::Client::builder()
            .default_headers(identity)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(POLL_WAIT_SECS + 30))
            .build()?,
        base: args.origin.trim_end_matches('/').to_string(),
        token: args.token.clone(),
    };
    let name = args.name.clone();
    let follow = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut reachable = true;
        loop {
            let since = serving.state.seq;
            let path = format!("/v1/changes?since={since}&wait={POLL_WAIT_SECS}");
            let feed = client
                .get(&path)
                .await
                .and_then(|bytes| Ok(serde_json::from_slice::<Feed>(&bytes)?));
            match feed {
                Ok(feed) => {
                    serving.metrics.origin_reachable(true);
                    if !reachable {
                        println!("outpost pop {name}: the origin answers again");
                        reachable = true;
                    }
                    if feed.head < since {
                        // The origin is behind this PoP (restored from a backup): start over.
                        eprintln!(
                            "outpost pop {name}: the origin's feed is at {} < {since}; resyncing",
                            feed.head
                        );
                        serving.state.seq = 0;
                        continue;
                    }
                    let complete = if feed.changes.is_empty() {
                        true
                    } else {
                        serving.apply(&client, feed.head, feed.changes).await
                    };
                    ready.store(true, Ordering::Release);
                    if complete {
                        backoff = Duration::from_millis(250);
                    } else {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                Err(e) => {
                    serving.metrics.origin_reachable(false);
                    if reachable {
                        eprintln!("outpost pop {name}: the origin is unreachable ({e:#}); serving what it has, retrying");
                        reachable = false;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    });

    // Said once everything that can fail at start has succeeded (as for `dev`).
    println!(
        "outpost pop {}: listening on http://{}/",
        args.name,
        listener.local_addr()?
    );
    let config = ServeConfig {
        error_detail: args.error_detail,
        pop_name: match args.identity_headers {
            crate::Switch::On => http::HeaderValue::from_str(&args.name).ok(),
            crate::Switch::Off => None,
        },
        metrics: Some(metrics),
        tail: Some(tail),
        cache: Some(cache),
        tracing: tracing.clone(),
        ..ServeConfig::default()
    };
    let front = FrontDoor::open(
        &args.front,
        certificates,
        &label,
        listener,
        routes,
        config,
        pool,
    )
    .await?;
    front.run_until_stopped().await;
    follow.abort();
    if let Some(tracing) = tracing {
        tracing.flush();
    }
    std::process::exit(0)
}
