//! `outpost`: the one binary of every role. This file parses the command line and wires the
//! crates together; each role lives in its own module.

mod deploy_cmd;
mod dev;
mod front_door;
mod origin_cmd;
mod pop_cmd;
mod tail_cmd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost_bundle::Limits;
use outpost_gateway::ErrorDetail;
use outpost_isolate::{Egress, EngineConfig, ResponseOptions};
use outpost_pool::PoolConfig;

// Request handling allocates many small, short-lived buffers across threads; mimalloc serves
// them faster than the system allocator (V8's own heap is unaffected).
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// mimalloc as the global allocator, taking its plain entry points for what they already
/// align (`mimalloc::MiMalloc` calls the `_aligned` ones for everything: ~65 instructions
/// per allocation against ~20, ~20 allocations per request).
struct MiMalloc;

/// What `mi_malloc` aligns every block of at least this size to (`MI_MAX_ALIGN_SIZE`).
const MI_MAX_ALIGN_SIZE: usize = 16;

/// Whether a block of `size` bytes from `mi_malloc` (or `mi_realloc`) has `align`.
fn plain(align: usize, size: usize) -> bool {
    align <= MI_MAX_ALIGN_SIZE && align <= size
}

extern "C" {
    fn mi_malloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_zalloc(size: usize) -> *mut std::ffi::c_void;
    fn mi_realloc(p: *mut std::ffi::c_void, size: usize) -> *mut std::ffi::c_void;
    fn mi_free(p: *mut std::ffi::c_void);
}

// SAFETY: mimalloc's functions meet GlobalAlloc's contract: `mi_malloc` returns blocks
// aligned to `MI_MAX_ALIGN_SIZE` (or their size, when smaller), which `plain` checks the
// layout needs no more than; other layouts go to the `_aligned` functions through
// `mimalloc::MiMalloc`; `mi_free` frees blocks of either.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        }
    }
}

