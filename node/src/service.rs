//! The Config and Cluster gRPC services.
//!
//! Writes and linearizable reads that reach a follower are forwarded once
//! to the leader over the peer channel (marked with `esf-forwarded` so a
//! forwarded request is never forwarded again); if the leader is unknown
//! the caller gets UNAVAILABLE and retries. Serializable reads are served
//! locally.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use esf_client::pb;
use esf_raft::command::{Command, Op, OpResult};
use esf_raft::group::{Consistency, MetaGroup};
use esf_raft::openraft::BasicNode;
use esf_raft::openraft::async_runtime::WatchReceiver;
use pb::cluster_client::ClusterClient;
use pb::config_client::ConfigClient;
use pb::lease_client::LeaseClient;
use pb::registry_client::RegistryClient;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::transport::{ClusterId, PeerPool};

const FORWARDED: &str = "esf-forwarded";
/// Deadline of a membership change.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses a watcher may fall behind by before it is cancelled (it can
/// resume from the revision in the cancel response).
pub const WATCH_BUFFER_RESPONSES: usize = 1024;
/// Most events in one watch response.
pub const WATCH_MAX_EVENTS_PER_RESPONSE: usize = 1000;

/// One snapshot served at a time per node (each holds the meta group's
/// encoded state in memory while it streams).
static SNAPSHOTS_IN_PROGRESS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(1)));

/// Shared state of the services.
#[derive(Clone)]
pub struct Ctx {
    /// Becomes true when the node stops: open watches end with a cancel.
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub meta: Arc<MetaGroup>,
    /// Event partitions (group `g` is `partitions[g - 1]`).
    pub partitions: crate::partitions::Partitions,
    /// The cluster's partition count once meta has it (it never changes
    /// after; read once instead of on every events request).
    pub recorded_partitions: Arc<std::sync::OnceLock<u32>>,
    /// Where partitions live, as of the reconciler's last pass.
    pub routes: Arc<crate::partitions::Routes>,
    /// Replicas of each partition (`--partition-replicas`).
    pub partition_replicas: u32,
    /// The leaders each group saw, per term.
    pub leaders: Arc<crate::observer::LeaderLog>,
    pub pool: PeerPool,
    pub cluster_id: ClusterId,
    pub advertise: String,
    pub version: &'static str,
}

impl Ctx {
    pub(crate) fn leader_addr(e: &esf_raft::Error) -> Option<String> {
        match e {
            esf_raft::Error::NotLeader {
                leader_addr: Some(a), ..
            } => Some(a.clone()),
            _ => None,
        }
    }

    /// The leader's address to forward to, if this request may be forwarded.
    pub(crate) fn forward_target<T>(&self, req: &Request<T>, e: &esf_raft::Error) -> Option<String> {
        if Self::is_forwarded(req) {
            return None;
        }
        Self::leader_addr(e).filter(|a| *a != self.advertise)
    }

    pub(crate) fn is_forwarded<T>(req: &Request<T>) -> bool {
        req.metadata().get(FORWARDED).is_some()
    }

    pub(crate) fn forwarded<T>(msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert(FORWARDED, "1".parse().expect("static metadata value"));
        r
    }

    fn config_client(&self, addr: &str) -> Result<ConfigClient<tonic::transport::Channel>, Status> {
        Ok(ConfigClient::new(self.pool.channel(addr).map_err(Status::unavailable)?)
            .max_decoding_message_size(esf_client::MAX_RESPONSE_BYTES))
    }

    fn lease_client(&self, addr: &str) -> Result<LeaseClient<tonic::transport::Channel>, Status> {
        Ok(LeaseClient::new(self.pool.channel(addr).map_err(Status::unavailable)?)
            .max_decoding_message_size(esf_client::MAX_RESPONSE_BYTES))
    }

    fn cluster_client(&self, addr: &str) -> Result<ClusterClient<tonic::transport::Channel>, Status> {
        Ok(
            ClusterClient::new(self.pool.channel(addr).map_err(Status::unavailable)?)
                .max_decoding_message_size(esf_client::MAX_RESPONSE_BYTES),
        )
    }

    pub(crate) fn events_client(
        &self,
        addr: &str,
    ) -> Result<pb::events_client::EventsClient<tonic::transport::Channel>, Status> {
        Ok(
            pb::events_client::EventsClient::new(self.pool.channel(addr).map_err(Status::unavailable)?)
                .max_decoding_message_size(esf_client::MAX_RESPONSE_BYTES),
        )
    }

    pub(crate) fn subscriptions_client(
        &self,
        addr: &str,
    ) -> Result<pb::subscriptions_client::SubscriptionsClient<tonic::transport::Channel>, Status> {
        Ok(
            pb::subscriptions_client::SubscriptionsClient::new(self.pool.channel(addr).map_err(Status::unavailable)?)
                .max_decoding_message_size(esf_client::MAX_RESPONSE_BYTES),
        )
    }

