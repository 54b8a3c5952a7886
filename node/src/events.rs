//! `esf.v1.Events`: the event store over the node's partitions.
//!
//! A stream lives in partition `partition_of(stream)`. Appends, deletes and
//! linearizable reads go to that partition's leader (forwarded once, like
//! config writes); serializable reads and subscriptions are served from this
//! node's replicas. A partition this node holds no replica of is served by
//! one that does: requests are forwarded (following the leader hint of a
//! replica that is not the leader), and a subscription follows it through a
//! subscription to that replica, resumed on another one if it breaks.
//! Response headers carry the partition's next offset as `revision`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use esf_client::{pb, uuid};
use esf_raft::command::{AppendRequest, Command, ExpectedVersion, NewEvent, Op, OpResult};
use esf_raft::events::store::{Direction, EventRecord};
use esf_raft::events::{MAX_APPEND_EVENTS, PartitionGroup};
use tonic::{Request, Response, Status};

use crate::convert::{self, consistency, invalid};
use crate::partitions::partition_of;
use crate::service::{Ctx, forward_or};

/// Most events in one read or subscription response.
pub const MAX_EVENTS_PER_RESPONSE: usize = MAX_APPEND_EVENTS;
/// Responses queued for one subscriber. When they are not taken, the
/// subscription's feeds wait (the events stay in the store), so a slow or
/// catching-up subscriber holds at most this many responses in memory.
pub const SUBSCRIBE_BUFFER_RESPONSES: usize = 16;
/// Most event bytes in one subscription response (with
/// [`SUBSCRIBE_BUFFER_RESPONSES`]: at most 16 MiB queued per subscriber).
pub const SUBSCRIBE_RESPONSE_BYTES: usize = 1 << 20;
/// Deadline of one request forwarded to another replica (and of opening a
/// subscription there).
pub const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often an idle subscription feed checks that this node still holds
/// its partition.
pub const HOLD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// Pause before a broken subscription to another replica is reopened.
pub const RESUBSCRIBE_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

fn expected(field: &str, e: Option<pb::ExpectedVersion>) -> Result<ExpectedVersion, Status> {
    use pb::expected_version::Kind;
    Ok(match e.and_then(|e| e.kind) {
        None | Some(Kind::Any(_)) => ExpectedVersion::Any,
        Some(Kind::NoStream(true)) => ExpectedVersion::NoStream,
        Some(Kind::Exists(true)) => ExpectedVersion::Exists,
        Some(Kind::Exact(v)) => ExpectedVersion::Exact(v),
        Some(Kind::NoStream(false) | Kind::Exists(false)) => {
            return Err(invalid(field, "no_stream and exists must be true when set"));
        }
    })
}

/// Refuses a client's write to a stream starting with `$`: those belong to
/// ESF (the audit trail, [`crate::audit::STREAM`]).
fn reserved(field: &str, stream: &str) -> Result<(), Status> {
    if stream.starts_with('$') {
        return Err(invalid(
            field,
            format!(
                "{stream:?}: streams starting with \"$\" are written by ESF only (the audit trail is {:?})",
                crate::audit::STREAM
            ),
        ));
    }
    Ok(())
}

/// A stored event to proto.
pub fn recorded(partition: u32, e: EventRecord) -> pb::RecordedEvent {
    pb::RecordedEvent {
        id: uuid::format(&e.id),
        stream: e.stream,
        r#type: e.event_type,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        timestamp_ms: e.timestamp_ms,
        data: e.data,
        metadata: e.metadata.into_iter().collect(),
        partition,
        offset: e.offset,
        version: e.version,
    }
}

fn limit(n: u32) -> usize {
    if n == 0 {
        MAX_EVENTS_PER_RESPONSE
    } else {
        (n as usize).min(MAX_EVENTS_PER_RESPONSE)
    }
}

/// `esf.v1.Events`.
pub struct EventsService(pub Ctx);

impl EventsService {
    /// Refuses events on a node whose partition count is not the cluster's
    /// (streams would route to other partitions than on the other nodes).
    fn check_count(&self) -> Result<(), Status> {
        let local = self.0.partitions.len() as u32;
        let recorded = match self.0.recorded_partitions.get() {
            Some(c) => Some(*c),
            None => crate::partitions::recorded_partitions(&self.0.meta)
                .map(|c| *self.0.recorded_partitions.get_or_init(|| c)),
        };
        match recorded {
            Some(cluster) if cluster != local => Err(Status::failed_precondition(format!(
                "partitions: this node runs {local} event partitions but the cluster has {cluster}; restart it with an empty data dir and --partitions {cluster}"
            ))),
            _ => Ok(()),
        }
    }

    fn partition_of(&self, stream: &str) -> &Arc<PartitionGroup> {
        let p = partition_of(stream, self.0.partitions.len() as u32);
        &self.0.partitions[p as usize - 1]
    }

    fn partition(&self, field: &str, p: u32) -> Result<&Arc<PartitionGroup>, Status> {
        let n = self.0.partitions.len();
        if p == 0 || p as usize > n {
            return Err(invalid(field, format!("partition {p} does not exist (1 to {n})")));
        }
        Ok(&self.0.partitions[p as usize - 1])
    }

