//! Tables of the meta state machine inside the `sm` column family.
//!
//! Every key is `group:u32 BE ++ table:u8 ++ rest`:
//!
//! | table | rest | value |
//! |---|---|---|
//! | `STATE` | — | [`SmState`](super::store::SmState): applied log id, membership, revision, compaction revision, limits |
//! | `CURRENT` | `enc(key)` | live [`KvRecord`] of the key (absent once deleted) |
//! | `HISTORY` | `enc(key) ++ rev:u64 BE` | the record written at `rev` (a tombstone for a delete) |
//! | `CHANGES` | `rev:u64 BE` | [`Changes`]: the keys changed at `rev`, each with the revision it replaced and whether it deleted (drives compaction and watch) |
//! | `LEASE` | `id:u64 BE` | [`LeaseRecord`] |
//! | `LEASE_KEY` | `id:u64 BE ++ enc(key)` | empty: key attached to lease |
//! | `SESSION` | `client_id:u64 BE` | [`Session`](super::session::Session) |
//! | `REPLICATED` | `node_id:u64 BE` | empty: the leader has replicated to that node |
//! | `PARTITIONS` | — | `count:u32 BE`: event partitions, fixed at cluster creation |
//! | `PLACEMENT` | `partition:u32 BE` | `[node_id:u64 BE]`: the partition's desired replicas, preferred leader first; partition 0 lists the nodes excluded from placement |
//! | `AUDIT` | — | `revision:u64 BE`: the audit relay has appended the audit event of every revision up to it |
//! | `AUTH` | `0` | [`AuthHead`](super::auth::AuthHead): auth on or off, auth revision, token key |
//! | `AUTH` | `1 ++ name` | [`User`](super::auth::User) |
//! | `AUTH` | `2 ++ name` | [`Role`](super::auth::Role) |
//! | `AUTHOR` | `rev:u64 BE` | the user (UTF-8) whose command made `rev`, when one did (auth on or off) |
//!
//! `enc` is the order-preserving, prefix-free byte encoding of esf-storage,
//! so `HISTORY` sorts by (key, revision) and a prefix of user keys is a
//! prefix of encoded keys.

use esf_storage::GroupId;
use esf_storage::keys::{encode_bytes, encode_bytes_prefix, prefix_end};
use serde::{Deserialize, Serialize};

use crate::command::{KeyRange, KeyValue};

pub(crate) const STATE: u8 = 1;
pub(crate) const CURRENT: u8 = 2;
pub(crate) const HISTORY: u8 = 3;
pub(crate) const CHANGES: u8 = 4;
pub(crate) const LEASE: u8 = 5;
pub(crate) const LEASE_KEY: u8 = 6;
pub(crate) const SESSION: u8 = 7;
pub(crate) const REPLICATED: u8 = 8;
pub(crate) const PARTITIONS: u8 = 9;
pub(crate) const PLACEMENT: u8 = 10;
pub(crate) const AUDIT: u8 = 11;
pub(crate) const AUTH: u8 = 12;
pub(crate) const AUTHOR: u8 = 13;

/// Kinds of rows in the `AUTH` table.
pub(crate) const AUTH_HEAD: u8 = 0;
pub(crate) const AUTH_USER: u8 = 1;
pub(crate) const AUTH_ROLE: u8 = 2;

pub(crate) fn auth_key(group: GroupId, kind: u8, name: &str) -> Vec<u8> {
    let mut k = table_prefix(group, AUTH);
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn author_key(group: GroupId, rev: u64) -> Vec<u8> {
    let mut k = table_prefix(group, AUTHOR);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

/// One version of a key. `value == None` is a tombstone (the key was deleted
/// at `mod_revision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRecord {
    /// Revision that created the key.
    pub create_revision: u64,
    /// Revision of this version.
    pub mod_revision: u64,
    /// Puts since creation.
    pub version: u64,
    /// Value, or `None` for a tombstone.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Attached lease.
    pub lease: u64,
}

impl KvRecord {
    pub(crate) fn to_kv(&self, key: &[u8], keys_only: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: if keys_only {
                Vec::new()
            } else {
                self.value.clone().unwrap_or_default()
            },
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Id.
    pub id: u64,
    /// TTL granted, in seconds.
    pub ttl_secs: u64,
    /// Store revision when granted.
    pub granted_revision: u64,
}

/// Keys changed at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Changed keys, in the order the ops ran.
    pub keys: Vec<Vec<u8>>,
    /// Per key (same order), what the change replaced: `None` in rows
    /// written before format 3, which did not record it (compaction then
    /// finds the older versions with a seek).
    pub replaced: Option<Vec<Replaced>>,
}

/// What one change of a key replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Replaced {
    /// Revision of the version this change superseded (0: the key did not
    /// exist). Compaction past the change deletes that version's row.
    pub prev: u64,
    /// The change was a delete: its tombstone row goes once compacted.
    pub deleted: bool,
}

/// A `CHANGES` row of format 3 is these bytes, then the checksummed
/// encoding of [`ChangesV3`]. A format 2 row is the checksummed encoding of
/// `{ keys }`: its first 4 bytes are a crc32 and the next 4 the low half of
/// the key count. A row is read as format 3 only when it starts with these
/// bytes and the rest passes its own checksum, so a format 2 row is misread
/// only if two independent crc32s collide (about 1 in 2^64).
const CHANGES_V3: &[u8; 8] = b"\xffchg\x03\x00\x00\x00";

