//! The listeners a node serves apps on, for `dev` and `pop` alike: cleartext HTTP, and with
//! `--https` TLS (certificates by SNI from `--certs`, reloaded when the directory changes;
//! `dev` makes its own for localhost); connection limits; and the shutdown on SIGTERM or
//! SIGINT that stops accepting, lets in-flight requests finish (bounded), then exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_gateway::quic;
use outpost_gateway::tls::{self, Certificates};
use outpost_gateway::{
    serve, ConnectionLimits, Http1, Prewarm, Routes, ServeConfig, Shutdown, Transport,
};
use outpost_pool::Pool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// `--https`, certificates, connection limits and the drain timeout.
#[derive(Debug, clap::Args)]
pub struct FrontDoorArgs {
    /// Also serve HTTPS (TLS; HTTP/2 and HTTP/1.1 by ALPN) on ADDR (port 0 picks one; the
    /// address is printed). `outpost dev --https` alone uses 127.0.0.1:8443 with a
    /// development certificate for localhost and *.localhost.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8443")]
    pub https: Option<SocketAddr>,
    /// Directory of certificates for --https, picked by SNI: NAME.pem holds a chain (leaf
    /// first) and its key (or the key is in NAME.key). Reloaded when the directory changes.
    /// Apps may bring their own (`certificates` in outpost.toml); these win over them.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Certificate (a .pem with its key) for TLS clients whose SNI names no certificate in
    /// --certs; without it their handshake fails.
    #[arg(long, value_name = "FILE")]
    pub default_cert: Option<PathBuf>,
    /// With --https, also serve HTTP/3 (QUIC) on the same port number over UDP, announced
    /// to TLS clients with `Alt-Svc`.
    #[arg(long, value_enum, default_value = "on")]
    pub http3: crate::Switch,
    /// Start an app's isolate when a TLS/QUIC handshake names its host (`sni`), or only
    /// when its request arrives (`off`).
    #[arg(long, value_enum, default_value = "sni")]
    pub prewarm: Prewarm,
    /// What serves HTTP/1.1: `deno-h1` (deno_http_h1, what `deno serve` uses, for requests
    /// whose body came with their head; hyper takes over a connection at its first other
    /// request) or `hyper` (hyper for every request).
    #[arg(long, value_enum, default_value = "deno-h1")]
    pub http1: Http1,
    /// Most client connections open at once, per listener.
    #[arg(long, default_value_t = ConnectionLimits::default().max_connections)]
    pub max_connections: usize,
    /// Milliseconds a client has to send a request's headers (or to finish a TLS
    /// handshake, or between keep-alive requests) before it is cut off.
    #[arg(long, default_value_t = ConnectionLimits::default().header_read_timeout.as_millis() as u64)]
    pub header_timeout_ms: u64,
    /// Most headers in one request (then 431).
    #[arg(long, default_value_t = ConnectionLimits::default().max_headers)]
    pub max_headers: usize,
    /// Most bytes of one request's head (then 431).
    #[arg(long, default_value_t = ConnectionLimits::default().max_header_bytes)]
    pub max_header_bytes: usize,
    /// Most concurrent streams on one HTTP/2 connection.
    #[arg(long, default_value_t = ConnectionLimits::default().max_streams)]
    pub max_streams: u32,
    /// Seconds an HTTP/2 connection may hold no request before it is closed (GOAWAY).
    #[arg(long, default_value_t = ConnectionLimits::default().idle_timeout.as_secs())]
    pub connection_idle_secs: u64,
    /// Distinct apps labelled by name in /metrics; more share the label `other`.
    #[arg(long, default_value_t = outpost_gateway::metrics::DEFAULT_MAX_APPS)]
    pub metrics_max_apps: usize,
    /// Send traces to this OpenTelemetry collector (OTLP over HTTP, protobuf): its base URL
    /// (`http://127.0.0.1:4318`; `/v1/traces` is added) or the full traces URL. Off unless
    /// given.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// The share of traces that start at this node which are kept (0.0–1.0); a request
    /// arriving with a W3C `traceparent` follows its caller's decision.
    #[arg(long, default_value_t = 1.0, value_name = "RATIO")]
    pub otlp_sample: f64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT before the node exits.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_secs: u64,
}

