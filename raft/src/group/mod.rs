//! A running meta group on one node: proposals, reads, headers, leases.
//!
//! - Writes go through `client_write` with a deadline; a rejection from the
//!   state machine comes back as [`Error::Rejected`], "not leader" as
//!   [`Error::NotLeader`] with the leader's id and address, a passed deadline
//!   as [`Error::Unavailable`] (outcome unknown: retry with the same session
//!   sequence and the state machine applies it once).
//! - Linearizable reads do a ReadIndex round (`ensure_linearizable`), which
//!   also waits for the local state machine to apply up to the read index,
//!   then read the store. Serializable reads read the local store at once.
//! - Every reply carries a [`ResponseHeader`].
//! - The lease keeper runs while this node leads (see [`crate::lease_keeper`]).
//! - [`GroupStateMachine`]: openraft's state machine of every group, the
//!   meta group's and each partition's (see [`state_machine`]).

pub mod coalesce;
pub mod state_machine;

pub use coalesce::CoalesceOptions;

pub use state_machine::GroupStateMachine;
pub(crate) use state_machine::GroupStore;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use esf_storage::Db;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardReason, RaftError};
use openraft::{RaftNetworkFactory, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::command::*;
use crate::error::{Error, Result};
use crate::lease_keeper::LeaseClock;
use crate::meta::MetaStore;
use crate::types::{LogStore, MetaRaft, NodeId, SnapshotMeta, TypeConfig};

/// Group id of the meta group.
pub const META_GROUP: u32 = 0;
/// Default deadline of a proposal or a linearizable read.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Lease keeper: longest time between two reconciliations with the store.
pub const LEASE_RECONCILE_INTERVAL: Duration = Duration::from_millis(500);

/// Header on every reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// Cluster id.
    pub cluster_id: String,
    /// Node that answered.
    pub node_id: NodeId,
    /// Store revision the reply reflects.
    pub revision: u64,
    /// Raft term of the answering node.
    pub raft_term: u64,
}

/// Read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// ReadIndex: reflects every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// Local state, possibly stale; works without a leader.
    Serializable,
}

/// How to start a group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Cluster id for headers.
    pub cluster_id: String,
    /// This node.
    pub node_id: NodeId,
    /// openraft configuration.
    pub raft: Arc<openraft::Config>,
    /// Deadline of proposals and linearizable reads.
    pub request_timeout: Duration,
    /// Storage quota of the state machines (`sm` column family), bytes.
    pub quota_bytes: u64,
    /// Snapshot bytes that each add openraft's snapshot interval to the
    /// entries a group waits before its next snapshot (see
    /// [`crate::snapshot_record::Pacing`]); 0: snapshot at every interval.
    pub snapshot_step_bytes: u64,
    /// How the meta leader coalesces concurrent writes into one entry.
    pub coalesce: CoalesceOptions,
}

/// The meta group of one node.
pub struct MetaGroup {
    cluster_id: std::sync::RwLock<String>,
    raft: MetaRaft,
    store: Arc<MetaStore>,
    opts: GroupOptions,
    leases: Arc<Mutex<LeaseClock>>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    coalescer: Mutex<Option<Arc<coalesce::Coalescer>>>,
}

impl std::fmt::Debug for MetaGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaGroup")
            .field("node_id", &self.opts.node_id)
            .finish()
    }
}

/// Starts openraft for `group` over `store`, with its log in `db` and
/// policy snapshots paced as `opts` say.
pub(crate) async fn start_raft<S, N>(
    db: Arc<Db>,
    group: u32,
    store: Arc<S>,
    network: N,
    opts: &GroupOptions,
) -> Result<openraft::Raft<TypeConfig, GroupStateMachine<S>>>
where
    S: GroupStore,
    N: RaftNetworkFactory<TypeConfig>,
    N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = crate::types::SnapshotData>,
{
    let log = LogStore::new(db, group);
    let pacing = crate::snapshot_record::Pacing::new(&opts.raft, opts.snapshot_step_bytes);
    let sm = GroupStateMachine::new(store).with_pacing(pacing);
    // openraft's tasks log inside this span (its own core span is at debug
    // level, and it falls back to the current one): every line of a group
    // says which group it is (`raft{group=3}`).
    let span = tracing::info_span!("raft", group);
    openraft::Raft::new(opts.node_id, opts.raft.clone(), network, log, sm)
        .instrument(span)
        .await
        .map_err(|e| Error::Fatal(e.to_string()))
}