    fn header(&self, p: &PartitionGroup) -> Option<pb::ResponseHeader> {
        Some(convert::header(self.0.meta.header(p.store().next_offset())))
    }

    /// Whether this node serves partition `p` from its own replica.
    fn held(&self, p: &PartitionGroup) -> bool {
        crate::partitions::holds(self.0.meta.node_id(), p, &self.0.routes)
    }

    /// Partition `p`'s next offset, linearizable: every append
    /// acknowledged before the call is below it (from a one-event read at
    /// the partition's leader, whose header carries it).
    pub(crate) async fn partition_end(&self, p: u32) -> Result<u64, Status> {
        use pb::events_server::Events;
        let r = self
            .read_partition(Request::new(pb::ReadPartitionRequest {
                partition: p,
                from_offset: 0,
                limit: 1,
                serializable: false,
            }))
            .await?;
        Ok(r.into_inner().header.map_or(0, |h| h.revision))
    }

    /// Partition `p`'s page of query `q` (`msg` as asked): from this node's
    /// replica, else (or if it cannot answer, e.g. a linearizable query on
    /// a follower) from a replica elsewhere, asked for `p` alone.
    async fn query_partition(
        &self,
        forwarded: bool,
        msg: &pb::QueryEventsRequest,
        q: &crate::query::Query,
        p: u32,
    ) -> Result<PartitionPage, Status> {
        let group = &self.0.partitions[p as usize - 1];
        let page = |(events, more, stats): LocalPage| {
            let last = stats.last.map(|(ts, off)| (ts, p, off));
            let index = stats.index.map_or_else(String::new, |i| i.name(&q.filter));
            (crate::query::Page { events, more, last }, stats, index)
        };
        if self.held(group) {
            let from = crate::query::bound(q, p);
            match self.local_page(group, q, from, consistency(msg.serializable)).await {
                Ok(local) => return Ok(page(local)),
                Err(e) if forwarded => return Err(convert::status(e)),
                // A follower read: the leader confirms a read index, this
                // replica waits until it applied it and answers from its
                // own state (no events travel). Else: asked of a replica.
                Err(e) => {
                    if let Some(addr) = Ctx::leader_addr(&e).filter(|a| *a != self.0.advertise) {
                        if self.follower_read_ready(group, &addr).await.is_ok() {
                            let serial = esf_raft::group::Consistency::Serializable;
                            if let Ok(local) = self.local_page(group, q, from, serial).await {
                                return Ok(page(local));
                            }
                        }
                    }
                }
            }
        }
        self.remote_page(forwarded, msg, q, p).await
    }

