//! Durable named subscriptions' records (the gRPC service is
//! `api/subscriptions.rs`): one meta key each
//! (`0xff "sub/" NAME`, value the encoded `SubscriptionInfo`), so creating,
//! acking and deleting are linearizable meta writes (forwarded to the meta
//! leader) and positions survive any node. Acks are read-modify-write
//! under a mod-revision compare, retried on a concurrent ack.

use esf_proto::v1 as pb;
use esf_raft::command::{KeyRange, KeyValue, RangeRequest};
use esf_raft::group::Consistency;
use prost::Message;

use crate::context::Ctx;
use crate::convert;
use crate::error::{Error, Result};
use crate::keyspace::Area;

/// Every subscription's key.
pub fn all() -> KeyRange {
    Area::Subscription.range()
}

/// The key of subscription `name`.
pub fn key(name: &str) -> Vec<u8> {
    Area::Subscription.key(name.as_bytes())
}

/// Consumer group members of subscription `name`: one key each,
/// `0xff "sub-consumer/" NAME "/" ID`, bound to the consumer's lease.
pub fn consumers_prefix(name: &str) -> Vec<u8> {
    Area::SubscriptionConsumer.key(format!("{name}/").as_bytes())
}

/// A subscription's record from its stored value.
pub fn decode(kv: &KeyValue) -> Result<pb::SubscriptionInfo> {
    pb::SubscriptionInfo::decode(kv.value.as_slice())
        .map_err(|e| Error::Internal(format!("subscription record does not decode: {e}")))
}

/// NOT_FOUND naming subscription `name`.
pub fn not_found(name: &str) -> Error {
    Error::NotFound(format!("name: subscription {name:?} does not exist"))
}

/// Subscription records as node `.0` reads them.
pub struct Subscriptions<'a>(pub &'a Ctx);

impl Subscriptions<'_> {
    /// The sorted consumer ids of subscription `name` (linearizable).
    pub async fn consumers_of(&self, name: &str) -> Result<(pb::ResponseHeader, Vec<String>), esf_raft::Error> {
        let prefix = consumers_prefix(name);
        let r = convert::read_all(KeyRange::Prefix(prefix.clone()), true);
        let (h, res) = self.0.meta.range(&r, Consistency::Linearizable).await?;
        let ids = res
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect();
        Ok((convert::header(h), ids))
    }

    /// The subscription's record (linearizable), or NOT_FOUND (the outer
    /// error: the meta group could not answer here).
    pub async fn read(&self, name: &str) -> Result<Result<(KeyValue, pb::SubscriptionInfo)>, esf_raft::Error> {
        let (_, res) = self
            .0
            .meta
            .range(&RangeRequest::key(key(name)), Consistency::Linearizable)
            .await?;
        Ok(match res.kvs.into_iter().next() {
            None => Err(not_found(name)),
            Some(kv) => decode(&kv).map(|i| (kv, i)),
        })
    }
}
