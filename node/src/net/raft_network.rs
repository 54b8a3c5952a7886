//! Raft RPCs over tonic.
//!
//! One lazily connected HTTP/2 channel per peer address
//! ([`crate::net::peer_pool::PeerPool`]) carries
//! the Raft traffic of every group (each message is tagged with its group id)
//! and forwarded client requests. Every call has a deadline (openraft's
//! per-RPC TTL, capped by [`MAX_RPC_TIMEOUT`]).
//!
//! Replication uses one bidirectional `StreamAppend` stream per group and
//! peer: the leader sends the next append without waiting for the previous
//! result (openraft's `stream_append` pipelining); results come back in
//! order. A stream has no overall deadline (it lives as long as the leader
//! replicates); instead each append in flight must be answered within the
//! RPC deadline, or the stream fails and openraft opens a new one.
//!
//! Bounds: a gRPC message is at most [`MAX_MESSAGE_BYTES`]. An append whose
//! encoding would exceed [`MAX_APPEND_BYTES`] is split into consecutive
//! appends, each below the bound, so a burst of large values never stalls
//! replication on tonic's size limit. Snapshots are streamed in
//! [`SNAPSHOT_CHUNK_BYTES`] chunks.
//!
//! Messages carry the sender's cluster id; a node refuses Raft traffic of
//! another cluster.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use esf_proto::v1 as pb;
use esf_raft::openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use esf_raft::openraft::network::RPCOption;
use esf_raft::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use esf_raft::openraft::{self, BasicNode, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use esf_raft::types::{NodeId, SnapshotData, TypeConfig, Vote};
use pb::raft_transport_client::RaftTransportClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::net::peer_pool::{ClusterId, PeerPool};

/// Largest gRPC message accepted or sent between nodes.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Largest encoded append sent in one RPC (below `MAX_MESSAGE_BYTES`).
pub const MAX_APPEND_BYTES: usize = 16 << 20;
/// Snapshot chunk size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Upper bound of any Raft RPC deadline.
pub const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshot chunks read ahead of the stream being sent.
pub const SNAPSHOT_CHUNKS_QUEUED: usize = 4;
/// Deadline of a snapshot transfer.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| format!("encode: {e}"))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::deserialize(b).map_err(|e| format!("decode: {e}"))
}

fn rpc_err(target: NodeId, s: &Status) -> RPCError<TypeConfig> {
    let m = format!("node {target}: {}: {}", s.code(), s.message());
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::from_string(m))
        }
        _ => RPCError::Network(NetworkError::from_string(m)),
    }
}

/// Splits an append whose encoding exceeds [`MAX_APPEND_BYTES`] into
/// consecutive appends, each continuing after the last, each below the
/// bound (a single entry is never split).
fn split_by_bytes(rpc: AppendEntriesRequest<TypeConfig>) -> Vec<AppendEntriesRequest<TypeConfig>> {
    let size = bincode::serialized_size(&rpc).unwrap_or(0) as usize;
    if size <= MAX_APPEND_BYTES || rpc.entries.len() <= 1 {
        return vec![rpc];
    }
    let AppendEntriesRequest {
        vote,
        mut prev_log_id,
        entries,
        leader_commit,
    } = rpc;
    let mut parts = Vec::new();
    let mut chunk: Vec<_> = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut flush = |chunk: Vec<_>, prev: &mut Option<_>| {
        let last = chunk.last().map(|e| openraft::entry::RaftEntry::log_id(e));
        parts.push(AppendEntriesRequest {
            vote: vote.clone(),
            prev_log_id: prev.clone(),
            entries: chunk,
            leader_commit: leader_commit.clone(),
        });
        *prev = last;
    };
    for e in entries {
        let b = bincode::serialized_size(&e).unwrap_or(0) as usize;
        if !chunk.is_empty() && chunk_bytes + b > MAX_APPEND_BYTES {
            flush(std::mem::take(&mut chunk), &mut prev_log_id);
            chunk_bytes = 0;
        }
        chunk_bytes += b;
        chunk.push(e);
    }
    flush(chunk, &mut prev_log_id);
    parts
}

