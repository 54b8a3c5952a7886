//! Commands replicated through Raft, and their responses.
//!
//! A [`Command`] is what the leader proposes; it carries everything apply
//! needs so that apply is deterministic (no clock, no randomness on the
//! applying node). Writes from clients carry a [`SessionRef`] so a retried
//! write is applied once (see `meta::session`).
//!
//! Reads (get, range, history) are not commands: they are served from the
//! state machine after a ReadIndex round (or locally when serializable).

use serde::{Deserialize, Serialize};

/// A client's session position: `(client_id, seq)` identifies a write;
/// `acked_below` tells the state machine the client has every response with
/// a smaller `seq`, so their cached responses can be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// Client id, chosen by the client (random 64 bits).
    pub client_id: u64,
    /// Sequence number of this write within the session, starting at 1.
    pub seq: u64,
    /// Every response with `seq < acked_below` has reached the client.
    pub acked_below: u64,
}

/// The Raft entry payload of every group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Deduplication session of the client, if the write came from one.
    pub session: Option<SessionRef>,
    /// The operation.
    pub op: Op,
}

impl Command {
    /// A command without a session (internal proposals, tests).
    pub fn new(op: Op) -> Self {
        Command { session: None, op }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            Op::Put(p) => write!(f, "put({} bytes key)", p.key.len()),
            Op::Delete(d) => write!(f, "delete({:?})", d.range.kind()),
            Op::Txn(t) => write!(
                f,
                "txn({} compares, {}/{} ops)",
                t.compares.len(),
                t.success.len(),
                t.failure.len()
            ),
            Op::Compact { revision } => write!(f, "compact({revision})"),
            Op::LeaseGrant { id, ttl_secs } => write!(f, "lease_grant({id}, {ttl_secs}s)"),
            Op::LeaseRevoke { id, expired } => write!(f, "lease_revoke({id}, expired={expired})"),
            Op::MemberReplicated { node_id } => write!(f, "member_replicated({node_id})"),
            Op::SetLimits(_) => write!(f, "set_limits"),
            Op::Append(a) => write!(f, "append({} events to a stream)", a.events.len()),
            Op::DeleteStream { .. } => write!(f, "delete_stream"),
            Op::RecordPartitions { count } => write!(f, "record_partitions({count})"),
            Op::PlacePartitions { plan, .. } => write!(f, "place_partitions({} partitions)", plan.len()),
            Op::AuditCursor { revision } => write!(f, "audit_cursor({revision})"),
            Op::RemoveEvents { offsets } => write!(f, "remove_events({})", offsets.len()),
            Op::IndexField { create, .. } => write!(f, "index_field(create={create})"),
            Op::Auth(c) => write!(f, "auth({})", c.kind()),
            Op::AsUser { op, .. } => write!(f, "as_user({})", Command::new((**op).clone())),
            Op::Batch(cmds) => write!(f, "batch({} commands)", cmds.len()),
        }
    }
}

impl Op {
    /// Short name of the operation, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put(_) => "put",
            Op::Delete(_) => "delete",
            Op::Txn(_) => "txn",
            Op::Compact { .. } => "compact",
            Op::LeaseGrant { .. } => "lease grant",
            Op::LeaseRevoke { .. } => "lease revoke",
            Op::MemberReplicated { .. } => "member replicated",
            Op::SetLimits(_) => "set limits",
            Op::Append(_) => "append",
            Op::DeleteStream { .. } => "delete stream",
            Op::RecordPartitions { .. } => "record partitions",
            Op::PlacePartitions { .. } => "place partitions",
            Op::AuditCursor { .. } => "audit cursor",
            Op::RemoveEvents { .. } => "remove events",
            Op::IndexField { .. } => "index field",
            Op::Auth(_) => "auth change",
            Op::AsUser { .. } => "as user",
            Op::Batch(_) => "batch",
        }
    }

    /// Whether the leader may coalesce this operation with others into one
    /// [`Op::Batch`] entry: puts, single-key deletes and txns whose
    /// branches only put, delete and read (at the current revision) single
    /// keys, possibly as a user. What these read while applied is the
    /// current value of single keys, which apply serves from the batch's
    /// own earlier writes; anything that scans (ranges, reads of past
    /// revisions, leases, compaction on demand) is proposed alone.
    pub fn coalescable(&self) -> bool {
        let single_key_write = |op: &TxnOp| match op {
            TxnOp::Put(_) => true,
            TxnOp::Delete(d) => matches!(d.range, KeyRange::Key(_)),
            TxnOp::Range(r) => matches!(r.range, KeyRange::Key(_)) && r.revision == 0,
        };
        match self {
            Op::Put(_) => true,
            Op::Delete(d) => matches!(d.range, KeyRange::Key(_)),
            Op::Txn(t) => t.success.iter().chain(&t.failure).all(single_key_write),
            Op::AsUser { op, .. } => op.coalescable(),
            _ => false,
        }
    }
}

