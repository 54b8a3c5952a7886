//! [`GroupConsumer`]: one member of a durable subscription's consumer
//! group, which takes its share of the partitions and takes a new share
//! whenever the group's members change.
//!
//! Two background tasks run while it lives: one keeps its lease alive,
//! one re-reads the members every [`REBALANCE_CHECK`]. Delivery is at
//! least once: after a rebalance the events after the last ack of a moved
//! partition come again. It does not acknowledge for the caller
//! ([`Client::ack`]) and does not coordinate with the other members beyond
//! the sorted member list every member reads.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use esf_proto::uuid;
use futures_core::future::BoxFuture;
use futures_core::stream::Stream;

use crate::{Client, Error, Result, ResumableSubscription, pb};

/// How often a [`GroupConsumer`] re-reads its group's members.
pub(crate) const REBALANCE_CHECK: Duration = Duration::from_secs(1);

/// The members as last read, or the error that stopped the reading.
type Members = std::result::Result<Vec<String>, String>;

/// Partitions consumer `index` of `members` takes, of `partitions`.
pub(crate) fn assigned_partitions(index: usize, members: usize, partitions: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut mine: Vec<u32> = partitions.filter(|p| ((*p - 1) as usize) % members == index).collect();
    mine.sort_unstable();
    mine
}

impl Client {
    /// Joins the consumer group of durable subscription `name` with a lease
    /// of `ttl_secs` kept alive in the background: see [`GroupConsumer`].
    /// An empty `consumer_id` gets a random one (made here, so a retried
    /// join cannot add a second member).
    pub async fn consume_group(&self, name: &str, consumer_id: &str, ttl_secs: u64) -> Result<GroupConsumer> {
        let consumer_id = if consumer_id.is_empty() {
            uuid::format(&uuid::new_v4())
        } else {
            consumer_id.to_string()
        };
        let lease = self.lease_grant(ttl_secs, 0).await?.id;
        if let Err(e) = self.join_consumers(name, &consumer_id, lease).await {
            let _ = self.lease_revoke(lease).await;
            return Err(e);
        }
        let (tx, members) = tokio::sync::watch::channel(Ok(Vec::new()));
        let keeper = {
            let c = self.clone();
            tokio::spawn(async move { c.lease_keep_alive_forever(lease, |_| {}).await })
        };
        let watcher = {
            let c = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                // Publishes the members whenever they change (and stops on
                // an error that retrying cannot help).
                loop {
                    match c.consumers(&name).await {
                        Ok(r) => {
                            tx.send_if_modified(|cur| {
                                let changed = cur.as_ref().map_or(true, |m| *m != r.consumer_ids);
                                if changed {
                                    *cur = Ok(r.consumer_ids);
                                }
                                changed
                            });
                        }
                        Err(e) if !e.is_retryable() => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        Err(e) => tracing::info!(error = %e, "consumer group not read; retrying"),
                    }
                    tokio::time::sleep(REBALANCE_CHECK).await;
                }
            })
        };
        let share = Share {
            client: self.clone(),
            name: name.into(),
            consumer_id: consumer_id.clone(),
            lease,
            keeper: keeper.abort_handle(),
            members,
            assigned: Vec::new(),
            sub: None,
            started: false,
            stale: false,
            finished: false,
        };
        Ok(GroupConsumer {
            client: self.clone(),
            name: name.into(),
            consumer_id,
            lease,
            keeper,
            watcher,
            assigned: Vec::new(),
            reader: Reader::Idle(Box::new(share)),
            stream_done: false,
        })
    }
}

/// A member of a durable subscription's consumer group. It holds a lease
/// (kept alive in the background) and takes the partitions p with
/// `(p - 1) % n == k`, k being its place among the n sorted members. A
/// background task re-reads the members every second; when they changed
/// (one joined, left, or its lease expired) the consumer resubscribes to
/// its new share from the acknowledged positions. At least once: after a
/// rebalance the events after the last ack of a moved partition come
/// again. Ack with [`Client::ack`]; [`GroupConsumer::leave`] hands the
/// share over at once (dropping it leaves when the lease expires).
///
/// Also a [`Stream`] of what [`GroupConsumer::next`] returns, which ends
/// after an error that retrying cannot help or once the member list can
/// no longer be read. `next` is cancel-safe: a read dropped half-way is
/// resumed by the next call.
pub struct GroupConsumer {
    client: Client,
    name: String,
    consumer_id: String,
    lease: u64,
    keeper: tokio::task::JoinHandle<Result<()>>,
    watcher: tokio::task::JoinHandle<()>,
    /// The share as of the last response.
    assigned: Vec<u32>,
    reader: Reader,
    /// As a [`Stream`]: it returned its last item.
    stream_done: bool,
}

