//! A bounded HTTP/1.1 load generator: `--connections` keep-alive connections send GET
//! requests back to back until `--requests` were answered or `--duration` passed, whichever
//! comes first. Prints requests/s and latency percentiles. Loopback targets only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Target URL (http://127.0.0.1:PORT/path); only loopback addresses are accepted.
    url: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Stop after this many responses in total.
    #[arg(long, default_value_t = 500_000)]
    requests: u64,
    /// Stop after this long (seconds).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (JIT warm-up).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: hyper::Uri = args.url.parse().context("url")?;
    let host = uri.host().context("url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .context("resolve")?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: load tests stay on this machine");
    }
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());

    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    run(addr, &path, &args, warmup_end, true).await?;
    let (latencies, errors, elapsed) = run(addr, &path, &args, Instant::now(), false).await?;

    let mut latencies = latencies;
    latencies.sort_unstable();
    let n = latencies.len();
    if n == 0 {
        bail!("no successful responses ({errors} errors)");
    }
    let pct = |p: f64| latencies[((n as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!(
        "requests {n}  errors {errors}  seconds {:.2}  req/s {:.0}  latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// Runs the load; in warm-up mode until `until`, else within the request and time bounds.
/// Returns latencies in µs, the error count and the elapsed time.
async fn run(
    addr: SocketAddr,
    path: &str,
    args: &Args,
    until: Instant,
    warmup: bool,
) -> anyhow::Result<(Vec<u64>, u64, Duration)> {
    let start = Instant::now();
    let deadline = if warmup {
        until
    } else {
        start + Duration::from_secs_f64(args.duration)
    };
    let per_connection = args.requests.div_ceil(args.connections as u64);
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut sent = 0u64;
            while Instant::now() < deadline && (warmup || sent < per_connection) {
                let request = Request::get(path.as_str())
                    .header("host", addr.to_string())
                    .body(Empty::<bytes::Bytes>::new())?;
                let t = Instant::now();
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                if ok {
                    latencies.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                sent += 1;
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
    Ok((all, errors, start.elapsed()))
}
