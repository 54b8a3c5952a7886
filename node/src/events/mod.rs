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

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use esf_proto::uuid;
use esf_proto::v1 as pb;
use esf_raft::command::{AppendRequest, Command, ExpectedVersion, NewEvent, Op, OpResult};
use esf_raft::events::store::{Direction, EventRecord};
use esf_raft::events::{MAX_APPEND_EVENTS, PartitionGroup};
use esf_raft::openraft::async_runtime::WatchReceiver;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::cluster::partitions::{self, partition_of};
use crate::context::{Ctx, Origin};
use crate::convert::{self, consistency};
use crate::error::{Error, Result};
use crate::keyspace;

pub mod feed;
pub mod field_index;
pub mod query;
pub mod retention;

/// A stub for calling the Events service of another node.
pub type EventsStub = pb::events_client::EventsClient<Channel>;

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

fn expected(field: &str, e: Option<pb::ExpectedVersion>) -> Result<ExpectedVersion> {
    use pb::expected_version::Kind;
    Ok(match e.and_then(|e| e.kind) {
        None | Some(Kind::Any(_)) => ExpectedVersion::Any,
        Some(Kind::NoStream(true)) => ExpectedVersion::NoStream,
        Some(Kind::Exists(true)) => ExpectedVersion::Exists,
        Some(Kind::Exact(v)) => ExpectedVersion::Exact(v),
        Some(Kind::NoStream(false) | Kind::Exists(false)) => {
            return Err(Error::invalid(field, "no_stream and exists must be true when set"));
        }
    })
}