/// Refuses a write that adds data once the state machines (`sm` column
/// family, every group) use more than `quota` bytes.
pub(crate) fn check_quota(db: &Db, quota: u64) -> Result<()> {
    let used = db.cf_size_bytes(esf_storage::keys::CF_SM);
    if used > quota {
        return Err(Error::NoSpace { used, quota });
    }
    Ok(())
}

/// Proposes `cmd` to `raft` (group `group`) and waits until it is applied,
/// within `timeout`. A leader without its quorum lease yet (just elected)
/// is waited for, `heartbeat` at a time, until the deadline: the command
/// was not appended, so retrying is safe.
pub(crate) async fn propose<SM>(
    raft: &openraft::Raft<TypeConfig, SM>,
    group: u32,
    cmd: Command,
    timeout: Duration,
    heartbeat: Duration,
) -> Result<Response>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let fut = raft.client_write(cmd.clone());
        match tokio::time::timeout_at(deadline, fut).await {
            Err(_) => return Err(Error::Unavailable(format!("write not applied within {timeout:?}"))),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                if f.reason != ForwardReason::LeaseExpired {
                    return Err(not_leader(group, &f));
                }
                if Instant::now() >= deadline {
                    return Err(Error::Unavailable(
                        "this leader cannot reach a quorum (its leader lease expired)".into(),
                    ));
                }
                let mut m = raft.metrics();
                let _ = tokio::time::timeout_at(deadline.min(Instant::now() + heartbeat), m.changed()).await;
            }
            Ok(Err(RaftError::APIError(e))) => return Err(Error::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(f))) => return Err(Error::Fatal(f.to_string())),
            Ok(Ok(r)) => return Ok(r.data),
        }
    }
}

/// [`propose`] with `opts`' deadline and heartbeat; a state machine
/// rejection comes back as [`Error::Rejected`].
pub(crate) async fn propose_checked<SM>(
    raft: &openraft::Raft<TypeConfig, SM>,
    group: u32,
    cmd: Command,
    opts: &GroupOptions,
) -> Result<Response>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    let heartbeat = Duration::from_millis(opts.raft.heartbeat_interval);
    let resp = propose(raft, group, cmd, opts.request_timeout, heartbeat).await?;
    match resp.result {
        OpResult::Rejected(rej) => Err(Error::Rejected(rej)),
        _ => Ok(resp),
    }
}

/// ReadIndex on `raft` (group `group`) within `timeout`: afterwards the
/// local state reflects every write acknowledged before the call.
pub(crate) async fn linearize<SM>(raft: &openraft::Raft<TypeConfig, SM>, group: u32, timeout: Duration) -> Result<()>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    read_index(raft, group, timeout).await.map(|_| ())
}

/// On the leader: confirms leadership with a quorum (ReadIndex) and waits
/// until it applied the read index; returns that index (a replica that has
/// applied it may answer a linearizable read from its own state).
pub(crate) async fn read_index<SM>(raft: &openraft::Raft<TypeConfig, SM>, group: u32, timeout: Duration) -> Result<u64>
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    let fut = raft.ensure_linearizable(ReadPolicy::ReadIndex);
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(Error::Unavailable(format!(
            "read index not confirmed within {timeout:?}"
        ))),
        Ok(Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(f)))) => {
            Err(not_leader(group, &f))
        }
        Ok(Err(RaftError::APIError(e))) => Err(Error::Unavailable(e.to_string())),
        Ok(Err(RaftError::Fatal(f))) => Err(Error::Fatal(f.to_string())),
        Ok(Ok(read)) => Ok(read.log_id().index),
    }
}