    /// Waits until this replica of `group` has applied the read index its
    /// leader at `addr` confirms now (within [`FORWARD_TIMEOUT`]).
    async fn follower_read_ready(&self, group: &PartitionGroup, addr: &str) -> Result<(), Status> {
        let mut client = self.0.events_client(addr)?;
        let mut req = Ctx::forwarded(pb::ReadIndexRequest {
            partition: group.group(),
        });
        req.set_timeout(FORWARD_TIMEOUT);
        let index = match tokio::time::timeout(FORWARD_TIMEOUT, client.read_index(req)).await {
            Ok(Ok(r)) => r.into_inner().index,
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "{addr}: no read index within {FORWARD_TIMEOUT:?}"
                )));
            }
        };
        group.wait_applied(index).await.map_err(convert::status)
    }

    /// This replica's page of `q` in `group` from `from`.
    async fn local_page(
        &self,
        group: &PartitionGroup,
        q: &crate::query::Query,
        from: esf_raft::events::query::Bound,
        c: esf_raft::group::Consistency,
    ) -> Result<LocalPage, esf_raft::Error> {
        let p = group.group();
        if q.filter.index_decides() {
            // Positions only: the merge keeps at most `limit` of the
            // partitions' candidates, and only those are loaded.
            group
                .query_positions(&q.filter, from, q.descending, q.limit, c)
                .await
                .map(|(at, more, stats)| {
                    let events = at
                        .into_iter()
                        .map(|(ts, offset)| crate::query::unloaded(p, ts, offset))
                        .collect();
                    (events, more, stats)
                })
        } else {
            group
                .query(&q.filter, from, q.descending, q.limit, c)
                .await
                .map(|(events, more, stats)| (events.into_iter().map(|e| recorded(p, e)).collect(), more, stats))
        }
    }

    /// Partition `p`'s page of `q` from a replica on another node.
    async fn remote_page(
        &self,
        forwarded: bool,
        msg: &pb::QueryEventsRequest,
        q: &crate::query::Query,
        p: u32,
    ) -> Result<PartitionPage, Status> {
        let sub = pb::QueryEventsRequest {
            partitions: vec![p],
            explain: true,
            ..msg.clone()
        };
        // The cursor's fingerprint covers the partitions: the replica gets
        // the position, as a cursor of the one-partition query.
        let sub = match q.after {
            Some(at) => {
                let one = crate::query::parse(&pb::QueryEventsRequest {
                    cursor: String::new(),
                    ..sub.clone()
                })?;
                pb::QueryEventsRequest {
                    cursor: crate::query::encode_cursor(one.fingerprint, at),
                    ..sub
                }
            }
            None => sub,
        };
        let r = self
            .on_replica(forwarded, p, sub, |mut c, r| async move { c.query(r).await })
            .await?
            .into_inner();
        let ex = r.explain.unwrap_or_default();
        Ok((
            crate::query::Page {
                events: r.events,
                more: !r.cursor.is_empty(),
                last: crate::query::cursor_position(&r.cursor),
            },
            esf_raft::events::query::QueryStats {
                rows_examined: ex.rows_examined,
                events_loaded: ex.events_loaded,
                last: None,
                index: None,
            },
            ex.index,
        ))
    }

    /// Runs `call` against a replica of partition `p` on another node:
    /// the one that last answered, else the planned replicas in turn,
    /// following a replica's leader hint. A request that was forwarded here
    /// already is not forwarded again: it is refused with a hint.
    async fn on_replica<Req, Resp, F, Fut>(
        &self,
        forwarded: bool,
        p: u32,
        msg: Req,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        F: Fn(pb::events_client::EventsClient<tonic::transport::Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut targets: std::collections::VecDeque<String> =
            crate::partitions::replica_addrs(&self.0.meta, &self.0.routes, p, &self.0.advertise).into();
        if forwarded {
            let mut s = Status::unavailable(format!("partition {p}: this node holds no replica of it"));
            if let Some(v) = targets.front().and_then(|a| a.parse().ok()) {
                s.metadata_mut().insert(esf_client::LEADER_ADDR_METADATA, v);
            }
            return Err(s);
        }
        let mut tried = std::collections::BTreeSet::new();
        let mut last = Status::unavailable(format!("partition {p}: no replica of it is known"));
        while let Some(addr) = targets.pop_front() {
            if addr == self.0.advertise || !tried.insert(addr.clone()) {
                continue;
            }
            let client = match self.0.events_client(&addr) {
                Ok(c) => c,
                Err(s) => {
                    last = s;
                    continue;
                }
            };
            let mut r = Ctx::forwarded(msg.clone());
            r.set_timeout(FORWARD_TIMEOUT);
            match tokio::time::timeout(FORWARD_TIMEOUT, async {
                call(client, r).await.map_err(convert::peer_status)
            })
            .await
            {
                Ok(Ok(resp)) => {
                    self.0.routes.learn(p, &addr);
                    return Ok(resp);
                }
                Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                    if let Some(hint) = s
                        .metadata()
                        .get(esf_client::LEADER_ADDR_METADATA)
                        .and_then(|v| v.to_str().ok())
                    {
                        targets.push_front(hint.to_string());
                    }
                    last = s;
                }
                // A real answer: refused, not found, conflict.
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    last = Status::unavailable(format!(
                        "partition {p}: {addr} did not answer within {FORWARD_TIMEOUT:?}"
                    ))
                }
            }
        }
        self.0.routes.forget(p);
        Err(last)
    }
}

impl EventsService {
    /// Appends `msg` (any stream, reserved ones too: callers check);
    /// `forwarded`: it came from another node, so it is not forwarded again.
    pub(crate) async fn append_as(
        &self,
        mut msg: pb::AppendRequest,
        forwarded: bool,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        self.check_count()?;
        let expected = expected("append.expected", msg.expected)?;
        let mut events = Vec::with_capacity(msg.events.len());
        for (i, e) in msg.events.iter_mut().enumerate() {
            let id = if e.id.is_empty() {
                let id = uuid::new_v4();
                e.id = uuid::format(&id);
                id
            } else {
                uuid::parse(&e.id).map_err(|r| invalid(&format!("append.events[{i}].id"), r))?
            };
            if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&e.data) {
                return Err(invalid(
                    &format!("append.events[{i}].data"),
                    format!("is not valid JSON: {err}"),
                ));
            }
            events.push(NewEvent {
                id,
                event_type: e.r#type.clone(),
                correlation_id: e.correlation_id.clone(),
                causation_id: e.causation_id.clone(),
                data: e.data.clone(),
                metadata: e.metadata.clone().into_iter().collect(),
            });
        }
        let ids: Vec<String> = msg.events.iter().map(|e| e.id.clone()).collect();
        let p = self.partition_of(&msg.stream).clone();
        if !self.held(&p) {
            // Ids generated here travel with the request: a retry by the
            // replica's leader stays idempotent.
            return self
                .on_replica(forwarded, p.group(), msg, |mut c, r| async move { c.append(r).await })
                .await;
        }
        let cmd = Command::new(Op::Append(AppendRequest {
            stream: msg.stream.clone(),
            expected,
            timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            events,
        }));
        match p.write(cmd).await {
            Ok(resp) => match resp.result {
                OpResult::Appended {
                    first_offset,
                    first_version,
                    count,
                    duplicate,
                } => Ok(Response::new(pb::AppendResponse {
                    header: self.header(&p),
                    partition: p.group(),
                    first_offset,
                    first_version,
                    count,
                    duplicate,
                    ids,
                })),
                other => Err(Status::internal(format!("unexpected result {other:?}"))),
            },
            Err(e) => {
                let req = if forwarded {
                    Ctx::forwarded(msg.clone())
                } else {
                    Request::new(msg.clone())
                };
                forward_or!(self.0, events_client, req, e, append, msg)
            }
        }
    }
}

