//! openraft's `RaftStateMachine`, once for every group: the meta group over
//! a [`MetaStore`](crate::meta::MetaStore), each event partition over a
//! [`PartitionStore`](crate::events::PartitionStore). What differs between
//! them is their store, behind [`GroupStore`].
//!
//! The state machine is persistent: each entry is applied in one RocksDB
//! batch with the applied log id. Snapshots are files streamed from a
//! RocksDB snapshot of the group's rows, fsynced and recorded as current in
//! the `snapshot` column family before openraft is told about them, so
//! openraft purges logs only below a durable snapshot (see
//! `snapshot_record`). Policy snapshots are paced by the size of the last
//! one ([`Pacing`]). Installing replaces the group's rows in one atomic,
//! fsynced batch; a snapshot not newer than the applied state is ignored.

use std::future::Future;
use std::io;
use std::sync::Arc;

use esf_storage::StorageError;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};

use crate::command::Response;
use crate::snapshot_record::{self, Pacing, SnapshotFile, SnapshotSource};
use crate::types::{Entry, LogId, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

/// What the state machine needs of a group's store besides its snapshot
/// rows ([`SnapshotSource`]).
pub(crate) trait GroupStore: SnapshotSource {
    /// Applies one committed entry in one RocksDB batch with its log id;
    /// returns its response. Deterministic: reads only the store and the
    /// entry.
    fn apply_entry(&self, entry: &Entry) -> Result<Response, StorageError>;

    /// Replaces the group's whole state with a snapshot, atomically and
    /// durably, and makes it the current snapshot (see
    /// [`SnapshotSource::install_file`]).
    fn install_snapshot(
        &self,
        meta: &SnapshotMeta,
        file: &SnapshotFile,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// A group's state machine handle given to openraft. Cheap to clone.
#[derive(Debug)]
pub struct GroupStateMachine<S> {
    store: Arc<S>,
    pacing: Pacing,
}

impl<S> Clone for GroupStateMachine<S> {
    fn clone(&self) -> Self {
        GroupStateMachine {
            store: self.store.clone(),
            pacing: self.pacing,
        }
    }
}

impl<S> GroupStateMachine<S> {
    /// Wraps a store.
    pub fn new(store: Arc<S>) -> Self {
        GroupStateMachine {
            store,
            pacing: Pacing::default(),
        }
    }

    /// Defers policy snapshots as `pacing` says (default: build whenever
    /// openraft asks).
    pub fn with_pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }
}

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

impl<S: GroupStore> RaftSnapshotBuilder<TypeConfig> for GroupStateMachine<S> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, file) = snapshot_record::build(self.store.clone()).await?;
        tracing::info!(group = self.store.snapshot_group(), last_log_id = ?meta.last_log_id, bytes = file.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: file })
    }
}

impl<S: GroupStore> RaftStateMachine<TypeConfig> for GroupStateMachine<S> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let meta = self.store.applied_meta();
        Ok((meta.last_log_id, meta.last_membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = self.store.apply_entry(&entry)?;
            if let Some(r) = responder {
                r.send(response);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if force {
            return Some(self.clone());
        }
        snapshot_record::policy_due(&*self.store, &self.pacing).then(|| self.clone())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        let group = self.store.snapshot_group();
        let applied = self.store.applied_meta().last_log_id;
        if meta.last_log_id <= applied {
            // openraft never asks this, but installing an older snapshot would
            // move the state machine back in time.
            tracing::warn!(group, snapshot = ?meta.last_log_id, applied = ?applied, "ignoring snapshot not newer than applied state");
            return Ok(());
        }
        self.store.install_snapshot(meta, &snapshot).await?;
        tracing::info!(group, last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .store
            .current_snapshot()?
            .map(|(meta, file)| Snapshot { meta, snapshot: file }))
    }
}
