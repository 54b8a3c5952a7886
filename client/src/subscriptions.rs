//! Subscriptions to events: one-shot and resumable subscriptions
//! ([`ResumableSubscription`]), durable named subscriptions (create, get,
//! list, delete, ack) and the membership of their consumer groups, and
//! [`Client::consume`], a fixed share of a durable subscription.
//!
//! Positions are per partition: a resumed subscription reopens from the
//! next offset of every partition it follows, so events arrive once each,
//! in order per partition. Acknowledging is the caller's job
//! ([`Client::ack`]); a consumer group that rebalances by itself is
//! [`crate::GroupConsumer`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use futures_core::stream::Stream;

use crate::endpoint::{EventsStub, SubscriptionsStub};
use crate::resume::{Cursor, Resumable};
use crate::{Client, Error, Result, Streaming, pb};

impl Client {
    /// Opens a subscription on the first endpoint that answers.
    pub async fn subscribe(&self, req: pb::SubscribeRequest) -> Result<Streaming<pb::SubscribeResponse>> {
        self.ask(
            "subscribe",
            req,
            |mut c: EventsStub, r| async move { c.subscribe(r).await },
        )
        .await
    }

    /// A subscription that survives the loss of its node: see
    /// [`ResumableSubscription`]. Opens on the first `next`.
    pub fn subscribe_resumable(&self, req: pb::SubscribeRequest) -> ResumableSubscription {
        ResumableSubscription(Resumable::new(self.clone(), SubscriptionCursor { req, next: None }))
    }

    /// Creates a durable named subscription.
    pub async fn create_subscription(
        &self,
        name: &str,
        event_type: &str,
        stream_prefix: &str,
        from_now: bool,
    ) -> Result<pb::SubscriptionResponse> {
        let req = pb::CreateSubscriptionRequest {
            name: name.into(),
            r#type: event_type.into(),
            stream_prefix: stream_prefix.into(),
            from_now,
        };
        self.ask("create subscription", req, |mut c: SubscriptionsStub, r| async move {
            c.create(r).await
        })
        .await
    }

    /// A durable subscription and its positions.
    pub async fn get_subscription(&self, name: &str) -> Result<pb::SubscriptionResponse> {
        let req = pb::SubscriptionNameRequest { name: name.into() };
        self.ask("get subscription", req, |mut c: SubscriptionsStub, r| async move {
            c.get(r).await
        })
        .await
    }

    /// Every durable subscription.
    pub async fn list_subscriptions(&self) -> Result<pb::ListSubscriptionsResponse> {
        self.ask(
            "list subscriptions",
            pb::ListSubscriptionsRequest {},
            |mut c: SubscriptionsStub, r| async move { c.list(r).await },
        )
        .await
    }

    /// Deletes a durable subscription.
    pub async fn delete_subscription(&self, name: &str) -> Result<pb::DeleteSubscriptionResponse> {
        let req = pb::SubscriptionNameRequest { name: name.into() };
        self.ask("delete subscription", req, |mut c: SubscriptionsStub, r| async move {
            c.delete(r).await
        })
        .await
    }

    /// Records that every event before `next_offsets[p]` in partition `p`
    /// was processed (positions never move back).
    pub async fn ack(&self, name: &str, next_offsets: &BTreeMap<u32, u64>) -> Result<pb::SubscriptionResponse> {
        let req = pb::AckRequest {
            name: name.into(),
            next_offsets: next_offsets.clone().into_iter().collect(),
        };
        self.ask("ack", req, |mut c: SubscriptionsStub, r| async move { c.ack(r).await })
            .await
    }

    /// Adds consumer `consumer_id` ("" for a generated id) to the consumer
    /// group of subscription `name` while lease `lease_id` lives.
    pub async fn join_consumers(&self, name: &str, consumer_id: &str, lease_id: u64) -> Result<pb::ConsumersResponse> {
        let req = pb::JoinRequest {
            name: name.into(),
            lease_id,
            consumer_id: consumer_id.into(),
        };
        self.ask(
            "join",
            req,
            |mut c: SubscriptionsStub, r| async move { c.join(r).await },
        )
        .await
    }

