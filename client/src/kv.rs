//! The Config service: an etcd-style key-value store with history (put,
//! get/range, delete, txn, history, compact) and its one-shot watch.
//!
//! Writes go through the write path (a session per write, retried
//! safely); reads are linearizable unless the request asks otherwise. A
//! watch that survives the loss of its node is [`crate::ResumableWatch`],
//! opened by [`Client::watch_resumable`]. Typed option builders
//! (`PutOptions`, `Key::prefix`) are not here yet: the `*_with` methods
//! take the protobuf request.

use crate::endpoint::ConfigStub;
use crate::{Client, Result, ResumableWatch, Streaming, pb};

/// A `KeyRange` of one key.
pub fn key_range_key(key: Vec<u8>) -> pb::KeyRange {
    pb::KeyRange {
        kind: Some(pb::key_range::Kind::Key(key)),
    }
}

/// A `KeyRange` of every key with `prefix`.
pub fn key_range_prefix(prefix: Vec<u8>) -> pb::KeyRange {
    pb::KeyRange {
        kind: Some(pb::key_range::Kind::Prefix(prefix)),
    }
}

impl Client {
    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<pb::PutResponse> {
        self.put_with(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    /// Put with every option.
    pub async fn put_with(&self, req: pb::PutRequest) -> Result<pb::PutResponse> {
        self.write("put", req, |mut c: ConfigStub, r| async move { c.put(r).await })
            .await
    }

    /// Current value of `key` (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<(pb::ResponseHeader, Option<pb::KeyValue>)> {
        let req = pb::RangeRequest {
            range: Some(key_range_key(key.into())),
            ..Default::default()
        };
        let resp = self.range(req).await?;
        Ok((resp.header.unwrap_or_default(), resp.kvs.into_iter().next()))
    }

    /// Range read.
    pub async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse> {
        self.ask("range", req, |mut c: ConfigStub, r| async move { c.range(r).await })
            .await
    }

    /// Delete a key or range.
    pub async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        self.write("delete", req, |mut c: ConfigStub, r| async move { c.delete(r).await })
            .await
    }

    /// Transaction.
    pub async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.write("txn", req, |mut c: ConfigStub, r| async move { c.txn(r).await })
            .await
    }

    /// Versions of a key.
    pub async fn history(&self, req: pb::HistoryRequest) -> Result<pb::HistoryResponse> {
        self.ask("history", req, |mut c: ConfigStub, r| async move { c.history(r).await })
            .await
    }

    /// Compacts history below `revision`.
    pub async fn compact(&self, revision: u64) -> Result<pb::CompactResponse> {
        let req = pb::CompactRequest {
            revision,
            session: None,
        };
        self.write("compact", req, |mut c: ConfigStub, r| async move { c.compact(r).await })
            .await
    }

    /// Opens a watch on the first endpoint that answers. The stream ends
    /// (or yields an error) if that node goes away: resume with
    /// `start_revision` = last header revision + 1 (see [`Client::watch_from`]),
    /// or use [`Client::watch_resumable`].
    pub async fn watch(&self, req: pb::WatchRequest) -> Result<Streaming<pb::WatchResponse>> {
        self.ask("watch", req, |mut c: ConfigStub, r| async move { c.watch(r).await })
            .await
    }

    /// A watch that survives the loss of its node: see [`ResumableWatch`].
    /// With `start_revision` 0 it starts after the current revision.
    pub async fn watch_resumable(&self, mut req: pb::WatchRequest) -> Result<ResumableWatch> {
        if req.start_revision == 0 {
            // "From now" must mean one fixed revision, or a resume could skip
            // changes made before the first response.
            let r = self
                .range(pb::RangeRequest {
                    range: req.range.clone(),
                    count_only: true,
                    ..Default::default()
                })
                .await?;
            req.start_revision = r.header.map_or(0, |h| h.revision) + 1;
        }
        Ok(ResumableWatch::new(self.clone(), req))
    }

    /// The request that resumes a watch after a response with header
    /// revision `delivered`: every change up to it was seen.
    pub fn watch_from(req: &pb::WatchRequest, delivered: u64) -> pb::WatchRequest {
        pb::WatchRequest {
            start_revision: delivered + 1,
            ..req.clone()
        }
    }
}
