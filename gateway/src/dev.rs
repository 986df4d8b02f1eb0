//! `outpost dev`: one app from disk, served on a local listener, reloaded when its files
//! change. A reload that fails (a syntax error, a bad manifest) is reported and the previous
//! version keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_gateway::{serve, Routes};
use outpost_isolate::IsolateEngine;
use outpost_pool::{Pool, PoolConfig};
use tokio::net::TcpListener;

use crate::DevArgs;

/// How long after a change the app is reread, so that a burst of writes is read once.
const SETTLE: Duration = Duration::from_millis(30);

pub fn main(args: DevArgs) -> anyhow::Result<()> {
    // V8's platform must be initialized on the main thread before worker threads start.
    let engine = Arc::new(IsolateEngine::new(args.limits()));
    // This thread only accepts connections, watches files and reloads; connections are
    // served on the pool's worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args, engine))
}

async fn run(args: DevArgs, engine: Arc<IsolateEngine>) -> anyhow::Result<()> {
    let path = std::fs::canonicalize(&args.path)
        .with_context(|| format!("{}: no such app", args.path.display()))?;
    let config = PoolConfig {
        workers: args.workers,
        ..Default::default()
    };
    let pool = Arc::new(Pool::new(engine, config).context("starting worker threads")?);
    let routes = Arc::new(Routes::default());
    let app = App {
        path: path.clone(),
        pool: pool.clone(),
        routes: routes.clone(),
    };
    app.reload().await;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("outpost dev: listening on http://{addr}/");

    let watch_root = if path.is_dir() {
        path.clone()
    } else {
        parent_of(&path)
    };
    let (_watcher, mut changes) = outpost_gateway::watch::watch(&watch_root)
        .with_context(|| format!("watching {}", watch_root.display()))?;
    let reloads = tokio::spawn(async move {
        while changes.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            app.reload().await;
        }
    });

    tokio::select! {
        () = serve(listener, routes, args.admission(), pool) => {}
        _ = tokio::signal::ctrl_c() => {
            println!("outpost dev: stopping");
        }
    }
    reloads.abort();
    // Instances are dropped with the process; their threads hold no state worth flushing.
    std::process::exit(0)
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

struct App {
    path: PathBuf,
    pool: Arc<Pool>,
    routes: Arc<Routes>,
}

impl App {
    /// Reads the app again and activates it if it changed and loads; otherwise reports why
    /// and leaves the serving version alone.
    async fn reload(&self) {
        let current = self.routes.current();
        let bundle = match outpost_bundle::load_app(&self.path) {
            Ok(bundle) => bundle,
            Err(e) => return self.keep(current.as_deref(), &e.to_string()),
        };
        if current.as_ref().is_some_and(|d| d.bundle().id == bundle.id) {
            return;
        }
        let label = bundle.label();
        match self.pool.deploy(Arc::new(bundle)).await {
            Ok(deployment) => {
                let verb = if current.is_some() {
                    "reloaded"
                } else {
                    "loaded"
                };
                self.routes.activate(deployment);
                println!("outpost dev: {verb} {label}");
            }
            Err(e) => self.keep(current.as_deref(), &e.message),
        }
    }

    fn keep(&self, current: Option<&outpost_pool::Deployment>, error: &str) {
        match current {
            Some(d) => eprintln!(
                "outpost dev: not reloaded: {error}\noutpost dev: still serving {}",
                d.bundle().label()
            ),
            None => {
                eprintln!("outpost dev: cannot load the app: {error}");
                self.routes.set_problem(error.to_string());
            }
        }
    }
}
