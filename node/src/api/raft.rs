//! `esf.internal RaftTransport`, the server side: hands incoming Raft RPCs
//! of every group to the local group (the client side is
//! [`crate::net::raft_network`]).
//!
//! Refused: traffic while a node without data checks whether it may join
//! (the gate), traffic of a group this node does not run, and traffic of
//! another cluster (a node without a cluster adopts the sender's). An open
//! replication stream ends when the node stops.

use std::pin::Pin;
use std::sync::Arc;

use esf_proto::v1 as pb;
use esf_raft::events::PartitionGroup;
use esf_raft::group::MetaGroup;
use esf_raft::openraft;
use esf_raft::openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use esf_raft::snapshot_record::IncomingSnapshot;
use esf_raft::types::{SnapshotData, SnapshotMeta, TypeConfig, Vote};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::net::peer_pool::ClusterId;
use crate::net::raft_network::{decode, encode};

/// Runs `$body` with `$raft` bound to the openraft handle of group `$group`
/// (meta or a partition: different types, the same calls). The group must
/// have passed `RaftService::check`.
macro_rules! on_group {
    ($svc:expr, $group:expr, |$raft:ident| $body:expr) => {{
        let g = $group;
        if g == esf_raft::group::META_GROUP {
            let $raft = $svc.meta.raft();
            $body
        } else {
            let p = $svc.partitions[g as usize - 1].clone();
            let $raft = p.raft();
            $body
        }
    }};
}

/// Server side: hands incoming Raft RPCs to the local group.
#[derive(Clone)]
pub struct RaftService {
    /// The meta group (group 0).
    pub meta: Arc<MetaGroup>,
    /// Event partitions: group `g` is `partitions[g - 1]`.
    pub partitions: Arc<Vec<Arc<PartitionGroup>>>,
    /// The cluster this node belongs to (adopted from the first leader
    /// that calls a node without one).
    pub cluster_id: ClusterId,
    /// Closed while a node without data checks whether it may join (see
    /// `cluster::formation::form_cluster`): Raft traffic is refused meanwhile, so a
    /// leader cannot fill a wiped member's log before the check refuses it.
    pub gate: Arc<std::sync::atomic::AtomicBool>,
    /// Becomes true when the node stops: open replication streams end, so
    /// the server's graceful shutdown does not wait for them forever.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Persists a cluster id adopted from a leader's message.
    pub on_adopt: Arc<dyn Fn(&str) + Send + Sync>,
    /// While the data dir is low on space, log entries, snapshots and
    /// leadership transfers are refused (votes are not): leaders retry
    /// once it has room again.
    pub disk: Arc<crate::disk::DiskGuard>,
}

impl RaftService {
    /// Refuses what writes to this node's disk or makes it a leader while
    /// the disk is low.
    fn check_disk(&self) -> Result<(), Error> {
        match self.disk.reason() {
            Some(r) => Err(Error::unavailable(format!(
                "{r}; Raft log entries are refused until then"
            ))),
            None => Ok(()),
        }
    }
    /// Refuses becoming a leader while the disk is low or the storage
    /// check is critical.
    fn check_may_lead(&self) -> Result<(), Error> {
        match self.disk.leadership_refusal() {
            Some(r) => Err(Error::unavailable(format!(
                "{r}; leadership transfers to this node are refused until then"
            ))),
            None => Ok(()),
        }
    }