/// Meta group operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a key.
    Put(PutRequest),
    /// Delete a key or a range.
    Delete(DeleteRequest),
    /// Compare, then apply one of two op lists, atomically at one revision.
    Txn(TxnRequest),
    /// Drop history below `revision`.
    Compact {
        /// New compaction revision.
        revision: u64,
    },
    /// Create a lease. `id == 0` lets the state machine choose one.
    LeaseGrant {
        /// Requested id, or 0.
        id: u64,
        /// Time to live in seconds.
        ttl_secs: u64,
    },
    /// Replace the replicated limits (history depth, sizes).
    SetLimits(crate::limits::Limits),
    /// Delete a lease and every key attached to it.
    LeaseRevoke {
        /// Lease id.
        id: u64,
        /// Proposed by the leader's expiry timer rather than a client.
        expired: bool,
    },
    /// Records that the leader has replicated to `node_id`: from then on a
    /// node with that id that comes back with an empty data dir was wiped
    /// (it lost acknowledged entries) and must not rejoin as it is. Changes
    /// no key and no revision.
    MemberReplicated {
        /// The node.
        node_id: u64,
    },
    /// Event partitions: append events to one stream, atomically.
    Append(AppendRequest),
    /// Event partitions: tombstone a stream (its events are no longer
    /// returned and the stream id cannot be appended to again).
    DeleteStream {
        /// Stream id.
        stream: String,
        /// Version the stream must be at.
        expected: ExpectedVersion,
    },
    /// Records the event partition count of the cluster, once: a second
    /// record with another count is rejected. Changes no key and no
    /// revision.
    RecordPartitions {
        /// Partitions.
        count: u32,
    },
    /// Sets the desired replica set of event partitions (partition ->
    /// node ids, the first one its preferred leader), as planned by the
    /// meta leader; partitions not named keep theirs. Changes no key and no
    /// revision.
    PlacePartitions {
        /// (partition, replicas) pairs.
        plan: Vec<(u32, Vec<u64>)>,
        /// Nodes no partition may be placed on from now on (members being
        /// removed), added to those already excluded.
        exclude: Vec<u64>,
        /// Nodes excluded before that may be placed on again (they left
        /// the cluster).
        include: Vec<u64>,
    },
    /// Records that the audit relay has appended the audit event of every
    /// revision up to `revision` (it never moves back). From then on no
    /// compaction goes above it, so a revision is never compacted before
    /// its audit event exists. Changes no key and no revision (the relay
    /// does not audit itself).
    AuditCursor {
        /// Last relayed revision.
        revision: u64,
    },
    /// Event partitions: remove these events (chosen by the partition
    /// leader from the retention rules), with their id, stream and
    /// secondary index rows. Offsets already gone are skipped, so a retry
    /// is harmless.
    RemoveEvents {
        /// Offsets, at most [`crate::events::MAX_REMOVE_EVENTS`].
        offsets: Vec<u64>,
    },
    /// Event partitions: start (`create`) or stop keeping a declared index
    /// on a JSON field (a dotted path), as declared in meta. From a create
    /// on, every appended event gets its row; the events before it are
    /// indexed in the background by each replica.
    IndexField {
        /// Dotted path.
        field: String,
        /// Create, or drop.
        create: bool,
    },
    /// Change users, roles or permissions, or turn auth on or off (see
    /// `meta::auth`). Changes no key and no revision.
    Auth(crate::meta::auth::AuthChange),
    /// `op` on behalf of `user`: apply checks the user's permissions for
    /// it (`meta::auth::AuthState::check_op`) while auth is enabled, and
    /// records the user as the author of the revision it makes.
    AsUser {
        /// User name.
        user: String,
        /// The operation (never another `AsUser`).
        op: Box<Op>,
    },
    /// Meta group: concurrent client commands the leader coalesced into one
    /// entry (each [`Op::coalescable`], never another batch), applied in
    /// order as if each were its own entry, each with its own session,
    /// revision and result ([`OpResult::Batch`]), in one RocksDB batch.
    /// One entry instead of many saves the per-entry work of Raft, the log
    /// and apply on every replica.
    Batch(Vec<Command>),
}