    /// Removes consumer `consumer_id` from the group of subscription `name`.
    pub async fn leave_consumers(&self, name: &str, consumer_id: &str) -> Result<pb::ConsumersResponse> {
        let req = pb::LeaveRequest {
            name: name.into(),
            consumer_id: consumer_id.into(),
        };
        self.ask(
            "leave",
            req,
            |mut c: SubscriptionsStub, r| async move { c.leave(r).await },
        )
        .await
    }

    /// The consumer group of subscription `name`, sorted.
    pub async fn consumers(&self, name: &str) -> Result<pb::ConsumersResponse> {
        let req = pb::SubscriptionNameRequest { name: name.into() };
        self.ask("consumers", req, |mut c: SubscriptionsStub, r| async move {
            c.consumers(r).await
        })
        .await
    }

    /// Consumes durable subscription `name` as consumer `member` of
    /// `members` (it takes the partitions p with `(p - 1) % members ==
    /// member`): a resumable subscription from the acknowledged positions
    /// with the subscription's filter. Ack with [`Client::ack`].
    pub async fn consume(&self, name: &str, member: u32, members: u32) -> Result<ResumableSubscription> {
        if members == 0 || member >= members {
            return Err(Error::InvalidArgument(format!(
                "member: {member} is not below members ({members})"
            )));
        }
        let info = self.get_subscription(name).await?.subscription.unwrap_or_default();
        let mine: BTreeMap<u32, u64> = info
            .positions
            .iter()
            .filter(|(p, _)| (**p - 1) % members == member)
            .map(|(p, o)| (*p, *o))
            .collect();
        if mine.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "member: consumer {member} of {members} gets none of the {} partitions; use fewer members",
                info.positions.len()
            )));
        }
        Ok(self.subscribe_resumable(pb::SubscribeRequest {
            partitions: mine.keys().copied().collect(),
            from_offsets: mine.into_iter().collect(),
            from_now: false,
            r#type: info.r#type,
            stream_prefix: info.stream_prefix,
        }))
    }
}

/// A subscription's position: its request and the next offset per
/// partition.
struct SubscriptionCursor {
    req: pb::SubscribeRequest,
    /// Next offset per partition, once the first response fixed them.
    next: Option<BTreeMap<u32, u64>>,
}

impl Cursor for SubscriptionCursor {
    type Response = pb::SubscribeResponse;
    type Stream = Streaming<pb::SubscribeResponse>;
    const WHAT: &'static str = "subscription";

    fn open(&self, client: &Client) -> BoxFuture<'static, Result<Streaming<pb::SubscribeResponse>>> {
        let mut req = self.req.clone();
        if let Some(next) = &self.next {
            req.from_offsets = next.clone().into_iter().collect();
            req.partitions = next.keys().copied().collect();
            req.from_now = false;
        }
        let client = client.clone();
        Box::pin(async move { client.subscribe(req).await })
    }

    fn advance(&mut self, resp: &pb::SubscribeResponse) -> Option<String> {
        // A canceling response still carries positions.
        let next = self.next.get_or_insert_with(Default::default);
        for (p, o) in &resp.next_offsets {
            let e = next.entry(*p).or_insert(*o);
            *e = (*e).max(*o);
        }
        resp.canceled.then(|| resp.cancel_reason.clone())
    }
}

/// A subscription that, when its node goes away (or cancels it as too
/// slow), reopens on any endpoint from the next offset of every partition,
/// so its events arrive once each, in order per partition. Gives up after
/// [`crate::WATCH_MAX_REOPENS`] reopens in a row without a response; an
/// error retrying cannot help is returned at once. `next` is cancel-safe.
///
/// Also a [`Stream`] of the same results, which ends after an error that
/// retrying cannot help.
pub struct ResumableSubscription(Resumable<SubscriptionCursor>);

impl ResumableSubscription {
    /// The next response (events, the caught-up mark, or the start).
    pub async fn next(&mut self) -> Result<pb::SubscribeResponse> {
        self.0.next().await
    }

    /// The next offset per partition (every event before it was returned).
    pub fn next_offsets(&self) -> Option<&BTreeMap<u32, u64>> {
        self.0.cursor.next.as_ref()
    }
}

impl Stream for ResumableSubscription {
    type Item = Result<pb::SubscribeResponse>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_item(cx)
    }
}
