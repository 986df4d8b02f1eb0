//! A bounded HTTP load generator: `--connections` keep-alive connections send requests
//! (GET, or `--method` with `--body`/`--body-file` and `--header`s) back to back until
//! `--requests` were answered or `--duration` passed, whichever comes first. Prints
//! requests/s and latency percentiles; with `--server-pid`, also the server's CPU time per
//! request over the measured window and its RSS after it. Loopback targets only.
//!
//! `--protocol h1|h2|h3`: HTTP/1.1, HTTP/2 (prior knowledge on http://, ALPN on https://)
//! or HTTP/3 (https:// only, over QUIC); an https:// URL trusts `--cacert`, and its host
//! name is sent as SNI (it is resolved to `--connect` when given). `--fresh-connections`
//! opens a new connection (and TLS handshake) for every request: a handshake rate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, Bytes};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

#[path = "proc_stats.rs"]
mod proc_stats;
use proc_stats::{cpu_ticks, rss_mib, USER_HZ};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    H1,
    H2,
    H3,
}

#[derive(Parser)]
struct Args {
    /// Target URL (http:// or https://HOST:PORT/path); only loopback addresses are accepted.
    url: String,
    /// HTTP version to speak.
    #[arg(long, value_enum, default_value = "h1")]
    protocol: Protocol,
    /// PEM certificate of the authority to trust for https:// URLs.
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// Connect here instead of resolving the URL's host (which is still the SNI and Host).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// A new connection for every request (measures connection setup and TLS handshakes).
    #[arg(long)]
    fresh_connections: bool,
    /// Instead of load: one request each, on a fresh connection, to hosts `app0`… `appN-1`
    /// under the URL's host (`appI.localhost` for https://localhost:PORT/), one after the
    /// other; their latency is each app's cold start seen by a client (with the connection
    /// setup and handshake).
    #[arg(long)]
    cold_hosts: Option<usize>,
    /// Requests in flight at once on each HTTP/2 or HTTP/3 connection (in flight in all:
    /// connections × streams); HTTP/1.1 has one.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Simulated round-trip time in ms for TCP connections: every byte is held for half of
    /// it on the way out and half on the way back (loopback has almost none, which hides
    /// what a handshake costs a client far away).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
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
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request body (the same for every request).
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Request body read from this file (at most 16 MiB; the same for every request).
    #[arg(long)]
    body_file: Option<std::path::PathBuf>,
    /// An extra request header, `NAME: VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The server's process id (on this machine): its CPU time (utime + stime of
    /// /proc/PID/stat, all threads) over the measured window, per response, and its VmRSS
    /// after it are printed after the load line.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: hyper::Uri = args.url.parse().context("url")?;
    let host = uri.host().context("url has no host")?.to_string();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr: SocketAddr = match args.connect {
        Some(addr) => addr,
        None => tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .context("resolve")?,
    };
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: load tests stay on this machine");
    }
    if args.protocol == Protocol::H3 && !tls {
        bail!("HTTP/3 needs an https:// URL");
    }
    let target = Arc::new(Target {
        one_way: Duration::from_secs_f64(args.rtt_ms / 2000.0),
        addr,
        uri: uri.clone(),
        authority: uri.authority().context("url has no authority")?.to_string(),
        host,
        protocol: args.protocol,
        method: args.method.parse().context("--method")?,
        headers: headers(&args.headers)?,
        body: match (&args.body, &args.body_file) {
            (Some(body), _) => Bytes::from(body.clone()),
            (None, Some(path)) => {
                let meta = std::fs::metadata(path).with_context(|| path.display().to_string())?;
                if meta.len() > 16 << 20 {
                    bail!("{}: a body of at most 16 MiB", path.display());
                }
                Bytes::from(std::fs::read(path)?)
            }
            (None, None) => Bytes::new(),
        },
        tls: if tls {
            Some(tls_config(args.cacert.as_deref(), args.protocol)?)
        } else {
            None
        },
    });

    if let Some(hosts) = args.cold_hosts {
        return cold_hosts(&target, hosts).await;
    }
    if args.warmup > 0.0 {
        let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
        run(&target, &args, warmup_end, true).await?;
    }
    let before = args.server_pid.map(cpu_ticks).transpose()?;
    let (latencies, errors, elapsed) = run(&target, &args, Instant::now(), false).await?;
    let after = args.server_pid.map(cpu_ticks).transpose()?;

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
    if let (Some(pid), Some(before), Some(after)) = (args.server_pid, before, after) {
        let per_request = |ticks: u64| ticks as f64 / USER_HZ * 1e6 / (n as u64 + errors) as f64;
        let (user, sys) = (after.0 - before.0, after.1 - before.1);
        println!(
            "server cpu us/req {:.1} (user {:.1} sys {:.1}; {:.2} s of CPU in {:.2} s)  rss MiB {:.1}",
            per_request(user + sys),
            per_request(user),
            per_request(sys),
            (user + sys) as f64 / USER_HZ,
            elapsed.as_secs_f64(),
            rss_mib(pid)?
        );
    }
    Ok(())
}

