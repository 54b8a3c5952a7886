//! Autopilot: the meta leader keeps the voter set whole (Consul's and
//! raft-autopilot's model), always through Raft membership changes, one
//! at a time.
//!
//! Every `autopilot_interval_ms` the meta leader looks at each member:
//!
//! - a **voter is dead** when gossip on the leader calls it dead (or has
//!   never seen it) AND the leader's last contact with it is older than
//!   `autopilot_dead_after_secs`, continuously for that long; gossip alone
//!   never removes a voter (chitchat is not a reliable broadcast), and a
//!   partitioned node that heals before then causes nothing;
//! - a **learner is a spare** when gossip calls it alive, none of its
//!   checks is critical, its matched log index is within
//!   `autopilot_max_trailing_logs` of the leader's last log index, all
//!   that continuously for `autopilot_stabilization_secs`.
//!
//! Actions, at most one per `autopilot_stabilization_secs` (damping: a
//! flapping node causes at most one change per interval):
//!
//! 1. fewer live voters than wanted (`autopilot_voters`, default the
//!    cluster's `bootstrap_expect` as the leader was started with): promote
//!    a spare; if a voter is dead, the spare replaces it (promoted first,
//!    so quorum never shrinks);
//! 2. a dead voter a spare was promoted for: remove it (its partition
//!    replicas move first, as with `esf member remove`). With
//!    `autopilot_voters` set explicitly, a dead voter above that count is
//!    removed even without a replacement.
//!
//! It never removes a live voter, never removes a dead one without a
//! replacement unless told a count, and does nothing while a membership
//! change is in flight (joint or uncommitted config). Each action is logged, counted
//! (`esf_autopilot_actions_total{action}`) and recorded in meta under
//! the reserved key `autopilot/NODE_ID` ([`crate::keyspace::Area::Autopilot`]),
//! so it shows in the audit trail (`esf.autopilot.changed`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use esf_raft::openraft::Instant as _;
use esf_raft::openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster::membership::Membership;
use crate::context::Ctx;
use crate::gossip::{Gossip, keys};
use crate::health::checks::{self, Status};

/// Autopilot settings (from the node config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Off: no automatic promotion or removal.
    pub enabled: bool,
    /// Voters the cluster should have: spares are promoted up to it.
    pub voters: usize,
    /// `voters` was set explicitly (`autopilot_voters`): dead voters above
    /// it are removed even without a replacement. Otherwise a dead voter
    /// is removed only after autopilot promoted a spare in its place.
    pub explicit: bool,
    /// Between two looks.
    pub interval: Duration,
    /// How long a voter must be dead (gossip AND leader contact) before it
    /// is replaced or removed.
    pub dead_after: Duration,
    /// How long a learner must be a good spare before it is promoted; also
    /// the least time between two changes.
    pub stabilization: Duration,
    /// A learner further behind the leader's log than this is no spare.
    pub max_trailing_logs: u64,
}

/// What autopilot decided in one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make learner `id` a voter.
    Promote {
        /// The learner.
        id: u64,
        /// Why.
        why: String,
    },
    /// Remove dead voter `id`.
    Remove {
        /// The voter.
        id: u64,
        /// Why.
        why: String,
    },
}

/// What one look sees of a member.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Voter (else learner).
    pub voter: bool,
    /// Alive by gossip on the leader.
    pub alive: bool,
    /// A check of it is critical.
    pub critical: bool,
    /// Its storage or disk check is critical (why): it steps back from
    /// leading (crate::health), which the leader records.
    pub sick: Option<String>,
    /// Since the leader last heard from it (None: never, or it is the leader).
    pub contact_age: Option<Duration>,
    /// Entries of the leader's log it lacks.
    pub trailing: u64,
}

/// The memory autopilot keeps between looks (on the leader).
#[derive(Debug, Default)]
pub struct Tracker {
    dead_since: HashMap<u64, Instant>,
    spare_since: HashMap<u64, Instant>,
    last_change: Option<Instant>,
    /// Dead voters a spare was promoted for (removed next).
    replaced: BTreeSet<u64>,
}

