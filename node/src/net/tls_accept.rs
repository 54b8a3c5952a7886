//! Accepting TLS connections: a task accepts TCP connections on a
//! listener, runs each TLS handshake on its own task under a deadline, and
//! hands the connections that completed one to the server (tonic's
//! `serve_with_incoming` for gRPC, axum's [`axum::serve::Listener`] for
//! the admin port).
//!
//! Bounds: at most [`MAX_PENDING_HANDSHAKES`] handshakes run at once (past
//! that the task stops accepting until one ends), each must finish within
//! the handshake timeout (`tls_handshake_timeout_ms`), so a client that
//! connects and says nothing holds a slot for that long at most; at most
//! [`ACCEPTED_QUEUE`] established connections wait for the server to take
//! them. The accepting task ends when the server drops its side.
//!
//! A failed or late handshake (an untrusted client certificate, a
//! plaintext client, a silent one) is logged at debug level and closes
//! that connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

/// Handshakes in progress at most, per listener.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Established connections waiting for the server to take them, at most.
pub const ACCEPTED_QUEUE: usize = 64;
/// Pause after a failed `accept` (e.g. out of file descriptors) before
/// the next.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A connection that completed its TLS handshake.
pub type Accepted = TlsStream<TcpStream>;

/// Accepts connections on `listener` and completes their handshakes with
/// `config`, each within `handshake_timeout`; established connections
/// come out of the returned receiver.
pub fn accept_tls(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> mpsc::Receiver<(Accepted, SocketAddr)> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = pending.clone().acquire_owned() => p.expect("the handshake semaphore is never closed"),
                _ = tx.closed() => return,
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            // Small replies (heartbeat acks) must not wait for a delayed ACK.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let done = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                drop(permit);
                match done {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => debug!(%peer, timeout = ?handshake_timeout, "tls handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The established connections of [`accept_tls`] as tonic's incoming
/// stream (tonic reads the client's certificates from them:
/// `Request::peer_certs`).
pub fn incoming(
    rx: mpsc::Receiver<(Accepted, SocketAddr)>,
) -> impl futures::Stream<Item = std::io::Result<Accepted>> + Send + 'static {
    use futures::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|(tls, _)| Ok(tls))
}

/// The established connections of [`accept_tls`] as an axum listener
/// (the admin port).
pub struct TlsListener {
    rx: mpsc::Receiver<(Accepted, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves `rx`, accepted on `local`.
    pub fn new(rx: mpsc::Receiver<(Accepted, SocketAddr)>, local: SocketAddr) -> TlsListener {
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Accepted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Accepted, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task ended: nothing more comes; the server
            // stops through its graceful shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