/// A meta put of one (reserved) key, no lease.
fn put_key(key: Vec<u8>, value: Vec<u8>) -> Op {
    Op::Put(esf_raft::command::PutRequest {
        key,
        value,
        lease: 0,
        prev_kv: false,
    })
}

/// A meta delete of one (reserved) key.
fn delete_key(key: Vec<u8>) -> Op {
    Op::Delete(esf_raft::command::DeleteRequest {
        range: esf_raft::command::KeyRange::Key(key),
        prev_kv: false,
    })
}

/// A partition's page of a query, what its scan did, and the index it read.
type PartitionPage = (crate::query::Page, esf_raft::events::query::QueryStats, String);

/// A partition's page of a query from a local replica: events (or
/// positions to load), whether more may follow, what the scan did.
type LocalPage = (Vec<pb::RecordedEvent>, bool, esf_raft::events::query::QueryStats);

type SubscribeStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;
type SubscribeSender = tokio::sync::mpsc::Sender<Result<pb::SubscribeResponse, Status>>;

/// State shared by the per-partition feeds of one subscription.
struct Feed {
    tx: SubscribeSender,
    /// Next offset to read per partition, as far as responses were queued.
    next: std::sync::Mutex<BTreeMap<u32, u64>>,
    canceled: AtomicBool,
    /// Partitions not yet caught up.
    catching_up: AtomicUsize,
    type_filter: String,
    stream_prefix: String,
    /// The node's stop signal: a feed waiting for room gives up at shutdown.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Feed {
    /// Queues `resp` (which brings partition `p` to `next`), waiting while
    /// the subscriber's buffer is full (one slot stays free for a cancel);
    /// false once the subscription is canceled or gone, or the node stops
    /// (then it is canceled).
    async fn offer(&self, p: u32, next: u64, mut resp: pb::SubscribeResponse) -> bool {
        if self.canceled.load(Ordering::SeqCst) {
            return false;
        }
        // Two free slots: one for this response, one kept for a cancel
        // (released when the second permit drops).
        let mut stop = self.stop.clone();
        let reserved = tokio::select! {
            r = self.tx.reserve_many(2) => r,
            _ = stop.wait_for(|s| *s) => {
                self.cancel("this node is shutting down");
                return false;
            }
        };
        let Ok(mut permits) = reserved else {
            return false;
        };
        if self.canceled.load(Ordering::SeqCst) {
            return false;
        }
        let permit = permits.next().expect("two permits reserved");
        let mut offsets = self.next.lock().expect("feed offsets lock");
        offsets.insert(p, next);
        resp.next_offsets = BTreeMap::from([(p, next)]).into_iter().collect();
        permit.send(Ok(resp));
        true
    }

    fn cancel_locked(&self, offsets: &BTreeMap<u32, u64>, why: &str) {
        if self.canceled.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.tx.try_send(Ok(pb::SubscribeResponse {
            canceled: true,
            cancel_reason: format!("{why}; resume from next_offsets"),
            next_offsets: offsets.clone().into_iter().collect(),
            ..Default::default()
        }));
    }

    fn cancel(&self, why: &str) {
        let offsets = self.next.lock().expect("feed offsets lock");
        self.cancel_locked(&offsets, why);
    }

    /// Partition `p` read up to its end (at `offset`): once every
    /// partition is, the subscriber is told. False once canceled.
    async fn partition_caught_up(&self, p: u32, offset: u64) -> bool {
        if self.catching_up.fetch_sub(1, Ordering::SeqCst) != 1 {
            return true;
        }
        self.offer(
            p,
            offset,
            pb::SubscribeResponse {
                caught_up: true,
                ..Default::default()
            },
        )
        .await
    }

    fn wanted(&self, e: &EventRecord) -> bool {
        // ESF's own streams only when the prefix asks for them.
        let system = e.stream.starts_with('$') && !self.stream_prefix.starts_with('$');
        !system
            && (self.type_filter.is_empty() || e.event_type == self.type_filter)
            && (self.stream_prefix.is_empty() || e.stream.starts_with(&self.stream_prefix))
    }
}

/// Reads partition `p` from `offset` on through this node's replica and
/// follows it live.
async fn feed_partition(ctx: Ctx, p: Arc<PartitionGroup>, mut offset: u64, feed: Arc<Feed>) {
    let mut stop = ctx.stop.clone();
    let store = p.store().clone();
    let group = p.group();
    let mut appended = store.subscribe();
    let mut caught_up = false;
    loop {
        // A replica that moved off this node stops growing: the subscriber
        // resumes elsewhere.
        if !crate::partitions::holds(ctx.meta.node_id(), &p, &ctx.routes) {
            return feed.cancel(&format!("partition {group} moved off this node"));
        }
        if offset < store.next_offset() {
            let read = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    store.read_partition_bytes(offset, MAX_EVENTS_PER_RESPONSE, SUBSCRIBE_RESPONSE_BYTES)
                })
                .await
            };
            let (events, next) = match read {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return feed.cancel(&format!("partition {group}: {e}")),
                Err(e) => return feed.cancel(&format!("partition {group}: read task: {e}")),
            };
            let events: Vec<pb::RecordedEvent> = events
                .into_iter()
                .filter(|e| feed.wanted(e))
                .map(|e| recorded(group, e))
                .collect();
            offset = next;
            if !feed
                .offer(
                    group,
                    offset,
                    pb::SubscribeResponse {
                        events,
                        ..Default::default()
                    },
                )
                .await
            {
                return;
            }
            continue;
        }
        if !caught_up {
            caught_up = true;
            if !feed.partition_caught_up(group, offset).await {
                return;
            }
        }
        tokio::select! {
            r = appended.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(HOLD_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return feed.cancel("this node is shutting down"),
            _ = feed.tx.closed() => return,
        }
    }
}

