//! The Events service: append to a stream, read events (by id, stream,
//! partition, or query), tombstone a stream, and administer retention
//! rules and field indexes.
//!
//! An append goes straight to its partition's leader when the partition
//! map knows it (see `routing`); events get their ids here, before the
//! first attempt, so a retried append is applied once. Subscriptions to
//! events are in `subscriptions`. Nothing here pages through results for
//! the caller: pass the response's cursor or offset back.

use esf_proto::uuid;

use crate::endpoint::EventsStub;
use crate::{Client, Result, pb};

impl Client {
    /// Appends `events` to `stream` atomically (`expected`: the stream's
    /// version check, `None` for any). Events without an id get a random
    /// one before the first attempt, so a retried append (by this call or
    /// by the caller with the same ids) is applied once.
    pub async fn append(
        &self,
        stream: &str,
        mut events: Vec<pb::EventData>,
        expected: Option<pb::ExpectedVersion>,
    ) -> Result<pb::AppendResponse> {
        for e in &mut events {
            if e.id.is_empty() {
                e.id = uuid::format(&uuid::new_v4());
            }
        }
        let req = pb::AppendRequest {
            stream: stream.to_string(),
            events,
            expected,
        };
        // Straight to the partition's leader when known (else any node
        // forwards it there).
        let leader = self.partition_leader(stream).await;
        let r = self
            .call_at(leader.as_deref(), "append", |mut c: EventsStub| {
                let r = req.clone();
                async move { c.append(r).await }
            })
            .await?;
        // The answer comes from the leader (a forwarded append too): learn it.
        if let Some(h) = &r.header {
            self.learn_partition_leader(r.partition, h.node_id);
        }
        Ok(r)
    }

    /// The event with `id` (give its stream if known: one partition is
    /// asked instead of all).
    pub async fn get_event(&self, id: &str, stream: &str) -> Result<pb::GetEventResponse> {
        let req = pb::GetEventRequest {
            id: id.to_string(),
            stream: stream.to_string(),
            ..Default::default()
        };
        self.ask("get event", req, |mut c: EventsStub, r| async move { c.get(r).await })
            .await
    }

    /// A stream's events.
    pub async fn read_stream(&self, req: pb::ReadStreamRequest) -> Result<pb::ReadStreamResponse> {
        self.ask("read stream", req, |mut c: EventsStub, r| async move {
            c.read_stream(r).await
        })
        .await
    }

    /// A partition's events from an offset.
    pub async fn read_partition(&self, req: pb::ReadPartitionRequest) -> Result<pb::ReadPartitionResponse> {
        self.ask("read partition", req, |mut c: EventsStub, r| async move {
            c.read_partition(r).await
        })
        .await
    }

    /// A page of events matching a query, across partitions; pass the
    /// response's cursor back (same filters) for the next page.
    pub async fn query_events(&self, req: pb::QueryEventsRequest) -> Result<pb::QueryEventsResponse> {
        self.ask(
            "query events",
            req,
            |mut c: EventsStub, r| async move { c.query(r).await },
        )
        .await
    }

    /// Tombstones a stream.
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: Option<pb::ExpectedVersion>,
    ) -> Result<pb::DeleteStreamResponse> {
        let req = pb::DeleteStreamRequest {
            stream: stream.to_string(),
            expected,
        };
        self.ask("delete stream", req, |mut c: EventsStub, r| async move {
            c.delete_stream(r).await
        })
        .await
    }

    /// Sets the retention rule of `rule.stream_prefix` (both limits 0:
    /// removes it). Idempotent, so retried like a read.
    pub async fn set_retention(&self, rule: pb::RetentionRule) -> Result<pb::SetRetentionResponse> {
        let req = pb::SetRetentionRequest { rule: Some(rule) };
        self.ask("set retention", req, |mut c: EventsStub, r| async move {
            c.set_retention(r).await
        })
        .await
    }

    /// The retention rules in force.
    pub async fn list_retention(&self) -> Result<pb::ListRetentionResponse> {
        self.ask(
            "list retention",
            pb::ListRetentionRequest { serializable: false },
            |mut c: EventsStub, r| async move { c.list_retention(r).await },
        )
        .await
    }

    /// Declares an index on a JSON field (dotted path) of event data.
    pub async fn create_index(&self, field: &str) -> Result<pb::CreateIndexResponse> {
        let req = pb::CreateIndexRequest { field: field.into() };
        self.ask("create index", req, |mut c: EventsStub, r| async move {
            c.create_index(r).await
        })
        .await
    }

    /// Drops a declared field index.
    pub async fn drop_index(&self, field: &str) -> Result<pb::DropIndexResponse> {
        let req = pb::DropIndexRequest { field: field.into() };
        self.ask("drop index", req, |mut c: EventsStub, r| async move {
            c.drop_index(r).await
        })
        .await
    }

    /// The declared field indexes and how far each partition the answering
    /// node holds has built them.
    pub async fn list_indexes(&self) -> Result<pb::ListIndexesResponse> {
        self.ask(
            "list indexes",
            pb::ListIndexesRequest {},
            |mut c: EventsStub, r| async move { c.list_indexes(r).await },
        )
        .await
    }
}
