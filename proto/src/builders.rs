//! Typed constructors for the requests whose raw protobuf structs are
//! awkward to build by hand (a `oneof` key range, optional flags with
//! `..Default::default()`): `KeyRange::key("a")`,
//! `PutRequest::new("k", "v").with_lease(7)`,
//! `DeleteRequest::of(KeyRange::prefix("svc/"))`,
//! `WatchRequest::of(KeyRange::prefix("cfg/")).from_revision(42)`.
//!
//! They only fill fields; the server validates every request as it would
//! one built by hand.

use crate::v1::{Between, DeleteRequest, KeyRange, PutRequest, RangeRequest, WatchRequest, key_range};

impl KeyRange {
    /// Exactly the key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            kind: Some(key_range::Kind::Key(key.into())),
        }
    }

    /// Every key starting with `prefix` (empty: every user key).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            kind: Some(key_range::Kind::Prefix(prefix.into())),
        }
    }

    /// Every key from `start` (included) to `end` (excluded).
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            kind: Some(key_range::Kind::Between(Between {
                start: start.into(),
                end: end.into(),
            })),
        }
    }
}

impl PutRequest {
    /// A put of `value` at `key`, with no lease.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    /// The key lives as long as lease `id`.
    pub fn with_lease(mut self, id: u64) -> PutRequest {
        self.lease = id;
        self
    }

    /// The answer carries the key's previous value.
    pub fn with_prev_kv(mut self) -> PutRequest {
        self.prev_kv = true;
        self
    }
}

impl DeleteRequest {
    /// A delete of every key in `range`.
    pub fn of(range: KeyRange) -> DeleteRequest {
        DeleteRequest {
            range: Some(range),
            ..Default::default()
        }
    }

    /// The answer carries the deleted keys' last values.
    pub fn with_prev_kv(mut self) -> DeleteRequest {
        self.prev_kv = true;
        self
    }
}

impl RangeRequest {
    /// A linearizable read of every key in `range` at the current revision.
    pub fn of(range: KeyRange) -> RangeRequest {
        RangeRequest {
            range: Some(range),
            ..Default::default()
        }
    }

    /// At most `limit` keys.
    pub fn with_limit(mut self, limit: u64) -> RangeRequest {
        self.limit = limit;
        self
    }

    /// Served from the answering node's state, which may lag.
    pub fn serializable(mut self) -> RangeRequest {
        self.serializable = true;
        self
    }
}

impl WatchRequest {
    /// A watch of `range` from the changes after the current revision.
    pub fn of(range: KeyRange) -> WatchRequest {
        WatchRequest {
            range: Some(range),
            ..Default::default()
        }
    }

    /// Deliver from revision `revision` on.
    pub fn from_revision(mut self, revision: u64) -> WatchRequest {
        self.start_revision = revision;
        self
    }

    /// Each event carries the key's previous value.
    pub fn with_prev_kv(mut self) -> WatchRequest {
        self.prev_kv = true;
        self
    }

    /// A progress response after `ms` milliseconds without events.
    pub fn with_progress_ms(mut self, ms: u64) -> WatchRequest {
        self.progress_notify_ms = ms;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_the_fields_a_literal_would() {
        assert_eq!(
            PutRequest::new("k", "v").with_lease(7).with_prev_kv(),
            PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 7,
                prev_kv: true,
                session: None,
            }
        );
        assert_eq!(
            DeleteRequest::of(KeyRange::prefix("svc/")).range,
            Some(KeyRange {
                kind: Some(key_range::Kind::Prefix(b"svc/".to_vec()))
            })
        );
        let w = WatchRequest::of(KeyRange::between("a", "b"))
            .from_revision(42)
            .with_prev_kv();
        assert_eq!((w.start_revision, w.prev_kv, w.progress_notify_ms), (42, true, 0));
        let r = RangeRequest::of(KeyRange::key("a")).with_limit(3).serializable();
        assert_eq!((r.limit, r.serializable, r.revision), (3, true, 0));
    }
}
