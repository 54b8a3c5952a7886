//! Raft RPCs over tonic.
//!
//! One lazily connected HTTP/2 channel per peer address ([`PeerPool`]) carries
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

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use esf_proto::v1 as pb;
use esf_raft::events::PartitionGroup;
use esf_raft::group::MetaGroup;
use esf_raft::openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use esf_raft::openraft::network::RPCOption;
use esf_raft::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use esf_raft::openraft::{self, BasicNode, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use esf_raft::snapshot_record::IncomingSnapshot;
use esf_raft::types::{NodeId, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use pb::raft_transport_client::RaftTransportClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

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
/// Connect deadline to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster id this node belongs to ("" until it joins), shared.
pub type ClusterId = Arc<RwLock<String>>;

/// One channel per peer address.
#[derive(Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerPool {
    /// The channel to `addr` (`host:port`), created lazily.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().expect("peer pool lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let uri = esf_client::parse_endpoint(addr).map_err(|e| e.to_string())?;
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

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| format!("encode: {e}"))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::deserialize(b).map_err(|e| format!("decode: {e}"))
}

#[derive(Debug)]
struct Msg(String);
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Msg {}

fn rpc_err(target: NodeId, s: &Status) -> RPCError<TypeConfig> {
    let m = Msg(format!("node {target}: {}: {}", s.code(), s.message()));
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&m))
        }
        _ => RPCError::Network(NetworkError::new(&m)),
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
    pub group: u32,
    pub pool: PeerPool,
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
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))?;
        Ok(RaftTransportClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn message<T: Serialize>(
        &self,
        v: &T,
        timeout: Duration,
    ) -> Result<Request<pb::RaftMessage>, RPCError<TypeConfig>> {
        let payload = encode(v).map_err(|e| RPCError::Network(NetworkError::new(&Msg(e))))?;
        let cluster_id = self.cluster_id.read().expect("cluster id lock").clone();
        let mut req = Request::new(pb::RaftMessage {
            group: self.group,
            cluster_id,
            payload,
        });
        req.set_timeout(timeout.min(MAX_RPC_TIMEOUT));
        Ok(req)
    }

    fn reply<T: DeserializeOwned>(
        &self,
        r: Result<Response<pb::RaftMessage>, Status>,
    ) -> Result<T, RPCError<TypeConfig>> {
        let msg = r.map_err(|s| rpc_err(self.target, &s))?.into_inner();
        decode(&msg.payload).map_err(|e| RPCError::Network(NetworkError::new(&Msg(e))))
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
            let opened = tokio::time::timeout(deadline, client.stream_append(Request::new(requests))).await;
            let responses = match opened {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => return Err(rpc_err(target, &s)),
                Err(_) => {
                    return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                        "node {target}: opening the append stream took longer than {deadline:?}"
                    )))));
                }
            };
            let results = futures::stream::unfold(
                Some((responses, inflight, deadline, target, results_alive)),
                |state| async move {
                    let (mut responses, inflight, deadline, target, alive) = state?;
                    let item = match inflight.next_answer(&mut responses, deadline).await {
                        Answer::Message(m) => decode::<StreamAppendResult<TypeConfig>>(&m.payload)
                            .map_err(|e| RPCError::Network(NetworkError::new(&Msg(e)))),
                        Answer::Status(s) => Err(rpc_err(target, &s)),
                        Answer::Late => Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                            "node {target}: an append was not answered within {deadline:?}"
                        ))))),
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
        let net = |e: String| StreamingError::Network(NetworkError::new(&Msg(e)));
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
        let ch = self
            .pool
            .channel(&self.addr)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&Msg(e))))?;
        let mut client = RaftTransportClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let resp = client.install_snapshot(req).await;
        let read = reader.await.map_err(|e| e.to_string()).and_then(|r| r);
        let resp = resp.map_err(|s| {
            StreamingError::Unreachable(Unreachable::new(&Msg(format!("node {}: {}", self.target, s.message()))))
        })?;
        read.map_err(net)?;
        decode(&resp.into_inner().payload).map_err(net)
    }
}

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
    pub meta: Arc<MetaGroup>,
    /// Event partitions: group `g` is `partitions[g - 1]`.
    pub partitions: Arc<Vec<Arc<PartitionGroup>>>,
    pub cluster_id: ClusterId,
    /// Closed while a node without data checks whether it may join (see
    /// `server::form_cluster`): Raft traffic is refused meanwhile, so a
    /// leader cannot fill a wiped member's log before the check refuses it.
    pub gate: Arc<std::sync::atomic::AtomicBool>,
    /// Becomes true when the node stops: open replication streams end, so
    /// the server's graceful shutdown does not wait for them forever.
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub on_adopt: Arc<dyn Fn(&str) + Send + Sync>,
}

