//! A running event partition on one node: proposals and reads with
//! deadlines, as the meta group's (see `crate::group`), without leases or
//! sessions (appends deduplicate by event id instead).

use std::sync::Arc;

use esf_storage::Db;
use openraft::RaftNetworkFactory;

use super::PartitionStateMachine;
use super::store::{Direction, EventRecord, PartitionStore, StreamRecord};
use crate::command::*;
use crate::error::{Error, Result};
use crate::group::coalesce::Coalescer;
use crate::group::{
    Consistency, GroupOptions, linearize, not_leader_of, propose_checked, restore_log, seed_log, start_raft,
};
use crate::types::{SnapshotData, TypeConfig};

/// A Raft node handle of an event partition.
pub type PartitionRaft = openraft::Raft<TypeConfig, PartitionStateMachine>;

/// One event partition on this node.
pub struct PartitionGroup {
    group: u32,
    raft: PartitionRaft,
    store: Arc<PartitionStore>,
    opts: GroupOptions,
    /// Coalesces concurrent appends into one entry (see
    /// `crate::group::coalesce`).
    coalescer: Option<Coalescer>,
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
        let raft = start_raft(db, group, store.clone(), network, &opts).await?;
        let coalescer = Coalescer::start(
            raft.clone(),
            group,
            opts.coalesce,
            opts.request_timeout,
            std::time::Duration::from_millis(opts.raft.heartbeat_interval),
        );
        Ok(Arc::new(PartitionGroup {
            group,
            raft,
            store,
            opts,
            coalescer,
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
            // The quota covers every state machine of the node; ESF's own
            // streams are exempt (see `adds_data` of the meta group).
            if !a.stream.starts_with('$') {
                crate::group::check_quota(self.store.db(), self.opts.quota_bytes)?;
            }
        }
        match (&cmd.op, &self.coalescer) {
            (Op::Append(_), Some(c)) => match c.propose(cmd).await? {
                Response {
                    result: OpResult::Rejected(rej),
                    ..
                } => Err(Error::Rejected(rej)),
                r => Ok(r),
            },
            _ => propose_checked(&self.raft, self.group, cmd, &self.opts).await,
        }
    }

    async fn before_read(&self, c: Consistency) -> Result<()> {
        match c {
            Consistency::Linearizable => linearize(&self.raft, self.group, self.opts.request_timeout).await,
            Consistency::Serializable => Ok(()),
        }
    }

    /// A page of a query (see [`PartitionStore::query`]).
    pub async fn query(
        &self,
        f: &super::query::Filter,
        from: super::query::Bound,
        descending: bool,
        limit: usize,
        c: Consistency,
    ) -> Result<(Vec<EventRecord>, bool, super::query::QueryStats)> {
        let f = f.clone();
        self.scan(c, move |s| s.query(&f, from, descending, limit)).await
    }

    /// Positions of a page of a query its index decides alone (see
    /// [`PartitionStore::query_positions`]).
    pub async fn query_positions(
        &self,
        f: &super::query::Filter,
        from: super::query::Bound,
        descending: bool,
        limit: usize,
        c: Consistency,
    ) -> Result<(Vec<(u64, u64)>, bool, super::query::QueryStats)> {
        let f = f.clone();
        self.scan(c, move |s| s.query_positions(&f, from, descending, limit))
            .await
    }

    /// Runs a read that may scan many rows, after the consistency barrier,
    /// off the async workers.
    async fn scan<T: Send + 'static>(
        &self,
        c: Consistency,
        read: impl FnOnce(&PartitionStore) -> std::result::Result<T, esf_storage::StorageError> + Send + 'static,
    ) -> Result<T> {
        self.before_read(c).await?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|e| Error::Fatal(format!("query task: {e}")))?
            .map_err(Into::into)
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

    /// ReadIndex on this partition (its leader only).
    pub async fn linearize(&self) -> Result<()> {
        linearize(&self.raft, self.group, self.opts.request_timeout).await
    }

    /// On the leader: the read index of a linearizable read (leadership
    /// confirmed by a quorum), for a follower to wait for.
    pub async fn read_index(&self) -> Result<u64> {
        crate::group::read_index(&self.raft, self.group, self.opts.request_timeout).await
    }

    /// Waits (up to the request timeout) until this replica has applied
    /// `index`: then its own state answers a read whose read index that is.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        self.raft
            .wait(Some(self.opts.request_timeout))
            .applied_index_at_least(Some(index), "follower read")
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(format!("partition {}: read index {index} not applied: {e}", self.group)))
    }

    /// Stops openraft.
    pub async fn shutdown(&self) -> Result<()> {
        self.raft.shutdown().await.map_err(|e| Error::Fatal(e.to_string()))
    }
}

/// Seeds the empty partition `group` of a new node from a partition
/// snapshot (the offline restore; see `crate::group::seed_from_snapshot`).
/// A partition that never applied anything is left empty (the restored
/// node initializes it).
pub async fn seed_from_snapshot(
    db: Arc<Db>,
    group: u32,
    data: &[u8],
    node_id: u64,
    addr: &str,
) -> Result<super::store::PartitionSummary> {
    let summary = super::store::summarize_snapshot(group, data)?;
    let store = PartitionStore::open(db.clone(), group)?;
    let mut log = restore_log(db, group)?;
    let Some(meta) = store.seed_from_snapshot(data, node_id, addr).await? else {
        return Ok(summary);
    };
    seed_log(&mut log, group, &meta, node_id).await?;
    Ok(summary)
}