/// Send times of the appends of one stream still waiting for their result,
/// shared by the sending and the receiving side.
#[derive(Clone, Default)]
struct Inflight {
    queue: Arc<Mutex<InflightQueue>>,
    wake: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct InflightQueue {
    sent: VecDeque<tokio::time::Instant>,
    /// When the last result arrived: an append queued behind others is
    /// only late once the peer has also stopped answering.
    last_answer: Option<tokio::time::Instant>,
}

enum Answer {
    Message(pb::RaftMessage),
    Status(Status),
    /// The oldest append in flight passed its deadline.
    Late,
    End,
}

impl Inflight {
    fn push(&self) {
        self.queue
            .lock()
            .expect("inflight lock")
            .sent
            .push_back(tokio::time::Instant::now());
        self.wake.notify_one();
    }

    /// The next result, or `Late` once the oldest unanswered append is older
    /// than `deadline`. While nothing is in flight there is no deadline.
    async fn next_answer(&self, responses: &mut Streaming<pb::RaftMessage>, deadline: Duration) -> Answer {
        loop {
            let expires = {
                let q = self.queue.lock().expect("inflight lock");
                q.sent
                    .front()
                    .map(|&t| q.last_answer.map_or(t, |l| t.max(l)) + deadline)
            };
            tokio::select! {
                m = responses.message() => {
                    let mut q = self.queue.lock().expect("inflight lock");
                    q.sent.pop_front();
                    q.last_answer = Some(tokio::time::Instant::now());
                    drop(q);
                    return match m {
                        Ok(Some(m)) => Answer::Message(m),
                        Ok(None) => Answer::End,
                        Err(s) => Answer::Status(s),
                    };
                }
                _ = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now)), if expires.is_some() => {
                    return Answer::Late;
                }
                _ = self.wake.notified(), if expires.is_none() => {}
            }
        }
    }
}

/// openraft network factory of one group.
pub struct Network {
    /// The group this network carries.
    pub group: u32,
    /// Channels to peers, shared with every group and forwarded requests.
    pub pool: PeerPool,
    /// This node's cluster id, sent with every message.
    pub cluster_id: ClusterId,
    /// Least time a follower has to answer an append (openraft asks for
    /// its heartbeat interval, 100 ms by default: a follower fsyncing on
    /// a loaded machine misses that, and the stream was torn down and
    /// reopened thousands of times a minute). Set to the election timeout.
    pub append_deadline: Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConn {
        PeerConn {
            group: self.group,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            cluster_id: self.cluster_id.clone(),
            append_deadline: self.append_deadline,
        }
    }
}

/// A group's connection to one peer.
pub struct PeerConn {
    group: u32,
    target: NodeId,
    addr: String,
    pool: PeerPool,
    cluster_id: ClusterId,
    append_deadline: Duration,
}