/// What an append or a stream delete expects of the stream's version
/// (the number of its events; the first event has version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no events and was never deleted.
    NoStream,
    /// The stream has at least one event.
    Exists,
    /// The stream's version is exactly this (0: no events yet).
    Exact(u64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => write!(f, "any"),
            ExpectedVersion::NoStream => write!(f, "no_stream"),
            ExpectedVersion::Exists => write!(f, "exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// One event to append, as the client sent it (validated by the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Event id (a UUID; the client's, or generated by the node).
    pub id: [u8; 16],
    /// Event type.
    pub event_type: String,
    /// Correlation id ("" if none).
    pub correlation_id: String,
    /// Causation id ("" if none).
    pub causation_id: String,
    /// JSON payload.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// Append to one stream of an event partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// Stream id.
    pub stream: String,
    /// Version check.
    pub expected: ExpectedVersion,
    /// Milliseconds since the Unix epoch, assigned by the leader when it
    /// proposes (apply never reads a clock).
    pub timestamp_ms: u64,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// Which keys an operation covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    /// Exactly one key.
    Key(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key starting with the prefix (an empty prefix is every key).
    Prefix(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Keys in `[start, end)`.
    Between {
        /// Inclusive start.
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// Exclusive end.
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
}

impl KeyRange {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyRange::Key(_) => "key",
            KeyRange::Prefix(_) => "prefix",
            KeyRange::Between { .. } => "between",
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Between { start, end } => key >= start.as_slice() && key < end.as_slice(),
        }
    }
}

/// Put request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Lease to attach the key to (0: none).
    pub lease: u64,
    /// Return the previous key-value.
    pub prev_kv: bool,
}

/// Delete request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// Keys to delete.
    pub range: KeyRange,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// Range (read) request. Also usable inside a txn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// Keys to read.
    pub range: KeyRange,
    /// Read at this revision (0: current).
    pub revision: u64,
    /// Return at most this many keys (0: no limit).
    pub limit: u64,
    /// Return only the count.
    pub count_only: bool,
    /// Return keys without values.
    pub keys_only: bool,
}

impl RangeRequest {
    /// A current read of one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            range: KeyRange::Key(key.into()),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
        }
    }

    /// A current read of a prefix.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        RangeRequest {
            range: KeyRange::Prefix(prefix.into()),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
        }
    }
}

/// What a txn compare looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value (a missing key never compares true, as in etcd).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The version (0 for a missing key).
    Version(u64),
    /// The create revision (0 for a missing key).
    CreateRevision(u64),
    /// The mod revision (0 for a missing key).
    ModRevision(u64),
    /// The attached lease (0 for none or a missing key).
    Lease(u64),
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// One txn guard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// Key compared.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Operator.
    pub op: CompareOp,
    /// Field and operand.
    pub target: CompareTarget,
}

/// One op of a txn branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Put.
    Put(PutRequest),
    /// Delete.
    Delete(DeleteRequest),
    /// Read (sees the state before the txn; see `meta` docs).
    Range(RangeRequest),
}

/// Txn request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// All must hold for `success` to run; otherwise `failure` runs.
    pub compares: Vec<Compare>,
    /// Ops if every compare holds.
    pub success: Vec<TxnOp>,
    /// Ops otherwise.
    pub failure: Vec<TxnOp>,
}

/// A key with its MVCC metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// Key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Value (empty when `keys_only`).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last delete).
    pub create_revision: u64,
    /// Revision of the last modification.
    pub mod_revision: u64,
    /// Number of puts since creation (1 after creation).
    pub version: u64,
    /// Attached lease, 0 for none.
    pub lease: u64,
}

/// Result of a range read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeResult {
    /// The keys (empty when `count_only`).
    pub kvs: Vec<KeyValue>,
    /// Number of keys in range (before `limit`).
    pub count: u64,
    /// More keys exist beyond `limit`.
    pub more: bool,
}

