//! `outpost`: the one binary of every role. This file parses the command line and wires the
//! crates together; each role lives in its own module.

mod dev;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

// Request handling allocates many small, short-lived buffers across threads; mimalloc serves
// them faster than the system allocator (V8's own heap is unaffected).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Outpost: an edge runtime for Workers-style JavaScript and WebAssembly handlers.
#[derive(Debug, Parser)]
#[command(name = "outpost", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one app from disk as a local edge node, reloading it when its files change.
    Dev(DevArgs),
    /// Validate an app directory or file and print its resolved manifest.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// The app: a directory with outpost.toml, or a single .js/.mjs file.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Worker threads, each serving connections and running one isolate of the app.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 100 << 20)]
    pub max_body_bytes: usize,
    /// Seconds an app may take to start its response before the client gets 504.
    #[arg(long, default_value_t = 60)]
    pub response_timeout: u64,
    /// Milliseconds of JavaScript an isolate may run without returning to its event loop
    /// (an infinite loop is stopped there; the client gets 503 and the isolate is replaced).
    #[arg(long, default_value_t = 2000)]
    pub cpu_limit_ms: u64,
    /// MiB of V8 heap an isolate may use (past it: 503 and the isolate is replaced).
    #[arg(long, default_value_t = 128)]
    pub heap_limit_mb: usize,
}

impl DevArgs {
    fn limits(&self) -> outpost_isolate::Limits {
        outpost_isolate::Limits {
            cpu_per_turn: Duration::from_millis(self.cpu_limit_ms.max(1)),
            heap_bytes: self.heap_limit_mb.max(8) << 20,
        }
    }

    fn admission(&self) -> outpost_gateway::Admission {
        outpost_gateway::Admission {
            max_body_bytes: self.max_body_bytes,
            response_timeout: Duration::from_secs(self.response_timeout.max(1)),
        }
    }
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The app: a directory with outpost.toml, or a single .js/.mjs file.
    #[arg(default_value = ".")]
    path: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Dev(args) => dev::main(args),
        Command::Check(args) => check(args),
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
    println!("{}", serde_json::to_string_pretty(&bundle.manifest)?);
    for (path, module) in &bundle.modules {
        eprintln!(
            "{path}: {:?}, {} bytes, sha256 {}",
            module.kind,
            module.bytes.len(),
            module.sha256
        );
    }
    eprintln!("deployment id {}", bundle.id);
    Ok(())
}
