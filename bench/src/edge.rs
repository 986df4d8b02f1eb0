//! Benchmarks of the origin and its PoPs, on loopback:
//!
//! - `propagation`: from a deploy's activation returning until every PoP serves the new
//!   version, over `--deploys` deploys to `--pops` PoPs;
//! - `fanout`: `--followers` clients long-polling one origin's change feed; the time from an
//!   activation until all of them have seen it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use outpost_bundle::{Bundle, Manifest};

#[path = "process.rs"]
mod process;
use process::Process;

const DEPLOY: &str = "bench-deploy";
const POP: &str = "bench-pop";

#[derive(Parser)]
struct Args {
    /// The outpost binary.
    #[arg(long, default_value = "target/release/outpost")]
    outpost: PathBuf,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Deploy returned → every PoP serves the new version.
    Propagation {
        #[arg(long, default_value_t = 3)]
        pops: usize,
        #[arg(long, default_value_t = 20)]
        deploys: usize,
    },
    /// Activation → all followers of the feed have seen it.
    Fanout {
        #[arg(long, default_value_t = 200)]
        followers: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
}

/// A started role and the URL it listens on.
struct Role {
    _process: Process,
    url: String,
}

fn start(mut command: Command) -> anyhow::Result<Role> {
    command.args(["--listen", "127.0.0.1:0"]);
    let (process, addresses) = Process::start(command, &["listening on"])?;
    Ok(Role {
        _process: process,
        url: format!("http://{}", addresses[0]),
    })
}

fn origin(outpost: &Path, data: &Path) -> anyhow::Result<Role> {
    let mut command = Command::new(outpost);
    command
        .arg("origin")
        .arg("--data")
        .arg(data)
        .env("OUTPOST_DEPLOY_TOKEN", DEPLOY)
        .env("OUTPOST_POP_TOKEN", POP);
    start(command)
}

/// Version `n` of the benchmark's app.
fn version(n: usize) -> anyhow::Result<Bundle> {
    let manifest = Manifest::for_single_file("bench", "index.js");
    let source = format!("export default {{ fetch() {{ return new Response(\"v{n}\"); }} }};\n");
    let files = [("index.js".to_string(), source.into_bytes())].into();
    Ok(Bundle::new(manifest, files)?)
}

/// Uploads and activates `bundle` through the origin's API.
async fn publish(http: &reqwest::Client, origin: &str, bundle: &Bundle) -> anyhow::Result<()> {
    for module in bundle.modules.values() {
        http.put(format!("{origin}/v1/blobs/{}", module.sha256))
            .bearer_auth(DEPLOY)
            .body(module.bytes.to_vec())
            .send()
            .await?
            .error_for_status()?;
    }
    http.post(format!("{origin}/v1/versions"))
        .bearer_auth(DEPLOY)
        .body(bundle.lock().to_bytes())
        .send()
        .await?
        .error_for_status()?;
    http.put(format!("{origin}/v1/apps/bench/active"))
        .bearer_auth(DEPLOY)
        .body(format!("{{\"version\":\"{}\"}}", bundle.id))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn propagation(outpost: &Path, pops: usize, deploys: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = origin(outpost, &dir.path().join("origin"))?;
    let mut nodes = Vec::new();
    for i in 0..pops {
        let mut command = Command::new(outpost);
        command
            .args([
                "pop",
                "--origin",
                &origin.url,
                "--name",
                &format!("pop-{i}"),
            ])
            .arg("--data")
            .arg(dir.path().join(format!("pop-{i}")))
            .env("OUTPOST_TOKEN", POP);
        nodes.push(start(command)?);
    }
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    for n in 0..=deploys {
        let bundle = version(n)?;
        publish(&http, &origin.url, &bundle).await?;
        let start = Instant::now();
        let expected = format!("v{n}");
        for node in &nodes {
            loop {
                let body = http.get(&node.url).send().await.ok();
                let text = match body {
                    Some(res) => res.text().await.unwrap_or_default(),
                    None => String::new(),
                };
                if text == expected {
                    break;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("{} never served {expected}", node.url);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // The first deploy also starts the app everywhere: not counted.
        if n > 0 {
            times.push(start.elapsed());
        }
    }
    times.sort();
    println!(
        "propagation: {deploys} deploys to {pops} PoPs, activation returned → all serve it: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    Ok(())
}

async fn fanout(outpost: &Path, followers: usize, rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = origin(outpost, &dir.path().join("origin"))?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(followers)
        .build()?;
    let mut times = Vec::new();
    for round in 0..rounds {
        let head = round as u64;
        let mut tasks = Vec::new();
        for _ in 0..followers {
            let http = http.clone();
            let url = format!("{}/v1/changes?since={head}&wait=30", origin.url);
            tasks.push(tokio::spawn(async move {
                let res = http.get(url).bearer_auth(POP).send().await?;
                res.error_for_status()?.bytes().await?;
                anyhow::Ok(Instant::now())
            }));
        }
        // Let every follower's long-poll reach the origin.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let bundle = version(round)?;
        let start = Instant::now();
        publish(&http, &origin.url, &bundle).await?;
        let mut last = start;
        for task in tasks {
            last = last.max(task.await??);
        }
        times.push(last - start);
    }
    times.sort();
    println!(
        "fanout: {followers} followers of one origin's feed, publish started → all have seen the change: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms ({rounds} rounds)",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.bench {
        Bench::Propagation { pops, deploys } => propagation(&args.outpost, pops, deploys).await,
        Bench::Fanout { followers, rounds } => fanout(&args.outpost, followers, rounds).await,
    }
}