    fn check_gate(&self) -> Result<(), Error> {
        if !self.gate.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::unavailable(
                "this node is checking whether it may join; Raft traffic is refused until then",
            ));
        }
        Ok(())
    }

    fn check(&self, group: u32, cluster_id: &str) -> Result<(), Error> {
        self.check_gate()?;
        if group as usize > self.partitions.len() {
            return Err(Error::NotFound(format!("group {group} is not served by this node")));
        }
        if let Admission::Adopt = admit(&self.cluster_id, cluster_id)? {
            (self.on_adopt)(cluster_id);
        }
        Ok(())
    }

    /// Results of a replication stream whose first (admitted) message is
    /// `first`. A message of another group or cluster, or one that does not
    /// decode, ends the input; the results already due still flow back.
    fn append_stream(
        &self,
        first: pb::RaftMessage,
        rest: Streaming<pb::RaftMessage>,
    ) -> impl Stream<Item = Result<pb::RaftMessage, Status>> + Send + 'static {
        let (group, cluster) = (first.group, first.cluster_id.clone());
        let mut stop = self.stop.clone();
        let disk = self.disk.clone();
        let requests = futures::stream::once(futures::future::ready(Ok(first)))
            .chain(rest)
            .take_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .map(move |m| match m {
                // The disk ran low: end the stream (the leader retries).
                Ok(_) if disk.is_low() => Err("disk low: no more log entries taken".to_string()),
                Ok(m) if m.group == group && m.cluster_id == cluster => {
                    decode::<AppendEntriesRequest<TypeConfig>>(&m.payload)
                }
                Ok(m) => Err(format!(
                    "message of group {} / cluster {:?} in this stream",
                    m.group, m.cluster_id
                )),
                Err(s) => Err(format!("receive: {s}")),
            })
            .take_while(move |r| {
                if let Err(e) = r {
                    tracing::warn!(group, error = %e, "append stream ended");
                }
                futures::future::ready(r.is_ok())
            })
            .filter_map(|r| futures::future::ready(r.ok()));
        let cluster_id = self.cluster_id.clone();
        let results = on_group!(self, group, |raft| raft.stream_append(requests).boxed());
        results.map(move |r| match r {
            Ok(result) => Ok(pb::RaftMessage {
                group,
                cluster_id: cluster_id.read().expect("cluster id lock").clone(),
                payload: encode(&result).map_err(Error::Internal)?,
            }),
            Err(f) => Err(fatal(f)),
        })
    }

    fn reply<T: Serialize>(&self, group: u32, v: &T) -> Result<Response<pb::RaftMessage>, Status> {
        let payload = encode(v).map_err(Error::Internal)?;
        Ok(Response::new(pb::RaftMessage {
            group,
            cluster_id: self.cluster_id.read().expect("cluster id lock").clone(),
            payload,
        }))
    }
}

/// Whether Raft traffic of `group` from a node of cluster `theirs` is let in.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Same cluster (or the sender has none yet).
    Accept,
    /// This node had no cluster yet and now belongs to the sender's.
    Adopt,
}

/// Admits traffic of our own cluster; a node without a cluster adopts the
/// sender's (a new node learns its cluster from the first leader that calls
/// it); traffic of another cluster is PERMISSION_DENIED.
fn admit(mine: &ClusterId, theirs: &str) -> Result<Admission, Error> {
    let mut guard = mine.write().expect("cluster id lock");
    if guard.is_empty() && !theirs.is_empty() {
        *guard = theirs.to_string();
        return Ok(Admission::Adopt);
    }
    if !theirs.is_empty() && *guard != theirs {
        return Err(Error::PermissionDenied(format!(
            "this node belongs to cluster {}, not {theirs}",
            *guard
        )));
    }
    Ok(Admission::Accept)
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use super::*;

    #[test]
    fn traffic_of_another_cluster_is_refused_and_a_new_node_adopts() {
        let mine: ClusterId = Arc::new(RwLock::new(String::new()));
        assert_eq!(admit(&mine, "esf-a").unwrap(), Admission::Adopt);
        assert_eq!(*mine.read().unwrap(), "esf-a");
        assert_eq!(admit(&mine, "esf-a").unwrap(), Admission::Accept);
        let err = Status::from(admit(&mine, "esf-b").unwrap_err());
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("belongs to cluster esf-a, not esf-b"),
            "{}",
            err.message()
        );
        assert_eq!(*mine.read().unwrap(), "esf-a", "a refused message changes nothing");
    }
}

/// Raft stopped under a request: the peer retries (here or elsewhere).
fn fatal(e: impl std::fmt::Display) -> Status {
    Error::unavailable(format!("raft: {e}")).into()
}

/// A payload that does not decode.
fn undecodable(e: String) -> Error {
    Error::invalid("payload", e)
}

