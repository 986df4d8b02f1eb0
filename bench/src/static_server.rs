//! A raw HTTP/1.1 server answering every request with the same static body: the baseline the
//! node's cache hits are compared with (`bench/cache.sh`), and, with `--server deno-h1`,
//! what the HTTP/1.1 layer alone costs per request in hyper against `deno_http_h1` (the
//! implementation `deno serve` answers HTTP/1.1 with since Deno 2.8.3). One current-thread
//! runtime, as one node worker; keep-alive; loopback only.
//!
//! `outpost-static [--listen 127.0.0.1:0] [--body TEXT] [--server hyper|deno-h1]` prints
//! `listening on http://ADDR/`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The body every response carries.
    #[arg(long, default_value = "hello from the edge cache\n")]
    body: String,
    /// The HTTP/1.1 implementation.
    #[arg(long, value_enum, default_value_t = Server::Hyper)]
    server: Server,
}

#[derive(Clone, Copy, ValueEnum)]
enum Server {
    /// hyper's HTTP/1.1 server: `content-type`, `cache-control`, `content-length`, `date`.
    Hyper,
    /// deno_http_h1's fast text response, as `deno serve` writes `new Response(text)`:
    /// `content-type`, `content-length`, `date` (a fixed one).
    DenoH1,
}

/// The `date` of deno-h1's responses (hyper formats the time once a second; a fixed value
/// leaves only what each request costs).
const DATE: &[u8] = b"Wed, 02 Dec 2026 00:00:00 GMT";

/// Serves one connection with deno_http_h1, as Deno's serve loop does for a static text
/// response.
async fn serve_deno_h1(
    stream: tokio::net::TcpStream,
    body: Bytes,
) -> Result<(), deno_http_h1::Error> {
    let mut conn = deno_http_h1::SharedConn::new(stream);
    let mut scratch = deno_http_h1::SharedScratch::default();
    loop {
        let next = std::future::poll_fn(|cx| {
            conn.poll_next_request_with(cx, &mut scratch, |request| request.keep_alive)
        });
        let Some(keep_alive) = next.await? else {
            return Ok(());
        };
        conn.discard_body_with_scratch(&mut scratch).await?;
        let written = conn
            .try_write_default_text_response_with_scratch(&mut scratch, DATE, &body, keep_alive)
            .await?;
        if !written || !keep_alive {
            return Ok(());
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "outpost-static listens on loopback only"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("listening on http://{}/", listener.local_addr()?);
        let body = Bytes::from(args.body);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            if let Server::DenoH1 = args.server {
                tokio::spawn(async move {
                    let _ = serve_deno_h1(stream, body).await;
                });
                continue;
            }
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let body = body.clone();
                    async move {
                        let mut response = hyper::Response::new(Full::new(body));
                        let headers = response.headers_mut();
                        headers.insert("content-type", "text/plain;charset=UTF-8".parse().unwrap());
                        headers.insert("cache-control", "public, max-age=60".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
