//! `esf.v1.Subscriptions`: durable named subscriptions and their consumer
//! groups over the meta group (records in [`crate::subscriptions`]).
//! Creating, acking and deleting are linearizable meta writes (forwarded
//! to the meta leader), so positions survive any node. Acks are
//! read-modify-write under a mod-revision compare, retried on a
//! concurrent ack up to [`ACK_ATTEMPTS`] times.

use std::collections::BTreeMap;

use esf_proto::v1 as pb;
use esf_raft::command::{
    Command, Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, Op, OpResult, PutRequest, Rejection, TxnOp,
    TxnRequest,
};
use esf_raft::group::Consistency;
use esf_raft::meta::auth::{Need, Resource};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::forward_or;
use crate::auth::Authz;
use crate::context::Ctx;
use crate::convert;
use crate::error::Error;
use crate::events::Events;
use crate::registry;
use crate::subscriptions::{self, Subscriptions, not_found};

/// Tries of an ack racing other acks of the same subscription.
pub const ACK_ATTEMPTS: usize = 8;

type SubscriptionsStub = pb::subscriptions_client::SubscriptionsClient<Channel>;

/// `esf.v1.Subscriptions`.
pub struct SubscriptionsService(pub Ctx);

impl SubscriptionsService {
    fn records(&self) -> Subscriptions<'_> {
        Subscriptions(&self.0)
    }

    /// The group's members after a join or leave by `consumer_id`.
    async fn members_response(
        &self,
        name: &str,
        consumer_id: String,
    ) -> Result<Response<pb::ConsumersResponse>, Status> {
        let (h, ids) = self.records().consumers_of(name).await.map_err(Error::from)?;
        Ok(Response::new(pb::ConsumersResponse {
            header: Some(h),
            consumer_ids: ids,
            consumer_id,
        }))
    }
}