    pub(crate) fn registry_client(&self, addr: &str) -> Result<RegistryClient<tonic::transport::Channel>, Status> {
        Ok(
            RegistryClient::new(self.pool.channel(addr).map_err(Status::unavailable)?)
                .max_decoding_message_size(esf_client::MAX_RESPONSE_BYTES),
        )
    }

    /// Starts a watch served by this node (see [`run_watch`]); `field`
    /// names the request in errors.
    pub(crate) fn start_watch(
        &self,
        field: &str,
        range: esf_raft::command::KeyRange,
        start_revision: u64,
        prev_kv: bool,
        progress_notify_ms: u64,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<Result<pb::WatchResponse, Status>>, Status> {
        let current = self.meta.store().revision();
        if start_revision > current + 1 {
            return Err(Status::out_of_range(format!(
                "{field}.start_revision: {start_revision} is in the future; the current revision is {current}"
            )));
        }
        // "From now" is now, when the call is answered, not when the
        // watch's task first runs: a change acknowledged after this call
        // returns is always delivered.
        let start_revision = if start_revision == 0 {
            current + 1
        } else {
            start_revision
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER_RESPONSES);
        let progress = (progress_notify_ms > 0).then(|| Duration::from_millis(progress_notify_ms));
        tokio::spawn(run_watch(
            self.meta.clone(),
            range,
            start_revision,
            prev_kv,
            progress,
            tx,
            self.stop.clone(),
        ));
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    pub(crate) async fn write(&self, cmd: Command) -> Result<(pb::ResponseHeader, OpResult), esf_raft::Error> {
        let (h, resp) = self.meta.write(cmd).await?;
        Ok((convert::header(h), resp.result))
    }
}

/// `esf.v1.Config`.
pub struct ConfigService(pub Ctx);

/// Forwards a request to the leader named by the error, or fails with it.
/// The answer to a forwarded meta request (config, lease, registry,
/// subscriptions) names the leader (`esf-leader-addr`), so esf-client
/// sends the next ones there directly; event requests go to their
/// partition's leader, which the client looks up itself.
macro_rules! forward_or {
    ($ctx:expr, $req:expr, $err:expr, $method:ident, $msg:expr) => {{ forward_or!($ctx, config_client, $req, $err, $method, $msg) }};
    ($ctx:expr, $client:ident, $req:expr, $err:expr, $method:ident, $msg:expr) => {{
        match $ctx.forward_target(&$req, &$err) {
            Some(addr) => {
                let mut c = $ctx.$client(&addr)?;
                let mut resp = c.$method(Ctx::forwarded($msg)).await.map_err(convert::peer_status)?;
                if stringify!($client) != "events_client" {
                    if let Ok(v) = addr.parse() {
                        resp.metadata_mut().insert(esf_client::LEADER_ADDR_METADATA, v);
                    }
                }
                return Ok(resp);
            }
            None => return Err(convert::status($err)),
        }
    }};
}
pub(crate) use forward_or;

type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;
type WatchSender = tokio::sync::mpsc::Sender<Result<pb::WatchResponse, Status>>;

/// One watch: catches up from `next` through the store's changes log, then
/// follows new revisions. Below the compaction revision it sends the current
/// state as a snapshot first. Responses go into a bounded channel; a watcher
/// that lets it fill up is cancelled with the revision to resume from.
async fn run_watch(
    meta: Arc<MetaGroup>,
    range: esf_raft::command::KeyRange,
    start: u64,
    prev_kv: bool,
    progress: Option<Duration>,
    tx: WatchSender,
    meta_stop: tokio::sync::watch::Receiver<bool>,
) {
    use esf_raft::command::Rejection;
    use esf_raft::meta::ReadError;
    let store = meta.store().clone();
    let mut revisions = store.subscribe_revision();
    let mut next = if start == 0 { store.revision() + 1 } else { start };
    // Every change up to this revision has been sent.
    let mut delivered = next - 1;
    let response = |revision: u64| pb::WatchResponse {
        header: Some(convert::header(meta.header(revision))),
        ..Default::default()
    };
    let cancel = |tx: &WatchSender, delivered: u64, why: &str| {
        let mut c = response(delivered);
        c.canceled = true;
        c.cancel_reason = format!("{why}; resume from revision {}", delivered + 1);
        let _ = tx.try_send(Ok(c));
    };
    // Sends `resp`, which completes revision `done`; false once the watcher
    // is cancelled (its buffer is full: the cancel names the first revision
    // it has not been sent).
    let offer = |tx: &WatchSender, resp: pb::WatchResponse, done: u64, delivered: &mut u64| -> bool {
        // Keep the last slot for the cancel response.
        if tx.capacity() <= 1 {
            cancel(
                tx,
                *delivered,
                &format!("watcher too slow: {WATCH_BUFFER_RESPONSES} responses not yet received"),
            );
            return false;
        }
        if tx.try_send(Ok(resp)).is_err() {
            return false;
        }
        *delivered = done;
        true
    };
    let mut stop = meta_stop.clone();
    loop {
        let current = store.revision();
        if next <= current {
            match store.events(&range, next, current, prev_kv) {
                Ok((events, upto)) => {
                    let chunks: Vec<&[esf_raft::meta::WatchEvent]> =
                        events.chunks(WATCH_MAX_EVENTS_PER_RESPONSE).collect();
                    for (i, chunk) in chunks.iter().enumerate() {
                        let last = i + 1 == chunks.len();
                        // A revision split across responses is complete only
                        // in the response with its last event.
                        let done = if last {
                            upto
                        } else {
                            let r = chunk.last().map_or(upto, |e| e.revision);
                            if chunks[i + 1].first().map(|e| e.revision) == Some(r) {
                                r - 1
                            } else {
                                r
                            }
                        };
                        let mut resp = response(done);
                        resp.events = chunk.iter().map(convert::event).collect();
                        if !offer(&tx, resp, done, &mut delivered) {
                            return;
                        }
                    }
                    next = upto + 1;
                }
                Err(ReadError::Rejected(Rejection::Compacted { .. })) => {
                    let req = esf_raft::command::RangeRequest {
                        range: range.clone(),
                        revision: 0,
                        limit: 0,
                        count_only: false,
                        keys_only: false,
                    };
                    match store.range(&req) {
                        Ok((res, rev)) => {
                            let mut resp = response(rev);
                            resp.snapshot = true;
                            resp.events = res
                                .kvs
                                .into_iter()
                                .map(|kv| pb::Event {
                                    r#type: pb::event::EventType::Put as i32,
                                    kv: Some(convert::kv(kv)),
                                    prev_kv: None,
                                })
                                .collect();
                            if !offer(&tx, resp, rev, &mut delivered) {
                                return;
                            }
                            next = rev + 1;
                        }
                        Err(e) => {
                            let _ = tx.try_send(Err(Status::internal(format!("watch snapshot: {e}"))));
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.try_send(Err(Status::internal(format!("watch: {e}"))));
                    return;
                }
            }
            continue;
        }
        let idle = tokio::time::sleep(progress.unwrap_or(Duration::from_secs(86_400)));
        tokio::select! {
            r = revisions.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = idle, if progress.is_some() => {
                let mut resp = response(next - 1);
                resp.progress = true;
                if !offer(&tx, resp, next - 1, &mut delivered) {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => {
                cancel(&tx, delivered, "this node is shutting down");
                return;
            }
            _ = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl pb::config_server::Config for ConfigService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let msg = req.into_inner();
        let range = convert::range("watch.range", msg.range)?;
        let rx = self
            .0
            .start_watch("watch", range, msg.start_revision, msg.prev_kv, msg.progress_notify_ms)?;
        Ok(Response::new(Box::pin(rx)))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let msg = req.get_ref().clone();
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::Put(convert::put("put", msg.clone())?),
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Put { prev_kv })) => Ok(Response::new(pb::PutResponse {
                header: Some(h),
                prev_kv: prev_kv.map(convert::kv),
            })),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, req, e, put, msg),
        }
    }

    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = convert::range_request("range", msg.clone())?;
        let c = if msg.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        match self.0.meta.range(&r, c).await {
            Ok((h, res)) => Ok(Response::new(convert::range_result(Some(convert::header(h)), res))),
            Err(e) => forward_or!(self.0, req, e, range, msg),
        }
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let msg = req.get_ref().clone();
        let d = convert::delete("delete", msg.clone())?;
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::Delete(d),
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Delete { deleted, prev_kvs })) => Ok(Response::new(pb::DeleteResponse {
                header: Some(h),
                deleted,
                prev_kvs: prev_kvs.into_iter().map(convert::kv).collect(),
            })),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, req, e, delete, msg),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let msg = req.get_ref().clone();
        let t = convert::txn(msg.clone())?;
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::Txn(t),
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Txn { succeeded, results })) => {
                Ok(Response::new(convert::txn_result(h, succeeded, results)))
            }
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, req, e, txn, msg),
        }
    }

    async fn history(&self, req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let msg = req.get_ref().clone();
        convert::user_key("history.key", &msg.key)?;
        let c = if msg.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        match self
            .0
            .meta
            .history(&msg.key, msg.from_revision, msg.to_revision, c)
            .await
        {
            Ok((h, kvs)) => Ok(Response::new(pb::HistoryResponse {
                header: Some(convert::header(h)),
                versions: kvs.into_iter().map(convert::kv).collect(),
            })),
            Err(e) => forward_or!(self.0, req, e, history, msg),
        }
    }

    async fn compact(&self, req: Request<pb::CompactRequest>) -> Result<Response<pb::CompactResponse>, Status> {
        let msg = req.get_ref().clone();
        // The audit relay records its cursor at most every 500 ms: give it
        // that long to pass the revision before the state machine refuses.
        crate::audit::wait_relayed(&self.0.meta, msg.revision).await;
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::Compact { revision: msg.revision },
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Compacted { compact_revision })) => Ok(Response::new(pb::CompactResponse {
                header: Some(h),
                compact_revision,
            })),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, req, e, compact, msg),
        }
    }
}

