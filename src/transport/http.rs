//! A small HTTP server for the admin and AuthZEN listeners: HTTP/1.1, and
//! h2c (prior knowledge) when asked, optionally over TLS (h2 or HTTP/1.1 by
//! ALPN, with the gRPC listener's reloading material). It is bounded so that slow or idle
//! clients cannot hold it: a cap on open connections, a deadline for each
//! request's headers (which also bounds the wait for the next request on a
//! kept-alive connection), a cap on HTTP/2 streams per connection, and an
//! idle timeout for a connection that moves no bytes at all. Every request
//! carries the connection's [`PeerFacts`] as an extension.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::TlsAccept;
use crate::identity::PeerFacts;

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
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(
                listener = limits.name,
                max = limits.max_connections,
                "connection refused: too many open"
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
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let peer = PeerFacts {
        addr: stream.peer_addr().ok(),
        ..PeerFacts::default()
    };
    match tls {
        None => serve_connection(stream, peer, router, limits, stopping).await,
        // The handshake is bounded by `tls.handshake_timeout`, and a
        // failure is counted and logged there.
        Some(tls) => {
            if let Some((stream, peer)) = super::handshake_http(stream, peer, &tls).await {
                serve_connection(stream, peer, router, limits, stopping).await;
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
) {
    let router = router.layer(Extension(peer));
    let progress = Arc::new(Progress::new());
    let io = TokioIo::new(Watched {
        io: stream,
        progress: Arc::clone(&progress),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    match limits.http2_max_streams {
        None => builder = builder.http1_only(),
        Some(streams) => {
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(streams);
        }
    }
    builder
        .http1()
        .timer(TokioTimer::new())
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
            () = progress.idle_for(limits.idle_timeout) => {
                tracing::debug!(listener = limits.name, timeout = ?limits.idle_timeout, "connection idle; closed");
                return;
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When a connection last moved a byte.
struct Progress {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let due = last + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// An I/O stream that records its progress.
struct Watched<T> {
    io: T,
    progress: Arc<Progress>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.progress.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