impl Tracker {
    /// One look at `members` (by id, the leader `me` included) at `now`:
    /// the action to take, if any.
    pub fn decide(&mut self, s: &Settings, me: u64, members: &BTreeMap<u64, Seen>, now: Instant) -> Option<Action> {
        self.dead_since.retain(|id, _| members.contains_key(id));
        self.spare_since.retain(|id, _| members.contains_key(id));
        self.replaced
            .retain(|id| members.get(id).is_some_and(|m| m.voter && !m.alive));
        for (id, m) in members {
            let stale = m.contact_age.is_none_or(|a| a >= s.dead_after);
            if *id != me && m.voter && !m.alive && stale {
                self.dead_since.entry(*id).or_insert(now);
            } else {
                self.dead_since.remove(id);
            }
            if !m.voter && m.alive && !m.critical && m.trailing <= s.max_trailing_logs {
                self.spare_since.entry(*id).or_insert(now);
            } else {
                self.spare_since.remove(id);
            }
        }
        if !s.enabled
            || self
                .last_change
                .is_some_and(|t| now.duration_since(t) < s.stabilization)
        {
            return None;
        }
        let voters = members.values().filter(|m| m.voter).count();
        let dead: Vec<u64> = self
            .dead_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= s.dead_after)
            .map(|(id, _)| *id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let spare = self
            .spare_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= s.stabilization)
            .map(|(id, _)| *id)
            .min();
        let live = voters - dead.len();
        let unreplaced = dead.iter().copied().find(|d| !self.replaced.contains(d));
        let removable = dead
            .iter()
            .copied()
            .find(|d| self.replaced.contains(d) || (s.explicit && voters > s.voters));
        let action = if let (Some(id), true) = (spare, live < s.voters) {
            let why = match unreplaced {
                Some(d) => {
                    self.replaced.insert(d);
                    format!("replacing voter {d}, dead for over {:?}", s.dead_after)
                }
                None => format!("{live} live voters, {} wanted", s.voters),
            };
            Some(Action::Promote { id, why })
        } else if let Some(id) = removable {
            Some(Action::Remove {
                id,
                why: if self.replaced.contains(&id) {
                    format!("dead for over {:?}; a spare took its place", s.dead_after)
                } else {
                    format!(
                        "dead for over {:?} and {voters} voters is above autopilot_voters {}",
                        s.dead_after, s.voters
                    )
                },
            })
        } else {
            None
        };
        if action.is_some() {
            self.last_change = Some(now);
        }
        action
    }
}

/// Runs until `stop`; acts only while this node leads meta.
pub async fn run(ctx: Ctx, gossip: Arc<Gossip>, s: Settings, mut stop: watch::Receiver<bool>) {
    let mut tracker = Tracker::default();
    // Nodes the leader has recorded as stepping back for a sick disk.
    let mut sick: BTreeSet<u64> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(s.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let raft = ctx.meta.raft();
        let me = ctx.meta.node_id();
        if !raft.is_leader() {
            tracker = Tracker::default();
            sick.clear();
            continue;
        }
        // Nothing while a membership change is in flight (joint, or not
        // committed yet): one change at a time, whoever started it.
        {
            let m = raft.metrics().borrow_watched().clone();
            if m.membership_config.log_id() != m.committed_membership_config.log_id()
                || m.membership_config.membership().get_joint_config().len() > 1
            {
                continue;
            }
        }
        let members = look(&ctx, &gossip).await;
        metrics::counter!("esf_autopilot_looks_total").increment(1);
        // The sick nodes' own step-back (crate::health) goes in the audit
        // trail through the leader, which sees their checks in gossip.
        for (id, m) in &members {
            match (&m.sick, sick.contains(id)) {
                (Some(why), false) if m.alive => {
                    sick.insert(*id);
                    let why = format!(
                        "{why}; it hands its leadership to a voter with a healthy disk, if one is alive, and leads nothing until the check passes"
                    );
                    info!(node = id, why = %why, "autopilot: a node steps back from leading");
                    record(&ctx, "evacuate", *id, &why).await;
                }
                (None, true) if m.alive => {
                    sick.remove(id);
                    record(
                        &ctx,
                        "return",
                        *id,
                        "its storage and disk checks are no longer critical",
                    )
                    .await;
                }
                _ => {}
            }
        }
        sick.retain(|id| members.contains_key(id));
        let Some(action) = tracker.decide(&s, me, &members, Instant::now()) else {
            continue;
        };
        let m = Membership { ctx: &ctx };
        let (name, id, why, outcome) = match &action {
            Action::Promote { id, why } => ("promote", *id, why, m.promote(*id).await.map(|_| ())),
            Action::Remove { id, why } => ("remove", *id, why, m.remove(*id).await.map(|_| ())),
        };
        match outcome {
            Ok(()) => {
                info!(action = name, node = id, why = %why, "autopilot changed the membership");
                metrics::counter!("esf_autopilot_actions_total", "action" => name).increment(1);
                record(&ctx, name, id, why).await;
            }
            Err(e) => {
                warn!(action = name, node = id, why = %why, error = %e, "autopilot change failed; retried on a later look");
                metrics::counter!("esf_autopilot_failures_total", "action" => name).increment(1);
            }
        }
    }
}