/// The reading state, which a read in progress owns.
enum Reader {
    Idle(Box<Share>),
    Reading(BoxFuture<'static, (Box<Share>, Result<pb::SubscribeResponse>)>),
    /// Only while a poll moves it between the two.
    Moving,
}

/// What a read needs: the members, the share taken, its subscription.
struct Share {
    client: Client,
    name: String,
    consumer_id: String,
    lease: u64,
    keeper: tokio::task::AbortHandle,
    /// The members as last read (an error that ends the watcher).
    members: tokio::sync::watch::Receiver<Members>,
    assigned: Vec<u32>,
    sub: Option<ResumableSubscription>,
    /// Whether the first share was taken.
    started: bool,
    /// The members changed since the share was taken.
    stale: bool,
    /// The members can no longer be read: every read fails from now on.
    finished: bool,
}

impl Share {
    /// Resubscribes to this consumer's share of `members`.
    async fn rebalance(&mut self, members: Vec<String>) -> Result<()> {
        if self.keeper.is_finished() {
            return Err(Error::NotFound(format!(
                "consumer {}: its lease {} is gone; join again",
                self.consumer_id, self.lease
            )));
        }
        let Some(index) = members.iter().position(|m| *m == self.consumer_id) else {
            return Err(Error::NotFound(format!(
                "consumer {}: no longer a member of {:?} (its lease expired)",
                self.consumer_id, self.name
            )));
        };
        let info = self
            .client
            .get_subscription(&self.name)
            .await?
            .subscription
            .unwrap_or_default();
        let mine: Vec<u32> = assigned_partitions(index, members.len(), info.positions.keys().copied());
        tracing::info!(consumer = %self.consumer_id, partitions = ?mine, members = members.len(), "consumer group rebalanced");
        self.sub = (!mine.is_empty()).then(|| {
            self.client.subscribe_resumable(pb::SubscribeRequest {
                from_offsets: mine
                    .iter()
                    .filter_map(|p| info.positions.get(p).map(|o| (*p, *o)))
                    .collect(),
                partitions: mine.clone(),
                from_now: false,
                r#type: info.r#type.clone(),
                stream_prefix: info.stream_prefix.clone(),
            })
        });
        self.assigned = mine;
        Ok(())
    }

    /// The next response of this consumer's share.
    async fn next(&mut self) -> Result<pb::SubscribeResponse> {
        let stopped = || Error::Unavailable("consumer group watcher stopped".into());
        loop {
            // `changed()` below marks the members seen: take them once.
            if self.members.has_changed().unwrap_or(false) || self.stale || !self.started {
                let members = self.members.borrow_and_update().clone();
                self.stale = false;
                match members {
                    Err(e) => {
                        self.finished = true;
                        return Err(Error::Unavailable(format!("consumer group of {:?}: {e}", self.name)));
                    }
                    // Not read yet.
                    Ok(m) if m.is_empty() => {
                        self.members.changed().await.map_err(|_| self.stop(stopped()))?;
                        continue;
                    }
                    Ok(m) => {
                        self.rebalance(m).await?;
                        self.started = true;
                    }
                }
            }
            match self.sub.as_mut() {
                // Only a change of members interrupts a read (the read is
                // cancel-safe: a response not yet taken stays queued).
                Some(sub) => tokio::select! {
                    r = sub.next() => return r,
                    c = self.members.changed() => {
                        if c.is_err() {
                            self.finished = true;
                            return Err(stopped());
                        }
                        self.stale = true;
                    }
                },
                // More members than partitions: wait for a share.
                None => {
                    self.members.changed().await.map_err(|_| self.stop(stopped()))?;
                    self.stale = true;
                }
            }
        }
    }

    /// Marks the share finished and returns `e`.
    fn stop(&mut self, e: Error) -> Error {
        self.finished = true;
        e
    }
}

impl GroupConsumer {
    /// This consumer's id in the group.
    pub fn consumer_id(&self) -> &str {
        &self.consumer_id
    }

    /// The partitions this consumer takes (as of its last response).
    pub fn assigned(&self) -> &[u32] {
        &self.assigned
    }

    /// The next response of this consumer's share (the first one after a
    /// rebalance carries no events and the start offsets).
    pub async fn next(&mut self) -> Result<pb::SubscribeResponse> {
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }

    /// Drives the read in progress (starting one if none is).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<pb::SubscribeResponse>> {
        loop {
            match std::mem::replace(&mut self.reader, Reader::Moving) {
                Reader::Idle(mut share) => {
                    self.reader = Reader::Reading(Box::pin(async move {
                        let r = share.next().await;
                        (share, r)
                    }));
                }
                Reader::Reading(mut read) => match read.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.reader = Reader::Reading(read);
                        return Poll::Pending;
                    }
                    Poll::Ready((share, r)) => {
                        self.assigned.clone_from(&share.assigned);
                        if r.as_ref().is_err_and(|e| !e.is_retryable() || share.finished) {
                            self.stream_done = true;
                        }
                        self.reader = Reader::Idle(share);
                        return Poll::Ready(r);
                    }
                },
                // A read panicked while polled; its state is lost.
                Reader::Moving => {
                    self.stream_done = true;
                    return Poll::Ready(Err(Error::Internal("consumer: a read panicked; join again".into())));
                }
            }
        }
    }

    /// Leaves the group now (its share moves on the others' next check).
    pub async fn leave(self) -> Result<()> {
        self.keeper.abort();
        self.watcher.abort();
        self.client.leave_consumers(&self.name, &self.consumer_id).await?;
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl Stream for GroupConsumer {
    type Item = Result<pb::SubscribeResponse>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = self.get_mut();
        if me.stream_done {
            return Poll::Ready(None);
        }
        me.poll_read(cx).map(Some)
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Not renewed any more: the group drops this member when the
        // lease expires.
        self.keeper.abort();
        self.watcher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_share_the_partitions_round_robin() {
        let table: [(usize, usize, &[u32]); 5] = [
            (0, 1, &[1, 2, 3, 4, 5, 6, 7, 8]),
            (0, 3, &[1, 4, 7]),
            (1, 3, &[2, 5, 8]),
            (2, 3, &[3, 6]),
            (9, 10, &[]),
        ];
        for (index, members, want) in table {
            // Given in any order, taken sorted.
            let got = assigned_partitions(index, members, [8, 3, 1, 2, 7, 4, 6, 5].into_iter());
            assert_eq!(got, want, "consumer {index} of {members}");
        }
    }
}
