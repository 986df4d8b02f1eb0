//! A raw hyper server answering every request with the same static body: the baseline the
//! node's cache hits are compared with (`bench/cache.sh`). One current-thread runtime, as
//! one node worker; HTTP/1.1 keep-alive; loopback only.
//!
//! `outpost-static [--listen 127.0.0.1:0] [--body TEXT]` prints `listening on http://ADDR/`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
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
