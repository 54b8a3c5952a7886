//! What every client request passes before a service sees it: the
//! cluster pin. A request pinned to another cluster (`esf-cluster-id`
//! metadata, set by esf-client once it learned the cluster) is refused
//! UNAVAILABLE, so the client moves on to its next endpoint. Later
//! checks (authentication, rate limits) belong here too.

use esf_proto::wire::CLUSTER_ID_METADATA;
use tonic::{Request, Status};

use crate::error::Error;
use crate::net::peer_pool::ClusterId;

/// The interceptor of the client-facing services.
#[derive(Clone)]
pub struct ClusterPin(pub ClusterId);

impl tonic::service::Interceptor for ClusterPin {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let theirs = req
            .metadata()
            .get(CLUSTER_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mine = self.0.read().expect("cluster id lock").clone();
        if !theirs.is_empty() && !mine.is_empty() && theirs != mine {
            return Err(
                Error::unavailable(format!("cluster: this node belongs to cluster {mine}, not {theirs}")).into(),
            );
        }
        Ok(req)
    }
}