/// `esf.v1.Lease`.
pub struct LeaseService(pub Ctx);

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn grant(&self, req: Request<pb::LeaseGrantRequest>) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let msg = req.get_ref().clone();
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::LeaseGrant {
                id: msg.id,
                ttl_secs: msg.ttl_secs,
            },
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::LeaseGranted { id, ttl_secs })) => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(h),
                id,
                ttl_secs,
            })),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, lease_client, req, e, grant, msg),
        }
    }

    async fn revoke(&self, req: Request<pb::LeaseRevokeRequest>) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let msg = req.get_ref().clone();
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::LeaseRevoke {
                id: msg.id,
                expired: false,
            },
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::LeaseRevoked { deleted_keys })) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(h),
                deleted_keys,
            })),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, lease_client, req, e, revoke, msg),
        }
    }

    async fn keep_alive(
        &self,
        req: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let msg = req.get_ref().clone();
        if msg.id == 0 {
            return Err(Status::invalid_argument("lease.id: must not be 0"));
        }
        match self.0.meta.lease_keepalive(msg.id).await {
            Ok((h, ttl)) => Ok(Response::new(pb::LeaseKeepAliveResponse {
                header: Some(convert::header(h)),
                id: msg.id,
                ttl_secs: ttl.as_secs(),
            })),
            Err(e) => forward_or!(self.0, lease_client, req, e, keep_alive, msg),
        }
    }

    type KeepAliveStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn keep_alive_stream(
        &self,
        req: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStreamStream>, Status> {
        use futures::StreamExt;
        // Only the leader counts down; the error names it so the client
        // reopens there.
        if !self.0.meta.raft().is_leader() {
            return Err(convert::status(self.0.meta.not_leader_error()));
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
                        return Err(Status::invalid_argument("lease.id: must not be 0"));
                    }
                    match meta.lease_keepalive(r.id).await {
                        Ok((h, ttl)) => Ok(pb::LeaseKeepAliveResponse {
                            header: Some(convert::header(h)),
                            id: r.id,
                            ttl_secs: ttl.as_secs(),
                        }),
                        Err(esf_raft::Error::Rejected(esf_raft::command::Rejection::LeaseNotFound(_))) => {
                            Ok(pb::LeaseKeepAliveResponse {
                                header: Some(convert::header(meta.header(meta.store().revision()))),
                                id: r.id,
                                ttl_secs: 0,
                            })
                        }
                        Err(e) => Err(convert::status(e)),
                    }
                }
            });
        Ok(Response::new(Box::pin(out)))
    }

    async fn time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let msg = req.get_ref().clone();
        if msg.id == 0 {
            return Err(Status::invalid_argument("lease.id: must not be 0"));
        }
        // Only the leader counts down; a follower forwards.
        if !self.0.meta.raft().is_leader() {
            let e = self.0.meta.not_leader_error();
            forward_or!(self.0, lease_client, req, e, time_to_live, msg);
        }
        let lease = self
            .0
            .meta
            .store()
            .lease(msg.id)
            .map_err(|e| Status::internal(e.to_string()))?;
        let Some((rec, keys)) = lease else {
            return Err(convert::status(esf_raft::Error::Rejected(
                esf_raft::command::Rejection::LeaseNotFound(msg.id),
            )));
        };
        let remaining = self
            .0
            .meta
            .lease_remaining(msg.id)
            .unwrap_or(std::time::Duration::from_secs(rec.ttl_secs));
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(convert::header(self.0.meta.header(self.0.meta.store().revision()))),
            id: msg.id,
            granted_ttl_secs: rec.ttl_secs,
            remaining_ms: remaining.as_millis() as u64,
            // Registry instances bound to the lease are not config keys.
            keys: if msg.keys {
                keys.into_iter()
                    .filter(|k| k.first() != Some(&convert::RESERVED_KEY_BYTE))
                    .collect()
            } else {
                Vec::new()
            },
        }))
    }
}