impl FrontDoorArgs {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            max_headers: self.max_headers.max(1),
            max_header_bytes: self.max_header_bytes,
            max_streams: self.max_streams.max(1),
            idle_timeout: Duration::from_secs(self.connection_idle_secs.max(1)),
        }
    }
}

/// Where `dev` keeps its development certificate authority: `$OUTPOST_HOME/dev-tls`, by
/// default `~/.outpost/dev-tls`.
fn dev_tls_home() -> PathBuf {
    let home = std::env::var_os("OUTPOST_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".outpost")))
        .unwrap_or_else(|| PathBuf::from(".outpost"));
    home.join("dev-tls")
}

/// Which role serves: decides where certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `outpost dev`: without `--certs`, a development certificate that also names these
    /// hosts (each app's `NAME.localhost` and the exact hosts of its routes).
    Dev {
        hosts: Vec<String>,
    },
    Pop,
}

/// Running listeners, stopped together.
pub struct FrontDoor {
    shutdown: Shutdown,
    listeners: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
    label: String,
    /// Keeps the certificate directory watched.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl FrontDoor {
    /// Starts serving on `http` and, with `--https`, on a TLS listener too, with
    /// `certificates` (from [`certificates`]).
    pub async fn open(
        args: &FrontDoorArgs,
        certificates: Option<Arc<Certificates>>,
        label: &str,
        http: TcpListener,
        routes: Arc<Routes>,
        mut config: ServeConfig,
        pool: Arc<Pool>,
    ) -> anyhow::Result<FrontDoor> {
        config.connections = args.limits();
        config.prewarm = args.prewarm;
        config.http1 = args.http1;
        let (shutdown, signal) = Shutdown::new();
        let mut door = FrontDoor {
            shutdown,
            listeners: Vec::new(),
            drain_timeout: Duration::from_secs(args.drain_timeout_secs),
            label: label.to_string(),
            _watcher: None,
        };
        if let (Some(addr), Some(certificates)) = (args.https, certificates) {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (https)"))?;
            let bound = listener.local_addr()?;
            let mut tls_config = config.clone();
            let mut protocols = "HTTP/1.1, HTTP/2";
            if args.http3 == crate::Switch::On {
                // QUIC on the same port number, over UDP.
                let endpoint = quic::endpoint(bound, certificates.clone(), &config.connections)
                    .with_context(|| format!("listening on udp {bound} (HTTP/3)"))?;
                tls_config.alt_svc =
                    http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", bound.port()))
                        .ok();
                protocols = "HTTP/1.1, HTTP/2; HTTP/3 on udp";
                door.listeners.push(tokio::spawn(quic::serve_h3(
                    endpoint,
                    routes.clone(),
                    tls_config.clone(),
                    pool.clone(),
                    signal.clone(),
                )));
            }
            let from = match certificates.dir() {
                Some(dir) => format!("certificates from {} and the apps", dir.display()),
                None => "certificates from the apps".to_string(),
            };
            println!("{label}: listening on https://{bound}/ ({protocols}; {from})");
            if certificates.dir().is_some() {
                door._watcher = Some(watch_certificates(certificates.clone(), label)?);
            }
            let transport = Transport::Tls(tls::server_config(certificates));
            door.listeners.push(tokio::spawn(serve(
                listener,
                transport,
                routes.clone(),
                tls_config,
                pool.clone(),
                signal.clone(),
            )));
        }
        door.listeners.push(tokio::spawn(serve(
            http,
            Transport::Plain,
            routes,
            config,
            pool,
            signal,
        )));
        Ok(door)
    }

