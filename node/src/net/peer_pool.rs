//! One lazily connected HTTP/2 channel per peer address, shared by the
//! Raft traffic of every group and by requests forwarded to other nodes.
//! A channel connects within [`CONNECT_TIMEOUT`]; every call made on it
//! carries its own deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::peer_auth::PeerSecret;

/// Connect deadline to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster id this node belongs to ("" until it joins), shared.
pub type ClusterId = Arc<RwLock<String>>;

/// One channel per peer address, and the secret this node proves itself
/// with to its peers.
#[derive(Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    secret: PeerSecret,
}

impl PeerPool {
    /// A pool whose requests carry `secret` where they must.
    pub fn new(secret: PeerSecret) -> PeerPool {
        PeerPool {
            channels: Arc::default(),
            secret,
        }
    }

    /// The cluster's peer secret as this node has it.
    pub fn secret(&self) -> &PeerSecret {
        &self.secret
    }

    /// The channel to `addr` (`host:port`), created lazily.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().expect("peer pool lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let uri = esf_proto::wire::parse_endpoint(addr).map_err(|e| e.to_string())?;
        let ch = Endpoint::from_shared(uri)
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}
