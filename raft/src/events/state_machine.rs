//! openraft's `RaftStateMachine` over a [`PartitionStore`]: persistent, one
//! RocksDB batch per entry with the applied log id; snapshots are the
//! partition's rows under one RocksDB snapshot, fsynced before openraft
//! learns of them (as the meta group's, see `meta::state_machine`).

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};

use super::store::PartitionStore;
use crate::snapshot_record::{self, Pacing};
use crate::types::{LogId, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

/// A partition's state machine handle given to openraft. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PartitionStateMachine {
    store: Arc<PartitionStore>,
    pacing: Pacing,
}

impl PartitionStateMachine {
    /// Wraps a store; policy snapshots are deferred as `pacing` says.
    pub fn new(store: Arc<PartitionStore>, pacing: Pacing) -> Self {
        PartitionStateMachine { store, pacing }
    }
}

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

impl RaftSnapshotBuilder<TypeConfig> for PartitionStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, file) = snapshot_record::build(self.store.clone()).await?;
        tracing::info!(group = self.store.group(), last_log_id = ?meta.last_log_id, bytes = file.len(), "partition snapshot built");
        Ok(Snapshot { meta, snapshot: file })
    }
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = PartitionStateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.store.state();
        Ok((st.last_applied, st.membership))
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
        if meta.last_log_id <= self.store.state().last_applied {
            return Ok(());
        }
        self.store.install_snapshot(meta, &snapshot).await?;
        tracing::info!(group = self.store.group(), last_log_id = ?meta.last_log_id, "partition snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .store
            .load_snapshot()?
            .map(|(meta, file)| Snapshot { meta, snapshot: file }))
    }
}
