//! HTTP/3 over QUIC (quinn + h3) on the HTTPS port number, over UDP: the same routing,
//! handlers, limits, streaming and error mapping as HTTP/1.1 and HTTP/2, through
//! [`server::handle`](crate::server).
//!
//! Where the work happens: the quinn endpoint (one UDP socket) and each connection's QUIC
//! state machine — packet I/O, TLS, loss recovery, flow control — run on the thread that
//! created the endpoint (the node's main thread). Each accepted connection is handed to a
//! pool worker (round robin, like TCP connections), which completes its handshake, runs its
//! HTTP/3 framing and dispatches its requests to that worker's isolates; bytes cross from
//! the main thread to the worker through quinn's stream buffers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use outpost_pool::{BoxError, Pool, Task};
use tokio::sync::OwnedSemaphorePermit;

use crate::server::{self, ConnectionLimits, Listening, ServeConfig, ShutdownSignal};
use crate::tls::{self, Certificates};
use crate::Routes;

/// How long a QUIC connection may stay silent before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A QUIC endpoint on UDP `addr`, serving `certificates` with ALPN `h3`. Call it on the
/// runtime that should run the endpoint's packet I/O.
pub fn endpoint(
    addr: SocketAddr,
    certificates: Arc<Certificates>,
    limits: &ConnectionLimits,
) -> std::io::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
        tls::quic_server_config(certificates).as_ref().clone(),
    )
    .map_err(std::io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_streams.into())
        // HTTP/3's control stream and QPACK's two, and some room.
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr)
}

/// Accepts QUIC connections on `endpoint` until `shutdown` begins; each is served on a pool
/// worker.
pub async fn serve_h3(
    endpoint: quinn::Endpoint,
    routes: Arc<Routes>,
    config: ServeConfig,
    pool: Arc<Pool>,
    shutdown: ShutdownSignal,
) {
    let max_connections = config.connections.max_connections;
    let listening = Arc::new(Listening {
        routes,
        config: Arc::new(config),
        scheme: http::uri::Scheme::HTTPS,
        local: endpoint.local_addr().ok(),
    });
    let task = |incoming, permit, signal| -> Task {
        let listening = listening.clone();
        Box::new(move || Box::pin(serve_connection(incoming, listening, signal, permit)))
    };
    server::place_connections(&pool, max_connections, shutdown, || endpoint.accept(), task).await;
    // New connections are refused from now on; those open finish their requests.
    endpoint.set_server_config(None);
}

/// Serves one QUIC connection's requests on the current (worker) thread until the client
/// closes it or shutdown drains it.
async fn serve_connection(
    incoming: quinn::Incoming,
    listening: Arc<Listening>,
    mut shutdown: ShutdownSignal,
    _permit: OwnedSemaphorePermit,
) {
    let Ok(mut connecting) = incoming.accept() else {
        return;
    };
    // The ClientHello's name, as soon as it is in: start the app's isolate meanwhile.
    if let Ok(data) = connecting.handshake_data().await {
        if let Ok(data) = data.downcast::<quinn::crypto::rustls::HandshakeData>() {
            if let Some(name) = &data.server_name {
                server::prewarm(&listening, name);
            }
        }
    }
    let limit = listening.config.connections.header_read_timeout;
    let connection = match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!("QUIC handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("QUIC handshake timed out");
            return;
        }
    };
    let max_field_section = listening.config.connections.max_header_bytes as u64;
    let mut h3 = match h3::server::builder()
        .max_field_section_size(max_field_section)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!("HTTP/3 connection setup failed: {e}");
            return;
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    let listening = listening.clone();
                    let signal = shutdown.clone();
                    requests.spawn(async move {
                        serve_request(resolver, &listening).await;
                        drop(signal);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("HTTP/3 connection ended: {e}");
                    break;
                }
            },
            () = shutdown.wait(), if !draining => {
                draining = true;
                // GOAWAY: no new requests; those under way go on.
                let _ = h3.shutdown(0).await;
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    while requests.join_next().await.is_some() {}
}

/// Answers one HTTP/3 request.
async fn serve_request<C>(resolver: h3::server::RequestResolver<C, Bytes>, listening: &Listening)
where
    C: h3::quic::Connection<Bytes>,
    C::BidiStream: h3::quic::BidiStream<Bytes> + Send + 'static,
    <C::BidiStream as h3::quic::BidiStream<Bytes>>::RecvStream: Send + 'static,
{
    let (request, stream) = match resolver.resolve_request().await {
        Ok(resolved) => resolved,
        Err(e) => {
            tracing::debug!("HTTP/3 request refused: {e}");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let (parts, ()) = request.into_parts();
    let response = if has_no_body(&parts) {
        let request = Request::from_parts(parts, outpost_pool::empty_body());
        server::handle(Box::new(request), listening).await
    } else {
        let frames = futures::stream::unfold(recv, |mut recv| async move {
            match recv.recv_data().await {
                Ok(Some(mut chunk)) => {
                    let bytes = chunk.copy_to_bytes(chunk.remaining());
                    Some((Ok::<_, BoxError>(Frame::data(bytes)), recv))
                }
                Ok(None) => None,
                Err(e) => Some((Err(e.into()), recv)),
            }
        });
        // Boxed: the stream's async block type would otherwise have to be proven Send for
        // every lifetime where the gateway awaits the body (rustc's higher-ranked check).
        let body = StreamBody::new(futures::StreamExt::boxed(frames)).boxed_unsync();
        server::handle(Box::new(Request::from_parts(parts, body)), listening).await
    };
    let (parts, mut body) = response.into_parts();
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!("HTTP/3 response head not sent: {e}");
        return;
    }
    while let Some(frame) = body.frame().await {
        let sent = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => send.send_data(data).await,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => send.send_trailers(trailers).await,
                    Err(_) => Ok(()),
                },
            },
            Err(e) => {
                // The body failed midway (a stream limit, an app error): the client must
                // not take the truncated body for the whole one.
                tracing::debug!("HTTP/3 response body failed: {e}");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        if let Err(e) = sent {
            tracing::debug!("HTTP/3 response body not sent: {e}");
            return;
        }
    }
    let _ = send.finish().await;
}

/// Whether a request surely has no body: GET, HEAD or OPTIONS without a Content-Length, or
/// one of 0. (HTTP/3 does not say in the head whether data follows; reading ahead to find
/// out would hold up every request.)
fn has_no_body(parts: &http::request::Parts) -> bool {
    match parts.headers.get(http::header::CONTENT_LENGTH) {
        Some(length) => length.as_bytes() == b"0",
        None => matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS),
    }
}