/// mimalloc's defaults, set before it first allocates (that happens before `main`, so this
/// runs as an early constructor). Its environment variables still take precedence.
///
/// `arena_eager_commit` off: on Linux mimalloc otherwise commits whole arenas up front and
/// keeps them committed, ~15 MiB of a node's RSS that is never used (measured with hello:
/// 74 → 53 MiB after load).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00100"]
static MIMALLOC_DEFAULTS: extern "C" fn() = {
    extern "C" {
        fn mi_option_set_default(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_e` (include/mimalloc.h).
    const ARENA_EAGER_COMMIT: std::ffi::c_int = 4;
    extern "C" fn set_defaults() {
        // SAFETY: sets one option's default value in mimalloc's static option table; it
        // runs once, single-threaded, before anything allocates.
        unsafe { mi_option_set_default(ARENA_EAGER_COMMIT, 0) }
    }
    set_defaults
};

/// Outpost: an edge runtime for Workers-style JavaScript and WebAssembly handlers.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the node's own log lines (stderr) are written: `human`, or `json` (one object per
    /// line, with each request's `request_id`). Which lines: $OUTPOST_LOG (a tracing filter,
    /// e.g. `info` or `warn,outpost::request=info`); by default warnings and errors, and for
    /// `dev` also one line per request.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve apps from disk as a local edge node, reloading them when their files change.
    Dev(DevArgs),
    /// Validate an app directory or file and print its locked bundle.
    Check(CheckArgs),
    /// Run the control plane: stores versions, keeps each app's active one, serves the
    /// change feed and blobs to PoPs.
    Origin(OriginArgs),
    /// Run a point of presence: follow an origin's change feed and serve its apps.
    Pop(pop_cmd::PopArgs),
    /// Publish an app to an origin: upload what it lacks, create the version, activate it.
    Deploy(deploy_cmd::DeployArgs),
    /// Make an app's previous (or a given) version active again.
    Rollback(deploy_cmd::RollbackArgs),
    /// Purge an app's cache on every PoP (through the origin's change feed).
    Purge(deploy_cmd::PurgeArgs),
    /// List an app's versions on an origin (* marks the active one).
    Versions(deploy_cmd::VersionsArgs),
    /// Follow an app's console lines and requests on a node (its admin listener) live.
    Tail(tail_cmd::TailArgs),
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Apps to serve: directories with an outpost.toml, single .js/.mjs files, or
    /// directories whose subdirectories are apps.
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/healthz, /isolates); none unless given.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where tenants' outbound fetch may go: `public` addresses only, public and
    /// `loopback`, or `any`.
    #[arg(long, value_enum, default_value = "loopback")]
    pub egress: EgressArg,
    /// What a client sees of an app's load error: `full` (file:line) or `short`.
    #[arg(long, value_enum, default_value = "full")]
    pub error_detail: ErrorDetail,
    #[command(flatten)]
    pub front: front_door::FrontDoorArgs,
}

/// Settings of a node that serves apps (shared by the roles that run isolates).
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Worker threads; each serves connections and runs isolates of any app.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Most isolates alive at once on the node; idle ones are evicted (least recently used
    /// first) to make room.
    #[arg(long, default_value_t = PoolConfig::default().max_isolates)]
    pub max_isolates: usize,
    /// Most isolates of one app version (at most one per worker); a busy app gets more, up
    /// to this, on other workers.
    #[arg(long, default_value_t = 8)]
    pub max_isolates_per_app: usize,
    /// MiB of memory all isolates may hold together before idle ones are evicted.
    #[arg(long, default_value_t = PoolConfig::default().max_memory_bytes >> 20)]
    pub max_memory_mb: u64,
    /// Seconds an isolate may sit idle before it is evicted.
    #[arg(long, default_value_t = PoolConfig::default().idle_timeout.as_secs())]
    pub idle_timeout_secs: u64,
    /// Ready runtimes each worker keeps for cold starts.
    #[arg(long, default_value_t = EngineConfig::default().spares_per_worker)]
    pub spares: usize,
    /// Add `Server-Timing: cpu;dur=…, wall;dur=…` (and `cold`) to every response.
    #[arg(long, value_enum, default_value = "on")]
    pub server_timing: Switch,
    /// Limit: CPU milliseconds per request (apps may lower it in [limits] cpu_ms).
    #[arg(long, default_value_t = Limits::default().cpu.as_millis() as u64)]
    pub cpu_ms: u64,
    /// Limit: MiB of memory per isolate (V8 heap plus ArrayBuffers and Wasm memory).
    #[arg(long, default_value_t = Limits::default().memory_bytes >> 20)]
    pub memory_mb: u64,
    /// Limit: milliseconds from a request's arrival to the response head (then 504).
    #[arg(long, default_value_t = Limits::default().timeout.as_millis() as u64)]
    pub timeout_ms: u64,
    /// Limit: milliseconds a streamed response body may go without a chunk.
    #[arg(long, default_value_t = Limits::default().stream_idle.as_millis() as u64)]
    pub stream_idle_ms: u64,
    /// Limit: outbound fetch() calls per request.
    #[arg(long, default_value_t = Limits::default().subrequests)]
    pub subrequests: u32,
    /// Limit: largest request body in bytes (then 413).
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: u64,
    /// Limit: requests one isolate works on at once.
    #[arg(long, default_value_t = Limits::default().concurrency)]
    pub concurrency: u32,
    /// MiB of responses the HTTP cache (and the Cache API) keeps in memory.
    #[arg(long, default_value_t = outpost_cache::CacheConfig::default().memory_bytes >> 20)]
    pub cache_memory_mb: u64,
    /// Largest response body, in KiB, kept in memory; larger ones are kept on disk only.
    #[arg(long, default_value_t = outpost_cache::CacheConfig::default().memory_object_bytes >> 10)]
    pub cache_memory_object_kb: u64,
    /// Directory of the cache's disk tier, which survives restarts (a PoP's default:
    /// DATA/cache; `dev` keeps none unless given).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// MiB of responses the disk tier keeps.
    #[arg(long, default_value_t = 1024)]
    pub cache_disk_mb: u64,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `--egress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressArg {
    Public,
    Loopback,
    Any,
}

impl NodeArgs {
    /// The node's limits: every app's, unless it asks for less.
    pub fn limits(&self) -> Limits {
        Limits {
            cpu: Duration::from_millis(self.cpu_ms.max(1)),
            memory_bytes: self.memory_mb.max(outpost_bundle::MIN_MEMORY_MB) << 20,
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            stream_idle: Duration::from_millis(self.stream_idle_ms.max(1)),
            subrequests: self.subrequests,
            max_body_bytes: self.max_body_bytes,
            concurrency: self.concurrency.max(1),
        }
    }

    /// Opens the node's cache; its disk tier in --cache-dir, else in `default_dir` if any.
    pub fn cache(&self, default_dir: Option<&Path>) -> anyhow::Result<Arc<outpost_cache::Cache>> {
        let dir = self.cache_dir.as_deref().or(default_dir);
        let config = outpost_cache::CacheConfig {
            memory_bytes: self.cache_memory_mb << 20,
            memory_object_bytes: self.cache_memory_object_kb << 10,
            disk: dir.map(|dir| outpost_cache::DiskConfig {
                dir: dir.to_path_buf(),
                bytes: self.cache_disk_mb << 20,
            }),
            ..outpost_cache::CacheConfig::default()
        };
        outpost_cache::Cache::open(config).with_context(|| match dir {
            Some(dir) => format!("opening the cache in {}", dir.display()),
            None => "opening the cache".to_string(),
        })
    }

    pub fn pool(&self) -> PoolConfig {
        PoolConfig {
            workers: self.workers.max(1),
            max_isolates: self.max_isolates.max(1),
            max_instances_per_app: self.max_isolates_per_app.max(1),
            max_memory_bytes: self.max_memory_mb << 20,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            ..Default::default()
        }
    }

    /// How the node runs isolates; their Cache API works on `cache`.
    pub fn engine(&self, egress: EgressArg, cache: Arc<outpost_cache::Cache>) -> EngineConfig {
        EngineConfig {
            cache: Some(cache),
            limits: self.limits(),
            egress: match egress {
                EgressArg::Public => Egress::Public,
                EgressArg::Loopback => Egress::PublicAndLoopback,
                EgressArg::Any => Egress::Any,
            },
            response: ResponseOptions {
                server_timing: self.server_timing == Switch::On,
            },
            spares_per_worker: self.spares,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct OriginArgs {
    /// Directory of the origin's state (blobs/ and catalog.db); created if missing. Needed
    /// unless both --database and --blobs are given.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Keep the catalog in PostgreSQL (postgres://USER:PASSWORD@HOST:PORT/DB) instead of
    /// DATA/catalog.db, so that several origin processes can share it.
    #[arg(long, env = "OUTPOST_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Keep blobs in S3-compatible storage (s3://BUCKET[/PREFIX]?endpoint=URL&region=R)
    /// instead of DATA/blobs; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    pub blobs: Option<String>,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8788")]
    pub listen: SocketAddr,
    /// File holding the deploy token (else $OUTPOST_DEPLOY_TOKEN).
    #[arg(long)]
    pub deploy_token_file: Option<PathBuf>,
    /// File holding the PoP token (else $OUTPOST_POP_TOKEN).
    #[arg(long)]
    pub pop_token_file: Option<PathBuf>,
    /// Address of the admin listener (/healthz, /readyz, /metrics); none unless given.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The app: a directory with outpost.toml, or a single .js/.mjs file.
    #[arg(default_value = ".")]
    path: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Dev(_) => "warn,outpost::request=info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Log lines are written by a thread of their own through a bounded queue (lines beyond
    // it are dropped, never waited for), so logging each request does not hold up the
    // worker that served it.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(64 * 1024)
        .lossy(true)
        .thread_name("outpost-log")
        // Buffered: the writer thread flushes once it has drained the queue, so a burst of
        // lines costs a few writes, not one each.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    if cli.log_format == LogFormat::Json {
        outpost_gateway::request_log::install(writer.clone());
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    outpost_isolate::set_console_format(match cli.log_format {
        LogFormat::Human => outpost_isolate::ConsoleFormat::Human,
        LogFormat::Json => outpost_isolate::ConsoleFormat::Json,
    });
    let result = match cli.command {
        Command::Dev(args) => dev::main(args),
        Command::Check(args) => check(args),
        Command::Origin(args) => origin_cmd::main(args),
        Command::Deploy(args) => deploy_cmd::deploy(args),
        Command::Pop(args) => pop_cmd::main(args),
        Command::Rollback(args) => deploy_cmd::rollback(args),
        Command::Purge(args) => deploy_cmd::purge(args),
        Command::Versions(args) => deploy_cmd::versions(args),
        Command::Tail(args) => tail_cmd::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    let bundle = outpost_bundle::load_app(&args.path)?;
    let bundle = load_in_an_isolate(bundle)?;
    println!("{}", serde_json::to_string_pretty(&bundle.lock())?);
    eprintln!("version id {}", bundle.id);
    Ok(())
}

/// Loads `bundle` in an isolate, as a node would, so that a syntax error, a failing import
/// or a missing handler is reported (with its file:line) before the app goes anywhere.
/// Runs on the main thread (it initializes V8).
pub fn load_in_an_isolate(
    bundle: outpost_bundle::Bundle,
) -> anyhow::Result<outpost_bundle::Bundle> {
    outpost_gateway::tls::app_certificates(&bundle)?;
    let engine = std::sync::Arc::new(outpost_isolate::IsolateEngine::new(EngineConfig {
        spares_per_worker: 0,
        ..EngineConfig::default()
    }));
    let pool = outpost_pool::Pool::new(engine, PoolConfig::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bundle = std::sync::Arc::new(bundle);
    let (limits, _) = Limits::default().for_app(&bundle.manifest.limits);
    runtime
        .block_on(pool.deploy(bundle.clone(), limits))
        .map_err(|e| anyhow::anyhow!("the app does not load: {}", e.message))?;
    Ok(std::sync::Arc::unwrap_or_clone(bundle))
}