/// `esf.v1.Cluster`.
pub struct ClusterService(pub Ctx);

impl ClusterService {
    /// Whether node `id` is in the meta membership (voter or learner) as
    /// this node knows it.
    fn is_member(&self, id: u64) -> bool {
        self.0
            .meta
            .raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    fn members_response(&self) -> pb::MembersResponse {
        let m = self.0.meta.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                holds_data: self.0.meta.store().member_replicated(*id).unwrap_or(false),
            })
            .collect();
        let leader = m.current_leader.unwrap_or(0);
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        pb::MembersResponse {
            header: Some(convert::header(self.0.meta.header(self.0.meta.store().revision()))),
            members,
            leader_id: leader,
            leader_addr,
        }
    }

    fn raft_err<E: std::fmt::Display>(e: E) -> Status {
        let msg = e.to_string();
        if msg.contains("forward") || msg.contains("ForwardToLeader") {
            Status::unavailable(msg)
        } else {
            Status::failed_precondition(msg)
        }
    }
}

macro_rules! leader_only {
    ($svc:expr, $req:expr, $method:ident) => {{
        if !$svc.0.meta.raft().is_leader() {
            let e = $svc.0.meta.not_leader_error();
            return match $svc.0.forward_target(&$req, &e) {
                Some(addr) => $svc
                    .0
                    .cluster_client(&addr)?
                    .$method(Ctx::forwarded($req.into_inner()))
                    .await
                    .map_err(convert::peer_status),
                None => Err(convert::status(e)),
            };
        }
    }};
}