impl PeerConn {
    fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError<TypeConfig>> {
        let ch = self
            .pool
            .channel(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))?;
        Ok(RaftTransportClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn message<T: Serialize>(
        &self,
        v: &T,
        timeout: Duration,
    ) -> Result<Request<pb::RaftMessage>, RPCError<TypeConfig>> {
        let payload = encode(v).map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        let cluster_id = self.cluster_id.read().expect("cluster id lock").clone();
        let mut req = Request::new(pb::RaftMessage {
            group: self.group,
            cluster_id,
            payload,
        });
        req.set_timeout(timeout.min(MAX_RPC_TIMEOUT));
        self.pool.secret().sign(&mut req);
        Ok(req)
    }

    fn reply<T: DeserializeOwned>(
        &self,
        r: Result<Response<pb::RaftMessage>, Status>,
    ) -> Result<T, RPCError<TypeConfig>> {
        let msg = r.map_err(|s| rpc_err(self.target, &s))?.into_inner();
        decode(&msg.payload).map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }

    async fn append_one(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.message(rpc, option.hard_ttl())?;
        let r = self.client()?.append_entries(req).await;
        self.reply(r)
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        for part in split_by_bytes(rpc) {
            let resp = self.append_one(&part, &option).await?;
            if !matches!(resp, AppendEntriesResponse::Success) {
                return Ok(resp);
            }
        }
        Ok(AppendEntriesResponse::Success)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let deadline = option.hard_ttl().max(self.append_deadline).min(MAX_RPC_TIMEOUT);
            let inflight = Inflight::default();
            let sent = inflight.clone();
            let group = self.group;
            let cluster_id = self.cluster_id.clone();
            let target = self.target;
            // Each request becomes one or more messages (split by bytes);
            // each message is answered by one result.
            // The requests end when the results are dropped (a new session
            // starts): an old request stream must not linger holding
            // openraft's replication state.
            let (results_alive, results_gone) = tokio::sync::oneshot::channel::<()>();
            let requests = input.take_until(results_gone).flat_map(|rpc| futures::stream::iter(split_by_bytes(rpc))).filter_map(move |part| {
                let msg = match encode(&part) {
                    Ok(payload) => Some(pb::RaftMessage {
                        group,
                        cluster_id: cluster_id.read().expect("cluster id lock").clone(),
                        payload,
                    }),
                    Err(e) => {
                        tracing::error!(target_node = target, error = %e, "cannot encode an append; skipping it (the follower will report a conflict and openraft resends)");
                        None
                    }
                };
                if msg.is_some() {
                    sent.push();
                }
                futures::future::ready(msg)
            });
            let mut client = self.client()?;
            let mut req = Request::new(requests);
            self.pool.secret().sign(&mut req);
            let opened = tokio::time::timeout(deadline, client.stream_append(req)).await;
            let responses = match opened {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => return Err(rpc_err(target, &s)),
                Err(_) => {
                    return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                        "node {target}: opening the append stream took longer than {deadline:?}"
                    ))));
                }
            };
            let results = futures::stream::unfold(
                Some((responses, inflight, deadline, target, results_alive)),
                |state| async move {
                    let (mut responses, inflight, deadline, target, alive) = state?;
                    let item = match inflight.next_answer(&mut responses, deadline).await {
                        Answer::Message(m) => decode::<StreamAppendResult<TypeConfig>>(&m.payload)
                            .map_err(|e| RPCError::Network(NetworkError::from_string(e))),
                        Answer::Status(s) => Err(rpc_err(target, &s)),
                        Answer::Late => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                            "node {target}: an append was not answered within {deadline:?}"
                        )))),
                        Answer::End => return None,
                    };
                    let next = item.is_ok().then_some((responses, inflight, deadline, target, alive));
                    Some((item, next))
                },
            );
            Ok(results.boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.message(&rpc, option.hard_ttl())?;
        let r = self.client()?.vote(req).await;
        self.reply(r)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.message(&rpc, option.hard_ttl())?;
        let r = self.client()?.pre_vote(req).await;
        self.reply(r)
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.message(&rpc, option.hard_ttl())?;
        let r = self.client()?.transfer_leader(req).await;
        self.reply(r)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let net = |e: String| StreamingError::Network(NetworkError::from_string(e));
        let cluster_id = self.cluster_id.read().expect("cluster id lock").clone();
        let vote_b = encode(&vote).map_err(net)?;
        let meta_b = encode(&snapshot.meta).map_err(net)?;
        // Chunks are read from the file as the stream is sent (a few
        // queued), never the whole snapshot at once.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(SNAPSHOT_CHUNKS_QUEUED);
        let file = snapshot.snapshot;
        let group = self.group;
        let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let len = file.len();
            let mut pos = 0u64;
            let mut first = true;
            loop {
                let want = (len - pos).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
                let mut data = vec![0u8; want];
                file.read_exact_at(&mut data, pos)
                    .map_err(|e| format!("read snapshot {}: {e}", file.path().display()))?;
                pos += want as u64;
                let chunk = pb::SnapshotChunk {
                    group,
                    cluster_id: cluster_id.clone(),
                    vote: if first { vote_b.clone() } else { vec![] },
                    meta: if first { meta_b.clone() } else { vec![] },
                    data,
                    done: pos == len,
                };
                first = false;
                if tx.blocking_send(chunk).is_err() || pos == len {
                    // The call ended (its error is reported there), or
                    // every chunk is queued.
                    return Ok(());
                }
            }
        });
        let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.set_timeout(SNAPSHOT_TIMEOUT);
        self.pool.secret().sign(&mut req);
        let ch = self
            .pool
            .channel(&self.addr)
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let mut client = RaftTransportClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let resp = client.install_snapshot(req).await;
        let read = reader.await.map_err(|e| e.to_string()).and_then(|r| r);
        let resp = resp.map_err(|s| {
            StreamingError::Unreachable(Unreachable::from_string(format!(
                "node {}: {}",
                self.target,
                s.message()
            )))
        })?;
        read.map_err(net)?;
        decode(&resp.into_inner().payload).map_err(net)
    }
}
