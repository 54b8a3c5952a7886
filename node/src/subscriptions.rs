//! `esf.v1.Subscriptions`: durable named subscriptions, one meta key each
//! (`0xff "sub/" NAME`, value the encoded `SubscriptionInfo`), so creating,
//! acking and deleting are linearizable meta writes (forwarded to the meta
//! leader) and positions survive any node. Acks are read-modify-write
//! under a mod-revision compare, retried on a concurrent ack.

use std::collections::BTreeMap;

use esf_client::pb;
use esf_raft::command::{
    Command, Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KeyValue, Op, OpResult, PutRequest,
    RangeRequest, TxnOp, TxnRequest,
};
use esf_raft::group::Consistency;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::convert::{self, RESERVED_KEY_BYTE};
use crate::registry::check_name;
use crate::service::{Ctx, forward_or};

/// Tries of an ack racing other acks of the same subscription.
pub const ACK_ATTEMPTS: usize = 8;

fn prefix() -> Vec<u8> {
    let mut k = vec![RESERVED_KEY_BYTE];
    k.extend_from_slice(b"sub/");
    k
}

fn key(name: &str) -> Vec<u8> {
    let mut k = prefix();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Consumer group members of subscription `name`: one key each,
/// `0xff "sub-consumer/" NAME "/" ID`, bound to the consumer's lease.
fn consumers_prefix(name: &str) -> Vec<u8> {
    let mut k = vec![RESERVED_KEY_BYTE];
    k.extend_from_slice(b"sub-consumer/");
    k.extend_from_slice(name.as_bytes());
    k.push(b'/');
    k
}

fn decode(kv: &KeyValue) -> Result<pb::SubscriptionInfo, Status> {
    pb::SubscriptionInfo::decode(kv.value.as_slice())
        .map_err(|e| Status::internal(format!("subscription record does not decode: {e}")))
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("name: subscription {name:?} does not exist"))
}

/// `esf.v1.Subscriptions`.
pub struct SubscriptionsService(pub Ctx);

impl SubscriptionsService {
    /// The group's members after a join or leave by `consumer_id`.
    async fn members_response(
        &self,
        name: &str,
        consumer_id: String,
    ) -> Result<Response<pb::ConsumersResponse>, Status> {
        let (h, ids) = self.consumers_of(name).await.map_err(convert::status)?;
        Ok(Response::new(pb::ConsumersResponse {
            header: Some(h),
            consumer_ids: ids,
            consumer_id,
        }))
    }

    /// The sorted consumer ids of subscription `name` (linearizable).
    async fn consumers_of(&self, name: &str) -> Result<(pb::ResponseHeader, Vec<String>), esf_raft::Error> {
        let prefix = consumers_prefix(name);
        let r = RangeRequest {
            range: KeyRange::Prefix(prefix.clone()),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: true,
        };
        let (h, res) = self.0.meta.range(&r, Consistency::Linearizable).await?;
        let ids = res
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect();
        Ok((convert::header(h), ids))
    }

    /// The subscription's record (linearizable), or NOT_FOUND.
    async fn read(&self, name: &str) -> Result<Result<(KeyValue, pb::SubscriptionInfo), Status>, esf_raft::Error> {
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

#[tonic::async_trait]
impl pb::subscriptions_server::Subscriptions for SubscriptionsService {
    async fn create(
        &self,
        req: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("name", &msg.name, false)?;
        if msg.r#type.len() > esf_raft::events::MAX_NAME_BYTES {
            return Err(Status::invalid_argument("type: over 256 bytes"));
        }
        if msg.stream_prefix.len() > esf_raft::events::MAX_NAME_BYTES {
            return Err(Status::invalid_argument("stream_prefix: over 256 bytes"));
        }
        let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
        let events = crate::events::EventsService(self.0.clone());
        for p in self.0.partitions.iter() {
            let at = if msg.from_now {
                events.partition_end(p.group()).await?
            } else {
                0
            };
            positions.insert(p.group(), at);
        }
        let mut info = pb::SubscriptionInfo {
            name: msg.name.clone(),
            r#type: msg.r#type.clone(),
            stream_prefix: msg.stream_prefix.clone(),
            positions: positions.into_iter().collect(),
            created_revision: 0,
        };
        let k = key(&msg.name);
        let cmd = Command::new(Op::Txn(TxnRequest {
            compares: vec![Compare {
                key: k.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            }],
            success: vec![TxnOp::Put(PutRequest {
                key: k,
                value: info.encode_to_vec(),
                lease: 0,
                prev_kv: false,
            })],
            failure: vec![],
        }));
        match self.0.write(cmd).await {
            Ok((h, OpResult::Txn { succeeded: true, .. })) => {
                info.created_revision = h.revision;
                Ok(Response::new(pb::SubscriptionResponse {
                    header: Some(h),
                    subscription: Some(info),
                }))
            }
            Ok((_, OpResult::Txn { succeeded: false, .. })) => Err(Status::already_exists(format!(
                "name: subscription {:?} already exists",
                msg.name
            ))),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, subscriptions_client, req, e, create, msg),
        }
    }

