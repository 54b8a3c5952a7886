//! The registry checker: instances registered under leases that their
//! process keeps alive, looked up (linearizably) by every process, some
//! deregistered.
//!
//! What must hold for every acknowledged lookup, answered at some point
//! between its call and its answer:
//!
//! - it holds every instance whose registration was acknowledged before the
//!   lookup was called, that nobody deregistered before the answer, and
//!   whose lease certainly still ran at the answer (`invisible`): a lease
//!   granted or kept alive by a call at time t with TTL d cannot expire
//!   before t + d, whatever the nodes' wall clocks say;
//! - it holds no instance whose deregistration was acknowledged before it
//!   was called (`visible after deregister`), none whose registration
//!   failed (`failed register visible`) and none nobody registered
//!   (`unknown instance`).
//!
//! Times are the test's monotonic clock, in nanoseconds.

use std::collections::{BTreeMap, BTreeSet};

/// What happened to one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instance {
    /// The registration's (call, acknowledgement) if acknowledged.
    pub registered: Option<(u64, u64)>,
    /// The registration certainly failed.
    pub register_failed: bool,
    /// Its lease's TTL.
    pub ttl_ns: u64,
    /// (call, acknowledgement) of each acknowledged grant or keep-alive of
    /// its lease.
    pub refreshed: Vec<(u64, u64)>,
    /// When a deregistration was first called.
    pub deregister_called: Option<u64>,
    /// When a deregistration was first acknowledged.
    pub deregistered: Option<u64>,
}

impl Instance {
    /// Until when its lease certainly runs, as known at `at` (refreshes
    /// acknowledged before `at` count).
    fn alive_until(&self, at: u64) -> u64 {
        self.refreshed
            .iter()
            .filter(|(_, ack)| *ack < at)
            .map(|(call, _)| call + self.ttl_ns)
            .max()
            .unwrap_or(0)
    }
}

/// One acknowledged lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Call time.
    pub called: u64,
    /// Answer time.
    pub answered: u64,
    /// Instance ids it returned.
    pub seen: BTreeSet<String>,
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// Kind (`invisible`, ...).
    pub kind: &'static str,
    /// What was seen.
    pub detail: String,
}

/// Checks every lookup against what happened to every instance.
pub fn check(instances: &BTreeMap<String, Instance>, lookups: &[Lookup]) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let ms = |ns: u64| ns / 1_000_000;
    for l in lookups {
        for (id, i) in instances {
            let visible = l.seen.contains(id);
            let must = i.registered.is_some_and(|(_, ack)| ack < l.called)
                && i.deregister_called.is_none_or(|d| d > l.answered)
                && l.answered < i.alive_until(l.called);
            if must && !visible {
                out.push(Anomaly {
                    kind: "invisible",
                    detail: format!(
                        "{id}: registered by {} ms, lease certainly running until {} ms, missing from the lookup of {}-{} ms",
                        ms(i.registered.map_or(0, |r| r.1)),
                        ms(i.alive_until(l.called)),
                        ms(l.called),
                        ms(l.answered)
                    ),
                });
            }
            if visible && i.deregistered.is_some_and(|d| d < l.called) {
                out.push(Anomaly {
                    kind: "visible after deregister",
                    detail: format!(
                        "{id}: deregistered by {} ms, in the lookup of {}-{} ms",
                        ms(i.deregistered.unwrap_or(0)),
                        ms(l.called),
                        ms(l.answered)
                    ),
                });
            }
            if visible && i.register_failed && i.registered.is_none() {
                out.push(Anomaly {
                    kind: "failed register visible",
                    detail: format!("{id}: its registration failed, in the lookup of {} ms", ms(l.called)),
                });
            }
        }
        for id in l.seen.iter().filter(|id| !instances.contains_key(*id)) {
            out.push(Anomaly {
                kind: "unknown instance",
                detail: format!("{id}: nobody registered it, in the lookup of {} ms", ms(l.called)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn instance() -> Instance {
        Instance {
            registered: Some((2 * S, 3 * S)),
            ttl_ns: 10 * S,
            refreshed: vec![(S, 2 * S), (8 * S, 9 * S)],
            ..Default::default()
        }
    }

    fn lookup(called: u64, answered: u64, seen: &[&str]) -> Lookup {
        Lookup {
            called,
            answered,
            seen: seen.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn kinds(a: &[Anomaly]) -> Vec<&'static str> {
        a.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn an_instance_must_be_seen_while_its_lease_certainly_runs() {
        let mut m = BTreeMap::new();
        m.insert("i1".to_string(), instance());
        // Before its registration was acknowledged: either way.
        assert!(check(&m, &[lookup(2 * S, 4 * S, &[])]).is_empty());
        // Acknowledged, lease running (refreshed at 8 s: until 18 s).
        assert!(check(&m, &[lookup(10 * S, 11 * S, &["i1"])]).is_empty());
        assert_eq!(kinds(&check(&m, &[lookup(10 * S, 11 * S, &[])])), vec!["invisible"]);
        // The refresh at 8 s was acknowledged after the lookup was called:
        // only the grant (until 11 s) counts, and the answer came later.
        assert!(check(&m, &[lookup(85 * S / 10, 12 * S, &[])]).is_empty());
        // Past every certain deadline the lease may have expired.
        assert!(check(&m, &[lookup(19 * S, 20 * S, &[])]).is_empty());
        // Deregistration called before the answer: either way.
        m.get_mut("i1").unwrap().deregister_called = Some(10 * S);
        assert!(check(&m, &[lookup(10 * S, 11 * S, &[])]).is_empty());
    }

    #[test]
    fn deregistered_failed_and_unknown_instances_must_not_be_seen() {
        let mut m = BTreeMap::new();
        let mut gone = instance();
        gone.deregister_called = Some(4 * S);
        gone.deregistered = Some(5 * S);
        m.insert("gone".to_string(), gone);
        m.insert(
            "failed".to_string(),
            Instance {
                register_failed: true,
                ..Default::default()
            },
        );
        assert!(check(&m, &[lookup(6 * S, 7 * S, &[])]).is_empty());
        assert_eq!(
            kinds(&check(&m, &[lookup(6 * S, 7 * S, &["gone"])])),
            vec!["visible after deregister"]
        );
        // Called before the deregistration was acknowledged: either way.
        assert!(check(&m, &[lookup(45 * S / 10, 7 * S, &["gone"])]).is_empty());
        assert_eq!(
            kinds(&check(&m, &[lookup(6 * S, 7 * S, &["failed"])])),
            vec!["failed register visible"]
        );
        assert_eq!(
            kinds(&check(&m, &[lookup(6 * S, 7 * S, &["stranger"])])),
            vec!["unknown instance"]
        );
    }
}
