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
    /// Whether each endpoint answers and sees a leader; exit 1 if any does
    /// not. With --cluster: the cluster's aggregated health as one node
    /// sees it (gossip liveness, checks of every member, quorum); exit 1
    /// unless healthy.
    Health {
        /// The aggregated view of the whole cluster.
        #[arg(long)]
        cluster: bool,
    },
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

/// `esf endpoint health --cluster` as JSON.
pub(super) fn cluster_health_json(h: &pb::ClusterHealthResponse) -> Value {
    json!({
        "node_id": h.node_id,
        "status": h.status,
        "reasons": h.reasons,
        "failure_tolerance": h.failure_tolerance,
        "nodes": h.nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "addr": n.addr,
            "voter": n.voter,
            "liveness": n.liveness,
            "generation": n.generation,
            "heartbeat_age_ms": n.heartbeat_age_ms,
            "status": n.status,
            "checks": n.checks.iter().map(|c| json!({"name": c.name, "status": c.status, "reason": c.reason})).collect::<Vec<_>>(),
            "leads": n.leads,
            "version": n.version,
            "gossip_addr": n.gossip_addr,
            "admin_addr": n.admin_addr,
            "clock_offset_ms": n.clock_offset_ms,
        })).collect::<Vec<_>>(),
    })
}

/// `esf endpoint health --cluster` as text.
pub(super) fn cluster_health_text(h: &pb::ClusterHealthResponse) -> String {
    let mut s = format!(
        "cluster is {} (as node {} sees it; {} more voter failure(s) tolerated)\n",
        h.status, h.node_id, h.failure_tolerance
    );
    for r in &h.reasons {
        s += &format!("  - {r}\n");
    }
    s += &format!(
        "{:<6} {:<24} {:<8} {:<8} {:<14} {:<9} {:<10} {}\n",
        "ID", "ADDR", "ROLE", "LIVENESS", "GENERATION", "STATUS", "LEADS", "FAILING CHECKS"
    );
    for n in &h.nodes {
        let failing: Vec<String> = n
            .checks
            .iter()
            .filter(|c| c.status != "passing")
            .map(|c| format!("{}={}", c.name, c.status))
            .collect();
        let leads: Vec<String> = n.leads.iter().map(u32::to_string).collect();
        s += &format!(
            "{:<6} {:<24} {:<8} {:<8} {:<14} {:<9} {:<10} {}\n",
            n.node_id,
            n.addr,
            if n.voter { "voter" } else { "learner" },
            n.liveness,
            n.generation,
            n.status,
            if leads.is_empty() {
                "-".to_string()
            } else {
                leads.join(",")
            },
            if failing.is_empty() {
                "-".to_string()
            } else {
                failing.join(" ")
            }
        );
    }
    s
}