/// The rows of partition `p` on its leader (this node), after a read-index
/// barrier: everything acknowledged before the call is in them.
async fn partition_rows(p: &esf_raft::events::PartitionGroup) -> Result<Vec<u8>, esf_raft::Error> {
    let g = p.group();
    p.linearize().await?;
    let store = p.store().clone();
    match tokio::task::spawn_blocking(move || store.snapshot_rows()).await {
        Ok(Ok((_, d))) => Ok(d),
        Ok(Err(e)) => Err(esf_raft::Error::Storage(e)),
        Err(e) => Err(esf_raft::Error::Unavailable(format!(
            "partition {g}: snapshot task: {e}"
        ))),
    }
}
/// Deadline of one chunk of a partition's rows fetched from another node.
const PARTITION_CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// The rows of partition `g` from its leader on another node (the leader
/// this node knows, then the planned replicas, following their hints), for
/// a snapshot served by a node that does not lead it.
async fn fetch_partition_rows(ctx: &Ctx, g: u32) -> Result<Vec<u8>, String> {
    let mut last = format!("partition {g}: no replica of it is known");
    let mut targets: std::collections::VecDeque<String> =
        crate::partitions::replica_addrs(&ctx.meta, &ctx.routes, g, &ctx.advertise).into();
    if let esf_raft::Error::NotLeader {
        leader_addr: Some(a), ..
    } = ctx.partitions[g as usize - 1].not_leader_error()
    {
        targets.push_front(a);
    }
    let mut tried = std::collections::BTreeSet::new();
    while let Some(addr) = targets.pop_front() {
        if addr == ctx.advertise || !tried.insert(addr.clone()) {
            continue;
        }
        let fetched = async {
            let mut c = ctx.cluster_client(&addr)?;
            let mut st = tokio::time::timeout(
                PARTITION_CHUNK_TIMEOUT,
                c.partition_snapshot(pb::PartitionSnapshotRequest { partition: g }),
            )
            .await
            .map_err(|_| Status::unavailable("no answer"))??
            .into_inner();
            let mut data = Vec::new();
            let mut announced = None;
            while let Some(chunk) = tokio::time::timeout(PARTITION_CHUNK_TIMEOUT, st.message())
                .await
                .map_err(|_| Status::unavailable("a chunk did not arrive in time"))??
            {
                data.extend_from_slice(&chunk.data);
                announced = Some(chunk.total_bytes);
                if data.len() as u64 > chunk.total_bytes {
                    return Err(Status::data_loss("more bytes than announced"));
                }
            }
            if announced.is_some_and(|t| t != data.len() as u64) {
                return Err(Status::data_loss("fewer bytes than announced"));
            }
            Ok::<_, Status>(data)
        };
        match fetched.await {
            Ok(d) => return Ok(d),
            Err(s) => {
                if let Some(hint) = s
                    .metadata()
                    .get(esf_client::LEADER_ADDR_METADATA)
                    .and_then(|v| v.to_str().ok())
                {
                    targets.push_front(hint.to_string());
                }
                last = format!("partition {g} from {addr}: {}", s.message());
            }
        }
    }
    Err(last)
}

