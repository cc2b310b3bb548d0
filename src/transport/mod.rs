//! Listeners: TCP or a Unix socket, optionally TLS. Each accepted connection
//! carries the [`PeerFacts`] the transport proved, which tonic hands to every
//! request on it as an extension. Every listener bounds its connections
//! ([`conns`]): a first-request timeout, an idle timeout that counts
//! requests (gRPC's are read off its HTTP/2 frames, [`h2_frames`]), and a
//! cap that evicts the idlest. [`http`] serves the admin and AuthZEN
//! endpoints.

pub mod budget;
pub mod conns;
pub mod fds;
mod h2_frames;
pub mod http;
pub mod tls;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::identity::{PeerFacts, UnixPeer};
use crate::metrics::Metrics;
use conns::{Closed, Registration, Registry};
use h2_frames::StreamCounter;
pub use tls::{ReloadingTls, SvidError, TlsError};

/// The HTTP/2 flow-control windows of every listener: how much a client
/// may send ahead of what the server has taken (and charged to the buffer
/// budget). Small, since clients are near: the budget bounds the rest.
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;

/// Where the gRPC server accepts connections.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixSocket),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Self::Tcp(l)
    }
}

impl From<UnixSocket> for Listener {
    fn from(s: UnixSocket) -> Self {
        Self::Unix(s)
    }
}

impl Listener {
    /// A printable address, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("tcp ({e})")),
            Self::Unix(s) => format!("unix://{}", s.path.display()),
        }
    }
}

/// A bound Unix socket that removes its file when dropped.
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Why a Unix socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("`{}` is in use by another server", .0.display())]
    InUse(PathBuf),
    #[error("`{}` exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot bind `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl UnixSocket {
    /// Binds `path` with file mode `mode`. A stale socket left by a process
    /// that died is replaced; a live one, or any other file, is an error.
    pub fn bind(path: &Path, mode: u32) -> Result<Self, BindError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let io_err = |source| BindError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(BindError::InUse(path.to_path_buf()));
                }
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        let socket = Self {
            listener,
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        Ok(socket)
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One accepted (and, with TLS, handshaken) connection. It ends itself
/// (its reads fail) when its place in the listener's [`Registry`] says so.
pub struct Conn {
    io: Box<dyn Io>,
    facts: PeerFacts,
    slot: Registration,
    streams: StreamCounter,
    closing: Pin<Box<dyn Future<Output = Closed> + Send>>,
    closed: Option<Closed>,
}

impl Conn {
    fn new(io: Box<dyn Io>, facts: PeerFacts, slot: Registration) -> Self {
        let activity = Arc::clone(slot.activity());
        Self {
            io,
            facts,
            slot,
            streams: StreamCounter::default(),
            closing: Box::pin(async move { activity.closing().await }),
            closed: None,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerFacts;

    fn connect_info(&self) -> PeerFacts {
        self.facts.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed.is_none()
            && let Poll::Ready(closed) = this.closing.as_mut().poll(cx)
        {
            tracing::debug!(peer = ?this.facts.addr, reason = closed.as_str(), "gRPC connection closed by the server");
            this.slot.closed(closed);
            this.closed = Some(closed);
        }
        if let Some(closed) = this.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection closed: {}", closed.as_str()),
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.streams
                .read(&buf.filled()[before..], this.slot.activity());
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut *this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.streams.written(&buf[..n], this.slot.activity());
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut *this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            let mut left = n;
            for b in bufs {
                let take = left.min(b.len());
                this.streams.written(&b[..take], this.slot.activity());
                left -= take;
                if left == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// TLS settings for [`incoming`].
#[derive(Clone, Debug)]
pub struct TlsAccept {
    pub tls: Arc<ReloadingTls>,
    pub handshake_timeout: Duration,
    /// Counts handshakes that fail or time out.
    pub metrics: Arc<Metrics>,
}

/// Accepts connections until the returned stream is dropped, each holding a
/// place in `conns` (at the cap the idlest open one is evicted; when all
/// are busy the new one is closed). Handshakes run on their own tasks, so a
/// slow client cannot hold up others; accept errors (such as running out
/// of file descriptors) are logged and retried.
pub fn incoming(
    listener: Listener,
    tls: Option<TlsAccept>,
    conns: Arc<Registry>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Owns the listener (and so the socket file) until the server stops.
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = accept(&listener) => a,
            };
            let (io, facts) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = conns.admit() else {
                tracing::debug!(peer = ?facts.addr, "gRPC connection refused: every open one is busy");
                continue;
            };
            match &tls {
                None => {
                    if tx.send(Ok(Conn::new(io, facts, slot))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let tx = tx.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Some(conn) = handshake(io, facts, slot, &tls).await {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn accept(listener: &Listener) -> io::Result<(Box<dyn Io>, PeerFacts)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, addr) = l.accept().await?;
            stream.set_nodelay(true)?;
            let facts = PeerFacts {
                addr: Some(addr),
                ..PeerFacts::default()
            };
            Ok((Box::new(stream), facts))
        }
        Listener::Unix(s) => {
            let (stream, _) = s.listener.accept().await?;
            let cred = stream.peer_cred()?;
            let facts = PeerFacts {
                unix: Some(UnixPeer {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid: cred.pid(),
                }),
                ..PeerFacts::default()
            };
            Ok((Box::new(stream), facts))
        }
    }
}

async fn handshake(
    io: Box<dyn Io>,
    facts: PeerFacts,
    slot: Registration,
    tls: &TlsAccept,
) -> Option<Conn> {
    let (stream, facts) = tls_accept(tls.tls.acceptor(), io, facts, tls).await?;
    // The first request's clock starts once the handshake is done.
    slot.activity().moved();
    Some(Conn::new(Box::new(stream), facts, slot))
}

/// The TLS handshake of an HTTP listener (h2 or HTTP/1.1 by ALPN), bounded
/// and counted as gRPC's is; `facts` gain the verified SPIFFE ID.
pub(crate) async fn handshake_http<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    facts: PeerFacts,
    tls: &TlsAccept,
) -> Option<(tokio_rustls::server::TlsStream<S>, PeerFacts)> {
    tls_accept(tls.tls.http_acceptor(), io, facts, tls).await
}

async fn tls_accept<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: tokio_rustls::TlsAcceptor,
    io: S,
    mut facts: PeerFacts,
    tls: &TlsAccept,
) -> Option<(tokio_rustls::server::TlsStream<S>, PeerFacts)> {
    let accept = acceptor.accept(io);
    match tokio::time::timeout(tls.handshake_timeout, accept).await {
        Ok(Ok(stream)) => {
            facts.spiffe = tls
                .tls
                .peer_spiffe_id(stream.get_ref().1.peer_certificates());
            Some((stream, facts))
        }
        Ok(Err(e)) => {
            tls.metrics.tls_handshake_failure();
            tracing::debug!(peer = ?facts.addr, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tls.metrics.tls_handshake_failure();
            tracing::debug!(peer = ?facts.addr, "TLS handshake timed out");
            None
        }
    }
}