/// Opens a subscription to partition `p` on another node's replica, from
/// `from` (`None`: from its end). Returns the stream and its start offset.
async fn open_remote(
    ctx: &Ctx,
    p: u32,
    from: Option<u64>,
    type_filter: &str,
    stream_prefix: &str,
) -> Result<(tonic::Streaming<pb::SubscribeResponse>, u64), Status> {
    let mut last = Status::unavailable(format!("partition {p}: no replica of it is known"));
    for addr in crate::partitions::replica_addrs(&ctx.meta, &ctx.routes, p, &ctx.advertise) {
        let mut c = match ctx.events_client(&addr) {
            Ok(c) => c,
            Err(s) => {
                last = s;
                continue;
            }
        };
        let req = pb::SubscribeRequest {
            from_offsets: from.map(|o| [(p, o)].into_iter().collect()).unwrap_or_default(),
            from_now: from.is_none(),
            r#type: type_filter.to_string(),
            stream_prefix: stream_prefix.to_string(),
            partitions: vec![p],
        };
        let opened = tokio::time::timeout(FORWARD_TIMEOUT, async {
            let mut st = c.subscribe(Ctx::forwarded(req)).await?.into_inner();
            let first = st
                .message()
                .await?
                .ok_or_else(|| Status::unavailable(format!("partition {p}: {addr} closed the subscription")))?;
            let start = first
                .next_offsets
                .get(&p)
                .copied()
                .ok_or_else(|| Status::internal(format!("partition {p}: {addr} sent no start offset")))?;
            Ok::<_, Status>((st, start))
        })
        .await;
        match opened {
            Ok(Ok(x)) => {
                ctx.routes.learn(p, &addr);
                return Ok(x);
            }
            Ok(Err(s)) => last = s,
            Err(_) => {
                last = Status::unavailable(format!(
                    "partition {p}: {addr} did not open a subscription within {FORWARD_TIMEOUT:?}"
                ))
            }
        }
    }
    ctx.routes.forget(p);
    Err(last)
}

/// Failed attempts in a row to reopen a subscription to another replica
/// before the subscriber is canceled (it resumes elsewhere).
pub const REMOTE_REOPEN_ATTEMPTS: u32 = 25;

