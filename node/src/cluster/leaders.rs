//! What tests check across replicas: the (term, leader) pairs each group's
//! node saw, and a fingerprint of each group's state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use esf_raft::openraft::async_runtime::WatchReceiver;

/// Most (term, leader) pairs kept per group.
pub const MAX_TERMS_KEPT: usize = 1024;

/// Per group, the (term, leader) pairs seen, oldest first.
#[derive(Default)]
pub struct LeaderLog {
    seen: Mutex<BTreeMap<u32, VecDeque<(u64, u64)>>>,
}

impl LeaderLog {
    fn record(&self, group: u32, term: u64, leader: u64) {
        let mut seen = self.seen.lock().expect("leader log lock");
        let log = seen.entry(group).or_default();
        if log.back() != Some(&(term, leader)) {
            log.push_back((term, leader));
            if log.len() > MAX_TERMS_KEPT {
                log.pop_front();
            }
        }
    }

    /// Every (group, term, leader) seen.
    pub fn all(&self) -> Vec<(u32, u64, u64)> {
        let seen = self.seen.lock().expect("leader log lock");
        seen.iter()
            .flat_map(|(g, log)| log.iter().map(|(t, l)| (*g, *t, *l)))
            .collect()
    }
}

/// Records every leader group `group` reports until `stop`.
pub async fn watch_leaders<SM>(
    group: u32,
    raft: esf_raft::openraft::Raft<esf_raft::types::TypeConfig, SM>,
    log: Arc<LeaderLog>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    SM: esf_raft::openraft::storage::RaftStateMachine<esf_raft::types::TypeConfig>,
{
    let mut m = raft.metrics();
    loop {
        let (term, leader) = {
            let x = m.borrow_watched();
            (x.current_term, x.current_leader)
        };
        if let Some(l) = leader {
            log.record(group, term, l);
        }
        tokio::select! {
            r = m.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
