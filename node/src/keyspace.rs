//! The meta keyspace ESF keeps for itself, and its reserved event streams.
//!
//! Every key ESF writes for its own features starts with
//! [`RESERVED_KEY_BYTE`] (no UTF-8 text starts with it, so no user key
//! can collide), then one of the [`Area`] prefixes below. The Config
//! service neither reads nor writes such keys; the audit trail names each
//! change by its area. A new feature that keeps records in meta adds an
//! area here, once.
//!
//! Streams whose name starts with [`RESERVED_STREAM_PREFIX`] belong to ESF
//! (the audit trail is [`AUDIT_STREAM`]): clients may read them but never
//! write or delete them.

use esf_raft::command::{DeleteRequest, KeyRange, Op, PutRequest};

/// First byte of every key ESF keeps for itself in the meta keyspace.
pub const RESERVED_KEY_BYTE: u8 = 0xff;

/// First character of the event streams ESF writes itself.
pub const RESERVED_STREAM_PREFIX: char = '$';

/// The audit trail's stream: one event per meta revision.
pub const AUDIT_STREAM: &str = "$audit";

/// A part of the reserved keyspace: one feature's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Service registry instances: `registry/SERVICE/ID`.
    Registry,
    /// Durable subscriptions: `sub/NAME`.
    Subscription,
    /// Consumer group members: `sub-consumer/NAME/ID`.
    SubscriptionConsumer,
    /// Retention rules: `retention/STREAM_PREFIX`.
    Retention,
    /// Declared field indexes: `index/FIELD`.
    FieldIndex,
    /// The last autopilot action on a node: `autopilot/NODE_ID`.
    Autopilot,
}

impl Area {
    /// Every area, for classifying a key.
    pub const ALL: [Area; 6] = [
        Area::Registry,
        Area::Subscription,
        Area::SubscriptionConsumer,
        Area::Retention,
        Area::FieldIndex,
        Area::Autopilot,
    ];

    /// The prefix after [`RESERVED_KEY_BYTE`].
    pub fn prefix(self) -> &'static [u8] {
        match self {
            Area::Registry => b"registry/",
            Area::Subscription => b"sub/",
            Area::SubscriptionConsumer => b"sub-consumer/",
            Area::Retention => b"retention/",
            Area::FieldIndex => b"index/",
            Area::Autopilot => b"autopilot/",
        }
    }

    /// What the audit trail calls a change in this area.
    pub fn audit_kind(self) -> &'static str {
        match self {
            Area::Registry => "registry",
            Area::Subscription | Area::SubscriptionConsumer => "subscription",
            Area::Retention => "retention",
            Area::FieldIndex => "index",
            Area::Autopilot => "autopilot",
        }
    }

    /// The key of `name` (any bytes) in this area.
    pub fn key(self, name: &[u8]) -> Vec<u8> {
        let prefix = self.prefix();
        let mut k = Vec::with_capacity(1 + prefix.len() + name.len());
        k.push(RESERVED_KEY_BYTE);
        k.extend_from_slice(prefix);
        k.extend_from_slice(name);
        k
    }

    /// Every key of this area.
    pub fn range(self) -> KeyRange {
        KeyRange::Prefix(self.key(b""))
    }

    /// The name part of `key`, if it is a key of this area.
    pub fn name_of(self, key: &[u8]) -> Option<&[u8]> {
        key.strip_prefix(&[RESERVED_KEY_BYTE][..])?.strip_prefix(self.prefix())
    }
}

/// Whether `key` is in the reserved keyspace.
pub fn is_reserved(key: &[u8]) -> bool {
    key.first() == Some(&RESERVED_KEY_BYTE)
}

/// Whether `stream` is one ESF writes itself.
pub fn is_reserved_stream(stream: &str) -> bool {
    stream.starts_with(RESERVED_STREAM_PREFIX)
}

/// A meta put of one (reserved) key, no lease.
pub fn put_key(key: Vec<u8>, value: Vec<u8>) -> Op {
    Op::Put(PutRequest {
        key,
        value,
        lease: 0,
        prev_kv: false,
    })
}

/// A meta delete of one (reserved) key.
pub fn delete_key(key: Vec<u8>) -> Op {
    Op::Delete(DeleteRequest {
        range: KeyRange::Key(key),
        prev_kv: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_are_disjoint_and_round_trip() {
        for a in Area::ALL {
            let k = a.key(b"x/y");
            assert!(is_reserved(&k));
            assert_eq!(a.name_of(&k), Some(&b"x/y"[..]));
            for b in Area::ALL.into_iter().filter(|b| *b != a) {
                assert_eq!(b.name_of(&k), None, "{a:?} key read as {b:?}");
            }
        }
        // The stored layout is fixed: data already written depends on it.
        assert_eq!(Area::Registry.key(b"web/1"), b"\xffregistry/web/1".to_vec());
        assert_eq!(Area::SubscriptionConsumer.key(b"s/c"), b"\xffsub-consumer/s/c".to_vec());
        assert!(!is_reserved(b"config/a"));
        assert!(is_reserved_stream(AUDIT_STREAM) && !is_reserved_stream("orders-1"));
        // Apply's permission check on lease revokes knows these two.
        assert_eq!(RESERVED_KEY_BYTE, esf_raft::meta::auth::RESERVED_KEY_BYTE);
        assert_eq!(Area::Registry.key(b""), esf_raft::meta::auth::REGISTRY_KEY_PREFIX);
    }
}