    async fn get(
        &self,
        req: Request<pb::SubscriptionNameRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("name", &msg.name, false)?;
        match self.read(&msg.name).await {
            Ok(found) => {
                let (kv, mut info) = found?;
                info.created_revision = kv.create_revision;
                Ok(Response::new(pb::SubscriptionResponse {
                    header: Some(convert::header(self.0.meta.header(self.0.meta.store().revision()))),
                    subscription: Some(info),
                }))
            }
            Err(e) => forward_or!(self.0, subscriptions_client, req, e, get, msg),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = RangeRequest {
            range: KeyRange::Prefix(prefix()),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
        };
        match self.0.meta.range(&r, Consistency::Linearizable).await {
            Ok((h, res)) => {
                let mut subs = Vec::with_capacity(res.kvs.len());
                for kv in &res.kvs {
                    let mut info = decode(kv)?;
                    info.created_revision = kv.create_revision;
                    subs.push(info);
                }
                Ok(Response::new(pb::ListSubscriptionsResponse {
                    header: Some(convert::header(h)),
                    subscriptions: subs,
                }))
            }
            Err(e) => forward_or!(self.0, subscriptions_client, req, e, list, msg),
        }
    }

    async fn delete(
        &self,
        req: Request<pb::SubscriptionNameRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("name", &msg.name, false)?;
        let cmd = Command::new(Op::Delete(DeleteRequest {
            range: KeyRange::Key(key(&msg.name)),
            prev_kv: false,
        }));
        match self.0.write(cmd).await {
            Ok((h, OpResult::Delete { deleted, .. })) => {
                if deleted == 0 {
                    return Err(not_found(&msg.name));
                }
                // Its consumer group goes too (its members fail on their
                // next read of the subscription anyway).
                let members = Command::new(Op::Delete(DeleteRequest {
                    range: KeyRange::Prefix(consumers_prefix(&msg.name)),
                    prev_kv: false,
                }));
                if let Err(e) = self.0.write(members).await {
                    tracing::warn!(name = %msg.name, error = %e, "consumer group not deleted (the keys go with their leases)");
                }
                Ok(Response::new(pb::DeleteSubscriptionResponse {
                    header: Some(h),
                    deleted: true,
                }))
            }
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, subscriptions_client, req, e, delete, msg),
        }
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::ConsumersResponse>, Status> {
        let mut msg = req.get_ref().clone();
        check_name("name", &msg.name, false)?;
        if msg.consumer_id.is_empty() {
            msg.consumer_id = esf_client::uuid::format(&esf_client::uuid::new_v4());
        }
        check_name("consumer_id", &msg.consumer_id, false)?;
        if msg.lease_id == 0 {
            return Err(convert::invalid(
                "lease_id",
                "is required (a consumer is a member while its lease lives)",
            ));
        }
        let mut member = consumers_prefix(&msg.name);
        member.extend_from_slice(msg.consumer_id.as_bytes());
        // Only while the subscription exists (a txn: it cannot be deleted
        // in between).
        let cmd = Command::new(Op::Txn(TxnRequest {
            compares: vec![Compare {
                key: key(&msg.name),
                op: CompareOp::Greater,
                target: CompareTarget::Version(0),
            }],
            success: vec![TxnOp::Put(PutRequest {
                key: member,
                value: Vec::new(),
                lease: msg.lease_id,
                prev_kv: false,
            })],
            failure: vec![],
        }));
        match self.0.write(cmd).await {
            Ok((_, OpResult::Txn { succeeded: true, .. })) => {}
            Ok((_, OpResult::Txn { succeeded: false, .. })) => return Err(not_found(&msg.name)),
            Ok((_, other)) => return Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(esf_raft::Error::Rejected(esf_raft::command::Rejection::LeaseNotFound(id))) => {
                return Err(Status::not_found(format!(
                    "lease_id: lease {id} does not exist (expired or revoked)"
                )));
            }
            Err(e) => forward_or!(self.0, subscriptions_client, req, e, join, msg),
        }
        self.members_response(&msg.name, msg.consumer_id).await
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::ConsumersResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("name", &msg.name, false)?;
        check_name("consumer_id", &msg.consumer_id, false)?;
        let mut member = consumers_prefix(&msg.name);
        member.extend_from_slice(msg.consumer_id.as_bytes());
        let cmd = Command::new(Op::Delete(DeleteRequest {
            range: KeyRange::Key(member),
            prev_kv: false,
        }));
        match self.0.write(cmd).await {
            Ok(_) => {}
            Err(e) => forward_or!(self.0, subscriptions_client, req, e, leave, msg),
        }
        self.members_response(&msg.name, msg.consumer_id).await
    }

    async fn consumers(
        &self,
        req: Request<pb::SubscriptionNameRequest>,
    ) -> Result<Response<pb::ConsumersResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("name", &msg.name, false)?;
        match self.consumers_of(&msg.name).await {
            Ok((h, ids)) => Ok(Response::new(pb::ConsumersResponse {
                header: Some(h),
                consumer_ids: ids,
                consumer_id: String::new(),
            })),
            Err(e) => forward_or!(self.0, subscriptions_client, req, e, consumers, msg),
        }
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("name", &msg.name, false)?;
        let n = self.0.partitions.len() as u32;
        let events = crate::events::EventsService(self.0.clone());
        for (p, off) in &msg.next_offsets {
            if *p == 0 || *p > n {
                return Err(Status::invalid_argument(format!(
                    "next_offsets: partition {p} does not exist (1 to {n})"
                )));
            }
            // An ack past the end would skip events not yet appended.
            if *off > 0 {
                let end = events.partition_end(*p).await?;
                if *off > end {
                    return Err(Status::invalid_argument(format!(
                        "next_offsets[{p}]: {off} is beyond the end of partition {p} ({end})"
                    )));
                }
            }
        }
        for _ in 0..ACK_ATTEMPTS {
            let (kv, mut info) = match self.read(&msg.name).await {
                Ok(found) => found?,
                Err(e) => forward_or!(self.0, subscriptions_client, req, e, ack, msg),
            };
            for (p, off) in &msg.next_offsets {
                let at = info.positions.entry(*p).or_insert(0);
                *at = (*at).max(*off);
            }
            let cmd = Command::new(Op::Txn(TxnRequest {
                compares: vec![Compare {
                    key: kv.key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(kv.mod_revision),
                }],
                success: vec![TxnOp::Put(PutRequest {
                    key: kv.key.clone(),
                    value: info.encode_to_vec(),
                    lease: 0,
                    prev_kv: false,
                })],
                failure: vec![],
            }));
            match self.0.write(cmd).await {
                Ok((h, OpResult::Txn { succeeded: true, .. })) => {
                    info.created_revision = kv.create_revision;
                    return Ok(Response::new(pb::SubscriptionResponse {
                        header: Some(h),
                        subscription: Some(info),
                    }));
                }
                // Another ack (or a delete) came first: read again.
                Ok((_, OpResult::Txn { succeeded: false, .. })) => continue,
                Ok((_, other)) => return Err(Status::internal(format!("unexpected result {other:?}"))),
                Err(e) => forward_or!(self.0, subscriptions_client, req, e, ack, msg),
            }
        }
        Err(Status::aborted(format!(
            "ack: {ACK_ATTEMPTS} concurrent acks of {:?} won in a row; retry",
            msg.name
        )))
    }
}
