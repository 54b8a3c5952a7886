//! `esf member`, `esf endpoint`, `esf leader`: membership, status and health, leader transfer.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum MemberCmd {
    /// Members and their roles.
    List,
    /// Add a node as a learner (it catches up without voting).
    Add { id: u64, addr: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
pub(super) enum EndpointCmd {
    /// Role, term, leader, indexes, DB size and version of each endpoint.
    Status,
    /// Whether each endpoint answers and sees a leader; exit 1 if any does not.
    Health,
    /// Every event partition across the cluster: leader, term, planned
    /// replicas, members, and how far each replica's applied index lags
    /// its leader's commit index (every member is asked).
    Partitions,
}

#[derive(Debug, Subcommand)]
pub(super) enum LeaderCmd {
    /// Move leadership to another voter.
    Transfer {
        /// Target node id (default: any other voter).
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
}

/// One row per event partition from every member's status: the view of
/// the highest-term node that reports leading it, its planned replicas,
/// and each replica's lag (leader commit index minus the replica's applied
/// index; null if the replica did not answer). False if some partition has
/// no leader.
pub(super) fn partition_rows(all: &[(String, esf_client::Result<pb::StatusResponse>)]) -> (Vec<Value>, bool) {
    let views: Vec<&pb::StatusResponse> = all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let count = views
        .iter()
        .map(|s| s.groups.len().saturating_sub(1))
        .max()
        .unwrap_or(0) as u32;
    let mut ok = true;
    let rows = (1..=count)
        .map(|p| {
            let of = |s: &pb::StatusResponse| s.groups.iter().find(|g| g.group == p).cloned();
            let leader = views
                .iter()
                .filter_map(|s| of(s))
                .filter(|g| g.role == "leader")
                .max_by_key(|g| g.term);
            let planned = views.iter().filter_map(|s| of(s)).map(|g| g.planned).find(|pl| !pl.is_empty());
            let Some(l) = leader else {
                ok = false;
                return json!({"partition": p, "leader_id": 0, "term": 0, "planned": planned, "voters": [], "learners": [], "commit_index": 0, "lag": {}});
            };
            let mut lag = serde_json::Map::new();
            for n in l.voters.iter().chain(&l.learners) {
                let applied = views
                    .iter()
                    .find(|s| s.node_id == *n)
                    .and_then(|s| of(s))
                    .map(|g| l.commit_index.saturating_sub(g.applied_index));
                lag.insert(n.to_string(), json!(applied));
            }
            json!({"partition": p, "leader_id": l.leader_id, "term": l.term, "planned": planned.unwrap_or_default(), "voters": l.voters, "learners": l.learners, "commit_index": l.commit_index, "lag": lag})
        })
        .collect();
    (rows, ok)
}

/// Least time `esf member remove` keeps retrying while the removed node's
/// partition replicas move (`--timeout-secs` raises it).
pub(super) const MEMBER_REMOVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(150);