/// Result of one txn op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// Put result: the previous key-value if asked.
    Put {
        /// Previous value.
        prev_kv: Option<KeyValue>,
    },
    /// Delete result.
    Delete {
        /// Number of keys deleted.
        deleted: u64,
        /// Deleted key-values if asked.
        prev_kvs: Vec<KeyValue>,
    },
    /// Range result.
    Range(RangeResult),
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// Put done.
    Put {
        /// Previous value if asked.
        prev_kv: Option<KeyValue>,
    },
    /// Delete done.
    Delete {
        /// Number of keys deleted.
        deleted: u64,
        /// Deleted key-values if asked.
        prev_kvs: Vec<KeyValue>,
    },
    /// Txn done.
    Txn {
        /// Whether the compares held.
        succeeded: bool,
        /// Results of the branch that ran.
        results: Vec<TxnOpResult>,
    },
    /// Compaction done.
    Compacted {
        /// The compaction revision now in force.
        compact_revision: u64,
    },
    /// Lease granted.
    LeaseGranted {
        /// Lease id.
        id: u64,
        /// TTL in seconds.
        ttl_secs: u64,
    },
    /// Limits replaced.
    LimitsSet,
    /// Lease revoked.
    LeaseRevoked {
        /// Keys deleted with it.
        deleted_keys: u64,
    },
    /// The command was rejected deterministically; nothing changed.
    Rejected(Rejection),
    /// Membership or blank entry.
    None,
    /// Events appended (or, for a retry of the same event ids, found where
    /// the first attempt put them).
    Appended {
        /// Offset of the first event in the partition.
        first_offset: u64,
        /// Stream version of the first event.
        first_version: u64,
        /// Events in the append.
        count: u64,
        /// Every event id was already appended: nothing new was written.
        duplicate: bool,
    },
    /// Stream tombstoned at this version.
    StreamDeleted {
        /// Its version when deleted.
        version: u64,
    },
    /// Events removed by retention.
    Removed {
        /// Events that were still there and are now gone.
        events: u64,
    },
    /// Auth changed.
    AuthChanged {
        /// The auth revision after the change.
        auth_revision: u64,
    },
    /// The response of each command of an [`Op::Batch`], in order.
    Batch(Vec<Response>),
}

/// Why a command was rejected by the state machine (same on every replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A field is invalid.
    #[error("invalid argument: {field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The revision asked for was compacted.
    #[error("revision {requested} is compacted; the oldest readable revision is {compact_revision}")]
    Compacted {
        /// Requested revision.
        requested: u64,
        /// Current compaction revision.
        compact_revision: u64,
    },
    /// The revision asked for is in the future.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// Requested.
        requested: u64,
        /// Current.
        current: u64,
    },
    /// The lease does not exist.
    #[error("lease {0} not found")]
    LeaseNotFound(u64),
    /// The lease id is taken.
    #[error("lease {0} already exists")]
    LeaseExists(u64),
    /// The session's response for this sequence number was already dropped.
    #[error("session {client_id}: sequence {seq} is older than the session's oldest kept response ({oldest})")]
    SessionExpired {
        /// Client id.
        client_id: u64,
        /// Sequence number.
        seq: u64,
        /// Oldest kept.
        oldest: u64,
    },
    /// The stream is not at the expected version.
    #[error("stream {stream:?}: expected version {expected}, actual {actual}")]
    WrongExpectedVersion {
        /// Stream id.
        stream: String,
        /// What the request expected.
        expected: ExpectedVersion,
        /// The stream's version (0: no events).
        actual: u64,
    },
    /// The stream was deleted.
    #[error("stream {0:?} is deleted")]
    StreamDeleted(String),
    /// Auth does not let the user do this.
    #[error("user {user:?} {reason}")]
    PermissionDenied {
        /// User.
        user: String,
        /// What is missing.
        reason: String,
    },
}

/// The state machine's answer to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Store revision after the entry.
    pub revision: u64,
    /// Outcome.
    pub result: OpResult,
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;

    /// `serde_bytes` on byte fields must not change the bincode format that
    /// logs, snapshots and the state machine already hold: bincode writes a
    /// byte string exactly as a sequence of u8 (length, then the bytes).
    #[test]
    fn byte_fields_keep_the_stored_encoding() {
        #[derive(Serialize)]
        struct PlainPut {
            key: Vec<u8>,
            value: Vec<u8>,
            lease: u64,
            prev_kv: bool,
        }
        #[derive(Serialize)]
        enum PlainRange {
            #[allow(dead_code)]
            Key(Vec<u8>),
            #[allow(dead_code)]
            Prefix(Vec<u8>),
            Between {
                start: Vec<u8>,
                end: Vec<u8>,
            },
        }
        let put = PutRequest {
            key: b"k/1".to_vec(),
            value: vec![0, 255, 7],
            lease: 9,
            prev_kv: true,
        };
        let plain = PlainPut {
            key: b"k/1".to_vec(),
            value: vec![0, 255, 7],
            lease: 9,
            prev_kv: true,
        };
        assert_eq!(bincode::serialize(&put).unwrap(), bincode::serialize(&plain).unwrap());
        let range = KeyRange::Between {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
        };
        let plain = PlainRange::Between {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
        };
        assert_eq!(bincode::serialize(&range).unwrap(), bincode::serialize(&plain).unwrap());
        let decoded: PutRequest = bincode::deserialize(&bincode::serialize(&put).unwrap()).unwrap();
        assert_eq!(decoded, put);
    }
}
