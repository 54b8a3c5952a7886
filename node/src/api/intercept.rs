//! What every request passes before a service sees it.
//!
//! Client-facing services ([`ClusterPin`]): a request pinned to another
//! cluster (`esf-cluster-id` metadata, set by esf-client once it learned
//! the cluster) is refused UNAVAILABLE, so the client moves on to its next
//! endpoint; a request marked `esf-forwarded` (served where it lands, past
//! the checks only clients get, such as the `$`-stream guard) is refused
//! UNAUTHENTICATED unless it carries the cluster's peer secret, so only a
//! node can forward. The Raft transport ([`PeersOnly`]) takes no request
//! without the peer secret. Later checks (authentication, rate limits)
//! belong here too.

use esf_proto::wire::{CLUSTER_ID_METADATA, FORWARDED_METADATA};
use tonic::{Request, Status};

use crate::error::Error;
use crate::net::peer_auth::PeerSecret;
use crate::net::peer_pool::ClusterId;

/// The interceptor of the client-facing services.
#[derive(Clone)]
pub struct ClusterPin {
    /// The cluster this node belongs to.
    pub cluster_id: ClusterId,
    /// The cluster's peer secret, which a forwarded request must carry.
    pub secret: PeerSecret,
}

/// The interceptor of the node-to-node services.
#[derive(Clone)]
pub struct PeersOnly(pub PeerSecret);

impl tonic::service::Interceptor for PeersOnly {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.0.verify(req.metadata()) {
            return Err(Error::Unauthenticated(
                "raft: only a node of this cluster may send Raft traffic (esf-peer-auth missing or wrong: every node needs the same peer_secret_file)".into(),
            )
            .into());
        }
        Ok(req)
    }
}

impl tonic::service::Interceptor for ClusterPin {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if req.metadata().get(FORWARDED_METADATA).is_some() && !self.secret.verify(req.metadata()) {
            return Err(Error::Unauthenticated(
                "esf-forwarded: only a node of this cluster may forward a request (esf-peer-auth missing or wrong)"
                    .into(),
            )
            .into());
        }
        let theirs = req
            .metadata()
            .get(CLUSTER_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mine = self.cluster_id.read().expect("cluster id lock").clone();
        if !theirs.is_empty() && !mine.is_empty() && theirs != mine {
            return Err(
                Error::unavailable(format!("cluster: this node belongs to cluster {mine}, not {theirs}")).into(),
            );
        }
        Ok(req)
    }
}