impl ClusterService {
    /// Before node `id` leaves meta: records a placement without it, then
    /// waits until no partition's leader counts it as a replica (its
    /// replicas moved to other nodes). Once out of meta the node may never
    /// learn it was removed, so it must be out of every partition first.
    async fn drain_partitions(&self, id: u64) -> Result<(), Status> {
        let count = self.0.partitions.len() as u32;
        let op = crate::partitions::plan_without(&self.0.meta, id, count, self.0.partition_replicas)
            .map_err(|e| Status::failed_precondition(format!("id: {e}")))?;
        self.0
            .meta
            .write(esf_raft::command::Command::new(op))
            .await
            .map_err(convert::status)?;
        let deadline = tokio::time::Instant::now() + crate::partitions::MOVE_WAIT_PER_CALL;
        loop {
            let still = self.partitions_on(id).await;
            if still.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "id: partitions {still:?} still have a replica on node {id}; the placement without it is recorded and its replicas are moving: retry to finish the removal"
                )));
            }
            // Polled: the replicas of every partition move independently,
            // on whichever node leads it; the loop ends at the deadline.
            tokio::time::sleep(crate::partitions::MOVE_POLL).await;
        }
    }

    /// Partitions whose leader (as the highest-term leader among the
    /// members' own reports) counts node `id` as a replica, or that have
    /// no reported leader.
    async fn partitions_on(&self, id: u64) -> Vec<u32> {
        let m = self.0.meta.raft().metrics().borrow_watched().clone();
        let me = self.0.meta.node_id();
        let mut reports: Vec<pb::GroupStatus> = self
            .0
            .partitions
            .iter()
            .map(|p| crate::partitions::group_status(p.group(), p.raft()))
            .collect();
        let others: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(n, _)| **n != me)
            .map(|(_, node)| node.addr.clone())
            .collect();
        let asks = others.iter().map(|addr| async move {
            let mut c = self.0.cluster_client(addr).ok()?;
            let mut r = Request::new(pb::StatusRequest {});
            r.set_timeout(crate::partitions::STATUS_TIMEOUT);
            tokio::time::timeout(crate::partitions::STATUS_TIMEOUT, c.status(r))
                .await
                .ok()?
                .ok()
                .map(|s| s.into_inner().groups)
        });
        for groups in futures::future::join_all(asks).await.into_iter().flatten() {
            reports.extend(groups.into_iter().filter(|g| g.group != 0));
        }
        (1..=self.0.partitions.len() as u32)
            .filter(|g| {
                let leader = reports
                    .iter()
                    .filter(|r| r.group == *g && r.role == "leader")
                    .max_by_key(|r| r.term);
                match leader {
                    None => true,
                    Some(r) => r.voters.contains(&id) || r.learners.contains(&id),
                }
            })
            .collect()
    }

    /// Before adding node `id` at `addr`: it must answer, carry that id, and
    /// belong to no other cluster (a node of another cluster would refuse
    /// every append, and the add would only time out).
    async fn check_new_member(&self, id: u64, addr: &str) -> Result<(), Status> {
        let ours = self.0.cluster_id.read().expect("cluster id lock").clone();
        let ask = pb::HelloRequest {
            node_id: self.0.meta.node_id(),
            addr: self.0.advertise.clone(),
            cluster_id: ours.clone(),
            has_data: true,
        };
        let r = crate::server::hello_checked(&self.0.pool, addr, &ask)
            .await
            .map_err(|e| Status::unavailable(format!("addr: cannot reach a node at {addr}: {e}")))?;
        if !r.cluster_id.is_empty() && r.cluster_id != ours {
            return Err(Status::failed_precondition(format!(
                "addr: the node at {addr} belongs to cluster {}, not {ours}; start it with an empty data dir to join this one",
                r.cluster_id
            )));
        }
        if r.node_id != id {
            return Err(Status::invalid_argument(format!(
                "id: the node at {addr} has node id {}, not {id}",
                r.node_id
            )));
        }
        let ours = self.0.partitions.len() as u32;
        if r.partitions != ours {
            return Err(Status::failed_precondition(format!(
                "addr: the node at {addr} runs {} event partitions, this cluster {ours}; restart it with an empty data dir and --partitions {ours}",
                r.partitions
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn members(&self, _req: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        Ok(Response::new(self.members_response()))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let mut meta = crate::partitions::group_status(0, self.0.meta.raft());
        meta.held = true;
        let mut groups = vec![meta];
        let me = self.0.meta.node_id();
        groups.extend(self.0.partitions.iter().map(|p| pb::GroupStatus {
            planned: self.0.routes.planned(p.group()).unwrap_or_default(),
            held: crate::partitions::holds(me, p, &self.0.routes),
            ..crate::partitions::group_status(p.group(), p.raft())
        }));
        Ok(Response::new(pb::StatusResponse {
            header: Some(convert::header(self.0.meta.header(self.0.meta.store().revision()))),
            node_id: self.0.meta.node_id(),
            version: self.0.version.into(),
            cluster_id: self.0.cluster_id.read().expect("cluster id lock").clone(),
            groups,
            db_size_bytes: self.0.meta.store().db().approximate_size_bytes(),
            quota_alarm: self.0.meta.quota_exceeded(),
            quota_used_bytes: self.0.meta.quota_used(),
            quota_bytes: self.0.meta.quota_bytes(),
            advertise: self.0.advertise.clone(),
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            audit_relayed_revision: crate::audit::lag(&self.0.meta).0,
            audit_lag: crate::audit::lag(&self.0.meta).1,
        }))
    }

    async fn add_learner(&self, req: Request<pb::AddLearnerRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        leader_only!(self, req, add_learner);
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument("id: must not be 0"));
        }
        esf_client::parse_endpoint(&r.addr).map_err(|e| Status::invalid_argument(format!("addr: {e}")))?;
        self.check_new_member(r.id, &r.addr).await?;
        let member = self.is_member(r.id);
        // A node that left meta since `member remove` excluded it; one
        // still a member may be being removed, and keeps its exclusion.
        let readmit = if member {
            None
        } else {
            crate::partitions::readmit(&self.0.meta, r.id).map_err(Status::internal)?
        };
        if let Some(op) = readmit {
            self.0
                .meta
                .write(esf_raft::command::Command::new(op))
                .await
                .map_err(convert::status)?;
        }
        let fut = self.0.meta.raft().add_learner(r.id, BasicNode { addr: r.addr }, true);
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut)
            .await
            .map_err(|_| Status::unavailable(format!("learner not caught up within {MEMBERSHIP_TIMEOUT:?}")))?
            .map_err(Self::raft_err)?;
        Ok(Response::new(self.members_response()))
    }

    async fn promote(&self, req: Request<pb::PromoteRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        leader_only!(self, req, promote);
        let id = req.into_inner().id;
        let m = self.0.meta.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!(
                "id: node {id} is not a member; add it as a learner first"
            )));
        }
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        voters.insert(id);
        let fut = self.0.meta.raft().change_membership(voters, false);
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut)
            .await
            .map_err(|_| Status::unavailable("membership change timed out"))?
            .map_err(Self::raft_err)?;
        Ok(Response::new(self.members_response()))
    }

    async fn remove(&self, req: Request<pb::RemoveRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        leader_only!(self, req, remove);
        let id = req.into_inner().id;
        let m = self.0.meta.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("id: node {id} is not a member")));
        }
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) && voters.len() == 1 {
            return Err(Status::failed_precondition("id: cannot remove the last voter"));
        }
        self.drain_partitions(id).await?;
        if voters.remove(&id) {
            let fut = self.0.meta.raft().change_membership(voters, false);
            tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut)
                .await
                .map_err(|_| Status::unavailable("membership change timed out"))?
                .map_err(Self::raft_err)?;
        }
        let still_there = self.is_member(id);
        if still_there {
            let fut = self
                .0
                .meta
                .raft()
                .change_membership(esf_raft::openraft::ChangeMembers::RemoveNodes([id].into()), false);
            tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut)
                .await
                .map_err(|_| Status::unavailable("membership change timed out"))?
                .map_err(Self::raft_err)?;
        }
        Ok(Response::new(self.members_response()))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        leader_only!(self, req, transfer_leader);
        let to = req.into_inner().to;
        let m = self.0.meta.raft().metrics().borrow_watched().clone();
        let me = self.0.meta.node_id();
        let target = if to == 0 {
            m.membership_config
                .membership()
                .voter_ids()
                .find(|v| *v != me)
                .ok_or_else(|| Status::failed_precondition("to: no other voter"))?
        } else {
            if !m.membership_config.membership().voter_ids().any(|v| v == to) {
                return Err(Status::invalid_argument(format!("to: node {to} is not a voter")));
            }
            to
        };
        if target != me {
            self.0
                .meta
                .raft()
                .trigger()
                .transfer_leader(target)
                .await
                .map_err(Self::raft_err)?;
            let mut rx = self.0.meta.raft().metrics();
            let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
            loop {
                let cur = rx.borrow_watched().current_leader;
                if cur.is_some() && cur != Some(me) {
                    break;
                }
                if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                    return Err(Status::unavailable("leadership did not move within the deadline"));
                }
            }
        }
        let leader = self
            .0
            .meta
            .raft()
            .metrics()
            .borrow_watched()
            .current_leader
            .unwrap_or(0);
        Ok(Response::new(pb::TransferLeaderResponse {
            header: Some(convert::header(self.0.meta.header(self.0.meta.store().revision()))),
            leader_id: leader,
        }))
    }

    type SnapshotStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;
    type PartitionSnapshotStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn snapshot(&self, _req: Request<pb::BackupRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        // Every write acknowledged before this call is applied here after
        // the barrier (and a follower answers with the leader hint).
        self.0.meta.linearize().await.map_err(convert::status)?;
        let permit = SNAPSHOTS_IN_PROGRESS.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("a snapshot is already being served by this node; try again after it")
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(crate::snapshot::CHUNKS_IN_FLIGHT);
        let store = self.0.meta.store().clone();
        let partitions = self.0.partitions.clone();
        let ctx = self.0.clone();
        let cluster_id = self.0.cluster_id.read().expect("cluster id lock").clone();
        let node_id = self.0.meta.node_id();
        let version = self.0.version;
        tokio::spawn(async move {
            let _permit = permit;
            let fail = |tx: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Status>>, m: String| {
                let _ = tx.try_send(Err(Status::internal(m)));
            };
            // The rows are read under one RocksDB snapshot per group, off
            // the runtime.
            let built = tokio::task::spawn_blocking(move || store.snapshot_rows()).await;
            let (st, blob) = match built {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return fail(&tx, format!("snapshot: {e}")),
                Err(e) => return fail(&tx, format!("snapshot task: {e}")),
            };
            let mut sections = vec![(
                crate::snapshot::GroupSection {
                    group: esf_raft::group::META_GROUP,
                    kind: "meta".into(),
                    bytes: blob.len() as u64,
                },
                blob,
            )];
            for p in partitions.iter() {
                let built = if p.raft().is_leader() {
                    partition_rows(p)
                        .await
                        .map_err(|e| format!("partition {}: {e}", p.group()))
                } else {
                    fetch_partition_rows(&ctx, p.group()).await
                };
                let data = match built {
                    Ok(d) => d,
                    Err(e) => return fail(&tx, format!("snapshot: {e}")),
                };
                sections.push((
                    crate::snapshot::GroupSection {
                        group: p.group(),
                        kind: "partition".into(),
                        bytes: data.len() as u64,
                    },
                    data,
                ));
            }
            let header = crate::snapshot::Header {
                cluster_id,
                node_id,
                esf_version: version.to_string(),
                created_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                groups: sections.iter().map(|(g, _)| g.clone()).collect(),
            };
            let head = crate::snapshot::encode_head(&header);
            let total_bytes = (head.len() + sections.iter().map(|(_, d)| d.len()).sum::<usize>()) as u64;
            tracing::info!(bytes = total_bytes, revision = st.revision, last_applied = ?st.last_applied, "serving a snapshot");
            let pieces = std::iter::once(head.as_slice()).chain(
                sections
                    .iter()
                    .flat_map(|(_, d)| d.chunks(crate::snapshot::CHUNK_BYTES)),
            );
            for data in pieces {
                let chunk = pb::BackupChunk {
                    total_bytes,
                    data: data.to_vec(),
                };
                // Bounded: a slow reader holds at most CHUNKS_IN_FLIGHT copies.
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn consistency(
        &self,
        _req: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyResponse>, Status> {
        let mut hashes = Vec::new();
        let store = self.0.meta.store().clone();
        let meta = tokio::task::spawn_blocking(move || store.snapshot_rows())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        hashes.push(pb::GroupHash {
            group: esf_raft::group::META_GROUP,
            applied_index: meta.0.last_applied.as_ref().map_or(0, |l| l.index),
            hash: crate::observer::fingerprint(&meta.1),
        });
        let me = self.0.meta.node_id();
        // Only the replicas this node holds: a replica moved away keeps its
        // old rows and applied index, and is no longer a replica to compare.
        for p in self
            .0
            .partitions
            .iter()
            .filter(|p| crate::partitions::holds(me, p, &self.0.routes))
        {
            let store = p.store().clone();
            let (st, rows) = tokio::task::spawn_blocking(move || store.replicated_rows())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?;
            hashes.push(pb::GroupHash {
                group: p.group(),
                applied_index: st.last_applied.as_ref().map_or(0, |l| l.index),
                hash: crate::observer::fingerprint(&rows),
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
            header: Some(convert::header(self.0.meta.header(self.0.meta.store().revision()))),
            node_id: self.0.meta.node_id(),
            hashes,
            leaders,
        }))
    }

    async fn partition_snapshot(
        &self,
        req: Request<pb::PartitionSnapshotRequest>,
    ) -> Result<Response<Self::PartitionSnapshotStream>, Status> {
        let g = req.into_inner().partition;
        let n = self.0.partitions.len();
        if g == 0 || g as usize > n {
            return Err(Status::invalid_argument(format!(
                "partition: {g} does not exist (1 to {n})"
            )));
        }
        let p = self.0.partitions[g as usize - 1].clone();
        // Only the leader has everything acknowledged; others answer with
        // its address.
        let data = partition_rows(&p).await.map_err(convert::status)?;
        let total_bytes = data.len() as u64;
        let (tx, rx) = tokio::sync::mpsc::channel(crate::snapshot::CHUNKS_IN_FLIGHT);
        tokio::spawn(async move {
            for piece in data.chunks(crate::snapshot::CHUNK_BYTES) {
                let chunk = pb::BackupChunk {
                    total_bytes,
                    data: piece.to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
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
            .map_err(|e| Status::internal(e.to_string()))?;
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
            cluster_id: self.0.cluster_id.read().expect("cluster id lock").clone(),
            initialized,
            asker_is_member,
            is_leader,
            leader_addr,
            committed_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            partitions: self.0.partitions.len() as u32,
        }))
    }
}