#[derive(Serialize, Deserialize)]
struct ChangesV2 {
    keys: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct ChangesV3 {
    keys: Vec<Vec<u8>>,
    replaced: Vec<Replaced>,
}

/// [`ChangesV3`] borrowed, to write a row without copying its keys (the
/// same encoding: bincode writes a slice as it writes a `Vec`).
#[derive(Serialize)]
struct ChangesV3Ref<'a> {
    keys: &'a [Vec<u8>],
    replaced: &'a [Replaced],
}

impl Changes {
    /// Records `key` changed, superseding the version at `prev` (0: none).
    pub(crate) fn push(&mut self, key: Vec<u8>, prev: u64, deleted: bool) {
        self.keys.push(key);
        self.replaced
            .get_or_insert_with(Vec::new)
            .push(Replaced { prev, deleted });
    }

    /// The row value (format 3).
    pub(crate) fn encode(&self) -> Result<Vec<u8>, esf_storage::StorageError> {
        let replaced = self.replaced.as_deref().unwrap_or_default();
        debug_assert_eq!(replaced.len(), self.keys.len(), "one replaced entry per key");
        let mut out = CHANGES_V3.to_vec();
        out.extend(esf_storage::codec::encode(
            "changes",
            &ChangesV3Ref {
                keys: &self.keys,
                replaced,
            },
        )?);
        Ok(out)
    }

    /// Decodes a row of format 3 or 2.
    pub(crate) fn decode(
        record: esf_storage::codec::RecordRef<'_>,
        v: &[u8],
    ) -> Result<Changes, esf_storage::StorageError> {
        let v3 = v.strip_prefix(CHANGES_V3.as_slice()).map(|rest| {
            let c: ChangesV3 = esf_storage::codec::decode(record, rest)?;
            if c.replaced.len() != c.keys.len() {
                return Err(esf_storage::StorageError::Corrupt {
                    cf: record.cf,
                    group: record.group,
                    record: record.record.to_string(),
                    reason: format!("{} keys but {} replaced entries", c.keys.len(), c.replaced.len()),
                });
            }
            Ok(Changes {
                keys: c.keys,
                replaced: Some(c.replaced),
            })
        });
        match v3 {
            Some(Ok(c)) => Ok(c),
            // The prefix matched by chance in a format 2 row, or the row is
            // damaged: format 2 decides, else the format 3 error stands.
            Some(Err(e)) => esf_storage::codec::decode::<ChangesV2>(record, v)
                .map(|c| Changes {
                    keys: c.keys,
                    replaced: None,
                })
                .map_err(|_| e),
            None => {
                let c: ChangesV2 = esf_storage::codec::decode(record, v)?;
                Ok(Changes {
                    keys: c.keys,
                    replaced: None,
                })
            }
        }
    }

    /// A row as format 2 wrote it (for tests of the upgrade).
    #[doc(hidden)]
    pub fn encode_format2(keys: &[Vec<u8>]) -> Vec<u8> {
        esf_storage::codec::encode("changes", &ChangesV2 { keys: keys.to_vec() }).expect("a key list always encodes")
    }
}

pub(crate) fn table_prefix(group: GroupId, table: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(table);
    k
}

pub(crate) fn state_key(group: GroupId) -> Vec<u8> {
    table_prefix(group, STATE)
}

pub(crate) fn current_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut k = table_prefix(group, CURRENT);
    encode_bytes(&mut k, key);
    k
}

pub(crate) fn history_key(group: GroupId, key: &[u8], rev: u64) -> Vec<u8> {
    let mut k = table_prefix(group, HISTORY);
    encode_bytes(&mut k, key);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

pub(crate) fn changes_key(group: GroupId, rev: u64) -> Vec<u8> {
    let mut k = table_prefix(group, CHANGES);
    k.extend_from_slice(&rev.to_be_bytes());
    k
}

pub(crate) fn lease_key(group: GroupId, id: u64) -> Vec<u8> {
    let mut k = table_prefix(group, LEASE);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn lease_attach_key(group: GroupId, id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = lease_key_prefix(group, id);
    encode_bytes(&mut k, key);
    k
}

pub(crate) fn lease_key_prefix(group: GroupId, id: u64) -> Vec<u8> {
    let mut k = table_prefix(group, LEASE_KEY);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn replicated_key(group: GroupId, node_id: u64) -> Vec<u8> {
    let mut k = table_prefix(group, REPLICATED);
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}

pub(crate) fn session_key(group: GroupId, client_id: u64) -> Vec<u8> {
    let mut k = table_prefix(group, SESSION);
    k.extend_from_slice(&client_id.to_be_bytes());
    k
}

/// `[start, end)` bounds in table `table` covering the user keys of `range`.
/// For `Key` the bound covers exactly that key's encoding (plus suffixes in
/// `HISTORY`).
pub(crate) fn encoded_bounds(group: GroupId, table: u8, range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    let base = table_prefix(group, table);
    let table_end = prefix_end(&base).expect("a table prefix is never all 0xff");
    match range {
        KeyRange::Key(key) => {
            let mut start = base.clone();
            encode_bytes(&mut start, key);
            let end = prefix_end(&start).unwrap_or(table_end);
            (start, end)
        }
        KeyRange::Prefix(p) => {
            let mut start = base.clone();
            encode_bytes_prefix(&mut start, p);
            let end = if p.is_empty() {
                table_end
            } else {
                prefix_end(&start).unwrap_or(table_end)
            };
            (start, end)
        }
        KeyRange::Between { start: s, end: e } => {
            let mut start = base.clone();
            encode_bytes(&mut start, s);
            let mut end = base;
            encode_bytes(&mut end, e);
            (start, end)
        }
    }
}
