//! `esf.v1.Cluster`: members, status, membership changes, leader
//! transfer, backups, replica fingerprints and the Hello of cluster
//! formation. Membership changes run on the meta leader
//! ([`crate::cluster::membership`]; a follower forwards them), backups in
//! [`crate::backup::serve`].

use esf_proto::v1 as pb;
use esf_raft::openraft::async_runtime::WatchReceiver;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::forward::leader_only;
use crate::audit;
use crate::backup::serve::{self, ChunkStream};
use crate::cluster::membership::Membership;
use crate::cluster::{leaders, partitions};
use crate::context::Ctx;
use crate::error::Error;

/// `esf.v1.Cluster`: the node's context and its health checks.
pub struct ClusterService(pub Ctx, pub std::sync::Arc<crate::health::Health>);

type BackupStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

fn backup_stream(chunks: ChunkStream) -> BackupStream {
    Box::pin(chunks.map(|r| r.map_err(Status::from)))
}

impl ClusterService {
    fn membership(&self) -> Membership<'_> {
        Membership { ctx: &self.0 }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn members(&self, _req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        let mut r = self.membership().members();
        let view = self.1.gossip().view().await;
        for m in &mut r.members {
            let peer = view.iter().find(|p| p.node_id == m.id);
            m.liveness = peer.map_or("unknown", |p| p.liveness()).into();
            m.generation = peer.map_or(0, |p| p.generation);
        }
        Ok(Response::new(r))
    }

    async fn health(
        &self,
        _req: Request<pb::ClusterHealthRequest>,
    ) -> Result<Response<pb::ClusterHealthResponse>, Status> {
        let mut r = pb::ClusterHealthResponse::from(self.1.cluster().await);
        r.header = Some(self.0.meta_header());
        Ok(Response::new(r))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let mut meta = partitions::group_status(0, self.0.meta.raft());
        meta.held = true;
        let mut groups = vec![meta];
        let me = self.0.meta.node_id();
        groups.extend(self.0.partitions.iter().map(|p| pb::GroupStatus {
            planned: self.0.routes.planned(p.group()).unwrap_or_default(),
            held: partitions::holds(me, p, &self.0.routes),
            ..partitions::group_status(p.group(), p.raft())
        }));
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.0.meta_header()),
            node_id: self.0.meta.node_id(),
            version: self.0.version.into(),
            cluster_id: self.0.cluster_id(),
            groups,
            db_size_bytes: self.0.meta.store().db().approximate_size_bytes(),
            quota_alarm: self.0.meta.quota_exceeded(),
            quota_used_bytes: self.0.meta.quota_used(),
            quota_bytes: self.0.meta.quota_bytes(),
            advertise: self.0.advertise.clone(),
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            audit_relayed_revision: audit::lag(&self.0.meta).0,
            audit_lag: audit::lag(&self.0.meta).1,
        }))
    }

    async fn add_learner(&self, req: Request<pb::AddLearnerRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        leader_only!(self.0, req, add_learner);
        let r = req.into_inner();
        Ok(Response::new(self.membership().add_learner(r.id, r.addr).await?))
    }

    async fn promote(&self, req: Request<pb::PromoteRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        leader_only!(self.0, req, promote);
        Ok(Response::new(self.membership().promote(req.into_inner().id).await?))
    }

    async fn remove(&self, req: Request<pb::RemoveRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        leader_only!(self.0, req, remove);
        Ok(Response::new(self.membership().remove(req.into_inner().id).await?))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        leader_only!(self.0, req, transfer_leader);
        let leader_id = self.membership().transfer_leader(req.into_inner().to).await?;
        Ok(Response::new(pb::TransferLeaderResponse {
            header: Some(self.0.meta_header()),
            leader_id,
        }))
    }

    type SnapshotStream = BackupStream;
    type PartitionSnapshotStream = BackupStream;

    async fn snapshot(&self, _req: Request<pb::BackupRequest>) -> Result<Response<BackupStream>, Status> {
        Ok(Response::new(backup_stream(serve::serve_snapshot(&self.0).await?)))
    }

    async fn partition_snapshot(
        &self,
        req: Request<pb::PartitionSnapshotRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        let g = req.into_inner().partition;
        Ok(Response::new(backup_stream(
            serve::partition_snapshot(&self.0, g).await?,
        )))
    }

    async fn consistency(
        &self,
        _req: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyResponse>, Status> {
        let mut hashes = Vec::new();
        let store = self.0.meta.store().clone();
        let meta = tokio::task::spawn_blocking(move || store.snapshot_rows())
            .await
            .map_err(|e| Error::task("consistency", e))?
            .map_err(Error::Storage)?;
        hashes.push(pb::GroupHash {
            group: esf_raft::group::META_GROUP,
            applied_index: meta.0.last_applied.as_ref().map_or(0, |l| l.index),
            hash: leaders::fingerprint(&meta.1),
        });
        let me = self.0.meta.node_id();
        // Only the replicas this node holds: a replica moved away keeps its
        // old rows and applied index, and is no longer a replica to compare.
        for p in self
            .0
            .partitions
            .iter()
            .filter(|p| partitions::holds(me, p, &self.0.routes))
        {
            let store = p.store().clone();
            let (st, rows) = tokio::task::spawn_blocking(move || store.replicated_rows())
                .await
                .map_err(|e| Error::task("consistency", e))?
                .map_err(Error::Storage)?;
            hashes.push(pb::GroupHash {
                group: p.group(),
                applied_index: st.last_applied.as_ref().map_or(0, |l| l.index),
                hash: leaders::fingerprint(&rows),
            });
        }
        let leaders = self
            .0
            .leaders
            .all()
            .into_iter()
            .map(|(group, term, leader_id)| pb::TermLeader { group, term, leader_id })
            .collect();
        Ok(Response::new(pb::ConsistencyResponse {
            header: Some(self.0.meta_header()),
            node_id: self.0.meta.node_id(),
            hashes,
            leaders,
        }))
    }

    async fn hello(&self, req: Request<pb::HelloRequest>) -> Result<Response<pb::HelloResponse>, Status> {
        let r = req.into_inner();
        let m = self.0.meta.raft().metrics().borrow_watched().clone();
        let initialized = m.membership_config.membership().nodes().next().is_some();
        // "Already a member" means: a leader has replicated to the asker
        // before (it acknowledged entries it no longer has): this leader's
        // replication progress says so, or the replicated record
        // (`MemberReplicated`, written by whichever node led then). A member
        // that never acknowledged anything (bootstrap, a learner just added)
        // is new.
        let acked_before = m
            .replication
            .as_ref()
            .and_then(|rep| rep.get(&r.node_id).cloned().flatten())
            .is_some();
        let recorded = self
            .0
            .meta
            .store()
            .member_replicated(r.node_id)
            .map_err(Error::Storage)?;
        let asker_is_member =
            m.membership_config.membership().get_node(&r.node_id).is_some() && (acked_before || recorded);
        let is_leader = m.current_leader == Some(self.0.meta.node_id());
        let leader_addr = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        Ok(Response::new(pb::HelloResponse {
            node_id: self.0.meta.node_id(),
            addr: self.0.advertise.clone(),
            cluster_id: self.0.cluster_id(),
            initialized,
            asker_is_member,
            is_leader,
            leader_addr,
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            partitions: self.0.partitions.len() as u32,
            gossip_addr: self.1.gossip().advertise().to_string(),
        }))
    }
}