/// `NAME: VALUE` arguments as a header map.
fn headers(args: &[String]) -> anyhow::Result<hyper::HeaderMap> {
    let mut map = hyper::HeaderMap::new();
    for arg in args {
        let (name, value) = arg
            .split_once(':')
            .with_context(|| format!("--header {arg:?}: not NAME: VALUE"))?;
        map.append(
            hyper::header::HeaderName::from_bytes(name.trim().as_bytes())?,
            hyper::header::HeaderValue::from_str(value.trim())?,
        );
    }
    Ok(map)
}

/// One request per host `appI.HOST`, each on a new connection, one after the other.
async fn cold_hosts(target: &Target, hosts: usize) -> anyhow::Result<()> {
    let mut latencies = Vec::new();
    for i in 0..hosts {
        let host = format!("app{i}.{}", target.host);
        let authority = match target.uri.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let uri: hyper::Uri = format!(
            "{}://{authority}{}",
            target.uri.scheme_str().unwrap_or("http"),
            target.uri.path()
        )
        .parse()?;
        let one = Target {
            one_way: target.one_way,
            addr: target.addr,
            uri,
            authority,
            host,
            protocol: target.protocol,
            method: target.method.clone(),
            headers: target.headers.clone(),
            body: target.body.clone(),
            tls: target.tls.clone(),
        };
        let t = Instant::now();
        let ok = Connection::open(&one).await?.send(&one).await?;
        if !ok {
            bail!("{} answered an error", one.host);
        }
        latencies.push(t.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    let n = latencies.len();
    let pct = |p: f64| latencies[((n as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!(
        "cold hosts {n}  first-request latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// `stream` behind a pipe that holds every chunk for `one_way` in each direction.
fn delayed(stream: TcpStream, one_way: Duration) -> tokio::io::DuplexStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (near, far) = tokio::io::duplex(256 * 1024);
    let (far_read, far_write) = tokio::io::split(far);
    let (tcp_read, tcp_write) = stream.into_split();
    fn pump(
        mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        mut to: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
        one_way: Duration,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(1024);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((at, chunk)) = rx.recv().await {
                tokio::time::sleep_until((at + one_way).into()).await;
                if to.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = to.shutdown().await;
        });
    }
    pump(far_read, tcp_write, one_way);
    pump(tcp_read, far_write, one_way);
    near
}

/// Where and how to connect.
struct Target {
    /// Delay added to each direction of TCP connections.
    one_way: Duration,
    addr: SocketAddr,
    uri: hyper::Uri,
    authority: String,
    host: String,
    protocol: Protocol,
    method: hyper::Method,
    headers: hyper::HeaderMap,
    /// Sent with every request (none when empty).
    body: Bytes,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// A request to `uri` with the method, headers and body.
    fn request<B>(&self, uri: impl Into<hyper::Uri>, body: B) -> anyhow::Result<Request<B>> {
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(uri.into())
            .body(body)?;
        request.headers_mut().extend(self.headers.clone());
        if !self.body.is_empty() {
            request
                .headers_mut()
                .entry(hyper::header::CONTENT_LENGTH)
                .or_insert_with(|| self.body.len().into());
        }
        Ok(request)
    }
}

/// A client TLS configuration trusting `cacert`, offering the protocol's ALPN.
fn tls_config(
    cacert: Option<&std::path::Path>,
    protocol: Protocol,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let cacert = cacert.context("an https:// URL needs --cacert")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cacert)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match protocol {
        Protocol::H1 => b"http/1.1".to_vec(),
        Protocol::H2 => b"h2".to_vec(),
        Protocol::H3 => b"h3".to_vec(),
    }];
    Ok(Arc::new(config))
}

/// One open connection; HTTP/2 and HTTP/3 ones can be cloned to send on several streams.
enum Connection {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H3 {
        sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        _quic: Arc<QuicClient>,
    },
}

/// The QUIC endpoint and the HTTP/3 connection driver, kept while any clone lives.
struct QuicClient {
    _endpoint: quinn::Endpoint,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for QuicClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Connection {
    /// Another handle on the same connection, for another stream (HTTP/2 and HTTP/3).
    fn another_stream(&self) -> Option<Connection> {
        match self {
            Connection::H1(_) => None,
            Connection::H2(sender) => Some(Connection::H2(sender.clone())),
            Connection::H3 { sender, _quic } => Some(Connection::H3 {
                sender: sender.clone(),
                _quic: _quic.clone(),
            }),
        }
    }
}

impl Connection {
    async fn open(target: &Target) -> anyhow::Result<Connection> {
        if target.protocol == Protocol::H3 {
            let tls = target.tls.clone().context("HTTP/3 needs TLS")?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.as_ref().clone())?;
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            let connection = endpoint.connect(target.addr, &target.host)?.await?;
            let (mut driver, sender) =
                h3::client::new(h3_quinn::Connection::new(connection)).await?;
            let driver = tokio::spawn(async move {
                std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            return Ok(Connection::H3 {
                sender,
                _quic: Arc::new(QuicClient {
                    _endpoint: endpoint,
                    driver,
                }),
            });
        }
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        if !target.one_way.is_zero() {
            return Connection::over(delayed(stream, target.one_way), target).await;
        }
        Connection::over(stream, target).await
    }

    async fn over<S>(stream: S, target: &Target) -> anyhow::Result<Connection>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match &target.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, stream)
                    .await?;
                Connection::handshake(target.protocol, TokioIo::new(stream)).await
            }
            None => Connection::handshake(target.protocol, TokioIo::new(stream)).await,
        }
    }

    async fn handshake<I>(protocol: Protocol, io: I) -> anyhow::Result<Connection>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        Ok(match protocol {
            Protocol::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Connection::H1(sender)
            }
            _ => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Connection::H2(sender)
            }
        })
    }

    /// Sends one request and reads the whole response; whether it was a success.
    async fn send(&mut self, target: &Target) -> anyhow::Result<bool> {
        match self {
            Connection::H1(sender) => {
                let path = target.uri.path_and_query().map_or("/", |p| p.as_str());
                let mut request =
                    target.request(path.parse::<hyper::Uri>()?, Full::new(target.body.clone()))?;
                request.headers_mut().insert(
                    hyper::header::HOST,
                    hyper::header::HeaderValue::from_str(&target.authority)?,
                );
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok(ok)
            }
            Connection::H2(sender) => {
                let request = target.request(target.uri.clone(), Full::new(target.body.clone()))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok(ok)
            }
            Connection::H3 { sender, .. } => {
                let request = target.request(target.uri.clone(), ())?;
                let mut stream = sender.send_request(request).await?;
                if !target.body.is_empty() {
                    stream.send_data(target.body.clone()).await?;
                }
                stream.finish().await?;
                let response = stream.recv_response().await?;
                while let Some(mut chunk) = stream.recv_data().await? {
                    chunk.advance(chunk.remaining());
                }
                Ok(response.status().is_success())
            }
        }
    }
}