/// The "not the leader" error of `raft`'s current view, naming the leader
/// and its address when known.
pub(crate) fn not_leader_of<SM>(raft: &openraft::Raft<TypeConfig, SM>, group: u32) -> Error
where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    let m = raft.metrics().borrow_watched().clone();
    let leader_addr = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
    Error::NotLeader {
        group,
        leader: m.current_leader,
        leader_addr,
    }
}

fn not_leader(group: u32, f: &openraft::error::ForwardToLeader<TypeConfig>) -> Error {
    Error::NotLeader {
        group,
        leader: f.leader_id,
        leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
    }
}

impl MetaGroup {
    /// Opens the store, starts openraft and the lease keeper.
    pub async fn start<N>(db: Arc<Db>, network: N, opts: GroupOptions) -> Result<Arc<MetaGroup>>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = crate::types::SnapshotData>,
    {
        let store = MetaStore::open(db.clone(), META_GROUP)?;
        let raft = start_raft(db, META_GROUP, store.clone(), network, &opts).await?;
        let coalescer = coalesce::Coalescer::start(
            raft.clone(),
            META_GROUP,
            opts.coalesce,
            opts.request_timeout,
            Duration::from_millis(opts.raft.heartbeat_interval),
        )
        .map(Arc::new);
        let group = Arc::new(MetaGroup {
            coalescer: Mutex::new(coalescer),
            cluster_id: std::sync::RwLock::new(opts.cluster_id.clone()),
            raft,
            store,
            opts,
            leases: Arc::default(),
            keeper: Mutex::new(None),
        });
        let handle = tokio::spawn(run_lease_keeper(Arc::downgrade(&group)));
        *group.keeper.lock().expect("keeper lock") = Some(handle);
        Ok(group)
    }

    /// The openraft handle (membership changes, metrics, RPC entry points).
    pub fn raft(&self) -> &MetaRaft {
        &self.raft
    }

    /// The store.
    pub fn store(&self) -> &Arc<MetaStore> {
        &self.store
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.opts.node_id
    }

    /// Sets the cluster id reported in headers (once the node joins).
    pub fn set_cluster_id(&self, id: &str) {
        *self.cluster_id.write().expect("cluster id lock") = id.to_string();
    }

    /// A header for `revision`.
    pub fn header(&self, revision: u64) -> ResponseHeader {
        let term = self.raft.metrics().borrow_watched().current_term;
        ResponseHeader {
            cluster_id: self.cluster_id.read().expect("cluster id lock").clone(),
            node_id: self.opts.node_id,
            revision,
            raft_term: term,
        }
    }

    /// Proposes a command and waits for it to be applied. A state machine
    /// rejection is returned as [`Error::Rejected`].
    pub async fn write(&self, cmd: Command) -> Result<(ResponseHeader, Response)> {
        self.store.limits().check_op(&cmd.op)?;
        if adds_data(&cmd.op) {
            check_quota(self.store.db(), self.opts.quota_bytes)?;
        }
        let coalescer = if cmd.op.coalescable() {
            self.coalescer.lock().expect("coalescer lock").clone()
        } else {
            None
        };
        let resp = match coalescer {
            Some(c) => match c.propose(cmd).await? {
                Response {
                    result: OpResult::Rejected(rej),
                    ..
                } => return Err(Error::Rejected(rej)),
                r => r,
            },
            None => propose_checked(&self.raft, META_GROUP, cmd, &self.opts).await?,
        };
        if let OpResult::LeaseGranted { id, ttl_secs } = resp.result {
            self.leases
                .lock()
                .expect("lease clock lock")
                .granted(id, Duration::from_secs(ttl_secs), Instant::now());
        }
        Ok((self.header(resp.revision), resp))
    }

