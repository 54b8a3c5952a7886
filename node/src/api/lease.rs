//! `esf.v1.Lease`: leases over the meta group. Only the meta leader
//! counts a lease down: keep-alives and time-to-live questions that reach
//! a follower are forwarded, and a keep-alive stream opened on a follower
//! is refused with the leader's address so the client reopens it there.

use esf_proto::v1 as pb;
use esf_raft::command::{Command, KeyRange, Op, OpResult, Rejection};
use esf_raft::meta::auth::{Need, Resource};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::forward_or;
use crate::auth::Authz;
use crate::context::Ctx;
use crate::convert;
use crate::error::Error;
use crate::keyspace;

type LeaseStub = pb::lease_client::LeaseClient<Channel>;

/// `esf.v1.Lease`.
pub struct LeaseService(pub Ctx);

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn grant(&self, req: Request<pb::LeaseGrantRequest>) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let msg = req.get_ref().clone();
        let cmd = Command {
            session: convert::session(msg.session),
            op: Authz::of(&self.0, &req).wrap(Op::LeaseGrant {
                id: msg.id,
                ttl_secs: msg.ttl_secs,
            })?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::LeaseGranted { id, ttl_secs })) => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(h),
                id,
                ttl_secs,
            })),
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, LeaseStub, req, e, grant, msg),
        }
    }

    async fn revoke(&self, req: Request<pb::LeaseRevokeRequest>) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let msg = req.get_ref().clone();
        let cmd = Command {
            session: convert::session(msg.session),
            op: Authz::of(&self.0, &req).wrap(Op::LeaseRevoke {
                id: msg.id,
                expired: false,
            })?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::LeaseRevoked { deleted_keys })) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(h),
                deleted_keys,
            })),
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, LeaseStub, req, e, revoke, msg),
        }
    }

    async fn keep_alive(
        &self,
        req: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        Authz::of(&self.0, &req).require_lease()?;
        let msg = req.get_ref().clone();
        if msg.id == 0 {
            return Err(Error::invalid("lease.id", "must not be 0").into());
        }
        match self.0.meta.lease_keepalive(msg.id).await {
            Ok((h, ttl)) => Ok(Response::new(pb::LeaseKeepAliveResponse {
                header: Some(convert::header(h)),
                id: msg.id,
                ttl_secs: ttl.as_secs(),
            })),
            Err(e) => forward_or!(self.0, LeaseStub, req, e, keep_alive, msg),
        }
    }

    type KeepAliveStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn keep_alive_stream(
        &self,
        req: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStreamStream>, Status> {
        use futures::StreamExt;
        Authz::of(&self.0, &req).require_lease()?;
        // Only the leader counts down; the error names it so the client
        // reopens there.
        if !self.0.meta.raft().is_leader() {
            return Err(Error::from(self.0.meta.not_leader_error()).into());
        }
        let meta = self.0.meta.clone();
        let mut stop = self.0.stop.clone();
        let out = req
            .into_inner()
            .take_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .then(move |r| {
                let meta = meta.clone();
                async move {
                    let r = r?;
                    if r.id == 0 {
                        return Err(Error::invalid("lease.id", "must not be 0").into());
                    }
                    match meta.lease_keepalive(r.id).await {
                        Ok((h, ttl)) => Ok(pb::LeaseKeepAliveResponse {
                            header: Some(convert::header(h)),
                            id: r.id,
                            ttl_secs: ttl.as_secs(),
                        }),
                        Err(esf_raft::Error::Rejected(Rejection::LeaseNotFound(_))) => Ok(pb::LeaseKeepAliveResponse {
                            header: Some(convert::header(meta.header(meta.store().revision()))),
                            id: r.id,
                            ttl_secs: 0,
                        }),
                        Err(e) => Err(Error::from(e).into()),
                    }
                }
            });
        Ok(Response::new(Box::pin(out)))
    }

    async fn time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let authz = Authz::of(&self.0, &req);
        authz.require_lease()?;
        let msg = req.get_ref().clone();
        if msg.id == 0 {
            return Err(Error::invalid("lease.id", "must not be 0").into());
        }
        // Only the leader counts down; a follower forwards.
        if !self.0.meta.raft().is_leader() {
            let e = self.0.meta.not_leader_error();
            forward_or!(self.0, LeaseStub, req, e, time_to_live, msg);
        }
        let lease = self.0.meta.store().lease(msg.id).map_err(Error::Storage)?;
        let Some((rec, keys)) = lease else {
            return Err(Error::from(Rejection::LeaseNotFound(msg.id)).into());
        };
        // Naming the keys reads them (etcd's CVE-2023-32082): every one.
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| k.first() != Some(&keyspace::RESERVED_KEY_BYTE))
            .collect();
        if msg.keys {
            for k in &keys {
                authz.require(Resource::Key, Need::Read, &KeyRange::Key(k.clone()))?;
            }
        }
        let remaining = self
            .0
            .meta
            .lease_remaining(msg.id)
            .unwrap_or(std::time::Duration::from_secs(rec.ttl_secs));
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(self.0.meta_header()),
            id: msg.id,
            granted_ttl_secs: rec.ttl_secs,
            remaining_ms: remaining.as_millis() as u64,
            // Registry instances bound to the lease are not config keys.
            keys: if msg.keys { keys } else { Vec::new() },
        }))
    }
}