/// Runs the load; in warm-up mode until `until`, else within the request and time bounds.
/// Returns latencies in µs, the error count and the elapsed time.
async fn run(
    target: &Arc<Target>,
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
    let streams = if args.protocol == Protocol::H1 || args.fresh_connections {
        1
    } else {
        args.streams.max(1)
    };
    let per_stream = args.requests.div_ceil((args.connections * streams) as u64);
    let fresh = args.fresh_connections;
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let first = if fresh {
            None
        } else {
            Some(Connection::open(target).await?)
        };
        let mut handles = Vec::with_capacity(streams);
        if let Some(connection) = &first {
            handles.extend((1..streams).map(|_| connection.another_stream()));
        }
        handles.push(first);
        for connection in handles {
            let target = target.clone();
            tasks.push(tokio::spawn(stream_loop(
                target, connection, deadline, warmup, per_stream,
            )));
        }
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

/// Sends requests one after the other on `connection` (a new connection each when none).
async fn stream_loop(
    target: Arc<Target>,
    connection: Option<Connection>,
    deadline: Instant,
    warmup: bool,
    per_stream: u64,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut connection = connection;
    let mut sent = 0u64;
    while Instant::now() < deadline && (warmup || sent < per_stream) {
        let t = Instant::now();
        let ok = match connection.as_mut() {
            // A keep-alive connection the server closed (or broke) counts as an error and
            // is replaced by a new one.
            Some(open) => match open.send(&target).await {
                Ok(ok) => ok,
                Err(e) => {
                    eprintln!("outpost-load: a connection failed ({e}); opening a new one");
                    *open = Connection::open(&target).await?;
                    false
                }
            },
            None => Connection::open(&target).await?.send(&target).await?,
        };
        if ok {
            latencies.push(t.elapsed().as_micros() as u64);
        } else {
            errors += 1;
        }
        sent += 1;
    }
    Ok((latencies, errors))
}
