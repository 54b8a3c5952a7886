//! One lazily connected HTTP/2 channel per peer address, shared by the
//! Raft traffic of every group and by requests forwarded to other nodes.
//! A channel connects within [`CONNECT_TIMEOUT`]; every call made on it
//! carries its own deadline.
//!
//! With TLS ([`PeerPool::with_tls`]) channels dial `https` with the
//! node's peer settings; when those change on disk (a new generation),
//! the pool forgets its channels and makes new ones on next use (calls in
//! flight finish on the old ones).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::peer_auth::PeerSecret;
use super::tls_reload::Reloadable;

/// Connect deadline to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster id this node belongs to ("" until it joins), shared.
pub type ClusterId = Arc<RwLock<String>>;

/// One channel per peer address, and the secret this node proves itself
/// with to its peers.
#[derive(Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<Channels>>,
    secret: PeerSecret,
    tls: Option<Arc<Reloadable<ClientTlsConfig>>>,
}

/// The channels, made with the TLS settings of `generation` (0: none).
#[derive(Default)]
struct Channels {
    by_addr: HashMap<String, Channel>,
    generation: u64,
}

impl PeerPool {
    /// A pool whose requests carry `secret` where they must.
    pub fn new(secret: PeerSecret) -> PeerPool {
        PeerPool {
            channels: Arc::default(),
            secret,
            tls: None,
        }
    }

    /// This pool dialling `https` with `tls` (the node's peer settings).
    pub fn with_tls(mut self, tls: Option<Arc<Reloadable<ClientTlsConfig>>>) -> PeerPool {
        self.tls = tls;
        self
    }

    /// The cluster's peer secret as this node has it.
    pub fn secret(&self) -> &PeerSecret {
        &self.secret
    }

    /// The channel to `addr` (`host:port`), created lazily.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let tls = self.tls.as_ref().map(|t| t.current());
        let mut map = self.channels.lock().expect("peer pool lock");
        let generation = tls.as_ref().map_or(0, |t| t.generation);
        if map.generation != generation {
            map.by_addr.clear();
            map.generation = generation;
        }
        if let Some(c) = map.by_addr.get(addr) {
            return Ok(c.clone());
        }
        let uri = esf_proto::wire::parse_endpoint(addr).map_err(|e| e.to_string())?;
        let uri = match &tls {
            Some(_) => uri.replacen("http://", "https://", 1),
            None => uri,
        };
        let mut ep = Endpoint::from_shared(uri)
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        if let Some(t) = tls {
            ep = ep.tls_config(t.value.clone()).map_err(|e| format!("tls: {e}"))?;
        }
        let ch = ep.connect_lazy();
        map.by_addr.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}
