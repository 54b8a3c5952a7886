//! openraft's `RaftStateMachine` over a [`PartitionStore`]: persistent, one
//! RocksDB batch per entry with the applied log id; snapshots are the
//! partition's rows under one RocksDB snapshot, fsynced before openraft
//! learns of them (as the meta group's, see `meta::state_machine`).

use std::io::{self, Cursor};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};

use super::store::PartitionStore;
use crate::types::{LogId, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

/// A partition's state machine handle given to openraft. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PartitionStateMachine {
    store: Arc<PartitionStore>,
}

impl PartitionStateMachine {
    /// Wraps a store.
    pub fn new(store: Arc<PartitionStore>) -> Self {
        PartitionStateMachine { store }
    }
}

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

impl RaftSnapshotBuilder<TypeConfig> for PartitionStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (st, data) = self.store.snapshot_rows()?;
        let meta = SnapshotMeta {
            last_log_id: st.last_applied.clone(),
            last_membership: st.membership.clone(),
        };
        self.store.save_snapshot(&meta, &data).await?;
        tracing::info!(group = self.store.group(), last_log_id = ?meta.last_log_id, bytes = data.len(), "partition snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(data),
        })
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

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        if meta.last_log_id <= self.store.state().last_applied {
            return Ok(());
        }
        self.store.install_snapshot(meta, snapshot.get_ref()).await?;
        tracing::info!(group = self.store.group(), last_log_id = ?meta.last_log_id, "partition snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.store.load_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Cursor::new(data),
        }))
    }
}
