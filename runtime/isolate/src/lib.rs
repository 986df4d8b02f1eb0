//! Outpost's isolates: V8 (through deno_core) with the Web APIs of Deno's extension crates,
//! running Workers-style handlers from a [`Bundle`](outpost_bundle::Bundle). This is the only
//! crate that links V8.
//!
//! [`IsolateEngine`] implements the pool's [`Engine`]: each instance is one isolate, taken
//! from its worker's stock of ready runtimes (made from a startup snapshot built by
//! `build.rs` from `js/`), serving its app's requests concurrently on one worker thread,
//! within the app's limits.

mod allocator;
mod blank;
mod body;
mod cache_api;
mod code_cache;
mod console;
mod egress;
mod enter;
mod exchange;
mod extensions;
mod instance;
mod limits;
mod loader;

use std::sync::Once;
use std::time::{Duration, Instant};

use outpost_bundle::Limits;
use outpost_pool::{Engine, InstanceSpec, Job, LoadError, LocalFuture};
// As `crate::timing`, where `extensions` finds it both here and in the build script.
use outpost_pool::timing;
use tokio::sync::mpsc;

pub use console::{
    dropped_lines, set_console_format, set_console_tap, terminal_console, ConsoleFormat, ConsoleTap,
};
pub use egress::Egress;
pub use exchange::ResponseOptions;
pub use extensions::{ConsoleSink, FetchTiming, Timing};
pub use instance::{Instance, ServeEnd, Tenant};

pub use blank::spare_runtimes;
use blank::Stock;

/// How the engine runs every isolate.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The node's limits: apps may lower them. Ready runtimes are made with its memory limit.
    pub limits: Limits,
    /// Where tenants' outbound `fetch` may go.
    pub egress: Egress,
    /// What the node adds to responses.
    pub response: ResponseOptions,
    /// Ready runtimes each worker keeps, so a cold app does not wait for one (0: none).
    pub spares_per_worker: usize,
    /// The node's cache, behind the apps' Cache API (none: the API stores nothing).
    pub cache: Option<std::sync::Arc<outpost_cache::Cache>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            egress: Egress::Public,
            response: ResponseOptions::default(),
            spares_per_worker: 1,
            cache: None,
        }
    }
}

/// Runs bundles in V8 isolates.
pub struct IsolateEngine {
    config: EngineConfig,
}

impl IsolateEngine {
    /// Initializes V8 for the process. Call it on the main thread, before any worker thread
    /// starts isolates (V8's platform must be set up by a common parent thread).
    pub fn new(config: EngineConfig) -> IsolateEngine {
        static INIT: Once = Once::new();
        let wasm_pages = (config.limits.memory_bytes >> 16).clamp(1, 65_536);
        INIT.call_once(|| {
            // One Wasm memory may not outgrow an isolate's memory limit (V8 flags are
            // process-wide and must be set before V8 starts).
            deno_core::v8::V8::set_flags_from_string(&format!("--wasm-max-mem-pages={wasm_pages}"));
            deno_core::JsRuntime::init_platform(None);
            // Deno's TLS (for `fetch` to https://) uses rustls with aws-lc-rs; other crates
            // in the process (object_store's HTTP client) enable rustls' ring provider too,
            // and with two compiled in, rustls can no longer pick one by itself. An error
            // means the process already chose one.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        });
        IsolateEngine { config }
    }

    fn stock(&self) -> Stock {
        Stock {
            size: self.config.spares_per_worker,
            memory_limit: self.config.limits.memory_bytes,
        }
    }
}

/// Restarts after a failure sooner than this count as a storm and are slowed down.
const RESTART_STORM: Duration = Duration::from_secs(1);
/// The longest pause before restarting a failing isolate.
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(5);

impl Engine for IsolateEngine {
    fn worker_started(&self) -> LocalFuture<()> {
        Box::pin(self.stock().keep())
    }

    fn instantiate(
        &self,
        spec: InstanceSpec,
        mut jobs: mpsc::Receiver<Job>,
    ) -> LocalFuture<Result<LocalFuture<()>, LoadError>> {
        let stock = self.stock();
        let egress = self.config.egress;
        let response = self.config.response.clone();
        let cache = self.config.cache.clone();
        Box::pin(async move {
            let console = terminal_console(&spec.bundle.manifest.name);
            let log = console.clone();
            let tenant = move || Tenant {
                bundle: spec.bundle.clone(),
                limits: spec.limits.clone(),
                handle: spec.handle.clone(),
                console: console.clone(),
                egress,
                response: response.clone(),
                cache: cache.clone(),
            };
            let instance = start(stock, tenant()).await?;
            let serve: LocalFuture<()> = Box::pin(async move {
                let mut instance = instance;
                let mut pause = Duration::ZERO;
                loop {
                    let served_since = Instant::now();
                    match instance.serve(&mut jobs).await {
                        ServeEnd::Closed => return,
                        ServeEnd::Failed(message) => {
                            log(3, "", &format!("{message}; its isolate is replaced\n"));
                        }
                    }
                    drop(instance);
                    // A tenant that breaks its isolate again and again is restarted ever more
                    // slowly (its queued requests wait), so it cannot keep a core busy.
                    pause = if served_since.elapsed() < RESTART_STORM {
                        (pause * 2).clamp(Duration::from_millis(50), MAX_RESTART_PAUSE)
                    } else {
                        Duration::ZERO
                    };
                    tokio::time::sleep(pause).await;
                    instance = match start(stock, tenant()).await {
                        Ok(instance) => instance,
                        Err(e) => {
                            log(3, "", &format!("the isolate could not be restarted: {e}\n"));
                            return;
                        }
                    };
                }
            });
            Ok(serve)
        })
    }
}

/// Starts an instance for `tenant` on a runtime from this worker's stock.
async fn start(stock: Stock, tenant: Tenant) -> Result<Instance, LoadError> {
    let blank = stock.take(tenant.limits.memory_bytes)?;
    Instance::start(blank, tenant).await
}