    /// Serves until SIGTERM or SIGINT, then stops accepting and waits (up to the drain
    /// timeout) for in-flight requests to finish.
    pub async fn run_until_stopped(self) {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match terminate.as_mut() {
                    Some(terminate) => terminate.recv().await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        println!(
            "{}: stopping; in-flight requests have {} s to finish",
            self.label,
            self.drain_timeout.as_secs()
        );
        let label = self.label.clone();
        if self.shutdown.drain(self.drain_timeout).await {
            println!("{label}: drained");
        } else {
            println!("{label}: drain timeout passed; exiting with requests in flight");
        }
        for listener in self.listeners {
            listener.abort();
        }
    }
}

/// The certificates to serve with `--https` (none without it): `--certs`, and for `dev`
/// without it, the development certificate (made on first use) with a hint on trusting
/// it; apps add theirs to them.
pub fn certificates(
    args: &FrontDoorArgs,
    role: &Role,
    label: &str,
) -> anyhow::Result<Option<Arc<Certificates>>> {
    if args.https.is_none() {
        return Ok(None);
    }
    let dir = match (&args.certs, role) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Role::Pop) => None,
        (None, Role::Dev { hosts }) => {
            let home = dev_tls_home();
            let dev = tls::dev_certificate(&home, hosts)?;
            println!(
                "{label}: HTTPS uses a development certificate for localhost and *.localhost, \
                 signed by a local authority: trust {} (curl --cacert {0} …; or add it to your \
                 system's or browser's trusted roots)",
                dev.ca.display()
            );
            Some(dev.dir)
        }
    };
    let certificates = Certificates::load(dir.as_deref(), args.default_cert.as_deref())
        .with_context(|| match &dir {
            Some(dir) => format!("loading certificates from {}", dir.display()),
            None => "loading --default-cert".to_string(),
        })?;
    Ok(Some(certificates))
}

/// Reloads `certificates` whenever their directory changes; a failed reload keeps the
/// certificates in use and says why.
fn watch_certificates(
    certificates: Arc<Certificates>,
    label: &str,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let dir = certificates
        .dir()
        .context("no certificate directory to watch")?
        .to_path_buf();
    let (watcher, mut changes) = outpost_gateway::watch::watch(std::slice::from_ref(&dir))
        .with_context(|| format!("watching {}", dir.display()))?;
    let label = label.to_string();
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            // Let a burst of writes (a certificate and its key) settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while changes.try_recv().is_ok() {}
            let certificates = certificates.clone();
            match tokio::task::spawn_blocking(move || certificates.reload()).await {
                Ok(Ok(names)) => println!("{label}: certificates reloaded: {}", names.join(", ")),
                Ok(Err(e)) => {
                    eprintln!("{label}: certificates not reloaded, the previous ones stay: {e}")
                }
                Err(_) => {}
            }
        }
    });
    Ok(watcher)
}

/// The node's live tail, fed by every tenant's console lines (the process's console tap)
/// and by the listeners' request summaries.
/// The node's tracer, with `--otlp`.
pub fn tracing(
    args: &FrontDoorArgs,
    service: &str,
    node: &str,
) -> anyhow::Result<Option<Arc<outpost_gateway::trace::Tracing>>> {
    let Some(url) = &args.otlp else {
        return Ok(None);
    };
    let tracing = outpost_gateway::trace::Tracing::new(url, args.otlp_sample, service, node)?;
    Ok(Some(Arc::new(tracing)))
}

pub fn tail() -> Arc<outpost_gateway::tail::Tail> {
    let tail = Arc::new(outpost_gateway::tail::Tail::default());
    let tap = tail.clone();
    outpost_isolate::set_console_tap(Arc::new(move |app, level, request_id, line| {
        tap.console(app, level, request_id, line)
    }));
    tail
}

/// Binds the admin listener at `addr`, says where it is, and serves `admin` on it for the
/// rest of the process; its URL.
pub async fn open_admin(
    addr: SocketAddr,
    label: &str,
    admin: outpost_gateway::admin::Admin,
) -> anyhow::Result<String> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} (admin)"))?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("{label}: admin on {url}/");
    tokio::spawn(outpost_gateway::admin::serve_admin(
        listener,
        Arc::new(admin),
    ));
    Ok(url)
}
