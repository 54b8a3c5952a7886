//! A running event partition on one node: proposals and reads with
//! deadlines, as the meta group's (see `crate::group`), without leases or
//! sessions (appends deduplicate by event id instead).

use std::sync::Arc;
use std::time::Duration;

use esf_storage::Db;
use openraft::RaftNetworkFactory;

use super::state_machine::PartitionStateMachine;
use super::store::{Direction, EventRecord, PartitionStore, StreamRecord};
use crate::command::*;
use crate::error::{Error, Result};
use crate::group::{Consistency, GroupOptions, linearize, not_leader_of, propose};
use crate::types::{LogStore, SnapshotData, TypeConfig};

/// A Raft node handle of an event partition.
pub type PartitionRaft = openraft::Raft<TypeConfig, PartitionStateMachine>;

/// One event partition on this node.
pub struct PartitionGroup {
    group: u32,
    raft: PartitionRaft,
    store: Arc<PartitionStore>,
    opts: GroupOptions,
}

impl std::fmt::Debug for PartitionGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionGroup").field("group", &self.group).finish()
    }
}

impl PartitionGroup {
    /// Opens the store of partition `group` and starts its openraft.
    pub async fn start<N>(db: Arc<Db>, group: u32, network: N, opts: GroupOptions) -> Result<Arc<PartitionGroup>>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = SnapshotData>,
    {
        assert_ne!(group, crate::group::META_GROUP, "group 0 is the meta group");
        let store = PartitionStore::open(db.clone(), group)?;
        let log = LogStore::new(db, group);
        let sm = PartitionStateMachine::new(store.clone());
        let raft = PartitionRaft::new(opts.node_id, opts.raft.clone(), network, log, sm)
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?;
        Ok(Arc::new(PartitionGroup {
            group,
            raft,
            store,
            opts,
        }))
    }

    /// The group id.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// The openraft handle.
    pub fn raft(&self) -> &PartitionRaft {
        &self.raft
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<PartitionStore> {
        &self.store
    }

    /// "Not the leader", naming the leader when known.
    pub fn not_leader_error(&self) -> Error {
        not_leader_of(&self.raft, self.group)
    }

    /// Proposes an append or stream delete and waits until it is applied.
    /// A rejection is [`Error::Rejected`].
    pub async fn write(&self, cmd: Command) -> Result<Response> {
        if let Op::Append(a) = &cmd.op {
            super::check_append(a)?;
        }
        let resp = propose(
            &self.raft,
            self.group,
            cmd,
            self.opts.request_timeout,
            Duration::from_millis(self.opts.raft.heartbeat_interval),
        )
        .await?;
        if let OpResult::Rejected(rej) = resp.result {
            return Err(Error::Rejected(rej));
        }
        Ok(resp)
    }

    async fn before_read(&self, c: Consistency) -> Result<()> {
        match c {
            Consistency::Linearizable => linearize(&self.raft, self.group, self.opts.request_timeout).await,
            Consistency::Serializable => Ok(()),
        }
    }

    /// The event with `id` (not in a deleted stream).
    pub async fn get(&self, id: &[u8; 16], c: Consistency) -> Result<Option<EventRecord>> {
        self.before_read(c).await?;
        Ok(self.store.get(id)?)
    }

    /// A stream's events (see [`PartitionStore::read_stream`]).
    pub async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        dir: Direction,
        limit: usize,
        c: Consistency,
    ) -> Result<(Vec<EventRecord>, StreamRecord)> {
        self.before_read(c).await?;
        self.store
            .read_stream(stream, from, dir, limit)?
            .map_err(Error::Rejected)
    }

    /// Events from `offset` on (see [`PartitionStore::read_partition`]).
    pub async fn read_partition(&self, offset: u64, limit: usize, c: Consistency) -> Result<(Vec<EventRecord>, u64)> {
        self.before_read(c).await?;
        Ok(self.store.read_partition(offset, limit)?)
    }

    /// Stops openraft.
    pub async fn shutdown(&self) -> Result<()> {
        self.raft.shutdown().await.map_err(|e| Error::Fatal(e.to_string()))
    }
}
