//! openraft's `RaftStateMachine` over a [`MetaStore`].
//!
//! The state machine is persistent: each entry is applied in one RocksDB
//! batch with the applied log id. Snapshots are files streamed from a
//! RocksDB snapshot of the group's rows, fsynced and recorded as current in
//! the `snapshot` column family before openraft is told about them, so
//! openraft purges logs only below a durable snapshot (see
//! `snapshot_record`). Installing replaces the group's rows in one atomic,
//! fsynced batch.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};

use super::store::MetaStore;
use crate::snapshot_record::{self, Pacing};
use crate::types::{LogId, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

/// The meta group's state machine handle given to openraft. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetaStateMachine {
    store: Arc<MetaStore>,
    snapshots_built: Arc<AtomicU64>,
    pacing: Pacing,
}

impl MetaStateMachine {
    /// Wraps a store.
    pub fn new(store: Arc<MetaStore>) -> Self {
        MetaStateMachine {
            store,
            snapshots_built: Arc::new(AtomicU64::new(0)),
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
    pub fn store(&self) -> &Arc<MetaStore> {
        &self.store
    }
}

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

impl RaftSnapshotBuilder<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, file) = snapshot_record::build(self.store.clone()).await?;
        self.snapshots_built.fetch_add(1, Ordering::SeqCst);
        tracing::info!(group = self.store.group(), last_log_id = ?meta.last_log_id, bytes = file.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: file })
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = MetaStateMachine;

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
        let current = self.store.state().last_applied;
        if meta.last_log_id <= current {
            // openraft never asks this, but installing an older snapshot would
            // move the state machine back in time.
            tracing::warn!(group = self.store.group(), snapshot = ?meta.last_log_id, applied = ?current, "ignoring snapshot not newer than applied state");
            return Ok(());
        }
        self.store.install_snapshot(meta, &snapshot).await?;
        tracing::info!(group = self.store.group(), last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .store
            .load_snapshot()?
            .map(|(meta, file)| Snapshot { meta, snapshot: file }))
    }
}
