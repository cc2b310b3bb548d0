//! A small HTTP server for the admin and AuthZEN listeners: HTTP/1.1, and
//! h2c (prior knowledge) when asked, optionally over TLS (h2 or HTTP/1.1 by
//! ALPN, with the gRPC listener's reloading material). It is bounded so that
//! slow or idle clients cannot hold it: a first request's headers must
//! arrive within `header_read_timeout` (and, on HTTP/1.1, each next one's
//! too), an HTTP/2 connection with no request open for `idle_timeout` is
//! closed (PINGs do not count), HTTP/2 streams per connection are capped,
//! and at the connection cap the idlest connection is closed to admit a new
//! one ([`super::conns`]). Every request carries the connection's
//! [`PeerFacts`] as an extension.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::Version;
use axum::middleware::{self, Next};
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::TlsAccept;
use super::conns::{Activity, ConnTimeouts, Registration, Registry};
use crate::identity::PeerFacts;
use crate::metrics::Metrics;

/// What one client may cost the server.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// `None`: HTTP/1.1 only. `Some(n)`: h2c too, with at most `n` streams
    /// open at once on one connection.
    pub http2_max_streams: Option<u32>,
    /// The listener's name in logs: `admin`, `authzen`.
    pub name: &'static str,
}

/// The most an HTTP/1.1 connection reads ahead: its headers, or a body's
/// next bytes before the handler charges them to the buffer budget.
const H1_READ_BUFFER: usize = 64 * 1024;

/// The answer to a connection over the cap, written without waiting.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `shutdown` completes, then lets open connections finish their requests
/// (each still bounded by `limits`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAccept>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let registry = Registry::new(
        limits.max_connections,
        ConnTimeouts {
            first_request: limits.header_read_timeout,
            idle: limits.idle_timeout,
        },
        limits.name,
        metrics,
    );
    let (stop, stopping) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: retry, without spinning.
                    tracing::warn!(listener = limits.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At the cap the idlest connection makes room; refused only when
        // every open one has a request in progress.
        let Some(slot) = registry.admit() else {
            tracing::debug!(
                listener = limits.name,
                max = limits.max_connections,
                "connection refused: every open one is busy"
            );
            let _ = stream.try_write(BUSY);
            continue;
        };
        connections.spawn(connection(
            stream,
            router.clone(),
            limits,
            tls.clone(),
            stopping.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop.send(());
    while connections.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAccept>,
    stopping: watch::Receiver<()>,
    slot: Registration,
) {
    let _ = stream.set_nodelay(true);
    let peer = PeerFacts {
        addr: stream.peer_addr().ok(),
        ..PeerFacts::default()
    };
    match tls {
        None => serve_connection(stream, peer, router, limits, stopping, &slot).await,
        // The handshake is bounded by `tls.handshake_timeout`, and a
        // failure is counted and logged there.
        Some(tls) => {
            if let Some((stream, peer)) = super::handshake_http(stream, peer, &tls).await {
                // The first request's clock starts once the handshake is done.
                slot.activity().moved();
                serve_connection(stream, peer, router, limits, stopping, &slot).await;
            }
        }
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: PeerFacts,
    router: Router,
    limits: HttpLimits,
    mut stopping: watch::Receiver<()>,
    slot: &Registration,
) {
    let activity = Arc::clone(slot.activity());
    let h1_wait = limits.header_read_timeout;
    let counted = Arc::clone(&activity);
    let router = router
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let activity = Arc::clone(&counted);
            track(activity, h1_wait, request, next)
        }))
        .layer(Extension(peer));
    let io = TokioIo::new(stream);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    match limits.http2_max_streams {
        None => builder = builder.http1_only(),
        Some(streams) => {
            builder
                .http2()
                .timer(TokioTimer::new())
                .initial_stream_window_size(super::H2_STREAM_WINDOW)
                .initial_connection_window_size(super::H2_CONNECTION_WINDOW)
                .max_concurrent_streams(streams);
        }
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        // What one connection reads ahead of its handler (headers included).
        .max_buf_size(H1_READ_BUFFER)
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(listener = limits.name, "connection closed: {e}");
                }
                return;
            }
            // Dropping the connection closes the socket.
            closed = activity.closing() => {
                tracing::debug!(listener = limits.name, reason = closed.as_str(), "connection closed by the server");
                slot.closed(closed);
                return;
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Counts `request` as open on its connection until it is answered. An
/// HTTP/1.1 connection then waits for its next request's headers only as
/// long as for the first's.
async fn track(
    activity: Arc<Activity>,
    h1_wait: Duration,
    request: Request,
    next: Next,
) -> axum::response::Response {
    if request.version() < Version::HTTP_2 {
        activity.set_idle_limit(h1_wait);
    }
    let _open = activity.request();
    next.run(request).await
}
