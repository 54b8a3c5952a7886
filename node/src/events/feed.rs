//! Subscriptions: the feeds of one subscriber, one per partition, from
//! this node's replica ([`feed_partition`]) or through a subscription to
//! another node's ([`feed_remote`], reopened on another replica when it
//! breaks), into one bounded queue.
//!
//! Bounds: [`SUBSCRIBE_BUFFER_RESPONSES`] responses of at most
//! [`SUBSCRIBE_RESPONSE_BYTES`] each are queued per subscriber; when the
//! subscriber does not take them the feeds wait (the events stay in the
//! store). The first response fixes where every partition starts, so a
//! subscriber resuming after it never skips an event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use esf_proto::v1 as pb;
use esf_raft::events::PartitionGroup;
use esf_raft::events::store::EventRecord;

use super::{
    Events, EventsStub, FORWARD_TIMEOUT, HOLD_CHECK, MAX_EVENTS_PER_RESPONSE, RESUBSCRIBE_PAUSE,
    SUBSCRIBE_BUFFER_RESPONSES, SUBSCRIBE_RESPONSE_BYTES, recorded,
};
use crate::cluster::partitions;
use crate::context::{Ctx, Origin};
use crate::error::{Error, Result};

/// The responses of one subscription, in order; an error ends it.
pub type SubscribeStream = tokio_stream::wrappers::ReceiverStream<std::result::Result<pb::SubscribeResponse, Error>>;

type SubscribeSender = tokio::sync::mpsc::Sender<std::result::Result<pb::SubscribeResponse, Error>>;

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
        if !partitions::holds(ctx.meta.node_id(), &p, &ctx.routes) {
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
) -> Result<(tonic::Streaming<pb::SubscribeResponse>, u64)> {
    let mut last = Error::unavailable(format!("partition {p}: no replica of it is known"));
    for addr in partitions::replica_addrs(&ctx.meta, &ctx.routes, p, &ctx.advertise) {
        let mut c: EventsStub = match ctx.peer(&addr) {
            Ok(c) => c,
            Err(e) => {
                last = e;
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
            let mut st = c.subscribe(ctx.forwarded(req)).await.map_err(Error::Peer)?.into_inner();
            let first = st
                .message()
                .await
                .map_err(Error::Peer)?
                .ok_or_else(|| Error::unavailable(format!("partition {p}: {addr} closed the subscription")))?;
            let start = first
                .next_offsets
                .get(&p)
                .copied()
                .ok_or_else(|| Error::Internal(format!("partition {p}: {addr} sent no start offset")))?;
            Ok::<_, Error>((st, start))
        })
        .await;
        match opened {
            Ok(Ok(x)) => {
                ctx.routes.learn(p, &addr);
                return Ok(x);
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = Error::unavailable(format!(
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
                            return feed.cancel(&format!("partition {p}: no replica answers: {e}"));
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

/// Opens a subscription to the partitions `msg` asks for (all by
/// default), each from its offset, from the start, or from now: one feed
/// per partition, from this node's replica or through a subscription to
/// another node's.
pub async fn subscribe(events: &Events<'_>, msg: pb::SubscribeRequest, origin: Origin) -> Result<SubscribeStream> {
    events.check_count()?;
    let ctx = events.0;
    let all: Vec<u32> = (1..=ctx.partitions.len() as u32).collect();
    let chosen = if msg.partitions.is_empty() {
        all
    } else {
        for (i, p) in msg.partitions.iter().enumerate() {
            events.partition(&format!("subscribe.partitions[{i}]"), *p)?;
        }
        let mut v = msg.partitions.clone();
        v.sort_unstable();
        v.dedup();
        v
    };
    for (p, off) in &msg.from_offsets {
        let g = events.partition("subscribe.from_offsets", *p)?;
        let next = g.store().next_offset();
        if events.held(g) && *off > next {
            // This replica lags (or the offset is wrong): another node
            // may have it; the client tries elsewhere.
            return Err(Error::unavailable(format!(
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
        let g = &ctx.partitions[*p as usize - 1];
        let from = match msg.from_offsets.get(p) {
            Some(o) => Some(*o),
            None if msg.from_now => None,
            None => Some(0),
        };
        if events.held(g) {
            starts.insert(*p, from.unwrap_or_else(|| g.store().next_offset()));
            local.push(g.clone());
        } else if origin == Origin::Peer {
            return Err(Error::unavailable(format!(
                "partition {p}: this node holds no replica of it"
            )));
        } else {
            let (st, start) = open_remote(ctx, *p, from, &msg.r#type, &msg.stream_prefix).await?;
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
        stop: ctx.stop.clone(),
    });
    *feed.next.lock().expect("feed offsets lock") = starts.clone();
    for (p, st) in remote {
        tokio::spawn(feed_remote(ctx.clone(), p, st, starts[&p], feed.clone()));
    }
    for g in local {
        let start = starts[&g.group()];
        tokio::spawn(feed_partition(ctx.clone(), g, start, feed.clone()));
    }
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