    /// On the leader: records (`Op::MemberReplicated`) every member that has
    /// acknowledged entries, and this node, once. The record outlives
    /// leadership changes, so a member that later comes back with an empty
    /// data dir is recognised as wiped whoever leads then.
    async fn record_replicated_members(&self, recorded: &mut std::collections::HashSet<u64>) {
        let targets: Vec<u64> = {
            let m = self.raft.metrics().borrow_watched().clone();
            let mut t = vec![self.opts.node_id];
            if let Some(rep) = &m.replication {
                t.extend(rep.iter().filter(|(_, matched)| matched.is_some()).map(|(id, _)| *id));
            }
            t
        };
        for id in targets {
            if recorded.contains(&id) {
                continue;
            }
            match self.store.member_replicated(id) {
                Ok(true) => {
                    recorded.insert(id);
                }
                Ok(false) => match self.write(Command::new(Op::MemberReplicated { node_id: id })).await {
                    Ok(_) => {
                        info!(node = id, "recorded that this member holds replicated entries");
                        recorded.insert(id);
                    }
                    Err(e) => warn!(node = id, error = %e, "could not record a replicated member yet"),
                },
                Err(e) => warn!(node = id, error = %e, "cannot read replicated members"),
            }
        }
    }

    /// Bytes the state machines use, as counted against the quota.
    pub fn quota_used(&self) -> u64 {
        self.store.db().cf_size_bytes(esf_storage::keys::CF_SM)
    }

    /// Whether writes that add data are refused (the quota alarm). Clears
    /// itself once deletes or compaction bring usage under the quota.
    pub fn quota_exceeded(&self) -> bool {
        self.quota_used() > self.opts.quota_bytes
    }

    /// The configured quota, bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.opts.quota_bytes
    }

    /// Waits until reads here reflect every write acknowledged before now.
    pub async fn linearize(&self) -> Result<()> {
        linearize(&self.raft, META_GROUP, self.opts.request_timeout).await
    }

    async fn before_read(&self, c: Consistency) -> Result<()> {
        match c {
            Consistency::Linearizable if crate::failpoint::active("local-reads") => Ok(()),
            Consistency::Linearizable => self.linearize().await,
            Consistency::Serializable => Ok(()),
        }
    }

    /// Range read.
    pub async fn range(&self, req: &RangeRequest, c: Consistency) -> Result<(ResponseHeader, RangeResult)> {
        self.before_read(c).await?;
        let (res, rev) = self.store.range(req)?;
        Ok((self.header(rev), res))
    }

    /// Versions of one key with revision in `[from, to]` (0 = current).
    pub async fn history(
        &self,
        key: &[u8],
        from: u64,
        to: u64,
        c: Consistency,
    ) -> Result<(ResponseHeader, Vec<KeyValue>)> {
        self.before_read(c).await?;
        let (kvs, rev) = self.store.history(key, from, to)?;
        Ok((self.header(rev), kvs))
    }

    /// The "not the leader" error for this node's current view, naming the
    /// leader and its address when known.
    pub fn not_leader_error(&self) -> Error {
        not_leader_of(&self.raft, META_GROUP)
    }

    /// Restarts a lease's countdown; only the leader can. Returns the TTL.
    pub async fn lease_keepalive(&self, id: u64) -> Result<(ResponseHeader, Duration)> {
        if !self.raft.is_leader() {
            return Err(self.not_leader_error());
        }
        let now = Instant::now();
        let ttl = {
            let mut clock = self.leases.lock().expect("lease clock lock");
            match clock.keepalive(id, now) {
                Some(ttl) => Some(ttl),
                None => {
                    // Granted through another leader and not yet reconciled.
                    match self.store.lease(id)? {
                        Some((rec, _)) => {
                            let ttl = Duration::from_secs(rec.ttl_secs);
                            clock.granted(id, ttl, now);
                            Some(ttl)
                        }
                        None => None,
                    }
                }
            }
        };
        match ttl {
            Some(ttl) => Ok((self.header(self.store.revision()), ttl)),
            None => Err(Error::Rejected(Rejection::LeaseNotFound(id))),
        }
    }

    /// Time left on a lease as counted by this leader (`None` on a follower).
    pub fn lease_remaining(&self, id: u64) -> Option<Duration> {
        if !self.raft.is_leader() {
            return None;
        }
        self.leases
            .lock()
            .expect("lease clock lock")
            .remaining(id, Instant::now())
    }

    /// Stops the lease keeper and openraft.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(h) = self.keeper.lock().expect("keeper lock").take() {
            h.abort();
        }
        self.coalescer.lock().expect("coalescer lock").take();
        self.raft.shutdown().await.map_err(|e| Error::Fatal(e.to_string()))
    }
}

