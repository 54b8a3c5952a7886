//! `esf.v1.Events`: the event store's gRPC service. Appends, reads,
//! queries, deletes and subscriptions are served by the events domain
//! ([`crate::events`], which routes them to the partition's replicas and
//! leader); retention rules and field index declarations are meta writes,
//! forwarded to the meta leader. A client may not write or delete a
//! stream starting with `$` (ESF's own, such as the audit trail).

use std::sync::Arc;

use esf_proto::v1 as pb;
use esf_raft::command::{Command, KeyRange};
use esf_raft::events::PartitionGroup;
use esf_raft::meta::auth::{Need, Resource};
use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::forward::forward_or;
use crate::auth::Authz;
use crate::cluster::partitions;
use crate::context::{Ctx, Origin};
use crate::convert::{self, consistency};
use crate::error::Error;
use crate::events::{Events, EventsStub, check_writable, feed, field_index, retention};
use crate::keyspace;

/// `esf.v1.Events`.
pub struct EventsService(pub Ctx);

type SubscribeStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

impl EventsService {
    fn events(&self) -> Events<'_> {
        Events(&self.0)
    }
}

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type SubscribeStream = SubscribeStream;

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let origin = Origin::of(&req);
        if origin == Origin::Client {
            check_writable("append.stream", &req.get_ref().stream)?;
        }
        Authz::of(&self.0, &req).require_name(Resource::Stream, Need::Write, &req.get_ref().stream)?;
        Ok(Response::new(self.events().append(req.into_inner(), origin).await?))
    }

    async fn get(&self, req: Request<pb::GetEventRequest>) -> Result<Response<pb::GetEventResponse>, Status> {
        let origin = Origin::of(&req);
        let authz = Authz::of(&self.0, &req);
        authz.require_any("get an event")?;
        let resp = self.events().get(req.into_inner(), origin).await?;
        // Found by id: its stream decides.
        if let Some(e) = &resp.event {
            authz.require_name(Resource::Stream, Need::Read, &e.stream)?;
        }
        Ok(Response::new(resp))
    }

    async fn read_stream(
        &self,
        req: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        let origin = Origin::of(&req);
        Authz::of(&self.0, &req).require_name(Resource::Stream, Need::Read, &req.get_ref().stream)?;
        Ok(Response::new(
            self.events().read_stream(req.into_inner(), origin).await?,
        ))
    }

    async fn read_partition(
        &self,
        req: Request<pb::ReadPartitionRequest>,
    ) -> Result<Response<pb::ReadPartitionResponse>, Status> {
        let origin = Origin::of(&req);
        // A partition holds any stream.
        Authz::of(&self.0, &req).require(Resource::Stream, Need::Read, &KeyRange::Prefix(Vec::new()))?;
        Ok(Response::new(
            self.events().read_partition(req.into_inner(), origin).await?,
        ))
    }

    async fn query(&self, req: Request<pb::QueryEventsRequest>) -> Result<Response<pb::QueryEventsResponse>, Status> {
        let origin = Origin::of(&req);
        // A query spans every stream.
        Authz::of(&self.0, &req).require(Resource::Stream, Need::Read, &KeyRange::Prefix(Vec::new()))?;
        Ok(Response::new(self.events().query(req.into_inner(), origin).await?))
    }

    async fn delete_stream(
        &self,
        req: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let origin = Origin::of(&req);
        if origin == Origin::Client {
            check_writable("delete.stream", &req.get_ref().stream)?;
        }
        Authz::of(&self.0, &req).require_name(Resource::Stream, Need::Write, &req.get_ref().stream)?;
        Ok(Response::new(
            self.events().delete_stream(req.into_inner(), origin).await?,
        ))
    }

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        let origin = Origin::of(&req);
        Authz::of(&self.0, &req).require(
            Resource::Stream,
            Need::Read,
            &KeyRange::Prefix(req.get_ref().stream_prefix.clone().into_bytes()),
        )?;
        let rx = feed::subscribe(&self.events(), req.into_inner(), origin).await?;
        Ok(Response::new(Box::pin(rx.map(|r| r.map_err(Status::from)))))
    }

    async fn read_index(&self, req: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        Authz::of(&self.0, &req).require_any("read a partition's commit index")?;
        let index = self.events().read_index(req.get_ref().partition).await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn list_retention(
        &self,
        req: Request<pb::ListRetentionRequest>,
    ) -> Result<Response<pb::ListRetentionResponse>, Status> {
        let origin = Origin::of(&req);
        Ok(Response::new(
            self.events().list_retention(req.into_inner(), origin).await?,
        ))
    }

    async fn set_retention(
        &self,
        req: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::SetRetentionResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = msg
            .rule
            .clone()
            .ok_or_else(|| Error::invalid("retention.rule", "is required"))?;
        let rule = esf_raft::events::retention::RetentionRule {
            stream_prefix: r.stream_prefix,
            max_age_ms: r.max_age_ms,
            max_bytes: r.max_bytes,
        };
        rule.check().map_err(|(field, reason)| Error::invalid(field, reason))?;
        let key = retention::rule_key(&rule.stream_prefix);
        let op = if rule.max_age_ms == 0 && rule.max_bytes == 0 {
            keyspace::delete_key(key)
        } else {
            keyspace::put_key(key, retention::encode_rule(&rule))
        };
        match self.0.write(Command::new(op)).await {
            Ok((h, _)) => Ok(Response::new(pb::SetRetentionResponse { header: Some(h) })),
            Err(e) => forward_or!(no_hint: self.0, EventsStub, req, e, set_retention, msg),
        }
    }

    async fn create_index(
        &self,
        req: Request<pb::CreateIndexRequest>,
    ) -> Result<Response<pb::CreateIndexResponse>, Status> {
        let msg = req.get_ref().clone();
        esf_raft::events::query::check_field(&msg.field).map_err(|r| Error::invalid("index.field", r))?;
        let op = keyspace::put_key(field_index::declaration_key(&msg.field), b"{}".to_vec());
        match self.0.write(Command::new(op)).await {
            Ok((h, _)) => Ok(Response::new(pb::CreateIndexResponse { header: Some(h) })),
            Err(e) => forward_or!(no_hint: self.0, EventsStub, req, e, create_index, msg),
        }
    }

    async fn drop_index(&self, req: Request<pb::DropIndexRequest>) -> Result<Response<pb::DropIndexResponse>, Status> {
        let msg = req.get_ref().clone();
        esf_raft::events::query::check_field(&msg.field).map_err(|r| Error::invalid("index.field", r))?;
        let op = keyspace::delete_key(field_index::declaration_key(&msg.field));
        match self.0.write(Command::new(op)).await {
            Ok((h, _)) => Ok(Response::new(pb::DropIndexResponse { header: Some(h) })),
            Err(e) => forward_or!(no_hint: self.0, EventsStub, req, e, drop_index, msg),
        }
    }

    async fn list_indexes(
        &self,
        req: Request<pb::ListIndexesRequest>,
    ) -> Result<Response<pb::ListIndexesResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = convert::read_all(field_index::declarations_range(), true);
        let (h, res) = match self.0.meta.range(&r, consistency(false)).await {
            Ok(x) => x,
            Err(e) => forward_or!(no_hint: self.0, EventsStub, req, e, list_indexes, msg),
        };
        let me = self.0.meta.node_id();
        let held: Vec<&Arc<PartitionGroup>> = self
            .0
            .partitions
            .iter()
            .filter(|p| partitions::holds(me, p, &self.0.routes))
            .collect();
        let indexes = res
            .kvs
            .iter()
            .filter_map(|kv| field_index::field_of(&kv.key))
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
}
