//! `outpost dev`: apps from disk, served on a local listener, reloaded when their files
//! change. A reload that fails (a syntax error, a bad manifest, a route another app claims)
//! is reported and the app's previous version keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_bundle::{Limits, MANIFEST_FILE};
use outpost_gateway::admin::Admin;
use outpost_gateway::metrics::Metrics;
use outpost_gateway::{AppEntry, RouteTable, Routes, ServeConfig, Target};
use outpost_isolate::{Egress, IsolateEngine};
use outpost_pool::{Deployment, Pool};
use tokio::net::TcpListener;

use crate::front_door::{self, FrontDoor, Role};
use crate::DevArgs;

/// How long after a change the apps are reread, so that a burst of writes is read once.
const SETTLE: Duration = Duration::from_millis(30);

pub fn main(args: DevArgs) -> anyhow::Result<()> {
    // V8's platform must be initialized on the main thread before worker threads start.
    let cache = args.node.cache(None)?;
    let engine_config = args.node.engine(args.egress, cache.clone());
    let egress = engine_config.egress;
    let engine = Arc::new(IsolateEngine::new(engine_config));
    // This thread only accepts connections, watches files and reloads; connections are
    // served on the pool's worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args, engine, egress, cache))
}

async fn run(
    args: DevArgs,
    engine: Arc<IsolateEngine>,
    egress: Egress,
    cache: Arc<outpost_cache::Cache>,
) -> anyhow::Result<()> {
    let sources = discover(&args.paths)?;
    let tracing = front_door::tracing(&args.front, "outpost-dev", "dev")?;
    let pool = Arc::new(Pool::new(engine, args.node.pool()).context("starting worker threads")?);
    let routes = Arc::new(Routes::default());
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if egress == Egress::PublicAndLoopback {
        println!(
            "outpost dev: apps may fetch loopback addresses (127.0.0.0/8, ::1); other private \
             addresses are refused (--egress public|loopback|any)"
        );
    }
    let mut apps = Apps {
        sources,
        pool: pool.clone(),
        routes: routes.clone(),
        node_limits: args.node.limits(),
        port: addr.port(),
        certificates: None,
        cache: cache.clone(),
    };
    apps.reload().await;
    let metrics = Arc::new(Metrics::new(
        pool.clone(),
        cache.clone(),
        args.front.metrics_max_apps,
    ));
    let tail = crate::front_door::tail();
    if let Some(admin_addr) = args.admin {
        let admin = Admin {
            pool: pool.clone(),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            metrics: metrics.clone(),
            tail: tail.clone(),
        };
        front_door::open_admin(admin_addr, "outpost dev", admin).await?;
    }
    let certificates = front_door::certificates(
        &args.front,
        &Role::Dev {
            hosts: apps.hosts(),
        },
        "outpost dev",
    )?;
    apps.certificates = certificates.clone();
    apps.install_certificates();
    let watched: Vec<PathBuf> = apps.sources.iter().map(|s| s.watch_root()).collect();
    let (_watcher, mut changes) =
        outpost_gateway::watch::watch(&watched).context("watching the apps' files")?;
    let reloads = tokio::spawn(async move {
        while changes.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            apps.reload().await;
        }
    });

    // Said once everything that can fail at start has succeeded: scripts and tests take
    // this line to mean the node is up.
    println!("outpost dev: listening on http://{addr}/");
    let config = ServeConfig {
        error_detail: args.error_detail,
        metrics: Some(metrics),
        tail: Some(tail),
        cache: Some(cache),
        tracing: tracing.clone(),
        ..ServeConfig::default()
    };
    let front = FrontDoor::open(
        &args.front,
        certificates,
        "outpost dev",
        listener,
        routes,
        config,
        pool,
    )
    .await?;
    front.run_until_stopped().await;
    reloads.abort();
    if let Some(tracing) = tracing {
        tracing.flush();
    }
    // Instances are dropped with the process; their threads hold no state worth flushing.
    std::process::exit(0)
}

/// One app on disk and what of it serves now.
struct Source {
    path: PathBuf,
    /// The version serving now.
    current: Option<Deployment>,
    /// Why the app does not serve, while no version of it loaded.
    problem: Option<String>,
}

impl Source {
    fn new(path: PathBuf) -> Source {
        Source {
            path,
            current: None,
            problem: None,
        }
    }

    fn watch_root(&self) -> PathBuf {
        if self.path.is_dir() {
            self.path.clone()
        } else {
            self.path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        }
    }

    /// The app's name while no version of it serves: what its directory or file is called.
    fn fallback_name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("app");
        outpost_bundle::Manifest::for_single_file(stem, "x.js").name
    }
}

/// Turns the command line's paths into apps: each path is an app, unless it is a directory
/// without an outpost.toml, whose subdirectories with one are the apps then.
fn discover(paths: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for path in paths {
        let path = std::fs::canonicalize(path)
            .with_context(|| format!("{}: no such app", path.display()))?;
        if path.is_dir() && !path.join(MANIFEST_FILE).exists() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|child| child.join(MANIFEST_FILE).is_file())
                .collect();
            if !children.is_empty() {
                children.sort();
                sources.extend(children.into_iter().map(Source::new));
                continue;
            }
        }
        sources.push(Source::new(path));
    }
    Ok(sources)
}

struct Apps {
    sources: Vec<Source>,
    pool: Arc<Pool>,
    routes: Arc<Routes>,
    node_limits: Limits,
    port: u16,
    /// With --https: the node's certificates, which serve the apps' own too.
    certificates: Option<Arc<outpost_gateway::tls::Certificates>>,
    /// Emptied of an app's responses whenever it reloads.
    cache: Arc<outpost_cache::Cache>,
}