/// Seeds the empty database of a new node from a meta snapshot taken from
/// any cluster (the offline restore): the store holds the snapshot's state
/// with `node_id` at `addr` as the only member, the log is purged up to the
/// snapshot's last entry, and the vote carries the snapshot's term, so the
/// node starts as a one-member cluster that elects itself in a later term
/// and keeps every revision. Fails, writing nothing, if the database
/// already holds group state or the snapshot does not decode.
pub async fn seed_from_snapshot(
    db: Arc<Db>,
    data: &[u8],
    node_id: NodeId,
    addr: &str,
) -> Result<crate::meta::store::SnapshotSummary> {
    let store = MetaStore::open(db.clone(), META_GROUP)?;
    let mut log = restore_log(db, META_GROUP)?;
    let (meta, summary) = store.seed_from_snapshot(data, node_id, addr).await?;
    seed_log(&mut log, META_GROUP, &meta, node_id).await?;
    Ok(summary)
}

/// How a restore's errors about `group` begin.
fn restore_context(group: u32) -> String {
    if group == META_GROUP {
        String::new()
    } else {
        format!("partition {group}: ")
    }
}

/// The Raft log of `group` for an offline restore: an error unless it is
/// empty (no entry, no vote), so a restore never overwrites a node's state.
pub(crate) fn restore_log(db: Arc<Db>, group: u32) -> Result<LogStore> {
    let log = LogStore::new(db, group);
    if log.log_state()?.last_log_id.is_some() || log.vote()?.is_some() {
        return Err(Error::Unavailable(format!(
            "{}the data directory already holds a Raft log: restore needs a new, empty one",
            restore_context(group)
        )));
    }
    Ok(log)
}

/// After a restore seeded `group`'s store with the snapshot `meta`: the
/// vote carries the snapshot's term (for `node_id`) and the log is purged
/// up to its last entry, so the node elects itself in a later term.
pub(crate) async fn seed_log(log: &mut LogStore, group: u32, meta: &SnapshotMeta, node_id: NodeId) -> Result<()> {
    use openraft::storage::RaftLogStorage;
    let last = meta.last_log_id.clone().expect("a seeded snapshot has a last log id");
    let io = |what: &str, e: std::io::Error| Error::Unavailable(format!("{}{what}: {e}", restore_context(group)));
    log.save_vote(&openraft::Vote::new(last.leader_id.term, node_id))
        .await
        .map_err(|e| io("save vote", e))?;
    log.purge(last).await.map_err(|e| io("purge log", e))
}

