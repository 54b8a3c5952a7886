//! Client sessions: a retried write is applied once.
//!
//! A client writes with `(client_id, seq)`. The state machine keeps, per
//! client, the responses of recent sequence numbers. A command whose `seq`
//! has a kept response gets that response again without being re-applied;
//! one whose `seq` is below every kept response (already dropped) is
//! rejected with `SessionExpired`, because applying it again could double
//! it. `acked_below` lets the client release responses it has received.
//!
//! Bounds (deterministic, replicated limits): at most
//! `max_session_responses` responses per session (oldest dropped first),
//! at most `max_sessions` sessions (the least recently used, by log index,
//! is evicted). Eviction uses only log indexes, never a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::command::{Rejection, Response, SessionRef};

/// One client's session.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Session {
    /// Responses by sequence number.
    pub responses: BTreeMap<u64, Response>,
    /// Every `seq` below this has had its response dropped.
    pub dropped_below: u64,
    /// Log index of the last command of this session.
    pub last_used_index: u64,
}

/// What to do with a command of a session.
pub(crate) enum Check {
    /// Apply it.
    Apply,
    /// Answer with the kept response; do not apply.
    Duplicate(Response),
    /// Reject: the response was dropped.
    Expired(Rejection),
}

/// All sessions of a group, mirrored in memory (bounded by `max_sessions`).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_client: HashMap<u64, Session>,
    lru: BTreeSet<(u64, u64)>,
}

impl Sessions {
    pub(crate) fn load(entries: impl IntoIterator<Item = (u64, Session)>) -> Self {
        let mut s = Sessions::default();
        for (client, session) in entries {
            s.lru.insert((session.last_used_index, client));
            s.by_client.insert(client, session);
        }
        s
    }

    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    pub(crate) fn check(&self, r: &SessionRef) -> Check {
        match self.by_client.get(&r.client_id) {
            None => Check::Apply,
            Some(s) => {
                if let Some(resp) = s.responses.get(&r.seq) {
                    Check::Duplicate(resp.clone())
                } else if r.seq < s.dropped_below {
                    Check::Expired(Rejection::SessionExpired {
                        client_id: r.client_id,
                        seq: r.seq,
                        oldest: s.dropped_below,
                    })
                } else {
                    Check::Apply
                }
            }
        }
    }

    /// Records `resp` for `r` at log `index`. Returns the sessions whose
    /// persisted form changed (`Some`) or that were evicted (`None`).
    pub(crate) fn record(
        &mut self,
        r: &SessionRef,
        resp: &Response,
        index: u64,
        max_responses: usize,
        max_sessions: usize,
    ) -> Vec<(u64, Option<Session>)> {
        let mut changed = Vec::new();
        let s = self.by_client.entry(r.client_id).or_default();
        self.lru.remove(&(s.last_used_index, r.client_id));
        s.last_used_index = index;
        self.lru.insert((index, r.client_id));
        // Responses the client has acknowledged are released.
        if r.acked_below > s.dropped_below {
            s.responses = s.responses.split_off(&r.acked_below);
            s.dropped_below = r.acked_below;
        }
        if r.seq >= s.dropped_below {
            s.responses.insert(r.seq, resp.clone());
        }
        while s.responses.len() > max_responses {
            let (&oldest, _) = s.responses.iter().next().expect("len > max >= 0 so non-empty");
            s.responses.remove(&oldest);
            s.dropped_below = s.dropped_below.max(oldest + 1);
        }
        changed.push((r.client_id, Some(s.clone())));
        while self.by_client.len() > max_sessions {
            let &(idx, client) = self
                .lru
                .iter()
                .next()
                .expect("more sessions than the bound, so lru is non-empty");
            self.lru.remove(&(idx, client));
            self.by_client.remove(&client);
            changed.push((client, None));
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::OpResult;

    fn resp(rev: u64) -> Response {
        Response {
            revision: rev,
            result: OpResult::None,
        }
    }

    fn sref(client: u64, seq: u64, acked: u64) -> SessionRef {
        SessionRef {
            client_id: client,
            seq,
            acked_below: acked,
        }
    }

    #[test]
    fn duplicate_gets_kept_response_and_dropped_is_rejected() {
        let mut s = Sessions::default();
        assert!(matches!(s.check(&sref(1, 1, 0)), Check::Apply));
        s.record(&sref(1, 1, 0), &resp(10), 5, 2, 10);
        assert!(matches!(s.check(&sref(1, 1, 0)), Check::Duplicate(r) if r.revision == 10));
        s.record(&sref(1, 2, 0), &resp(11), 6, 2, 10);
        s.record(&sref(1, 3, 0), &resp(12), 7, 2, 10);
        // Only two kept: seq 1 dropped.
        assert!(matches!(s.check(&sref(1, 1, 0)), Check::Expired(_)));
        assert!(matches!(s.check(&sref(1, 2, 0)), Check::Duplicate(r) if r.revision == 11));
        // Acknowledging releases.
        s.record(&sref(1, 4, 4), &resp(13), 8, 2, 10);
        assert!(matches!(s.check(&sref(1, 3, 0)), Check::Expired(_)));
        assert!(matches!(s.check(&sref(1, 4, 0)), Check::Duplicate(_)));
    }

    #[test]
    fn least_recently_used_session_is_evicted() {
        let mut s = Sessions::default();
        s.record(&sref(1, 1, 0), &resp(1), 1, 4, 2);
        s.record(&sref(2, 1, 0), &resp(2), 2, 4, 2);
        s.record(&sref(1, 2, 0), &resp(3), 3, 4, 2);
        let changed = s.record(&sref(3, 1, 0), &resp(4), 4, 4, 2);
        assert!(changed.contains(&(2, None)), "{changed:?}");
        assert_eq!(s.len(), 2);
        assert!(matches!(s.check(&sref(1, 2, 0)), Check::Duplicate(_)));
        assert!(matches!(s.check(&sref(2, 1, 0)), Check::Apply));
    }
}
