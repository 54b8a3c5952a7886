//! The node's event partitions: which partition a stream lives in, the
//! reconciler that keeps every partition's Raft membership equal to the
//! meta group's and spreads their leaders, and their status.
//!
//! Placement: every member of the meta group (voter or learner) holds every
//! partition in the same role. The desired state is the meta membership
//! itself, so the reconciler is idempotent and resumable: each node, for
//! each partition it leads, adds missing members as learners, replaces the
//! voters with the meta voters and removes nodes that left meta. The meta
//! leader initializes partitions that have no membership yet (a restored
//! cluster) and records the partition count in meta.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use esf_client::pb;
use esf_raft::command::{Command, Op};
use esf_raft::events::{PartitionGroup, PartitionRaft};
use esf_raft::group::MetaGroup;
use esf_raft::openraft::async_runtime::WatchReceiver;
use esf_raft::openraft::{BasicNode, ServerState};
use tracing::{info, warn};

/// Default number of event partitions of a new cluster.
pub const DEFAULT_PARTITIONS: u32 = 8;
/// Most event partitions a cluster may have.
pub const MAX_PARTITIONS: u32 = 256;
/// Longest pause between two reconciler passes.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// Pause between two checks that a node being removed leads no partition.
pub const HAND_OVER_POLL: Duration = Duration::from_millis(100);
/// Deadline of one membership step of one partition.
pub const RECONCILE_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The partitions of this node: group `g` is `[g - 1]`.
pub type Partitions = Arc<Vec<Arc<PartitionGroup>>>;

/// The partition count recorded in the local meta state, if any.
pub fn recorded_partitions(meta: &MetaGroup) -> Option<u32> {
    meta.store().partitions().ok().flatten()
}

pub use esf_client::partition_of;

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Status of one openraft group.
pub fn group_status<SM>(group: u32, raft: &esf_raft::openraft::Raft<esf_raft::types::TypeConfig, SM>) -> pb::GroupStatus
where
    SM: esf_raft::openraft::storage::RaftStateMachine<esf_raft::types::TypeConfig>,
{
    let m = raft.metrics().borrow_watched().clone();
    let mem = m.membership_config.membership();
    let voters: Vec<u64> = mem.voter_ids().collect();
    let learners: Vec<u64> = mem.learner_ids().collect();
    pb::GroupStatus {
        voters,
        learners,
        group,
        role: role(m.state).into(),
        term: m.current_term,
        leader_id: m.current_leader.unwrap_or(0),
        commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
        applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
        last_log_index: m.last_log_index.unwrap_or(0),
        snapshot_index: m.snapshot.as_ref().map_or(0, |l| l.index),
    }
}

/// (voters, every node) of a group's current membership.
fn membership_of<SM>(
    raft: &esf_raft::openraft::Raft<esf_raft::types::TypeConfig, SM>,
) -> (BTreeSet<u64>, BTreeMap<u64, BasicNode>)
where
    SM: esf_raft::openraft::storage::RaftStateMachine<esf_raft::types::TypeConfig>,
{
    let m = raft.metrics().borrow_watched().clone();
    let mem = m.membership_config.membership();
    (
        mem.voter_ids().collect(),
        mem.nodes().map(|(id, n)| (*id, n.clone())).collect(),
    )
}

/// Initializes every partition of a new cluster with `members`. Called
/// before the meta group is initialized, so a crash in between leaves a
/// cluster whose formation simply runs again (an initialized partition
/// refuses a second initialize, which is ignored).
pub async fn initialize_all(partitions: &Partitions, members: &BTreeMap<u64, BasicNode>) {
    for p in partitions.iter() {
        if let Err(e) = p.raft().initialize(members.clone()).await {
            warn!(group = p.group(), error = %e, "partition not initialized (the reconciler retries)");
        }
    }
}

/// Whether voter `target` of a group this node leads has every entry of
/// the leader's log (a transfer to a lagging node leaves the group without
/// a leader until an election).
fn caught_up(raft: &PartitionRaft, target: u64) -> bool {
    let m = raft.metrics().borrow_watched().clone();
    let last = m.last_log_index;
    m.replication
        .as_ref()
        .and_then(|r| r.get(&target).cloned())
        .flatten()
        .is_some_and(|matched| Some(matched.index) >= last)
}

/// On shutdown: asks a caught-up voter to take over every partition this
/// node leads (without waiting: the meta hand-over that follows waits).
pub async fn hand_over_all(partitions: &Partitions) {
    for p in partitions.iter().filter(|p| p.raft().is_leader()) {
        let (voters, _) = membership_of(p.raft());
        let me = p.raft().metrics().borrow_watched().id;
        let target = voters
            .iter()
            .copied()
            .find(|v| *v != me && caught_up(p.raft(), *v))
            .or_else(|| voters.iter().copied().find(|v| *v != me));
        if let Some(to) = target {
            if let Err(e) = p.raft().trigger().transfer_leader(to).await {
                warn!(group = p.group(), error = %e, "partition leader transfer not started");
            }
        }
    }
}