type AppendResults = Pin<Box<dyn Stream<Item = Result<pb::RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for RaftService {
    type StreamAppendStream = AppendResults;

    async fn stream_append(&self, req: Request<Streaming<pb::RaftMessage>>) -> Result<Response<AppendResults>, Status> {
        // Answer with headers at once: the leader may have nothing to send
        // for a while, and the first message decides the group and cluster.
        self.check_gate()?;
        self.check_disk()?;
        let mut inbound = req.into_inner();
        let mut stop = self.stop.clone();
        let svc = self.clone();
        let results = futures::stream::once(async move {
            let first = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return futures::stream::empty().boxed(),
                Err(s) => return futures::stream::iter([Err(s)]).boxed(),
            };
            if let Err(s) = svc.check(first.group, &first.cluster_id) {
                return futures::stream::iter([Err(Status::from(s))]).boxed();
            }
            svc.append_stream(first, inbound).boxed()
        })
        .flatten()
        .take_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        Ok(Response::new(Box::pin(results)))
    }

    async fn append_entries(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let m = req.into_inner();
        self.check(m.group, &m.cluster_id)?;
        self.check_disk()?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&m.payload).map_err(undecodable)?;
        let resp = on_group!(self, m.group, |raft| raft.append_entries(rpc).await.map_err(fatal)?);
        self.reply(m.group, &resp)
    }

    async fn vote(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let m = req.into_inner();
        self.check(m.group, &m.cluster_id)?;
        let rpc: VoteRequest<TypeConfig> = decode(&m.payload).map_err(undecodable)?;
        let resp = on_group!(self, m.group, |raft| raft.vote(rpc).await.map_err(fatal)?);
        self.reply(m.group, &resp)
    }

    async fn pre_vote(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let m = req.into_inner();
        self.check(m.group, &m.cluster_id)?;
        let rpc: VoteRequest<TypeConfig> = decode(&m.payload).map_err(undecodable)?;
        let resp = on_group!(self, m.group, |raft| raft.pre_vote(rpc).await.map_err(fatal)?);
        self.reply(m.group, &resp)
    }

    async fn transfer_leader(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let m = req.into_inner();
        self.check(m.group, &m.cluster_id)?;
        self.check_may_lead()?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode(&m.payload).map_err(undecodable)?;
        let resp = on_group!(self, m.group, |raft| raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(fatal)?);
        self.reply(m.group, &resp)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let mut stream = req.into_inner();
        let mut vote: Option<Vote> = None;
        let mut meta: Option<SnapshotMeta> = None;
        let mut group = 0;
        // Written to a file as it arrives (removed unless complete).
        let mut incoming: Option<IncomingSnapshot> = None;
        let mut done = false;
        let storage = |e: esf_storage::StorageError| Error::task("receive snapshot", e);
        while let Some(chunk) = stream.message().await? {
            if vote.is_none() {
                self.check(chunk.group, &chunk.cluster_id)?;
                self.check_disk()?;
                group = chunk.group;
                vote = Some(decode(&chunk.vote).map_err(undecodable)?);
                meta = Some(decode(&chunk.meta).map_err(undecodable)?);
                let db = self.meta.store().db().clone();
                incoming = Some(
                    tokio::task::spawn_blocking(move || IncomingSnapshot::create(&db, group))
                        .await
                        .map_err(|e| Error::task("receive snapshot", e))?
                        .map_err(storage)?,
                );
            }
            let mut file = incoming.take().expect("created with the first chunk");
            let data = chunk.data;
            file = tokio::task::spawn_blocking(move || file.write(&data).map(|()| file))
                .await
                .map_err(|e| Error::task("receive snapshot", e))?
                .map_err(storage)?;
            incoming = Some(file);
            if chunk.done {
                done = true;
                break;
            }
        }
        let (Some(vote), Some(meta), Some(file), true) = (vote, meta, incoming, done) else {
            return Err(Error::invalid("snapshot", "the stream ended before its last chunk").into());
        };
        let file = tokio::task::spawn_blocking(move || file.finish())
            .await
            .map_err(|e| Error::task("receive snapshot", e))?
            .map_err(storage)?;
        let received = file.path().to_path_buf();
        // Checked end to end before openraft sees it: a damaged transfer is
        // refused (the sender's openraft retries it later) instead of
        // failing the install, which would stop this group's Raft.
        let (file, checked) = tokio::task::spawn_blocking(move || {
            let checked = esf_raft::snapshot_record::verify(&file, group);
            (file, checked)
        })
        .await
        .map_err(|e| Error::task("receive snapshot", e))?;
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&received);
            tracing::warn!(group, error = %e, "refused a damaged snapshot; the sender will send it again");
            return Err(Status::data_loss(format!(
                "snapshot of group {group}: {e}; refused, send it again"
            )));
        }
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: file };
        let resp = on_group!(self, group, |raft| raft.install_full_snapshot(vote, snapshot).await);
        // An installed snapshot's file was renamed into place; one openraft
        // declined (stale vote, not newer than the state) is removed.
        let _ = std::fs::remove_file(&received);
        let resp = resp.map_err(fatal)?;
        self.reply(group, &resp)
    }
}