/// While this node leads: reconcile the lease clock with the store, and
/// propose a revoke for every lease past its deadline. Wakes at the earliest
/// deadline, on leadership change, or every `LEASE_RECONCILE_INTERVAL`.
async fn run_lease_keeper(group: std::sync::Weak<MetaGroup>) {
    let mut metrics = match group.upgrade() {
        Some(g) => g.raft.metrics(),
        None => return,
    };
    let mut leading_term: Option<u64> = None;
    // Members already known to be recorded by `MemberReplicated`.
    let mut recorded = std::collections::HashSet::new();
    loop {
        let Some(g) = group.upgrade() else { return };
        let (state, term) = {
            let m = metrics.borrow_watched();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            if leading_term.take().is_some() {
                g.leases.lock().expect("lease clock lock").clear();
                debug!("lease keeper: not leader, countdowns dropped");
            }
        } else {
            if leading_term != Some(term) {
                // New leadership: make sure the store reflects every committed
                // entry before loading leases, then start full countdowns.
                if g.linearize().await.is_err() {
                    drop(g);
                    let _ = tokio::time::timeout(LEASE_RECONCILE_INTERVAL, metrics.changed()).await;
                    continue;
                }
                g.leases.lock().expect("lease clock lock").clear();
                recorded.clear();
                leading_term = Some(term);
                info!(term, "lease keeper: leading, countdowns restarted from full ttl");
            }
            match g.store.leases() {
                Ok(leases) => g
                    .leases
                    .lock()
                    .expect("lease clock lock")
                    .reconcile(&leases, Instant::now()),
                Err(e) => warn!(error = %e, "lease keeper: cannot read leases"),
            }
            g.record_replicated_members(&mut recorded).await;
            let expired = g.leases.lock().expect("lease clock lock").expired(Instant::now());
            for id in expired {
                let cmd = Command::new(Op::LeaseRevoke { id, expired: true });
                match g.write(cmd).await {
                    Ok(_) | Err(Error::Rejected(Rejection::LeaseNotFound(_))) => {
                        info!(lease = id, "lease expired and revoked");
                        g.leases.lock().expect("lease clock lock").remove(id);
                    }
                    Err(e) => warn!(lease = id, error = %e, "lease expiry not committed yet"),
                }
            }
        }
        let next = g.leases.lock().expect("lease clock lock").next_deadline();
        drop(g);
        let wake = match next {
            Some(d) => d.min(Instant::now() + LEASE_RECONCILE_INTERVAL),
            None => Instant::now() + LEASE_RECONCILE_INTERVAL,
        };
        // Metrics change on every apply; only a role or term change, a
        // member acknowledging for the first time (to record it), or the
        // timer needs another pass.
        let acked = |m: &openraft::RaftMetrics<TypeConfig>| {
            m.replication
                .as_ref()
                .map_or(0, |r| r.values().filter(|v| v.is_some()).count())
        };
        let seen = (state, term, acked(&metrics.borrow_watched()));
        loop {
            tokio::select! {
                r = metrics.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let m = metrics.borrow_watched();
                    if (m.state, m.current_term, acked(&m)) != seen {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(wake) => break,
            }
        }
    }
}

/// Whether `op` can add data (and so is refused past the quota). Deletes,
/// lease revokes and compaction free space and always run.
fn adds_data(op: &Op) -> bool {
    match op {
        Op::Put(_) | Op::LeaseGrant { .. } => true,
        // ESF's own streams (the audit trail) keep being written: past the
        // quota the audit relay must still pass the revisions a compaction
        // needs, or no compaction could free space.
        Op::Append(a) => !a.stream.starts_with('$'),
        Op::Txn(t) => t.success.iter().chain(&t.failure).any(|o| matches!(o, TxnOp::Put(_))),
        Op::AsUser { op, .. } => adds_data(op),
        Op::Batch(cmds) => cmds.iter().any(|c| adds_data(&c.op)),
        // Auth stays manageable past the quota (its rows are small).
        Op::Auth(_)
        | Op::Delete(_)
        | Op::Compact { .. }
        | Op::LeaseRevoke { .. }
        | Op::SetLimits(_)
        | Op::MemberReplicated { .. }
        | Op::RecordPartitions { .. }
        | Op::PlacePartitions { .. }
        | Op::AuditCursor { .. }
        | Op::RemoveEvents { .. }
        | Op::IndexField { .. }
        | Op::DeleteStream { .. } => false,
    }
}