/// Brings partition `p`'s membership to the meta membership; only on its
/// leader. One step per call (add learners, or replace voters, or remove
/// leftovers); the next pass continues.
async fn reconcile_partition(p: &PartitionGroup, voters: &BTreeSet<u64>, nodes: &BTreeMap<u64, BasicNode>) {
    let raft: &PartitionRaft = p.raft();
    let (pv, pn) = membership_of(raft);
    let step = async {
        for (id, node) in nodes {
            if !pn.contains_key(id) {
                info!(group = p.group(), node = id, "partition: adding member as learner");
                raft.add_learner(*id, node.clone(), true)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
        }
        if &pv != voters {
            info!(group = p.group(), from = ?pv, to = ?voters, "partition: replacing voters");
            raft.change_membership(voters.clone(), false)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let gone: BTreeSet<u64> = pn.keys().filter(|id| !nodes.contains_key(id)).copied().collect();
        if !gone.is_empty() {
            info!(group = p.group(), nodes = ?gone, "partition: removing nodes that left the cluster");
            raft.change_membership(esf_raft::openraft::ChangeMembers::RemoveNodes(gone), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    match tokio::time::timeout(RECONCILE_STEP_TIMEOUT, step).await {
        Err(_) => warn!(group = p.group(), "partition membership step timed out; retrying"),
        Ok(Err(e)) => warn!(group = p.group(), error = %e, "partition membership step failed; retrying"),
        Ok(Ok(())) => {}
    }
}

/// If this node leads more partitions than its share, hands one to the
/// voter that leads the fewest (by this node's view of every partition).
async fn spread_leaders(me: u64, partitions: &Partitions, voters: &BTreeSet<u64>) {
    if voters.len() < 2 {
        return;
    }
    let mut led: BTreeMap<u64, Vec<u32>> = voters.iter().map(|v| (*v, Vec::new())).collect();
    for p in partitions.iter() {
        if let Some(l) = p.raft().metrics().borrow_watched().current_leader {
            led.entry(l).or_default().push(p.group());
        }
    }
    let share = (partitions.len() as u64).div_ceil(voters.len() as u64) as usize;
    let mine = led.get(&me).cloned().unwrap_or_default();
    if mine.len() <= share {
        return;
    }
    let Some((&target, theirs)) = led
        .iter()
        .filter(|(v, _)| voters.contains(v))
        .min_by_key(|(_, g)| g.len())
    else {
        return;
    };
    if target == me || theirs.len() + 1 >= mine.len() {
        return;
    }
    let group = mine[mine.len() - 1];
    let p = &partitions[group as usize - 1];
    if !caught_up(p.raft(), target) {
        return;
    }
    info!(
        group,
        to = target,
        "handing partition leadership over to spread leaders"
    );
    if let Err(e) = p.raft().trigger().transfer_leader(target).await {
        warn!(group, error = %e, "partition leader transfer not started");
    }
}

/// Runs until `stop`: every [`RECONCILE_INTERVAL`], reconcile the
/// partitions this node leads.
pub async fn run_reconciler(
    meta: Arc<MetaGroup>,
    partitions: Partitions,
    draining: Arc<std::sync::atomic::AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let me = meta.node_id();
    loop {
        if draining.load(std::sync::atomic::Ordering::SeqCst) {
            // Being removed: lead nothing, change nothing.
            hand_over_all(&partitions).await;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
            }
            continue;
        }
        let (voters, nodes) = membership_of(meta.raft());
        if !nodes.is_empty() {
            if meta.raft().is_leader() {
                if recorded_partitions(&meta).is_none() {
                    let cmd = Command::new(Op::RecordPartitions {
                        count: partitions.len() as u32,
                    });
                    if let Err(e) = meta.write(cmd).await {
                        warn!(error = %e, "cannot record the partition count yet");
                    }
                }
                // Only a one-member cluster (a restored one) initializes
                // here: with more members, a partition without membership on
                // this node may simply not have been replicated to it yet,
                // and a second initial membership would fork its log. A new
                // cluster initializes its partitions before its meta group.
                let alone = voters.len() == 1 && voters.contains(&me);
                for p in partitions.iter().filter(|_| alone) {
                    let (_, pn) = membership_of(p.raft());
                    if pn.is_empty() {
                        info!(group = p.group(), "initializing partition with the meta membership");
                        let members: BTreeMap<u64, BasicNode> = nodes
                            .iter()
                            .filter(|(id, _)| voters.contains(id))
                            .map(|(id, n)| (*id, n.clone()))
                            .collect();
                        if let Err(e) = p.raft().initialize(members).await {
                            warn!(group = p.group(), error = %e, "partition initialize failed");
                        }
                    }
                }
            }
            for p in partitions.iter() {
                if p.raft().is_leader() {
                    reconcile_partition(p, &voters, &nodes).await;
                }
            }
            spread_leaders(me, &partitions, &voters).await;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_spread_over_every_partition_and_stay_put() {
        let mut seen = BTreeSet::new();
        for i in 0..1000 {
            let p = partition_of(&format!("order-{i}"), 8);
            assert!((1..=8).contains(&p));
            seen.insert(p);
        }
        assert_eq!(seen.len(), 8);
        // Fixed forever: data already written depends on it.
        assert_eq!(partition_of("order-1", 8), partition_of("order-1", 8));
        assert_eq!(partition_of("", 1), 1);
    }
}
