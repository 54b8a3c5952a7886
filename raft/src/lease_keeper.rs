//! The leader's lease countdowns.
//!
//! As in etcd, keepalives are not Raft entries: the leader keeps every
//! lease's deadline in memory on a monotonic clock and, when one passes,
//! proposes `LeaseRevoke { expired: true }` through Raft. A node that
//! becomes leader starts every countdown from the full TTL, and so does a
//! leader that first sees a lease (e.g. granted through an old leader):
//! a lease can outlive its TTL by up to one TTL across a leader change, but
//! never expire early, and no wall-clock jump can move a deadline.
//!
//! [`LeaseClock`] is the pure bookkeeping (tested with explicit instants);
//! the driver task lives in [`crate::group`].

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::meta::LeaseRecord;

/// Deadlines of the leases this leader is counting down.
#[derive(Debug, Default)]
pub struct LeaseClock {
    leases: HashMap<u64, (Duration, Instant)>,
    by_deadline: BTreeSet<(Instant, u64)>,
}

impl LeaseClock {
    /// Forgets everything (on losing leadership).
    pub fn clear(&mut self) {
        self.leases.clear();
        self.by_deadline.clear();
    }

    /// Number of leases tracked.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether none are tracked.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    fn set(&mut self, id: u64, ttl: Duration, deadline: Instant) {
        if let Some((_, old)) = self.leases.insert(id, (ttl, deadline)) {
            self.by_deadline.remove(&(old, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    /// Makes the tracked set equal to `leases`: new ones start a full TTL
    /// from `now`, known ones keep their deadline, gone ones are dropped.
    pub fn reconcile(&mut self, leases: &[LeaseRecord], now: Instant) {
        let live: BTreeSet<u64> = leases.iter().map(|l| l.id).collect();
        let gone: Vec<u64> = self.leases.keys().filter(|id| !live.contains(id)).copied().collect();
        for id in gone {
            self.remove(id);
        }
        for l in leases {
            if !self.leases.contains_key(&l.id) {
                let ttl = Duration::from_secs(l.ttl_secs);
                self.set(l.id, ttl, now + ttl);
            }
        }
    }

    /// A lease was granted (or first seen): full TTL from `now`.
    pub fn granted(&mut self, id: u64, ttl: Duration, now: Instant) {
        self.set(id, ttl, now + ttl);
    }

    /// A keepalive: restart the countdown. Returns the TTL, or `None` if the
    /// lease is not tracked.
    pub fn keepalive(&mut self, id: u64, now: Instant) -> Option<Duration> {
        let ttl = self.leases.get(&id)?.0;
        self.set(id, ttl, now + ttl);
        Some(ttl)
    }

    /// Time left before `id` expires.
    pub fn remaining(&self, id: u64, now: Instant) -> Option<Duration> {
        self.leases.get(&id).map(|(_, d)| d.saturating_duration_since(now))
    }

    /// Stops tracking a lease (revoked).
    pub fn remove(&mut self, id: u64) {
        if let Some((_, d)) = self.leases.remove(&id) {
            self.by_deadline.remove(&(d, id));
        }
    }

    /// Leases whose deadline is at or before `now`.
    pub fn expired(&self, now: Instant) -> Vec<u64> {
        self.by_deadline
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.iter().next().map(|(d, _)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: u64, ttl: u64) -> LeaseRecord {
        LeaseRecord {
            id,
            ttl_secs: ttl,
            granted_revision: 0,
        }
    }

    #[test]
    fn countdown_keepalive_and_expiry() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        c.reconcile(&[lease(1, 5), lease(2, 10)], t0);
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(c.expired(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            c.keepalive(1, t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(5))
        );
        assert!(c.expired(t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(c.expired(t0 + Duration::from_secs(9)), vec![1]);
        assert_eq!(c.expired(t0 + Duration::from_secs(10)), vec![1, 2]);
        assert_eq!(c.keepalive(3, t0), None);
    }

    #[test]
    fn new_leader_starts_full_ttl_and_reconcile_drops_revoked() {
        let t0 = Instant::now();
        let mut c = LeaseClock::default();
        c.reconcile(&[lease(1, 5)], t0);
        // A later reconcile keeps the running countdown of a known lease.
        c.reconcile(&[lease(1, 5), lease(2, 5)], t0 + Duration::from_secs(3));
        assert_eq!(
            c.remaining(1, t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            c.remaining(2, t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(5))
        );
        c.reconcile(&[lease(2, 5)], t0 + Duration::from_secs(3));
        assert_eq!(c.len(), 1);
        // Leadership lost and regained: everything restarts from full TTL.
        c.clear();
        c.reconcile(&[lease(2, 5)], t0 + Duration::from_secs(7));
        assert!(c.expired(t0 + Duration::from_secs(11)).is_empty());
        assert_eq!(c.expired(t0 + Duration::from_secs(12)), vec![2]);
    }
}