/// Refuses a client's write to a stream starting with `$`: those belong to
/// ESF (the audit trail, [`keyspace::AUDIT_STREAM`]).
pub fn check_writable(field: &str, stream: &str) -> Result<()> {
    if keyspace::is_reserved_stream(stream) {
        return Err(Error::invalid(
            field,
            format!(
                "{stream:?}: streams starting with \"$\" are written by ESF only (the audit trail is {:?})",
                keyspace::AUDIT_STREAM
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

/// The event store as node `.0` serves it.
pub struct Events<'a>(pub &'a Ctx);

impl Events<'_> {
    /// Refuses events on a node whose partition count is not the cluster's
    /// (streams would route to other partitions than on the other nodes).
    pub fn check_count(&self) -> Result<()> {
        let local = self.0.partitions.len() as u32;
        let recorded = match self.0.recorded_partitions.get() {
            Some(c) => Some(*c),
            None => {
                partitions::recorded_partitions(&self.0.meta).map(|c| *self.0.recorded_partitions.get_or_init(|| c))
            }
        };
        match recorded {
            Some(cluster) if cluster != local => Err(Error::Precondition(format!(
                "partitions: this node runs {local} event partitions but the cluster has {cluster}; restart it with an empty data dir and --partitions {cluster}"
            ))),
            _ => Ok(()),
        }
    }

    /// The partition stream `stream` lives in.
    pub fn partition_of(&self, stream: &str) -> &Arc<PartitionGroup> {
        let p = partition_of(stream, self.0.partitions.len() as u32);
        &self.0.partitions[p as usize - 1]
    }

    /// Partition `p`, named by request field `field`.
    pub fn partition(&self, field: &str, p: u32) -> Result<&Arc<PartitionGroup>> {
        let n = self.0.partitions.len();
        if p == 0 || p as usize > n {
            return Err(Error::invalid(
                field,
                format!("partition {p} does not exist (1 to {n})"),
            ));
        }
        Ok(&self.0.partitions[p as usize - 1])
    }

    /// A response header carrying partition `p`'s next offset.
    pub fn header(&self, p: &PartitionGroup) -> Option<pb::ResponseHeader> {
        Some(convert::header(self.0.meta.header(p.store().next_offset())))
    }

    /// Whether this node serves partition `p` from its own replica.
    pub fn held(&self, p: &PartitionGroup) -> bool {
        partitions::holds(self.0.meta.node_id(), p, &self.0.routes)
    }

    /// Partition `p`'s next offset, linearizable: every append
    /// acknowledged before the call is below it (from a one-event read at
    /// the partition's leader, whose header carries it).
    pub async fn partition_end(&self, p: u32) -> Result<u64> {
        let r = self
            .read_partition(
                pb::ReadPartitionRequest {
                    partition: p,
                    from_offset: 0,
                    limit: 1,
                    serializable: false,
                },
                Origin::Client,
            )
            .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// Partition `p`'s page of query `q` (`msg` as asked): from this node's
    /// replica, else (or if it cannot answer, e.g. a linearizable query on
    /// a follower) from a replica elsewhere, asked for `p` alone.
    async fn query_partition(
        &self,
        origin: Origin,
        msg: &pb::QueryEventsRequest,
        q: &query::Query,
        p: u32,
    ) -> Result<PartitionPage> {
        let group = &self.0.partitions[p as usize - 1];
        let page = |(events, more, stats): LocalPage| {
            let last = stats.last.map(|(ts, off)| (ts, p, off));
            let index = stats.index.map_or_else(String::new, |i| i.name(&q.filter));
            (query::Page { events, more, last }, stats, index)
        };
        if self.held(group) {
            let from = query::bound(q, p);
            match self.local_page(group, q, from, consistency(msg.serializable)).await {
                Ok(local) => return Ok(page(local)),
                Err(e) if origin == Origin::Peer => return Err(e.into()),
                // A follower read: the leader confirms a read index, this
                // replica waits until it applied it and answers from its
                // own state (no events travel). Else: asked of a replica.
                Err(e) => {
                    if let Some(addr) = e.leader_hint().and_then(|(_, a)| a).filter(|a| *a != self.0.advertise) {
                        if self.follower_read_ready(group, addr).await.is_ok() {
                            let serial = esf_raft::group::Consistency::Serializable;
                            if let Ok(local) = self.local_page(group, q, from, serial).await {
                                return Ok(page(local));
                            }
                        }
                    }
                }
            }
        }
        self.remote_page(origin, msg, q, p).await
    }

    /// Waits until this replica of `group` has applied the read index its
    /// leader at `addr` confirms now (within [`FORWARD_TIMEOUT`]).
    async fn follower_read_ready(&self, group: &PartitionGroup, addr: &str) -> Result<()> {
        let mut client: EventsStub = self.0.peer(addr)?;
        let mut req = self.0.forwarded(pb::ReadIndexRequest {
            partition: group.group(),
        });
        req.set_timeout(FORWARD_TIMEOUT);
        let index = match tokio::time::timeout(FORWARD_TIMEOUT, client.read_index(req)).await {
            Ok(Ok(r)) => r.into_inner().index,
            Ok(Err(s)) => return Err(Error::Peer(s)),
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "{addr}: no read index within {FORWARD_TIMEOUT:?}"
                )));
            }
        };
        Ok(group.wait_applied(index).await?)
    }

    /// This replica's page of `q` in `group` from `from`.
    async fn local_page(
        &self,
        group: &PartitionGroup,
        q: &query::Query,
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
                        .map(|(ts, offset)| query::unloaded(p, ts, offset))
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
        origin: Origin,
        msg: &pb::QueryEventsRequest,
        q: &query::Query,
        p: u32,
    ) -> Result<PartitionPage> {
        let sub = pb::QueryEventsRequest {
            partitions: vec![p],
            explain: true,
            ..msg.clone()
        };
        // The cursor's fingerprint covers the partitions: the replica gets
        // the position, as a cursor of the one-partition query.
        let sub = match q.after {
            Some(at) => {
                let one = query::parse(&pb::QueryEventsRequest {
                    cursor: String::new(),
                    ..sub.clone()
                })?;
                pb::QueryEventsRequest {
                    cursor: query::encode_cursor(one.fingerprint, at),
                    ..sub
                }
            }
            None => sub,
        };
        let r = self
            .on_replica(origin, p, sub, |mut c, r| async move { c.query(r).await })
            .await?;
        let ex = r.explain.unwrap_or_default();
        Ok((
            query::Page {
                events: r.events,
                more: !r.cursor.is_empty(),
                last: query::cursor_position(&r.cursor),
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
    async fn on_replica<Req, Resp, F, Fut>(&self, origin: Origin, p: u32, msg: Req, call: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(EventsStub, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let mut targets: VecDeque<String> =
            partitions::replica_addrs(&self.0.meta, &self.0.routes, p, &self.0.advertise).into();
        if origin == Origin::Peer {
            return Err(Error::unavailable_at(
                format!("partition {p}: this node holds no replica of it"),
                targets.front().cloned(),
            ));
        }
        let mut tried = BTreeSet::new();
        let mut last = Error::unavailable(format!("partition {p}: no replica of it is known"));
        while let Some(addr) = targets.pop_front() {
            if addr == self.0.advertise || !tried.insert(addr.clone()) {
                continue;
            }
            let client: EventsStub = match self.0.peer(&addr) {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut r = self.0.forwarded(msg.clone());
            r.set_timeout(FORWARD_TIMEOUT);
            match tokio::time::timeout(FORWARD_TIMEOUT, call(client, r)).await {
                Ok(Ok(resp)) => {
                    self.0.routes.learn(p, &addr);
                    return Ok(resp.into_inner());
                }
                Ok(Err(s)) => {
                    // A broken connection counts as UNAVAILABLE.
                    let s = Status::from(Error::Peer(s));
                    if s.code() != Code::Unavailable {
                        // A real answer: refused, not found, conflict.
                        return Err(Error::Peer(s));
                    }
                    if let Some(hint) = s
                        .metadata()
                        .get(esf_proto::wire::LEADER_ADDR_METADATA)
                        .and_then(|v| v.to_str().ok())
                    {
                        targets.push_front(hint.to_string());
                    }
                    last = Error::Peer(s);
                }
                Err(_) => {
                    last = Error::unavailable(format!(
                        "partition {p}: {addr} did not answer within {FORWARD_TIMEOUT:?}"
                    ))
                }
            }
        }
        self.0.routes.forget(p);
        Err(last)
    }

    /// Forwards `msg` to the leader `e` names (of a partition this node
    /// holds a follower replica of), or fails with `e`.
    async fn forward<Req, Resp, F, Fut>(&self, origin: Origin, e: esf_raft::Error, msg: Req, call: F) -> Result<Resp>
    where
        F: FnOnce(EventsStub, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let e = Error::from(e);
        let Some(addr) = self.0.forward_target(origin, &e) else {
            return Err(e);
        };
        let stub: EventsStub = self.0.peer(&addr)?;
        call(stub, self.0.forwarded(msg))
            .await
            .map(Response::into_inner)
            .map_err(Error::Peer)
    }
}

impl Events<'_> {
    /// Appends `msg` (any stream, reserved ones too: callers check with
    /// [`check_writable`]); a request from a peer is not forwarded again.
    pub async fn append(&self, mut msg: pb::AppendRequest, origin: Origin) -> Result<pb::AppendResponse> {
        self.check_count()?;
        let expected = expected("append.expected", msg.expected)?;
        let mut events = Vec::with_capacity(msg.events.len());
        for (i, e) in msg.events.iter_mut().enumerate() {
            let id = if e.id.is_empty() {
                let id = uuid::new_v4();
                e.id = uuid::format(&id);
                id
            } else {
                uuid::parse(&e.id).map_err(|r| Error::invalid(&format!("append.events[{i}].id"), r))?
            };
            if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&e.data) {
                return Err(Error::invalid(
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
                .on_replica(origin, p.group(), msg, |mut c, r| async move { c.append(r).await })
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
        // A leader low on disk refuses until its leadership has moved.
        self.0
            .disk
            .refuse_write(|| p.raft().metrics().borrow_watched().clone())?;
        match p.write(cmd).await {
            Ok(resp) => match resp.result {
                OpResult::Appended {
                    first_offset,
                    first_version,
                    count,
                    duplicate,
                } => Ok(pb::AppendResponse {
                    header: self.header(&p),
                    partition: p.group(),
                    first_offset,
                    first_version,
                    count,
                    duplicate,
                    ids,
                }),
                other => Err(Error::unexpected(other)),
            },
            Err(e) => {
                self.forward(origin, e, msg, |mut c, r| async move { c.append(r).await })
                    .await
            }
        }
    }
}

impl Events<'_> {
    /// Event `msg.id`, from its stream's partition, the partition asked
    /// for, or else every partition in turn.
    pub async fn get(&self, msg: pb::GetEventRequest, origin: Origin) -> Result<pb::GetEventResponse> {
        self.check_count()?;
        let id = uuid::parse(&msg.id).map_err(|r| Error::invalid("get.id", r))?;
        let candidates: Vec<Arc<PartitionGroup>> = if msg.partition != 0 {
            vec![self.partition("get.partition", msg.partition)?.clone()]
        } else if msg.stream.is_empty() {
            self.0.partitions.iter().cloned().collect()
        } else {
            vec![self.partition_of(&msg.stream).clone()]
        };
        let not_found = |e: &Error| matches!(e, Error::Peer(s) if s.code() == Code::NotFound);
        for p in candidates {
            let ask = pb::GetEventRequest {
                partition: p.group(),
                ..msg.clone()
            };
            if !self.held(&p) {
                match self
                    .on_replica(origin, p.group(), ask, |mut c, r| async move { c.get(r).await })
                    .await
                {
                    Ok(found) => return Ok(found),
                    Err(e) if not_found(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            match p.get(&id, consistency(msg.serializable)).await {
                Ok(Some(e)) if msg.stream.is_empty() || e.stream == msg.stream => {
                    return Ok(pb::GetEventResponse {
                        header: self.header(&p),
                        event: Some(recorded(p.group(), e)),
                    });
                }
                Ok(_) => {}
                // This partition's leader is elsewhere: ask it there.
                Err(e) => match self
                    .forward(origin, e, ask, |mut c, r| async move { c.get(r).await })
                    .await
                {
                    Ok(found) => return Ok(found),
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Err(Error::NotFound(format!("get.id: no event {}", msg.id)))
    }

    /// A page of stream `msg.stream`, forwards or backwards.
    pub async fn read_stream(&self, msg: pb::ReadStreamRequest, origin: Origin) -> Result<pb::ReadStreamResponse> {
        self.check_count()?;
        esf_raft::events::check_stream_id("read.stream", &msg.stream).map_err(Error::from)?;
        let p = self.partition_of(&msg.stream).clone();
        if !self.held(&p) {
            return self
                .on_replica(origin, p.group(), msg, |mut c, r| async move { c.read_stream(r).await })
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
            Ok((events, rec)) => Ok(pb::ReadStreamResponse {
                header: self.header(&p),
                events: events.into_iter().map(|e| recorded(p.group(), e)).collect(),
                stream_version: rec.version,
                first_version: match rec.version {
                    0 => 1,
                    v => p.store().first_version(&msg.stream)?.unwrap_or(v + 1),
                },
            }),
            Err(e) => {
                self.forward(origin, e, msg, |mut c, r| async move { c.read_stream(r).await })
                    .await
            }
        }
    }

    /// A page of partition `msg.partition` in offset order.
    pub async fn read_partition(
        &self,
        msg: pb::ReadPartitionRequest,
        origin: Origin,
    ) -> Result<pb::ReadPartitionResponse> {
        self.check_count()?;
        let p = self.partition("read.partition", msg.partition)?.clone();
        if !self.held(&p) {
            return self
                .on_replica(
                    origin,
                    p.group(),
                    msg,
                    |mut c, r| async move { c.read_partition(r).await },
                )
                .await;
        }
        match p
            .read_partition(msg.from_offset, limit(msg.limit), consistency(msg.serializable))
            .await
        {
            Ok((events, next_offset)) => Ok(pb::ReadPartitionResponse {
                header: self.header(&p),
                events: events.into_iter().map(|e| recorded(p.group(), e)).collect(),
                next_offset,
                first_offset: p.store().first_offset()?,
            }),
            Err(e) => {
                self.forward(origin, e, msg, |mut c, r| async move { c.read_partition(r).await })
                    .await
            }
        }
    }

    /// A page of an events query merged over the partitions asked for.
    pub async fn query(&self, msg: pb::QueryEventsRequest, origin: Origin) -> Result<pb::QueryEventsResponse> {
        self.check_count()?;
        let q = query::parse(&msg)?;
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
        let pages = partitions.iter().map(|p| self.query_partition(origin, &msg, &q, *p));
        let mut explain = pb::QueryExplain {
            partitions: partitions.len() as u32,
            ..Default::default()
        };
        let mut all = Vec::new();
        // The index each partition read (they differ while a declared
        // field index is still being built on some).
        let mut indexes = BTreeSet::new();
        for r in futures::future::join_all(pages).await {
            let (page, stats, index) = r?;
            explain.rows_examined += stats.rows_examined;
            explain.events_loaded += stats.events_loaded;
            indexes.extend(index.split(',').filter(|i| !i.is_empty()).map(String::from));
            all.push(page);
        }
        explain.index = indexes.into_iter().collect::<Vec<_>>().join(",");
        let (mut events, cursor) = query::merge(&q, all);
        // Load the kept events that were merged by position only (an event
        // of a stream deleted since is left out).
        let mut loaded = Vec::with_capacity(events.len());
        for e in events.drain(..) {
            if !query::is_unloaded(&e) {
                loaded.push(e);
                continue;
            }
            let store = self.0.partitions[e.partition as usize - 1].store();
            if let Some(rec) = store.live_event_at(e.offset)? {
                loaded.push(recorded(e.partition, rec));
            }
        }
        Ok(pb::QueryEventsResponse {
            header: Some(self.0.meta_header()),
            events: loaded,
            cursor,
            explain: msg.explain.then_some(explain),
        })
    }

    /// Deletes stream `msg.stream` (any stream, reserved ones too: callers
    /// check with [`check_writable`]).
    pub async fn delete_stream(
        &self,
        msg: pb::DeleteStreamRequest,
        origin: Origin,
    ) -> Result<pb::DeleteStreamResponse> {
        self.check_count()?;
        let expected = expected("delete.expected", msg.expected)?;
        let p = self.partition_of(&msg.stream).clone();
        if !self.held(&p) {
            return self
                .on_replica(
                    origin,
                    p.group(),
                    msg,
                    |mut c, r| async move { c.delete_stream(r).await },
                )
                .await;
        }
        let cmd = Command::new(Op::DeleteStream {
            stream: msg.stream.clone(),
            expected,
        });
        // A leader low on disk refuses until its leadership has moved.
        self.0
            .disk
            .refuse_write(|| p.raft().metrics().borrow_watched().clone())?;
        match p.write(cmd).await {
            Ok(resp) => match resp.result {
                OpResult::StreamDeleted { version } => Ok(pb::DeleteStreamResponse {
                    header: self.header(&p),
                    version,
                }),
                other => Err(Error::unexpected(other)),
            },
            Err(e) => {
                self.forward(origin, e, msg, |mut c, r| async move { c.delete_stream(r).await })
                    .await
            }
        }
    }

    /// The read index partition `p`'s leader (this node) confirms now.
    pub async fn read_index(&self, p: u32) -> Result<u64> {
        let p = self.partition("read_index.partition", p)?.clone();
        Ok(p.read_index().await?)
    }
}
/// A partition's page of a query, what its scan did, and the index it read.
type PartitionPage = (query::Page, esf_raft::events::query::QueryStats, String);

/// A partition's page of a query from a local replica: events (or
/// positions to load), whether more may follow, what the scan did.
type LocalPage = (Vec<pb::RecordedEvent>, bool, esf_raft::events::query::QueryStats);