impl Apps {
    /// Serves the certificates the apps serving now bring.
    fn install_certificates(&self) {
        if let Some(certificates) = &self.certificates {
            let serving = self.sources.iter().filter_map(|s| s.current.as_ref());
            certificates.set_apps(outpost_gateway::tls::certificates_of(
                serving.map(|d| (d.bundle().manifest.name.as_str(), &**d.bundle())),
            ));
        }
    }

    /// The hosts the apps answer by name: `NAME.localhost`, and their routes' exact hosts.
    fn hosts(&self) -> Vec<String> {
        let mut hosts = Vec::new();
        for source in &self.sources {
            let Some(deployment) = &source.current else {
                continue;
            };
            let manifest = &deployment.bundle().manifest;
            hosts.push(format!("{}.localhost", manifest.name));
            for pattern in &manifest.routes {
                if let Ok(route) = outpost_bundle::Route::parse(pattern) {
                    hosts.extend(route.exact_host().map(str::to_string));
                }
            }
        }
        hosts
    }

    /// Reads every app again, loads those that changed, and swaps the route table once. An
    /// app whose new version does not load (or claims another app's route) keeps its
    /// previous version serving.
    async fn reload(&mut self) {
        let mut candidates: Vec<Option<Deployment>> = Vec::with_capacity(self.sources.len());
        for source in &mut self.sources {
            candidates.push(candidate(source, &self.pool, &self.node_limits).await);
        }
        let table = loop {
            match RouteTable::new(self.entries(&candidates)) {
                Ok(table) => break table,
                Err(duplicate) => {
                    let position = |name: &str| {
                        (0..self.sources.len()).find(|&i| self.name_of(i, &candidates) == name)
                    };
                    let (Some(first), Some(second)) =
                        (position(&duplicate.first), position(&duplicate.second))
                    else {
                        break RouteTable::default();
                    };
                    let message = duplicate.to_string();
                    match [second, first]
                        .into_iter()
                        .find(|&i| candidates[i].is_some())
                    {
                        Some(culprit) => {
                            candidates[culprit] = None;
                            keep(&mut self.sources[culprit], &message);
                        }
                        None => {
                            let source = &mut self.sources[second];
                            source.current = None;
                            keep(source, &message);
                        }
                    }
                }
            }
        };
        self.routes.swap(table);
        for (source, candidate) in self.sources.iter_mut().zip(candidates) {
            let Some(deployment) = candidate else {
                continue;
            };
            let manifest = &deployment.bundle().manifest;
            let mut at = vec![format!("http://{}.localhost:{}/", manifest.name, self.port)];
            at.extend(manifest.routes.iter().cloned());
            let verb = if source.current.is_some() {
                "reloaded"
            } else {
                "loaded"
            };
            println!(
                "outpost dev: {verb} {} at {}",
                deployment.bundle().label(),
                at.join(", ")
            );
            // What the previous version answered is not served for the new one.
            self.cache.purge(&manifest.name, &outpost_cache::Purge::All);
            source.current = Some(deployment);
            source.problem = None;
        }
        self.install_certificates();
    }

    /// The app at `index` as the next table would have it.
    fn serving(&self, index: usize, candidates: &[Option<Deployment>]) -> Option<Deployment> {
        candidates[index]
            .clone()
            .or_else(|| self.sources[index].current.clone())
    }

    fn name_of(&self, index: usize, candidates: &[Option<Deployment>]) -> String {
        match self.serving(index, candidates) {
            Some(d) => d.bundle().manifest.name.clone(),
            None => self.sources[index].fallback_name(),
        }
    }

    fn entries(&self, candidates: &[Option<Deployment>]) -> Vec<AppEntry> {
        (0..self.sources.len())
            .filter_map(|index| {
                let name = self.name_of(index, candidates);
                match self.serving(index, candidates) {
                    Some(deployment) => Some(AppEntry::serving(name, deployment)),
                    None => self.sources[index]
                        .problem
                        .as_ref()
                        .map(|problem| AppEntry {
                            name: name.into(),
                            routes: Vec::new(),
                            target: Target::Broken(problem.as_str().into()),
                        }),
                }
            })
            .collect()
    }
}

/// Loads one app again; returns its new version if it changed and loads.
async fn candidate(source: &mut Source, pool: &Pool, node_limits: &Limits) -> Option<Deployment> {
    let bundle = match outpost_bundle::load_app(&source.path) {
        Ok(bundle) => bundle,
        Err(e) => {
            keep(source, &e.to_string());
            return None;
        }
    };
    // Certificates it brings must check out (also without --https: `deploy` would refuse).
    if let Err(e) = outpost_gateway::tls::app_certificates(&bundle) {
        keep(source, &e.to_string());
        return None;
    }
    if source
        .current
        .as_ref()
        .is_some_and(|d| d.bundle().id == bundle.id)
    {
        return None;
    }
    let (limits, notes) = node_limits.for_app(&bundle.manifest.limits);
    for note in notes {
        eprintln!("outpost dev: {}: {note}", bundle.manifest.name);
    }
    match pool.deploy(Arc::new(bundle), limits).await {
        Ok(deployment) => Some(deployment),
        Err(e) => {
            keep(source, &e.message);
            None
        }
    }
}

/// Reports why an app was not (re)loaded and what serves instead.
fn keep(source: &mut Source, error: &str) {
    match &source.current {
        Some(d) => eprintln!(
            "outpost dev: not reloaded: {error}\noutpost dev: still serving {}",
            d.bundle().label()
        ),
        None => {
            eprintln!(
                "outpost dev: cannot load the app {}: {error}",
                source.path.display()
            );
            source.problem = Some(error.to_string());
        }
    }
}