/// Every member as the leader sees it now.
async fn look(ctx: &Ctx, gossip: &Gossip) -> BTreeMap<u64, Seen> {
    let m = ctx.meta.raft().metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    let view: HashMap<u64, crate::gossip::PeerView> = gossip.view().await.into_iter().map(|p| (p.node_id, p)).collect();
    membership
        .nodes()
        .map(|(id, _)| {
            let peer = view.get(id);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map_or(0, |l| l.index);
            let contact_age = m
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(id).cloned().flatten())
                .map(|t| t.elapsed());
            let decoded = peer
                .and_then(|p| p.state.get(keys::CHECKS))
                .map(|t| checks::decode(t))
                .unwrap_or_default();
            let critical = decoded.iter().any(|c| c.status == Status::Critical);
            let sick = decoded
                .iter()
                .filter(|c| c.status == Status::Critical && (c.name == "storage" || c.name == "disk"))
                .map(|c| format!("{} check critical: {}", c.name, c.reason))
                .next();
            (
                *id,
                Seen {
                    voter: voters.contains(id),
                    alive: peer.is_some_and(|p| p.alive),
                    critical,
                    sick,
                    contact_age: if *id == m.id { Some(Duration::ZERO) } else { contact_age },
                    trailing: if *id == m.id { 0 } else { last.saturating_sub(matched) },
                },
            )
        })
        .collect()
}