/// Follows partition `p` through a subscription to another node's replica
/// (`stream`, at `offset`), reopened from the last relayed offset on
/// another replica when it breaks.
async fn feed_remote(
    ctx: Ctx,
    p: u32,
    stream: tonic::Streaming<pb::SubscribeResponse>,
    mut offset: u64,
    feed: Arc<Feed>,
) {
    let mut stop = ctx.stop.clone();
    let mut stream = Some(stream);
    let mut caught_up = false;
    let mut failures = 0;
    loop {
        let mut st = match stream.take() {
            Some(st) => st,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
                    _ = stop.wait_for(|s| *s) => return feed.cancel("this node is shutting down"),
                    _ = feed.tx.closed() => return,
                }
                match open_remote(&ctx, p, Some(offset), &feed.type_filter, &feed.stream_prefix).await {
                    Ok((st, _)) => {
                        tracing::info!(partition = p, offset, "subscription followed on another replica");
                        st
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= REMOTE_REOPEN_ATTEMPTS {
                            return feed.cancel(&format!("partition {p}: no replica answers: {}", e.message()));
                        }
                        continue;
                    }
                }
            }
        };
        loop {
            let m = tokio::select! {
                m = st.message() => m,
                _ = stop.wait_for(|s| *s) => return feed.cancel("this node is shutting down"),
                _ = feed.tx.closed() => return,
            };
            match m {
                Ok(Some(resp)) if !resp.canceled => {
                    failures = 0;
                    if resp.caught_up {
                        if !caught_up {
                            caught_up = true;
                            if !feed.partition_caught_up(p, offset).await {
                                return;
                            }
                        }
                        continue;
                    }
                    offset = resp.next_offsets.get(&p).copied().unwrap_or(offset).max(offset);
                    let relayed = pb::SubscribeResponse {
                        events: resp.events,
                        ..Default::default()
                    };
                    if !feed.offer(p, offset, relayed).await {
                        return;
                    }
                }
                // Canceled, closed or broken: reopen from `offset`.
                _ => break,
            }
        }
    }
}

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type SubscribeStream = SubscribeStream;

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let forwarded = Ctx::is_forwarded(&req);
        if !forwarded {
            reserved("append.stream", &req.get_ref().stream)?;
        }
        self.append_as(req.into_inner(), forwarded).await
    }
    async fn get(&self, req: Request<pb::GetEventRequest>) -> Result<Response<pb::GetEventResponse>, Status> {
        self.check_count()?;
        let msg = req.get_ref().clone();
        let id = uuid::parse(&msg.id).map_err(|r| invalid("get.id", r))?;
        let candidates: Vec<Arc<PartitionGroup>> = if msg.partition != 0 {
            vec![self.partition("get.partition", msg.partition)?.clone()]
        } else if msg.stream.is_empty() {
            self.0.partitions.iter().cloned().collect()
        } else {
            vec![self.partition_of(&msg.stream).clone()]
        };
        for p in candidates {
            if !self.held(&p) {
                let ask = pb::GetEventRequest {
                    partition: p.group(),
                    ..msg.clone()
                };
                match self
                    .on_replica(Ctx::is_forwarded(&req), p.group(), ask, |mut c, r| async move {
                        c.get(r).await
                    })
                    .await
                {
                    Ok(found) => return Ok(found),
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => return Err(s),
                }
            }
            match p.get(&id, consistency(msg.serializable)).await {
                Ok(Some(e)) if msg.stream.is_empty() || e.stream == msg.stream => {
                    return Ok(Response::new(pb::GetEventResponse {
                        header: self.header(&p),
                        event: Some(recorded(p.group(), e)),
                    }));
                }
                Ok(_) => {}
                Err(e) => {
                    // This partition's leader is elsewhere: ask it there.
                    let Some(addr) = self.0.forward_target(&req, &e) else {
                        return Err(convert::status(e));
                    };
                    let mut c = self.0.events_client(&addr)?;
                    let ask = pb::GetEventRequest {
                        partition: p.group(),
                        ..msg.clone()
                    };
                    match c.get(Ctx::forwarded(ask)).await {
                        Ok(found) => return Ok(found),
                        Err(s) if s.code() == tonic::Code::NotFound => {}
                        Err(s) => return Err(s),
                    }
                }
            }
        }
        Err(Status::not_found(format!("get.id: no event {}", msg.id)))
    }

    async fn read_stream(
        &self,
        req: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        self.check_count()?;
        let msg = req.get_ref().clone();
        esf_raft::events::check_stream_id("read.stream", &msg.stream).map_err(|r| convert::status(r.into()))?;
        let p = self.partition_of(&msg.stream).clone();
        if !self.held(&p) {
            return self
                .on_replica(Ctx::is_forwarded(&req), p.group(), msg, |mut c, r| async move {
                    c.read_stream(r).await
                })
                .await;
        }
        let dir = if msg.backward {
            Direction::Backward
        } else {
            Direction::Forward
        };
        match p
            .read_stream(
                &msg.stream,
                msg.from_version,
                dir,
                limit(msg.limit),
                consistency(msg.serializable),
            )
            .await
        {
            Ok((events, rec)) => Ok(Response::new(pb::ReadStreamResponse {
                header: self.header(&p),
                events: events.into_iter().map(|e| recorded(p.group(), e)).collect(),
                stream_version: rec.version,
                first_version: match rec.version {
                    0 => 1,
                    v => p
                        .store()
                        .first_version(&msg.stream)
                        .map_err(|e| Status::internal(e.to_string()))?
                        .unwrap_or(v + 1),
                },
            })),
            Err(e) => forward_or!(self.0, events_client, req, e, read_stream, msg),
        }
    }

    async fn read_partition(
        &self,
        req: Request<pb::ReadPartitionRequest>,
    ) -> Result<Response<pb::ReadPartitionResponse>, Status> {
        self.check_count()?;
        let msg = req.get_ref().clone();
        let p = self.partition("read.partition", msg.partition)?.clone();
        if !self.held(&p) {
            return self
                .on_replica(Ctx::is_forwarded(&req), p.group(), msg, |mut c, r| async move {
                    c.read_partition(r).await
                })
                .await;
        }
        match p
            .read_partition(msg.from_offset, limit(msg.limit), consistency(msg.serializable))
            .await
        {
            Ok((events, next_offset)) => Ok(Response::new(pb::ReadPartitionResponse {
                header: self.header(&p),
                events: events.into_iter().map(|e| recorded(p.group(), e)).collect(),
                next_offset,
                first_offset: p.store().first_offset().map_err(|e| Status::internal(e.to_string()))?,
            })),
            Err(e) => forward_or!(self.0, events_client, req, e, read_partition, msg),
        }
    }

    async fn query(&self, req: Request<pb::QueryEventsRequest>) -> Result<Response<pb::QueryEventsResponse>, Status> {
        self.check_count()?;
        let forwarded = Ctx::is_forwarded(&req);
        let msg = req.into_inner();
        let q = crate::query::parse(&msg)?;
        let count = self.0.partitions.len() as u32;
        let partitions: Vec<u32> = if msg.partitions.is_empty() {
            (1..=count).collect()
        } else {
            for (i, p) in msg.partitions.iter().enumerate() {
                self.partition(&format!("query.partitions[{i}]"), *p)?;
            }
            let mut ps = msg.partitions.clone();
            ps.sort_unstable();
            ps.dedup();
            ps
        };
        let pages = partitions.iter().map(|p| self.query_partition(forwarded, &msg, &q, *p));
        let mut explain = pb::QueryExplain {
            partitions: partitions.len() as u32,
            ..Default::default()
        };
        let mut all = Vec::new();
        // The index each partition read (they differ while a declared
        // field index is still being built on some).
        let mut indexes = std::collections::BTreeSet::new();
        for r in futures::future::join_all(pages).await {
            let (page, stats, index) = r?;
            explain.rows_examined += stats.rows_examined;
            explain.events_loaded += stats.events_loaded;
            indexes.extend(index.split(',').filter(|i| !i.is_empty()).map(String::from));
            all.push(page);
        }
        explain.index = indexes.into_iter().collect::<Vec<_>>().join(",");
        let (mut events, cursor) = crate::query::merge(&q, all);
        // Load the kept events that were merged by position only (an event
        // of a stream deleted since is left out).
        let mut loaded = Vec::with_capacity(events.len());
        for e in events.drain(..) {
            if !crate::query::is_unloaded(&e) {
                loaded.push(e);
                continue;
            }
            let store = self.0.partitions[e.partition as usize - 1].store();
            match store
                .live_event_at(e.offset)
                .map_err(|e| Status::internal(e.to_string()))?
            {
                Some(rec) => loaded.push(recorded(e.partition, rec)),
                None => {}
            }
        }
        let events = loaded;
        Ok(Response::new(pb::QueryEventsResponse {
            header: Some(convert::header(self.0.meta.header(self.0.meta.store().revision()))),
            events,
            cursor,
            explain: msg.explain.then_some(explain),
        }))
    }

    async fn set_retention(
        &self,
        req: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::SetRetentionResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = msg
            .rule
            .clone()
            .ok_or_else(|| invalid("retention.rule", "is required"))?;
        let rule = esf_raft::events::retention::RetentionRule {
            stream_prefix: r.stream_prefix,
            max_age_ms: r.max_age_ms,
            max_bytes: r.max_bytes,
        };
        rule.check().map_err(|(field, reason)| invalid(&field, reason))?;
        let key = crate::retention::rule_key(&rule.stream_prefix);
        let op = if rule.max_age_ms == 0 && rule.max_bytes == 0 {
            delete_key(key)
        } else {
            put_key(key, crate::retention::encode_rule(&rule))
        };
        match self.0.write(Command::new(op)).await {
            Ok((h, _)) => Ok(Response::new(pb::SetRetentionResponse { header: Some(h) })),
            Err(e) => forward_or!(self.0, events_client, req, e, set_retention, msg),
        }
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let p = self.partition("read_index.partition", req.get_ref().partition)?.clone();
        match p.read_index().await {
            Ok(index) => Ok(Response::new(pb::ReadIndexResponse { index })),
            Err(e) => Err(convert::status(e)),
        }
    }

    async fn create_index(
        &self,
        req: Request<pb::CreateIndexRequest>,
    ) -> Result<Response<pb::CreateIndexResponse>, Status> {
        let msg = req.get_ref().clone();
        esf_raft::events::query::check_field(&msg.field).map_err(|r| invalid("index.field", r))?;
        let op = put_key(crate::field_index::declaration_key(&msg.field), b"{}".to_vec());
        match self.0.write(Command::new(op)).await {
            Ok((h, _)) => Ok(Response::new(pb::CreateIndexResponse { header: Some(h) })),
            Err(e) => forward_or!(self.0, events_client, req, e, create_index, msg),
        }
    }

    async fn drop_index(&self, req: Request<pb::DropIndexRequest>) -> Result<Response<pb::DropIndexResponse>, Status> {
        let msg = req.get_ref().clone();
        esf_raft::events::query::check_field(&msg.field).map_err(|r| invalid("index.field", r))?;
        let op = delete_key(crate::field_index::declaration_key(&msg.field));
        match self.0.write(Command::new(op)).await {
            Ok((h, _)) => Ok(Response::new(pb::DropIndexResponse { header: Some(h) })),
            Err(e) => forward_or!(self.0, events_client, req, e, drop_index, msg),
        }
    }

    async fn list_indexes(
        &self,
        req: Request<pb::ListIndexesRequest>,
    ) -> Result<Response<pb::ListIndexesResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = convert::read_all(crate::field_index::declarations_range(), true);
        let (h, res) = match self.0.meta.range(&r, consistency(false)).await {
            Ok(x) => x,
            Err(e) => forward_or!(self.0, events_client, req, e, list_indexes, msg),
        };
        let me = self.0.meta.node_id();
        let held: Vec<&Arc<PartitionGroup>> = self
            .0
            .partitions
            .iter()
            .filter(|p| crate::partitions::holds(me, p, &self.0.routes))
            .collect();
        let indexes = res
            .kvs
            .iter()
            .filter_map(|kv| crate::field_index::field_of(&kv.key))
            .map(|field| {
                let mut info = pb::IndexInfo {
                    field: field.clone(),
                    ..Default::default()
                };
                for p in &held {
                    match p.store().field_indexes().iter().find(|(f, _)| *f == field) {
                        Some((_, s)) if s.complete() => info.partitions_ready += 1,
                        Some(_) => info.partitions_building += 1,
                        None => info.partitions_pending += 1,
                    }
                }
                info
            })
            .collect();
        Ok(Response::new(pb::ListIndexesResponse {
            header: Some(convert::header(h)),
            indexes,
        }))
    }

    async fn list_retention(
        &self,
        req: Request<pb::ListRetentionRequest>,
    ) -> Result<Response<pb::ListRetentionResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = convert::read_all(crate::retention::rules_range(), false);
        match self.0.meta.range(&r, consistency(msg.serializable)).await {
            Ok((h, res)) => Ok(Response::new(pb::ListRetentionResponse {
                header: Some(convert::header(h)),
                rules: res
                    .kvs
                    .iter()
                    .filter_map(|kv| crate::retention::decode_rule(&kv.key, &kv.value))
                    .map(|r| crate::retention::to_pb(&r))
                    .collect(),
            })),
            Err(e) => forward_or!(self.0, events_client, req, e, list_retention, msg),
        }
    }

    async fn delete_stream(
        &self,
        req: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        self.check_count()?;
        let msg = req.get_ref().clone();
        if !Ctx::is_forwarded(&req) {
            reserved("delete.stream", &msg.stream)?;
        }
        let expected = expected("delete.expected", msg.expected)?;
        let p = self.partition_of(&msg.stream).clone();
        if !self.held(&p) {
            return self
                .on_replica(Ctx::is_forwarded(&req), p.group(), msg, |mut c, r| async move {
                    c.delete_stream(r).await
                })
                .await;
        }
        let cmd = Command::new(Op::DeleteStream {
            stream: msg.stream.clone(),
            expected,
        });
        match p.write(cmd).await {
            Ok(resp) => match resp.result {
                OpResult::StreamDeleted { version } => Ok(Response::new(pb::DeleteStreamResponse {
                    header: self.header(&p),
                    version,
                })),
                other => Err(Status::internal(format!("unexpected result {other:?}"))),
            },
            Err(e) => forward_or!(self.0, events_client, req, e, delete_stream, msg),
        }
    }

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        self.check_count()?;
        let forwarded = Ctx::is_forwarded(&req);
        let msg = req.into_inner();
        let all: Vec<u32> = (1..=self.0.partitions.len() as u32).collect();
        let chosen = if msg.partitions.is_empty() {
            all
        } else {
            for (i, p) in msg.partitions.iter().enumerate() {
                self.partition(&format!("subscribe.partitions[{i}]"), *p)?;
            }
            let mut v = msg.partitions.clone();
            v.sort_unstable();
            v.dedup();
            v
        };
        for (p, off) in &msg.from_offsets {
            let g = self.partition("subscribe.from_offsets", *p)?;
            let next = g.store().next_offset();
            if self.held(g) && *off > next {
                // This replica lags (or the offset is wrong): another node
                // may have it; the client tries elsewhere.
                return Err(Status::unavailable(format!(
                    "subscribe.from_offsets[{p}]: {off} is beyond the end of partition {p} ({next}) on this node"
                )));
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBE_BUFFER_RESPONSES);
        let mut starts: BTreeMap<u32, u64> = BTreeMap::new();
        // Partitions without a replica here: followed through another node.
        let mut remote = Vec::new();
        let mut local = Vec::new();
        for p in &chosen {
            let g = &self.0.partitions[*p as usize - 1];
            let from = match msg.from_offsets.get(p) {
                Some(o) => Some(*o),
                None if msg.from_now => None,
                None => Some(0),
            };
            if self.held(g) {
                starts.insert(*p, from.unwrap_or_else(|| g.store().next_offset()));
                local.push(g.clone());
            } else if forwarded {
                return Err(Status::unavailable(format!(
                    "partition {p}: this node holds no replica of it"
                )));
            } else {
                let (st, start) = open_remote(&self.0, *p, from, &msg.r#type, &msg.stream_prefix).await?;
                starts.insert(*p, start);
                remote.push((*p, st));
            }
        }
        // The first response fixes where every partition starts, so a
        // client resuming after it never skips an event.
        let _ = tx.try_send(Ok(pb::SubscribeResponse {
            next_offsets: starts.clone().into_iter().collect(),
            ..Default::default()
        }));
        let feed = Arc::new(Feed {
            tx,
            next: std::sync::Mutex::new(BTreeMap::new()),
            canceled: AtomicBool::new(false),
            catching_up: AtomicUsize::new(chosen.len()),
            type_filter: msg.r#type.clone(),
            stream_prefix: msg.stream_prefix.clone(),
            stop: self.0.stop.clone(),
        });
        *feed.next.lock().expect("feed offsets lock") = starts.clone();
        for (p, st) in remote {
            tokio::spawn(feed_remote(self.0.clone(), p, st, starts[&p], feed.clone()));
        }
        for g in local {
            let start = starts[&g.group()];
            tokio::spawn(feed_partition(self.0.clone(), g, start, feed.clone()));
        }
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
