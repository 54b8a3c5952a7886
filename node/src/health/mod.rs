//! Node checks and the cluster's aggregated health.
//!
//! A task on every node runs its [`checks`] every `check_interval_ms`,
//! keeps the latest results and publishes them, with the groups it leads
//! and its applied indexes, in gossip. [`Health::cluster`] is one node's
//! view of the whole cluster: each member's gossip liveness and
//! generation, its checks, the groups it leads; overall
//!
//! - `unavailable`: this node is not a member, knows no meta leader, or
//!   fewer than a quorum of meta voters are alive or not yet seen by
//!   gossip (a voter gossip has never heard from is not counted dead, so
//!   a cluster just started reads degraded, not unavailable);
//! - `degraded`: a member is dead or not yet seen, a check of any member
//!   is warning or critical, or a group this node holds has no leader;
//! - `healthy` otherwise;
//!
//! with the reasons and the failure tolerance (how many more voters may
//! fail before a group this node holds loses its quorum). Served by
//! `esf.v1.Cluster/Health`, `esf endpoint health --cluster` and admin
//! `/health`.

pub mod checks;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use esf_proto::v1 as pb;
use esf_raft::group::{META_GROUP, MetaGroup};
use esf_raft::openraft::ServerState;
use esf_raft::openraft::async_runtime::WatchReceiver;
use serde::Serialize;
use tokio::sync::watch;

use self::checks::{Check, Checker, Status};
use crate::cluster::partitions::Partitions;
use crate::gossip::{Gossip, keys};

/// The checks, their latest results and the gossip they are published in.
pub struct Health {
    checker: Checker,
    gossip: Arc<Gossip>,
    latest: RwLock<Vec<Check>>,
    /// Storage checks in a row: (critical, not critical).
    streak: std::sync::Mutex<(u32, u32)>,
    interval: Duration,
    grpc: String,
    admin: String,
    version: &'static str,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("interval", &self.interval).finish()
    }
}

/// One member in a node's view of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct NodeHealth {
    /// Raft node id.
    pub node_id: u64,
    /// gRPC address (from the membership).
    pub addr: String,
    /// Voter (else learner).
    pub voter: bool,
    /// alive, dead or unknown.
    pub liveness: &'static str,
    /// Its process generation (0 unknown).
    pub generation: u64,
    /// Since its heartbeat last advanced here, ms.
    pub heartbeat_age_ms: u64,
    /// Worst check, or unknown.
    pub status: &'static str,
    /// Its checks.
    pub checks: Vec<Check>,
    /// Groups it leads.
    pub leads: Vec<u32>,
    /// Its version.
    pub version: String,
    /// Where it gossips.
    pub gossip_addr: String,
    /// Its admin address.
    pub admin_addr: String,
    /// Its clock minus ours, ms.
    pub clock_offset_ms: Option<i64>,
}

/// One node's view of the cluster's health.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    /// The node whose view this is.
    pub node_id: u64,
    /// healthy, degraded or unavailable.
    pub status: &'static str,
    /// Why not healthy.
    pub reasons: Vec<String>,
    /// More voters that may fail before a held group loses its quorum.
    pub failure_tolerance: u32,
    /// Every member.
    pub nodes: Vec<NodeHealth>,
}

impl Health {
    /// Checks run by `checker` every `interval`, published through `gossip`.
    pub fn new(
        checker: Checker,
        gossip: Arc<Gossip>,
        interval: Duration,
        grpc: String,
        admin: String,
        version: &'static str,
    ) -> Arc<Health> {
        Arc::new(Health {
            checker,
            gossip,
            latest: RwLock::default(),
            streak: std::sync::Mutex::new((0, 0)),
            interval,
            grpc,
            admin,
            version,
        })
    }

    /// The gossip this publishes into.
    pub fn gossip(&self) -> &Arc<Gossip> {
        &self.gossip
    }

    /// This node's latest check results.
    pub fn local_checks(&self) -> Vec<Check> {
        self.latest.read().expect("checks lock").clone()
    }

    fn meta(&self) -> &Arc<MetaGroup> {
        &self.checker.meta
    }

    fn partitions(&self) -> &Partitions {
        &self.checker.partitions
    }