impl RaftService {
    fn check_gate(&self) -> Result<(), Status> {
        if !self.gate.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unavailable(
                "this node is checking whether it may join; Raft traffic is refused until then",
            ));
        }
        Ok(())
    }

    fn check(&self, group: u32, cluster_id: &str) -> Result<(), Status> {
        self.check_gate()?;
        if group as usize > self.partitions.len() {
            return Err(Status::not_found(format!("group {group} is not served by this node")));
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
        let requests = futures::stream::once(futures::future::ready(Ok(first)))
            .chain(rest)
            .take_until(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .map(move |m| match m {
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
                payload: encode(&result).map_err(Status::internal)?,
            }),
            Err(fatal) => Err(Status::unavailable(format!("raft: {fatal}"))),
        })
    }

    fn reply<T: Serialize>(&self, group: u32, v: &T) -> Result<Response<pb::RaftMessage>, Status> {
        let payload = encode(v).map_err(Status::internal)?;
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
fn admit(mine: &ClusterId, theirs: &str) -> Result<Admission, Status> {
    let mut guard = mine.write().expect("cluster id lock");
    if guard.is_empty() && !theirs.is_empty() {
        *guard = theirs.to_string();
        return Ok(Admission::Adopt);
    }
    if !theirs.is_empty() && *guard != theirs {
        return Err(Status::permission_denied(format!(
            "this node belongs to cluster {}, not {theirs}",
            *guard
        )));
    }
    Ok(Admission::Accept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_of_another_cluster_is_refused_and_a_new_node_adopts() {
        let mine: ClusterId = Arc::new(RwLock::new(String::new()));
        assert_eq!(admit(&mine, "esf-a").unwrap(), Admission::Adopt);
        assert_eq!(*mine.read().unwrap(), "esf-a");
        assert_eq!(admit(&mine, "esf-a").unwrap(), Admission::Accept);
        let err = admit(&mine, "esf-b").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("belongs to cluster esf-a, not esf-b"),
            "{}",
            err.message()
        );
        assert_eq!(*mine.read().unwrap(), "esf-a", "a refused message changes nothing");
    }
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

type AppendResults = Pin<Box<dyn Stream<Item = Result<pb::RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::raft_transport_server::RaftTransport for RaftService {
    type StreamAppendStream = AppendResults;

    async fn stream_append(&self, req: Request<Streaming<pb::RaftMessage>>) -> Result<Response<AppendResults>, Status> {
        // Answer with headers at once: the leader may have nothing to send
        // for a while, and the first message decides the group and cluster.
        self.check_gate()?;
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
                return futures::stream::iter([Err(s)]).boxed();
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
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&m.payload).map_err(Status::invalid_argument)?;
        let resp = on_group!(self, m.group, |raft| raft.append_entries(rpc).await.map_err(fatal)?);
        self.reply(m.group, &resp)
    }

    async fn vote(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let m = req.into_inner();
        self.check(m.group, &m.cluster_id)?;
        let rpc: VoteRequest<TypeConfig> = decode(&m.payload).map_err(Status::invalid_argument)?;
        let resp = on_group!(self, m.group, |raft| raft.vote(rpc).await.map_err(fatal)?);
        self.reply(m.group, &resp)
    }

    async fn pre_vote(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let m = req.into_inner();
        self.check(m.group, &m.cluster_id)?;
        let rpc: VoteRequest<TypeConfig> = decode(&m.payload).map_err(Status::invalid_argument)?;
        let resp = on_group!(self, m.group, |raft| raft.pre_vote(rpc).await.map_err(fatal)?);
        self.reply(m.group, &resp)
    }

    async fn transfer_leader(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let m = req.into_inner();
        self.check(m.group, &m.cluster_id)?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode(&m.payload).map_err(Status::invalid_argument)?;
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
        let storage = |e: esf_storage::StorageError| Status::internal(format!("receive snapshot: {e}"));
        while let Some(chunk) = stream.message().await? {
            if vote.is_none() {
                self.check(chunk.group, &chunk.cluster_id)?;
                group = chunk.group;
                vote = Some(decode(&chunk.vote).map_err(Status::invalid_argument)?);
                meta = Some(decode(&chunk.meta).map_err(Status::invalid_argument)?);
                let db = self.meta.store().db().clone();
                incoming = Some(
                    tokio::task::spawn_blocking(move || IncomingSnapshot::create(&db, group))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(storage)?,
                );
            }
            let mut file = incoming.take().expect("created with the first chunk");
            let data = chunk.data;
            file = tokio::task::spawn_blocking(move || file.write(&data).map(|()| file))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(storage)?;
            incoming = Some(file);
            if chunk.done {
                done = true;
                break;
            }
        }
        let (Some(vote), Some(meta), Some(file), true) = (vote, meta, incoming, done) else {
            return Err(Status::invalid_argument("snapshot stream ended before its last chunk"));
        };
        let file = tokio::task::spawn_blocking(move || file.finish())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(storage)?;
        let received = file.path().to_path_buf();
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot: file };
        let resp = on_group!(self, group, |raft| raft.install_full_snapshot(vote, snapshot).await);
        // An installed snapshot's file was renamed into place; one openraft
        // declined (stale vote, not newer than the state) is removed.
        let _ = std::fs::remove_file(&received);
        let resp = resp.map_err(fatal)?;
        self.reply(group, &resp)
    }
}