/// Records the action in meta (a put of a reserved key), so it is in the
/// audit trail with the other changes of the cluster.
async fn record(ctx: &Ctx, action: &str, id: u64, why: &str) {
    let key = crate::keyspace::Area::Autopilot.key(id.to_string().as_bytes());
    let value = serde_json::json!({ "action": action, "node": id, "why": why }).to_string();
    let op = crate::keyspace::put_key(key, value.into_bytes());
    if let Err(e) = ctx.write(esf_raft::command::Command::new(op)).await {
        warn!(error = %e, "autopilot action not recorded in meta");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            enabled: true,
            voters: 3,
            explicit: false,
            interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(30),
            stabilization: Duration::from_secs(10),
            max_trailing_logs: 250,
        }
    }

    fn voter(alive: bool, contact: u64) -> Seen {
        Seen {
            voter: true,
            alive,
            critical: false,
            sick: None,
            contact_age: Some(Duration::from_secs(contact)),
            trailing: 0,
        }
    }

    fn learner(alive: bool, trailing: u64) -> Seen {
        Seen {
            voter: false,
            alive,
            critical: false,
            sick: None,
            contact_age: Some(Duration::ZERO),
            trailing,
        }
    }

    #[test]
    fn a_dead_voter_is_replaced_by_promoting_a_spare_then_removed() {
        let s = settings();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut m = BTreeMap::from([
            (1, voter(true, 0)),
            (2, voter(true, 0)),
            (3, voter(false, 31)),
            (4, learner(true, 0)),
        ]);
        assert_eq!(t.decide(&s, 1, &m, at(0)), None, "dead only just now");
        assert_eq!(t.decide(&s, 1, &m, at(29)), None);
        assert!(matches!(
            t.decide(&s, 1, &m, at(30)),
            Some(Action::Promote { id: 4, .. })
        ));
        // Promoted: 4 voters, 3 dead. Damped until the stabilization time.
        m.insert(4, voter(true, 0));
        assert_eq!(t.decide(&s, 1, &m, at(35)), None);
        assert!(matches!(
            t.decide(&s, 1, &m, at(40)),
            Some(Action::Remove { id: 3, .. })
        ));
        m.remove(&3);
        assert_eq!(t.decide(&s, 1, &m, at(60)), None, "whole again");
    }

    #[test]
    fn a_voter_that_comes_back_before_the_deadline_causes_nothing() {
        let s = settings();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut m = BTreeMap::from([
            (1, voter(true, 0)),
            (2, voter(true, 0)),
            (3, voter(false, 40)),
            (4, learner(true, 0)),
        ]);
        assert_eq!(t.decide(&s, 1, &m, at(0)), None);
        // Healed (a partition ended): alive again, then gone again: the
        // clock starts over.
        m.insert(3, voter(true, 0));
        assert_eq!(t.decide(&s, 1, &m, at(20)), None);
        m.insert(3, voter(false, 40));
        assert_eq!(t.decide(&s, 1, &m, at(25)), None);
        assert_eq!(t.decide(&s, 1, &m, at(50)), None, "dead for 25 s only");
        // Gossip calls it dead but the leader still hears from it: not dead.
        m.insert(3, voter(false, 1));
        assert_eq!(t.decide(&s, 1, &m, at(100)), None);
    }

    #[test]
    fn no_spare_no_change_and_lagging_or_sick_learners_are_no_spares() {
        let s = settings();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut m = BTreeMap::from([(1, voter(true, 0)), (2, voter(true, 0)), (3, voter(false, 100))]);
        t.decide(&s, 1, &m, at(0));
        assert_eq!(
            t.decide(&s, 1, &m, at(100)),
            None,
            "3 voters, one dead, nothing to promote: keep it"
        );
        m.insert(4, learner(true, 1000));
        assert_eq!(t.decide(&s, 1, &m, at(200)), None, "too far behind");
        let mut sick = learner(true, 0);
        sick.critical = true;
        m.insert(4, sick);
        assert_eq!(t.decide(&s, 1, &m, at(300)), None, "critical check");
        m.insert(4, learner(true, 0));
        assert_eq!(
            t.decide(&s, 1, &m, at(305)),
            None,
            "a spare only after the stabilization time"
        );
        assert!(matches!(
            t.decide(&s, 1, &m, at(315)),
            Some(Action::Promote { id: 4, .. })
        ));
    }

    #[test]
    fn one_spare_replaces_one_dead_voter_and_the_others_stay_spares() {
        let s = settings();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut m = BTreeMap::from([
            (1, voter(true, 0)),
            (2, voter(true, 0)),
            (3, voter(false, 100)),
            (4, learner(true, 0)),
            (5, learner(true, 0)),
        ]);
        t.decide(&s, 1, &m, at(0));
        assert!(matches!(
            t.decide(&s, 1, &m, at(30)),
            Some(Action::Promote { id: 4, .. })
        ));
        m.insert(4, voter(true, 0));
        assert!(matches!(
            t.decide(&s, 1, &m, at(40)),
            Some(Action::Remove { id: 3, .. })
        ));
        m.remove(&3);
        assert_eq!(t.decide(&s, 1, &m, at(100)), None, "5 stays a spare");
    }

    #[test]
    fn without_a_replacement_a_dead_voter_stays_unless_a_count_is_set() {
        let s = Settings {
            voters: 1,
            ..settings()
        };
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let m = BTreeMap::from([(1, voter(true, 0)), (2, voter(true, 0)), (3, voter(false, 100))]);
        t.decide(&s, 1, &m, at(0));
        assert_eq!(
            t.decide(&s, 1, &m, at(1000)),
            None,
            "a cluster grown by hand keeps its voters"
        );
        let s = Settings { explicit: true, ..s };
        let mut t = Tracker::default();
        t.decide(&s, 1, &m, at(0));
        assert!(matches!(
            t.decide(&s, 1, &m, at(30)),
            Some(Action::Remove { id: 3, .. })
        ));
    }

    #[test]
    fn learners_are_promoted_up_to_the_voter_count_and_no_further() {
        let s = settings();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut m = BTreeMap::from([(1, voter(true, 0)), (2, learner(true, 0)), (3, learner(true, 0))]);
        t.decide(&s, 1, &m, at(0));
        assert!(matches!(
            t.decide(&s, 1, &m, at(10)),
            Some(Action::Promote { id: 2, .. })
        ));
        m.insert(2, voter(true, 0));
        assert!(matches!(
            t.decide(&s, 1, &m, at(20)),
            Some(Action::Promote { id: 3, .. })
        ));
        m.insert(3, voter(true, 0));
        m.insert(4, learner(true, 0));
        assert_eq!(t.decide(&s, 1, &m, at(100)), None, "3 voters: 4 stays a spare");
        let off = Settings { enabled: false, ..s };
        m.insert(3, voter(false, 100));
        let mut t = Tracker::default();
        t.decide(&off, 1, &m, at(0));
        assert_eq!(t.decide(&off, 1, &m, at(1000)), None, "autopilot off");
    }
}