    /// Runs the checks and publishes them until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            self.check_once().await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One round of checks, published.
    pub async fn check_once(&self) {
        let view = self.gossip.view().await;
        let offsets: Vec<(u64, i64)> = view
            .iter()
            .filter(|p| p.alive && !p.is_self)
            .filter_map(|p| p.clock_offset_ms.map(|o| (p.node_id, o)))
            .collect();
        // Voters that could take this node's leadership: alive, storage
        // check not critical.
        let voters: BTreeSet<u64> = self
            .meta()
            .raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let healthy: Vec<u64> = view
            .iter()
            .filter(|p| p.alive && !p.is_self && voters.contains(&p.node_id))
            .filter(|p| {
                p.state.get(keys::CHECKS).is_some_and(|t| {
                    checks::decode(t)
                        .iter()
                        .all(|c| !(c.name == "storage" && c.status == Status::Critical))
                })
            })
            .map(|p| p.node_id)
            .collect();
        let results = self.checker.run(&offsets).await;
        for c in &results {
            metrics::gauge!("esf_check_status", "check" => c.name.clone()).set(match c.status {
                Status::Passing => 0.0,
                Status::Warning => 1.0,
                Status::Critical => 2.0,
            });
        }
        let mut state = BTreeMap::new();
        state.insert(keys::GRPC.to_string(), self.grpc.clone());
        state.insert(keys::ADMIN.to_string(), self.admin.clone());
        state.insert(keys::VERSION.to_string(), self.version.to_string());
        state.insert(keys::LEADS.to_string(), join(&self.leads()));
        state.insert(
            keys::APPLIED.to_string(),
            self.applied()
                .iter()
                .map(|(g, i)| format!("{g}:{i}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        state.insert(keys::STATUS.to_string(), checks::worst(&results).as_str().to_string());
        state.insert(keys::CHECKS.to_string(), checks::encode(&results));
        self.evacuate_if_sick(&results, healthy);
        *self.latest.write().expect("checks lock") = results;
        self.gossip.publish(state);
    }

    /// Storage critical `evacuate_after_checks` times in a row: the node
    /// stops leading (the disk check loop hands its leadership over and
    /// turns its elections off); not critical `return_after_checks` times
    /// in a row: it may lead again. The streaks damp a flapping disk. It
    /// steps back only while another voter is alive with a storage check
    /// that is not critical (`healthy`), and hands over only to those:
    /// when every disk is slow (load on all of them), nobody steps back,
    /// or no one could lead at all.
    fn evacuate_if_sick(&self, results: &[Check], healthy: Vec<u64>) {
        let Some(storage) = results.iter().find(|c| c.name == "storage") else {
            return;
        };
        let limits = &self.checker.limits;
        let mut streak = self.streak.lock().expect("streak lock");
        if storage.status == Status::Critical && healthy.is_empty() {
            *streak = (0, 0);
            self.checker.disk.set_handover_targets(Vec::new());
            if self.checker.disk.set_sick(None) {
                tracing::warn!(
                    "storage check critical, but no other voter is alive with a healthy disk: this node may lead again"
                );
                metrics::counter!("esf_failover_actions_total", "action" => "return").increment(1);
            }
            return;
        }
        self.checker.disk.set_handover_targets(healthy);
        if storage.status == Status::Critical {
            *streak = (streak.0.saturating_add(1), 0);
            if streak.0 == limits.evacuate_after_checks && self.checker.disk.set_sick(Some(storage.reason.clone())) {
                tracing::warn!(reason = %storage.reason, checks = streak.0, "storage check critical: handing over leadership, leading nothing until it passes");
                metrics::counter!("esf_failover_actions_total", "action" => "evacuate").increment(1);
            }
        } else {
            *streak = (0, streak.1.saturating_add(1));
            if streak.1 == limits.return_after_checks && self.checker.disk.set_sick(None) {
                tracing::info!(
                    checks = streak.1,
                    "storage check passes again: this node may lead again"
                );
                metrics::counter!("esf_failover_actions_total", "action" => "return").increment(1);
            }
        }
    }

    /// Groups this node leads (0 is meta).
    fn leads(&self) -> Vec<u32> {
        let me = self.meta().node_id();
        let mut out = Vec::new();
        if self.meta().raft().metrics().borrow_watched().current_leader == Some(me) {
            out.push(META_GROUP);
        }
        for p in self.partitions().iter() {
            let m = p.raft().metrics().borrow_watched().clone();
            if m.state == ServerState::Leader {
                out.push(p.group());
            }
        }
        out
    }

    fn applied(&self) -> Vec<(u32, u64)> {
        let idx = |m: &esf_raft::openraft::RaftMetrics<esf_raft::types::TypeConfig>| {
            m.last_applied.as_ref().map_or(0, |l| l.index)
        };
        let mut out = vec![(META_GROUP, idx(&self.meta().raft().metrics().borrow_watched()))];
        for p in self.partitions().iter() {
            out.push((p.group(), idx(&p.raft().metrics().borrow_watched())));
        }
        out
    }

    /// This node's view of the cluster's health.
    pub async fn cluster(&self) -> ClusterHealth {
        let me = self.meta().node_id();
        let m = self.meta().raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let view: BTreeMap<u64, crate::gossip::PeerView> =
            self.gossip.view().await.into_iter().map(|p| (p.node_id, p)).collect();
        let gossiping = self.gossip.started();
        let mut reasons = Vec::new();
        let mut nodes = Vec::new();
        let mut alive = BTreeSet::new();
        // Members gossip has not heard from yet (just started, or gossip
        // not running): not known dead, so they may still make a quorum.
        let mut unseen = BTreeSet::new();
        for (id, n) in membership.nodes() {
            let peer = view.get(id);
            let is_self = *id == me;
            let liveness = match peer {
                _ if is_self => "alive",
                Some(p) => p.liveness(),
                None => "unknown",
            };
            match liveness {
                "alive" => {
                    alive.insert(*id);
                }
                "unknown" => {
                    unseen.insert(*id);
                }
                _ => {}
            }
            let checks = if is_self {
                self.local_checks()
            } else {
                peer.and_then(|p| p.state.get(keys::CHECKS))
                    .map(|t| checks::decode(t))
                    .unwrap_or_default()
            };
            let status = if checks.is_empty() {
                "unknown"
            } else {
                checks::worst(&checks).as_str()
            };
            let leads = if is_self {
                self.leads()
            } else {
                peer.and_then(|p| p.state.get(keys::LEADS))
                    .map(|t| t.split(',').filter_map(|g| g.parse().ok()).collect())
                    .unwrap_or_default()
            };
            let age = peer.and_then(|p| p.heartbeat_age);
            match liveness {
                "dead" => reasons.push(format!(
                    "node {id} ({}) is dead by gossip{}",
                    n.addr,
                    age.map(|a| format!(" (no heartbeat for {} ms)", a.as_millis()))
                        .unwrap_or_default()
                )),
                "unknown" => reasons.push(format!(
                    "node {id} ({}) is not seen alive by gossip yet{}",
                    n.addr,
                    if gossiping { "" } else { " (gossip not running here)" }
                )),
                _ => {}
            }
            if liveness == "alive" {
                for c in checks.iter().filter(|c| c.status != Status::Passing) {
                    reasons.push(format!("node {id}: {} {}: {}", c.name, c.status.as_str(), c.reason));
                }
            }
            let state = |k: &str| peer.and_then(|p| p.state.get(k)).cloned().unwrap_or_default();
            nodes.push(NodeHealth {
                node_id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                liveness,
                generation: if is_self {
                    self.gossip.generation()
                } else {
                    peer.map_or(0, |p| p.generation)
                },
                heartbeat_age_ms: age.map_or(0, |a| a.as_millis() as u64),
                status,
                checks,
                leads,
                version: if is_self {
                    self.version.to_string()
                } else {
                    state(keys::VERSION)
                },
                gossip_addr: peer.map(|p| p.gossip_addr.to_string()).unwrap_or_default(),
                admin_addr: if is_self {
                    self.admin.clone()
                } else {
                    state(keys::ADMIN)
                },
                clock_offset_ms: peer.and_then(|p| p.clock_offset_ms),
            });
        }

        // Quorum per group this node holds, by gossip liveness.
        let mut tolerance = u32::MAX;
        let mut unavailable = Vec::new();
        let mut groups: Vec<(u32, BTreeSet<u64>, bool)> =
            vec![(META_GROUP, voters.clone(), m.current_leader.is_some())];
        for p in self.partitions().iter() {
            let pm = p.raft().metrics().borrow_watched().clone();
            let pv: BTreeSet<u64> = pm.membership_config.membership().voter_ids().collect();
            if pv.contains(&me) {
                groups.push((p.group(), pv, pm.current_leader.is_some()));
            }
        }
        for (g, gv, has_leader) in &groups {
            if gv.is_empty() {
                continue;
            }
            let name = if *g == META_GROUP {
                "meta group".to_string()
            } else {
                format!("partition {g}")
            };
            let q = quorum(&name, gv, &alive, &unseen);
            match q.verdict {
                Verdict::Lost(r) if *g == META_GROUP => unavailable.push(r),
                Verdict::Lost(r) | Verdict::Unconfirmed(r) => reasons.push(r),
                Verdict::Held if !has_leader => reasons.push(format!("{name} has no leader")),
                Verdict::Held => {}
            }
            tolerance = tolerance.min(q.tolerance);
        }
        if membership.get_node(&me).is_none() {
            unavailable.push("this node is not a member of a cluster".to_string());
        } else if m.current_leader.is_none() {
            unavailable.push("no meta leader known".to_string());
        }
        let status = if !unavailable.is_empty() {
            "unavailable"
        } else if !reasons.is_empty() {
            "degraded"
        } else {
            "healthy"
        };
        unavailable.extend(reasons);
        ClusterHealth {
            node_id: me,
            status,
            reasons: unavailable,
            failure_tolerance: if tolerance == u32::MAX { 0 } else { tolerance },
            nodes,
        }
    }
}

/// What gossip says of one group's quorum.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// A quorum of its voters is alive.
    Held,
    /// Too few alive, but enough not heard from yet (just started) that a
    /// quorum may be: degraded, not unavailable.
    Unconfirmed(String),
    /// Fewer than a quorum alive or unknown: the rest are dead.
    Lost(String),
}

#[derive(Debug, PartialEq)]
struct Quorum {
    verdict: Verdict,
    /// How many more voters may fail (counting only those seen alive).
    tolerance: u32,
}

/// The quorum of a group named `name` with `voters`, of which gossip sees
/// `alive` alive and has not heard from `unseen` yet.
fn quorum(name: &str, voters: &BTreeSet<u64>, alive: &BTreeSet<u64>, unseen: &BTreeSet<u64>) -> Quorum {
    let need = voters.len() / 2 + 1;
    let live = voters.intersection(alive).count();
    let maybe = live + voters.intersection(unseen).count();
    let verdict = if maybe < need {
        Verdict::Lost(format!(
            "{name}: {live} of {} voters alive, quorum is {need}",
            voters.len()
        ))
    } else if live < need {
        Verdict::Unconfirmed(format!(
            "{name}: {live} of {} voters seen alive by gossip, quorum is {need}",
            voters.len()
        ))
    } else {
        Verdict::Held
    };
    Quorum {
        verdict,
        tolerance: live.saturating_sub(need) as u32,
    }
}

fn join(groups: &[u32]) -> String {
    groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

impl From<ClusterHealth> for pb::ClusterHealthResponse {
    fn from(h: ClusterHealth) -> Self {
        pb::ClusterHealthResponse {
            header: None,
            node_id: h.node_id,
            status: h.status.into(),
            reasons: h.reasons,
            failure_tolerance: h.failure_tolerance,
            nodes: h
                .nodes
                .into_iter()
                .map(|n| pb::NodeHealth {
                    node_id: n.node_id,
                    addr: n.addr,
                    voter: n.voter,
                    liveness: n.liveness.into(),
                    generation: n.generation,
                    heartbeat_age_ms: n.heartbeat_age_ms,
                    status: n.status.into(),
                    checks: n
                        .checks
                        .into_iter()
                        .map(|c| pb::NodeCheck {
                            name: c.name,
                            status: c.status.as_str().into(),
                            reason: c.reason,
                        })
                        .collect(),
                    leads: n.leads,
                    version: n.version,
                    gossip_addr: n.gossip_addr,
                    clock_offset_ms: n.clock_offset_ms.unwrap_or(0),
                    admin_addr: n.admin_addr,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn voters_gossip_has_not_heard_yet_are_not_counted_dead() {
        let voters = set(&[1, 2, 3]);
        // Just started: only itself seen, the others not heard from yet.
        let q = quorum("meta group", &voters, &set(&[1]), &set(&[2, 3]));
        assert_eq!(
            q.verdict,
            Verdict::Unconfirmed("meta group: 1 of 3 voters seen alive by gossip, quorum is 2".into())
        );
        assert_eq!(q.tolerance, 0);
        // One more heard from: the quorum holds, with no voter to spare.
        let q = quorum("meta group", &voters, &set(&[1, 2]), &set(&[3]));
        assert_eq!((q.verdict, q.tolerance), (Verdict::Held, 0));
        let q = quorum("meta group", &voters, &set(&[1, 2, 3]), &set(&[]));
        assert_eq!((q.verdict, q.tolerance), (Verdict::Held, 1));
    }

    #[test]
    fn dead_voters_lose_the_quorum() {
        let voters = set(&[1, 2, 3]);
        // 2 and 3 known dead (neither alive nor unseen).
        let q = quorum("partition 4", &voters, &set(&[1]), &set(&[]));
        assert_eq!(
            q.verdict,
            Verdict::Lost("partition 4: 1 of 3 voters alive, quorum is 2".into())
        );
        // One dead, one unseen: still a possible quorum.
        let q = quorum("partition 4", &voters, &set(&[1]), &set(&[3]));
        assert!(matches!(q.verdict, Verdict::Unconfirmed(_)), "{q:?}");
        // Members that are not voters of the group do not count.
        let q = quorum("partition 4", &voters, &set(&[1, 7, 8]), &set(&[9]));
        assert!(matches!(q.verdict, Verdict::Lost(_)), "{q:?}");
    }
}