#[tonic::async_trait]
impl pb::subscriptions_server::Subscriptions for SubscriptionsService {
    async fn create(
        &self,
        req: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("name", &msg.name, false)?;
        // A subscription reads the streams it covers.
        let authz = Authz::of(&self.0, &req);
        authz.require_name(Resource::Subscription, Need::Write, &msg.name)?;
        authz.require(
            Resource::Stream,
            Need::Read,
            &KeyRange::Prefix(msg.stream_prefix.clone().into_bytes()),
        )?;
        if msg.r#type.len() > esf_raft::events::MAX_NAME_BYTES {
            return Err(Error::invalid("type", "over 256 bytes").into());
        }
        if msg.stream_prefix.len() > esf_raft::events::MAX_NAME_BYTES {
            return Err(Error::invalid("stream_prefix", "over 256 bytes").into());
        }
        let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
        let events = Events(&self.0);
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
        let k = subscriptions::key(&msg.name);
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
            Ok((_, OpResult::Txn { succeeded: false, .. })) => {
                Err(Error::AlreadyExists(format!("name: subscription {:?} already exists", msg.name)).into())
            }
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, create, msg),
        }
    }

    async fn get(
        &self,
        req: Request<pb::SubscriptionNameRequest>,
    ) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("name", &msg.name, false)?;
        Authz::of(&self.0, &req).require_name(Resource::Subscription, Need::Read, &msg.name)?;
        match self.records().read(&msg.name).await {
            Ok(found) => {
                let (kv, mut info) = found?;
                info.created_revision = kv.create_revision;
                Ok(Response::new(pb::SubscriptionResponse {
                    header: Some(self.0.meta_header()),
                    subscription: Some(info),
                }))
            }
            Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, get, msg),
        }
    }

    async fn list(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        // Lists the subscriptions the caller may read.
        let authz = Authz::of(&self.0, &req);
        authz.require_any("list subscriptions")?;
        let msg = req.get_ref().clone();
        let r = convert::read_all(subscriptions::all(), false);
        match self.0.meta.range(&r, Consistency::Linearizable).await {
            Ok((h, res)) => {
                let mut subs = Vec::with_capacity(res.kvs.len());
                for kv in &res.kvs {
                    let mut info = subscriptions::decode(kv)?;
                    if !authz.permits(
                        Resource::Subscription,
                        Need::Read,
                        &KeyRange::Key(info.name.clone().into_bytes()),
                    ) {
                        continue;
                    }
                    info.created_revision = kv.create_revision;
                    subs.push(info);
                }
                Ok(Response::new(pb::ListSubscriptionsResponse {
                    header: Some(convert::header(h)),
                    subscriptions: subs,
                }))
            }
            Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, list, msg),
        }
    }

    async fn delete(
        &self,
        req: Request<pb::SubscriptionNameRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("name", &msg.name, false)?;
        Authz::of(&self.0, &req).require_name(Resource::Subscription, Need::Write, &msg.name)?;
        let cmd = Command::new(Op::Delete(DeleteRequest {
            range: KeyRange::Key(subscriptions::key(&msg.name)),
            prev_kv: false,
        }));
        match self.0.write(cmd).await {
            Ok((h, OpResult::Delete { deleted, .. })) => {
                if deleted == 0 {
                    return Err(not_found(&msg.name).into());
                }
                // Its consumer group goes too (its members fail on their
                // next read of the subscription anyway).
                let members = Command::new(Op::Delete(DeleteRequest {
                    range: KeyRange::Prefix(subscriptions::consumers_prefix(&msg.name)),
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
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, delete, msg),
        }
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::ConsumersResponse>, Status> {
        let mut msg = req.get_ref().clone();
        registry::check_name("name", &msg.name, false)?;
        Authz::of(&self.0, &req).require_name(Resource::Subscription, Need::Write, &msg.name)?;
        if msg.consumer_id.is_empty() {
            msg.consumer_id = esf_proto::uuid::format(&esf_proto::uuid::new_v4());
        }
        registry::check_name("consumer_id", &msg.consumer_id, false)?;
        if msg.lease_id == 0 {
            return Err(
                Error::invalid("lease_id", "is required (a consumer is a member while its lease lives)").into(),
            );
        }
        let mut member = subscriptions::consumers_prefix(&msg.name);
        member.extend_from_slice(msg.consumer_id.as_bytes());
        // Only while the subscription exists (a txn: it cannot be deleted
        // in between).
        let cmd = Command::new(Op::Txn(TxnRequest {
            compares: vec![Compare {
                key: subscriptions::key(&msg.name),
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
            Ok((_, OpResult::Txn { succeeded: false, .. })) => return Err(not_found(&msg.name).into()),
            Ok((_, other)) => return Err(Error::unexpected(other).into()),
            Err(Error::Raft(esf_raft::Error::Rejected(Rejection::LeaseNotFound(id)))) => {
                return Err(
                    Error::NotFound(format!("lease_id: lease {id} does not exist (expired or revoked)")).into(),
                );
            }
            Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, join, msg),
        }
        self.members_response(&msg.name, msg.consumer_id).await
    }

    async fn leave(&self, req: Request<pb::LeaveRequest>) -> Result<Response<pb::ConsumersResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("name", &msg.name, false)?;
        Authz::of(&self.0, &req).require_name(Resource::Subscription, Need::Write, &msg.name)?;
        registry::check_name("consumer_id", &msg.consumer_id, false)?;
        let mut member = subscriptions::consumers_prefix(&msg.name);
        member.extend_from_slice(msg.consumer_id.as_bytes());
        let cmd = Command::new(Op::Delete(DeleteRequest {
            range: KeyRange::Key(member),
            prev_kv: false,
        }));
        match self.0.write(cmd).await {
            Ok(_) => {}
            Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, leave, msg),
        }
        self.members_response(&msg.name, msg.consumer_id).await
    }

    async fn consumers(
        &self,
        req: Request<pb::SubscriptionNameRequest>,
    ) -> Result<Response<pb::ConsumersResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("name", &msg.name, false)?;
        Authz::of(&self.0, &req).require_name(Resource::Subscription, Need::Read, &msg.name)?;
        match self.records().consumers_of(&msg.name).await {
            Ok((h, ids)) => Ok(Response::new(pb::ConsumersResponse {
                header: Some(h),
                consumer_ids: ids,
                consumer_id: String::new(),
            })),
            Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, consumers, msg),
        }
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::SubscriptionResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("name", &msg.name, false)?;
        Authz::of(&self.0, &req).require_name(Resource::Subscription, Need::Write, &msg.name)?;
        let events = Events(&self.0);
        for (p, off) in &msg.next_offsets {
            events.partition("next_offsets", *p)?;
            // An ack past the end would skip events not yet appended.
            if *off > 0 {
                let end = events.partition_end(*p).await?;
                if *off > end {
                    return Err(Error::invalid(
                        format!("next_offsets[{p}]"),
                        format!("{off} is beyond the end of partition {p} ({end})"),
                    )
                    .into());
                }
            }
        }
        for _ in 0..ACK_ATTEMPTS {
            let (kv, mut info) = match self.records().read(&msg.name).await {
                Ok(found) => found?,
                Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, ack, msg),
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
                Ok((_, other)) => return Err(Error::unexpected(other).into()),
                Err(e) => forward_or!(self.0, SubscriptionsStub, req, e, ack, msg),
            }
        }
        Err(Error::Aborted(format!(
            "ack: {ACK_ATTEMPTS} concurrent acks of {:?} won in a row; retry",
            msg.name
        ))
        .into())
    }
}
