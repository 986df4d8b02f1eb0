//! Benchmarks of a node hosting many apps (`outpost dev` over a directory of generated apps,
//! each reached as `NAME.localhost`):
//!
//! - `coldstart`: a request to an app with no live isolate until its response, over many
//!   distinct apps (their isolates evicted first);
//! - `density`: resident memory with N idle apps live, against the same node holding one;
//! - `noisy`: hello latency alone, then beside an app burning CPU;
//! - `zipf`: 1,000 apps under a budget of 100 isolates, traffic Zipf-distributed.
//!
//! Every load is bounded in requests and time, and stays on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[path = "proc_stats.rs"]
mod proc_stats;
#[path = "process.rs"]
mod process;
use process::Process;

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
    /// Request → response for apps whose isolates are not live.
    Coldstart {
        #[arg(long, default_value_t = 200)]
        apps: usize,
        /// Pause between two apps' first requests (ms), as between visitors; 0 measures a
        /// storm of cold starts, where each waits for the spare runtime the last one used
        /// to be made again.
        #[arg(long, default_value_t = 20)]
        gap_ms: u64,
    },
    /// MiB per idle isolate, with N apps live.
    Density {
        #[arg(long, default_value = "100,1000", value_delimiter = ',')]
        apps: Vec<usize>,
    },
    /// Hello p99 alone and beside an app burning CPU.
    Noisy {
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Worker threads of the node.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// CPU milliseconds each request of the noisy app burns.
        #[arg(long, default_value_t = 20)]
        burn_ms: u64,
    },
    /// Zipf-distributed traffic over many apps under an isolate budget.
    Zipf {
        #[arg(long, default_value_t = 1000)]
        apps: usize,
        #[arg(long, default_value_t = 100)]
        max_isolates: usize,
        #[arg(long, default_value_t = 1.1)]
        s: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

const HELLO: &str = "export default { fetch() { return new Response(\"hello from NAME\"); } };\n";

const BURNER: &str = "export default { fetch() { const end = Date.now() + BURN; while (Date.now() < end) {} return new Response(\"burnt\"); } };\n";

/// Writes `count` apps named `app0`.. into `dir`, each with `source` (NAME replaced).
fn make_apps(dir: &Path, count: usize, source: &str) -> anyhow::Result<()> {
    for i in 0..count {
        let name = format!("app{i}");
        let app = dir.join(&name);
        std::fs::create_dir_all(app.join("src"))?;
        std::fs::write(app.join("outpost.toml"), format!("name = \"{name}\"\n"))?;
        std::fs::write(app.join("src/index.js"), source.replace("NAME", &name))?;
    }
    Ok(())
}

/// A running `outpost dev`, killed when dropped.
struct Node {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn start(outpost: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Node> {
        let mut command = Command::new(outpost);
        command
            .arg("dev")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--server-timing", "off"])
            .args(args);
        let (process, addresses) = Process::start(command, &["listening on", "admin on"])?;
        Ok(Node {
            process,
            addr: addresses[0],
            admin: addresses[1],
        })
    }

    fn rss_mib(&self) -> anyhow::Result<f64> {
        proc_stats::rss_mib(self.process.child.id())
    }

    /// The node's wake-ups (context switches of all its threads) per second and its CPU use
    /// (percent of one core) over `span`.
    async fn idle_cost(&self, span: Duration) -> anyhow::Result<(f64, f64)> {
        let pid = self.process.child.id();
        let (switches, (user, sys)) = (
            proc_stats::context_switches(pid)?,
            proc_stats::cpu_ticks(pid)?,
        );
        tokio::time::sleep(span).await;
        let (switches_after, (user_after, sys_after)) = (
            proc_stats::context_switches(pid)?,
            proc_stats::cpu_ticks(pid)?,
        );
        let secs = span.as_secs_f64();
        let ticks = (user_after + sys_after).saturating_sub(user + sys) as f64;
        Ok((
            switches_after.saturating_sub(switches) as f64 / secs,
            ticks / proc_stats::USER_HZ / secs * 100.0,
        ))
    }

    async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let mut client = Client::connect(self.admin).await?;
        let (_, body) = client.get("127.0.0.1", "/isolates").await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Waits until the scheduler reports at most `live` live isolates.
    async fn wait_live_at_most(&self, live: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.stats().await?["live"].as_u64().unwrap_or(u64::MAX) > live {
            if Instant::now() > deadline {
                bail!("isolates were not evicted");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address");
        }
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
        let request = Request::get(path).header("host", host).body(Empty::new())?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// A small, fast, deterministic random source (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `connections` keep-alive connections sending requests back to back for `duration`; the
/// host of each request from `host_of`. Returns latencies of successes and the error count.
async fn load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    host_of: Arc<dyn Fn(&mut Rng) -> String + Send + Sync>,
) -> anyhow::Result<(Vec<Duration>, u64, Duration)> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let host_of = host_of.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c as u64 + 1));
            let mut client = Client::connect(addr).await?;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let host = host_of(&mut rng);
                let t = Instant::now();
                match client.get(&host, "/").await {
                    Ok((200, _)) => latencies.push(t.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        client = Client::connect(addr).await?;
                    }
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await??;
        all.extend(latencies);
        errors += e;
    }
    all.sort();
    Ok((all, errors, start.elapsed()))
}

async fn coldstart(outpost: &Path, apps: usize, gap_ms: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    make_apps(dir.path(), apps, HELLO)?;
    let args: Vec<String> = ["--idle-timeout-secs", "1", "--max-isolates", "100000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let node = Node::start(outpost, dir.path(), &args)?;
    node.wait_live_at_most(0).await?;
    let mut times = Vec::with_capacity(apps);
    for i in 0..apps {
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        // A new connection per app, as a new visitor would open.
        let mut client = Client::connect(node.addr).await?;
        let host = format!("app{i}.localhost");
        let t = Instant::now();
        let (status, body) = client.get(&host, "/").await?;
        times.push(t.elapsed());
        if status != 200 || !body.ends_with(format!("app{i}").as_bytes()) {
            bail!("app{i} answered {status}");
        }
    }
    times.sort();
    println!(
        "coldstart: {apps} distinct apps, {gap_ms} ms apart, request → response with no live isolate: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        percentile(&times, 1.0)
    );
    Ok(())
}

/// RSS with every one of `apps` apps live.
async fn rss_with_live(
    outpost: &Path,
    dir: &Path,
    apps: usize,
    max_isolates: usize,
) -> anyhow::Result<Density> {
    let args: Vec<String> = vec![
        "--max-isolates".into(),
        max_isolates.to_string(),
        "--spares".into(),
        "0".into(),
    ];
    let node = Node::start(outpost, dir, &args)?;
    let mut client = Client::connect(node.addr).await?;
    for i in 0..apps {
        let (status, _) = client.get(&format!("app{i}.localhost"), "/").await?;
        if status != 200 {
            bail!("app{i} answered {status}");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = node.stats().await?["live"].as_u64().unwrap_or(0);
    let rss = node.rss_mib()?;
    let (wakeups, cpu) = node.idle_cost(Duration::from_secs(5)).await?;
    Ok(Density {
        rss,
        live,
        wakeups,
        cpu,
    })
}

/// A node holding idle isolates.
struct Density {
    /// Resident memory, MiB.
    rss: f64,
    /// Live isolates.
    live: u64,
    /// Wake-ups per second of all its threads, idle.
    wakeups: f64,
    /// CPU use, idle (percent of one core).
    cpu: f64,
}

async fn density(outpost: &Path, counts: &[usize]) -> anyhow::Result<()> {
    for &apps in counts {
        let dir = tempfile::tempdir()?;
        make_apps(dir.path(), apps, HELLO)?;
        let one = rss_with_live(outpost, dir.path(), apps, 1).await?;
        let all = rss_with_live(outpost, dir.path(), apps, apps + 10).await?;
        let per = (all.rss - one.rss) / (all.live.saturating_sub(one.live)).max(1) as f64;
        println!(
            "density: {apps} apps: RSS {:.1} MiB with {} live isolate, {:.1} MiB with {} live → {per:.2} MiB per idle isolate; idle, {:.1} wake-ups/s and {:.2}% CPU with {} live",
            one.rss, one.live, all.rss, all.live, all.wakeups, all.cpu, all.live
        );
    }
    Ok(())
}

async fn noisy(
    outpost: &Path,
    duration: f64,
    connections: usize,
    workers: usize,
    burn_ms: u64,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    make_apps(dir.path(), 1, HELLO)?;
    let burner = dir.path().join("noisy");
    std::fs::create_dir_all(burner.join("src"))?;
    std::fs::write(burner.join("outpost.toml"), "name = \"noisy\"\n")?;
    std::fs::write(
        burner.join("src/index.js"),
        BURNER.replace("BURN", &burn_ms.to_string()),
    )?;
    let args = vec!["--workers".to_string(), workers.to_string()];
    let node = Node::start(outpost, dir.path(), &args)?;
    let duration = Duration::from_secs_f64(duration);
    let hello: Arc<dyn Fn(&mut Rng) -> String + Send + Sync> =
        Arc::new(|_| "app0.localhost".into());
    load(
        node.addr,
        connections,
        Duration::from_secs(1),
        hello.clone(),
    )
    .await?;
    let (alone, _, took) = load(node.addr, connections, duration, hello.clone()).await?;
    let noisy: Arc<dyn Fn(&mut Rng) -> String + Send + Sync> =
        Arc::new(|_| "noisy.localhost".into());
    let burning = tokio::spawn(load(node.addr, 2, duration + Duration::from_secs(2), noisy));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (beside, _, took_beside) = load(node.addr, connections, duration, hello).await?;
    let (burnt, _, _) = burning.await??;
    println!(
        "noisy: hello alone {:.0} req/s p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms; beside an app burning {burn_ms} ms per request ({} of its requests) {:.0} req/s p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms → p99 ratio {:.2}",
        alone.len() as f64 / took.as_secs_f64(),
        percentile(&alone, 0.5),
        percentile(&alone, 0.99),
        percentile(&alone, 0.999),
        burnt.len(),
        beside.len() as f64 / took_beside.as_secs_f64(),
        percentile(&beside, 0.5),
        percentile(&beside, 0.99),
        percentile(&beside, 0.999),
        percentile(&beside, 0.99) / percentile(&alone, 0.99)
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn zipf(
    outpost: &Path,
    apps: usize,
    max_isolates: usize,
    s: f64,
    duration: f64,
    connections: usize,
    workers: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    make_apps(dir.path(), apps, HELLO)?;
    let args = vec![
        "--max-isolates".to_string(),
        max_isolates.to_string(),
        "--workers".to_string(),
        workers.to_string(),
    ];
    let node = Node::start(outpost, dir.path(), &args)?;
    let weights: Vec<f64> = (1..=apps).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(apps);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let cdf = Arc::new(cdf);
    let pick: Arc<dyn Fn(&mut Rng) -> String + Send + Sync> = Arc::new(move |rng: &mut Rng| {
        let u = rng.next_f64();
        let k = cdf.partition_point(|&c| c < u).min(cdf.len() - 1);
        format!("app{k}.localhost")
    });
    load(node.addr, connections, Duration::from_secs(2), pick.clone()).await?;
    let before = node.stats().await?;
    let (latencies, errors, took) = load(
        node.addr,
        connections,
        Duration::from_secs_f64(duration),
        pick,
    )
    .await?;
    let after = node.stats().await?;
    let created = after["created"].as_u64().unwrap_or(0) - before["created"].as_u64().unwrap_or(0);
    let requests = latencies.len() as u64 + errors;
    println!(
        "zipf: {apps} apps, s = {s}, --max-isolates {max_isolates}: {:.0} req/s, errors {errors}, isolate hit rate {:.2}% ({created} isolates started for {requests} requests), p50 {:.3} ms p99 {:.3} ms, peak live {}",
        latencies.len() as f64 / took.as_secs_f64(),
        100.0 * (1.0 - created as f64 / requests.max(1) as f64),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        after["peak"]
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.bench {
        Bench::Coldstart { apps, gap_ms } => coldstart(&args.outpost, apps, gap_ms).await,
        Bench::Density { apps } => density(&args.outpost, &apps).await,
        Bench::Noisy {
            duration,
            connections,
            workers,
            burn_ms,
        } => noisy(&args.outpost, duration, connections, workers, burn_ms).await,
        Bench::Zipf {
            apps,
            max_isolates,
            s,
            duration,
            connections,
            workers,
        } => {
            zipf(
                &args.outpost,
                apps,
                max_isolates,
                s,
                duration,
                connections,
                workers,
            )
            .await
        }
    }
}
