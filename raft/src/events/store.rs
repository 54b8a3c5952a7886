//! The data of one event partition, in the group's range of the `sm` column
//! family. Every key is `group:u32 BE ++ table:u8 ++ rest`:
//!
//! | table | rest | value |
//! |---|---|---|
//! | `STATE` | — | [`PartitionState`]: applied log id, membership, next offset |
//! | `EVENT` | `offset:u64 BE` | [`EventRecord`] |
//! | `BY_ID` | `id:16 bytes` | `offset:u64 BE` |
//! | `STREAM` | `enc(stream)` | [`StreamRecord`] |
//! | `STREAM_EVENT` | `enc(stream) ++ version:u64 BE` | `offset:u64 BE` |
//! | `BY_TYPE` | `enc(type) ++ ts:u64 BE ++ offset:u64 BE` | empty |
//! | `BY_CORRELATION` | `enc(correlation_id) ++ ts ++ offset` (non-empty ids) | empty |
//! | `BY_TIME` | `ts ++ offset` | empty |
//! | `INDEXED` | — | the index layout version the rows above follow |
//! | `BYTES` | — | `u64 BE`: bytes of the stored event records (for retention's `max_bytes`) |
//! | `FIELDS` | `enc(field)` | [`FieldState`]: a declared field index (offset it was created at, how far the backfill got) |
//! | `BY_FIELD` | `enc(field) ++ value_key ++ ts ++ offset` | empty: a declared field index row ([`value_key`](super::query::value_key)) |
//!
//! The secondary indexes (see [`query`](super::query)) are written in the
//! same batch as their event. A partition without the current `INDEXED`
//! version (written before the indexes existed, or installed from such a
//! snapshot) rebuilds them from its events when it opens or installs.
//!
//! Semantics:
//! - Offsets count from 0 in append order; a stream's versions from 1.
//! - Append is idempotent by event id for as long as the event is kept: an
//!   append whose ids were all appended before (in the same order, to the
//!   same stream) returns the first attempt's position and writes nothing;
//!   one that mixes new and old ids is rejected.
//! - A deleted stream keeps its events in the partition log, but no read
//!   returns them and it cannot be appended to again.
//! - Apply is deterministic: the timestamp comes from the entry.
//! - Retention removes events (`Op::RemoveEvents`, see
//!   [`retention`](super::retention)) with their id, stream-version and
//!   index rows; offsets and stream versions are never reused, and the
//!   id deduplication of a removed event ends with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use esf_storage::codec::{self, RecordRef};
use esf_storage::keys::encode_bytes;
use esf_storage::keys::{CF_SM, CF_SNAPSHOT, GroupId, group_prefix, prefix_end};
use esf_storage::rocksdb::{self, ReadOptions, WriteBatch};
use esf_storage::{Db, StorageError};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::command::*;
use crate::snapshot_record::{SnapshotFile, SnapshotSource};
use crate::types::{Entry, LogId, SnapshotMeta, StoredMembership};

const STATE: u8 = 1;
const EVENT: u8 = 2;
const BY_ID: u8 = 3;
const STREAM: u8 = 4;
const STREAM_EVENT: u8 = 5;
const BY_TYPE: u8 = 6;
const BY_CORRELATION: u8 = 7;
const BY_TIME: u8 = 8;
const INDEXED: u8 = 9;
const BYTES: u8 = 10;
const FIELDS: u8 = 11;
const BY_FIELD: u8 = 12;

/// Where a partition leader's retention sweep stands between passes (in
/// its memory only: what it removes is always an explicit list).
#[derive(Debug, Clone, Default)]
pub struct RetentionSweep {
    /// The next offset to examine.
    next: u64,
    /// Per rule: an event it keeps was met in this sweep, so no later one
    /// of it is removed by age.
    blocked: Vec<bool>,
    /// The rules of this sweep (`None`: start a new one).
    rules: Option<super::retention::RetentionRules>,
}

/// A declared field index of the partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldState {
    /// The partition's next offset when the index was created: later
    /// events got their rows when appended.
    pub created_offset: u64,
    /// Events below this offset have their rows (backfilled by this
    /// replica, in the background): complete once at `created_offset`.
    pub built_to: u64,
}

impl FieldState {
    /// Whether every event has its row.
    pub fn complete(&self) -> bool {
        self.built_to >= self.created_offset
    }
}

/// Events one backfill step indexes (in one write batch, under the apply
/// lock).
pub const BACKFILL_BATCH: usize = 5_000;

/// Most events one retention pass examines (it starts at the partition's
/// oldest event).
pub const MAX_RETENTION_SCAN: usize = 100_000;

/// The layout of the secondary indexes; a partition that recorded another
/// one rebuilds them.
pub const INDEX_VERSION: u32 = 1;
/// Events re-indexed per write batch while rebuilding.
const REINDEX_BATCH: usize = 10_000;

/// Replicated scalar state of a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Offset the next event gets (= events appended).
    pub next_offset: u64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Event id (UUID bytes).
    pub id: [u8; 16],
    /// Stream id.
    pub stream: String,
    /// Event type.
    pub event_type: String,
    /// Correlation id.
    pub correlation_id: String,
    /// Causation id.
    pub causation_id: String,
    /// Assigned by the leader when proposed, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// JSON payload.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Position in the partition.
    pub offset: u64,
    /// Version in the stream (from 1).
    pub version: u64,
}

/// A stream's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Events in the stream (the last one's version).
    pub version: u64,
    /// Tombstoned.
    pub deleted: bool,
}

fn table_prefix(group: GroupId, table: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    k.extend_from_slice(&group_prefix(group));
    k.push(table);
    k
}

fn event_key(group: GroupId, offset: u64) -> Vec<u8> {
    let mut k = table_prefix(group, EVENT);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn id_key(group: GroupId, id: &[u8; 16]) -> Vec<u8> {
    let mut k = table_prefix(group, BY_ID);
    k.extend_from_slice(id);
    k
}

fn stream_key(group: GroupId, stream: &str) -> Vec<u8> {
    let mut k = table_prefix(group, STREAM);
    encode_bytes(&mut k, stream.as_bytes());
    k
}

fn stream_event_key(group: GroupId, stream: &str, version: u64) -> Vec<u8> {
    let mut k = table_prefix(group, STREAM_EVENT);
    encode_bytes(&mut k, stream.as_bytes());
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn time_suffix(k: &mut Vec<u8>, ts: u64, offset: u64) {
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
}

/// The prefix of `index`'s rows for `value` (the type or correlation id;
/// ignored for the time index).
fn index_prefix(group: GroupId, index: super::query::Index, value: &str) -> Vec<u8> {
    use super::query::Index;
    match index {
        Index::Type => {
            let mut k = table_prefix(group, BY_TYPE);
            encode_bytes(&mut k, value.as_bytes());
            k
        }
        Index::Correlation => {
            let mut k = table_prefix(group, BY_CORRELATION);
            encode_bytes(&mut k, value.as_bytes());
            k
        }
        Index::Time => table_prefix(group, BY_TIME),
        Index::Field(_) => {
            let mut k = table_prefix(group, BY_FIELD);
            encode_bytes(&mut k, value.as_bytes());
            k
        }
    }
}

/// The secondary index rows of `e`.
fn index_rows(group: GroupId, e: &EventRecord) -> Vec<Vec<u8>> {
    use super::query::Index;
    let mut rows = vec![
        index_prefix(group, Index::Type, &e.event_type),
        index_prefix(group, Index::Time, ""),
    ];
    if !e.correlation_id.is_empty() {
        rows.push(index_prefix(group, Index::Correlation, &e.correlation_id));
    }
    for k in &mut rows {
        time_suffix(k, e.timestamp_ms, e.offset);
    }
    rows
}

fn field_key(group: GroupId, field: &str) -> Vec<u8> {
    let mut k = table_prefix(group, FIELDS);
    encode_bytes(&mut k, field.as_bytes());
    k
}

fn field_rows_prefix(group: GroupId, field: &str) -> Vec<u8> {
    index_prefix(group, super::query::Index::Field(0), field)
}

/// The declared-field index rows of `e` for `fields` (a field that is
/// absent or not a scalar has none).
fn field_rows(group: GroupId, fields: &[(String, Vec<String>)], e: &EventRecord) -> Vec<Vec<u8>> {
    if fields.is_empty() {
        return Vec::new();
    }
    let Ok(data) = serde_json::from_slice::<serde_json::Value>(&e.data) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, path) in fields {
        let Some(vk) = super::query::lookup(&data, path).and_then(super::query::value_key) else {
            continue;
        };
        let mut k = field_rows_prefix(group, name);
        k.extend_from_slice(&vk);
        time_suffix(&mut k, e.timestamp_ms, e.offset);
        out.push(k);
    }
    out
}

/// Puts the index rows of `e` into `batch`.
fn put_index_rows(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, group: GroupId, e: &EventRecord) {
    for k in index_rows(group, e) {
        batch.put_cf(cf, k, []);
    }
}

fn rocks_err(context: &'static str) -> impl Fn(rocksdb::Error) -> StorageError {
    move |e| StorageError::Rocks {
        context: context.to_string(),
        source: e,
    }
}

fn offset_of(group: GroupId, what: &str, v: &[u8]) -> Result<u64, StorageError> {
    v.try_into().map(u64::from_be_bytes).map_err(|_| StorageError::Corrupt {
        cf: CF_SM,
        group,
        record: what.to_string(),
        reason: format!("an offset is 8 bytes, not {}", v.len()),
    })
}

/// A read stops once its events reach this many bytes (it returns at least
/// one event), so a response fits the client's message limit.
pub const MAX_READ_BYTES: usize = 16 << 20;

/// Direction of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, from the given version up.
    Forward,
    /// Newest first, from the given version down.
    Backward,
}

/// The store of one partition. Shared between openraft's state machine
/// worker (writes) and readers.
pub struct PartitionStore {
    db: Arc<Db>,
    group: GroupId,
    state: RwLock<PartitionState>,
    /// The declared field indexes (name, path, state), as in `FIELDS`.
    fields: RwLock<Vec<(String, Vec<String>, FieldState)>>,
    /// Held while an entry is applied or a backfill step runs, so a
    /// backfill never indexes an event a removal is deleting.
    apply_lock: std::sync::Mutex<()>,
    /// The next offset after every applied entry that appended.
    offset_tx: watch::Sender<u64>,
    /// The stream records and byte count as last written by apply (see
    /// [`Committed`]).
    committed: std::sync::Mutex<Committed>,
}

/// Stream records this many or more are cached by apply: the cache is
/// then emptied and refills (a bound on memory, not an eviction policy:
/// appends to a stream keep its record warm again at once).
pub const STREAM_CACHE_ENTRIES: usize = 4096;

/// What apply wrote last for the rows every append reads back: the
/// partition's stored byte count and the records of recently appended
/// streams, so an append does not read them from RocksDB (a memtable
/// search and a decode each: 4% of a loaded partition's CPU). Written
/// only by the applying thread once its entry is in RocksDB, so it always
/// equals the stored rows it caches; emptied when a snapshot replaces
/// them. Readers outside apply read RocksDB as before. A plain bounded
/// map rather than a cache crate: one thread fills it and reads it, in
/// step with its own writes, so there is nothing to evict concurrently.
#[derive(Debug, Default)]
struct Committed {
    bytes: Option<u64>,
    streams: HashMap<String, StreamRecord>,
}

/// What the entry being applied has written so far and later commands of
/// the same entry ([`Op::Batch`]) read instead of RocksDB, which holds it
/// only once the entry's one write batch is written: the stream records,
/// the byte count and, in a batch entry only (`None` otherwise: no later
/// command reads them), the ids appended. The stream records and byte
/// count go to the `Committed` cache after the write.
#[derive(Debug, Default)]
struct Staged {
    bytes: Option<u64>,
    streams: Vec<(String, StreamRecord)>,
    ids: Option<HashMap<[u8; 16], AppendedId>>,
}

/// Where an id an append brings was appended before.
#[derive(Debug, Clone)]
enum Known {
    /// By an earlier command of the entry being applied.
    Staged(AppendedId),
    /// At this offset, in RocksDB.
    Stored(u64),
}

impl Known {
    fn offset(&self) -> u64 {
        match self {
            Known::Staged(a) => a.offset,
            Known::Stored(o) => *o,
        }
    }
}

/// Where an id of the entry being applied was appended.
#[derive(Debug, Clone, Copy)]
struct AppendedId {
    offset: u64,
    /// The append's place in `Staged::streams`, which names its stream.
    append: usize,
    version: u64,
}

impl std::fmt::Debug for PartitionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStore").field("group", &self.group).finish()
    }
}

impl PartitionStore {
    /// Opens the store of partition `group`.
    pub fn open(db: Arc<Db>, group: GroupId) -> Result<Arc<PartitionStore>, StorageError> {
        crate::snapshot_record::sweep(&db, group)?;
        let raw = db
            .rocks()
            .get_cf(db.cf(CF_SM), table_prefix(group, STATE))
            .map_err(rocks_err("read partition state"))?;
        let state: PartitionState = match raw {
            None => PartitionState::default(),
            Some(b) => codec::decode(
                RecordRef {
                    cf: CF_SM,
                    group,
                    record: &"partition state",
                },
                &b,
            )?,
        };
        let (offset_tx, _) = watch::channel(state.next_offset);
        let store = Arc::new(PartitionStore {
            db,
            group,
            state: RwLock::new(state),
            fields: RwLock::new(Vec::new()),
            apply_lock: std::sync::Mutex::new(()),
            offset_tx,
            committed: std::sync::Mutex::default(),
        });
        store.ensure_indexes()?;
        store.ensure_bytes()?;
        store.load_fields()?;
        Ok(store)
    }

    /// Reads the declared field indexes into memory.
    fn load_fields(&self) -> Result<(), StorageError> {
        let lo = table_prefix(self.group, FIELDS);
        let mut it = self.prefix_iter(&lo, &lo);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let name = esf_storage::keys::decode_bytes(&k[lo.len()..])
                .and_then(|(b, _)| String::from_utf8(b).ok())
                .ok_or_else(|| StorageError::Corrupt {
                    cf: CF_SM,
                    group: self.group,
                    record: "field index key".into(),
                    reason: "not an encoded field name".into(),
                })?;
            let st: FieldState = self.decode(&format_args!("field index {name:?}"), v)?;
            let path = name.split('.').map(String::from).collect();
            out.push((name, path, st));
            it.next();
        }
        it.status().map_err(rocks_err("read field indexes"))?;
        *self.fields.write().expect("fields lock") = out;
        Ok(())
    }

    /// The declared field indexes and their state.
    pub fn field_indexes(&self) -> Vec<(String, FieldState)> {
        self.fields
            .read()
            .expect("fields lock")
            .iter()
            .map(|(n, _, s)| (n.clone(), *s))
            .collect()
    }

    fn field_paths(&self) -> Vec<(String, Vec<String>)> {
        self.fields
            .read()
            .expect("fields lock")
            .iter()
            .map(|(n, p, _)| (n.clone(), p.clone()))
            .collect()
    }

    /// Fields whose index has every event's row (queries may use them).
    fn complete_fields(&self) -> Vec<String> {
        self.fields
            .read()
            .expect("fields lock")
            .iter()
            .filter(|(_, _, s)| s.complete())
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    /// Indexes up to [`BACKFILL_BATCH`] events older than the first
    /// incomplete field index; returns whether every field index is
    /// complete afterwards.
    pub fn backfill_step(&self) -> Result<bool, StorageError> {
        let _applying = self.apply_lock.lock().expect("apply lock");
        let Some((name, path, mut st)) = self
            .fields
            .read()
            .expect("fields lock")
            .iter()
            .find(|(_, _, s)| !s.complete())
            .cloned()
        else {
            return Ok(true);
        };
        let cf = self.db.cf(CF_SM);
        let lo = event_key(self.group, st.built_to);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(event_key(self.group, st.created_offset));
        let mut it = self.db.rocks().raw_iterator_cf_opt(cf, ro);
        it.seek(&lo);
        let mut batch = WriteBatch::default();
        let mut n = 0;
        let one = [(name.clone(), path)];
        st.built_to = st.created_offset;
        while let Some(v) = it.value() {
            if n >= BACKFILL_BATCH {
                let k = it.key().expect("a value has a key");
                st.built_to = offset_of(self.group, "event key", &k[k.len() - 8..])?;
                break;
            }
            let e: EventRecord = self.decode(&"event", v)?;
            for k in field_rows(self.group, &one, &e) {
                batch.put_cf(cf, k, []);
            }
            n += 1;
            it.next();
        }
        it.status().map_err(rocks_err("backfill field index"))?;
        batch.put_cf(cf, field_key(self.group, &name), codec::encode("field index", &st)?);
        self.db.write_buffered(batch)?;
        self.load_fields()?;
        if st.complete() {
            tracing::info!(group = self.group, field = %name, "field index built");
        }
        Ok(self
            .fields
            .read()
            .expect("fields lock")
            .iter()
            .all(|(_, _, s)| s.complete()))
    }

    /// Bytes of the stored event records.
    pub fn stored_bytes(&self) -> Result<u64, StorageError> {
        match self.get_raw(&table_prefix(self.group, BYTES), "read stored bytes")? {
            None => Ok(0),
            Some(v) => offset_of(self.group, "stored bytes", &v),
        }
    }

    /// Counts the stored event bytes unless the partition records them
    /// (written before the count existed, or installed from such a
    /// snapshot).
    fn ensure_bytes(&self) -> Result<(), StorageError> {
        let key = table_prefix(self.group, BYTES);
        if self.get_raw(&key, "read stored bytes")?.is_some() {
            return Ok(());
        }
        let lo = table_prefix(self.group, EVENT);
        let mut it = self.prefix_iter(&lo, &lo);
        let mut bytes = 0u64;
        while let Some(v) = it.value() {
            bytes += v.len() as u64;
            it.next();
        }
        it.status().map_err(rocks_err("count event bytes"))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_SM), key, bytes.to_be_bytes());
        self.db.write_buffered(batch).map(|_| ())
    }

    /// The offset of the oldest stored event (the next offset if none):
    /// reads from below it find nothing, retention removed those events.
    pub fn first_offset(&self) -> Result<u64, StorageError> {
        let lo = table_prefix(self.group, EVENT);
        let it = self.prefix_iter(&lo, &lo);
        let first = match it.key() {
            Some(k) => offset_of(self.group, "event key", &k[k.len() - 8..])?,
            None => self.next_offset(),
        };
        it.status().map_err(rocks_err("seek first event"))?;
        Ok(first)
    }

    /// Whether version `v` of `stream` is now below its first kept one
    /// (retention removed it while a read was under way).
    fn removed_since(&self, stream: &str, v: u64) -> Result<bool, StorageError> {
        Ok(self.first_version(stream)?.is_none_or(|first| first > v))
    }

    /// The first kept version of `stream` (retention removes a stream's
    /// oldest events first); `None` if none of its events is kept.
    pub fn first_version(&self, stream: &str) -> Result<Option<u64>, StorageError> {
        let mut lo = table_prefix(self.group, STREAM_EVENT);
        encode_bytes(&mut lo, stream.as_bytes());
        let it = self.prefix_iter(&lo, &lo);
        let first = match it.key() {
            Some(k) => Some(offset_of(self.group, "stream index key", &k[k.len() - 8..])?),
            None => None,
        };
        it.status().map_err(rocks_err("seek first stream version"))?;
        Ok(first)
    }

    /// The offsets retention removes next under `rules` at `now_ms`, oldest
    /// first, at most `max`: while the partition holds more than the
    /// cluster-wide `max_bytes`, its oldest events (ESF's `$` streams
    /// excepted); then, per rule, its events older than `max_age_ms` up to
    /// the first one that is not (so a stream's kept versions stay
    /// contiguous). A pass examines at most [`MAX_RETENTION_SCAN`] events
    /// and `sweep` carries where it stopped to the next pass, so a long
    /// run of kept events does not hide expired ones behind it.
    pub fn expired(
        &self,
        rules: &super::retention::RetentionRules,
        now_ms: u64,
        max: usize,
        sweep: &mut RetentionSweep,
    ) -> Result<Vec<u64>, StorageError> {
        let mut out = Vec::new();
        if rules.is_empty() {
            return Ok(out);
        }
        let limit = rules.max_bytes();
        let mut excess = if limit > 0 {
            self.stored_bytes()?.saturating_sub(limit)
        } else {
            0
        };
        // Bytes go from the oldest: a new sweep. So does a change of rules.
        if excess > 0 || sweep.rules.as_ref() != Some(rules) {
            *sweep = RetentionSweep {
                next: 0,
                blocked: vec![false; rules.0.len()],
                rules: Some(rules.clone()),
            };
        }
        let age_rules = rules.0.iter().filter(|r| r.max_age_ms > 0).count();
        let mut blocked_age = sweep
            .blocked
            .iter()
            .zip(&rules.0)
            .filter(|(b, r)| **b && r.max_age_ms > 0)
            .count();
        let mut it = self.prefix_iter(&table_prefix(self.group, EVENT), &event_key(self.group, sweep.next));
        let mut examined = 0;
        let mut done = true;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if excess == 0 && blocked_age == age_rules {
                break;
            }
            if out.len() >= max || examined >= MAX_RETENTION_SCAN {
                sweep.next = offset_of(self.group, "event key", &k[k.len() - 8..])?;
                done = false;
                break;
            }
            examined += 1;
            let e: EventRecord = self.decode(&"event", v)?;
            let rule = rules.rule_for(&e.stream);
            let aged = rule.is_some_and(|i| {
                let r = &rules.0[i];
                !sweep.blocked[i] && r.max_age_ms > 0 && now_ms.saturating_sub(e.timestamp_ms) > r.max_age_ms
            });
            if (excess > 0 && !e.stream.starts_with('$')) || aged {
                excess = excess.saturating_sub(v.len() as u64);
                out.push(e.offset);
            } else if let Some(i) = rule.filter(|i| !sweep.blocked[*i]) {
                sweep.blocked[i] = true;
                if rules.0[i].max_age_ms > 0 {
                    blocked_age += 1;
                }
            }
            it.next();
        }
        it.status().map_err(rocks_err("scan events for retention"))?;
        if done {
            // The sweep reached the end (or nothing more can go): the next
            // one starts over.
            sweep.rules = None;
        }
        Ok(out)
    }

    /// Rebuilds the secondary indexes from the events unless the partition
    /// records [`INDEX_VERSION`] (idempotent: a crash midway redoes it).
    fn ensure_indexes(&self) -> Result<(), StorageError> {
        let cf = self.db.cf(CF_SM);
        let marker = table_prefix(self.group, INDEXED);
        let found = self
            .db
            .rocks()
            .get_cf(cf, &marker)
            .map_err(rocks_err("read index version"))?;
        if found.as_deref() == Some(&INDEX_VERSION.to_be_bytes()[..]) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut batch = WriteBatch::default();
        let mut n = 0usize;
        let lo = table_prefix(self.group, EVENT);
        let hi = prefix_end(&lo).expect("table prefix is never all 0xff");
        let mut it = self.db.rocks().raw_iterator_cf(cf);
        it.seek(&lo);
        while let Some(v) = it.item().filter(|(k, _)| *k < hi.as_slice()).map(|(_, v)| v) {
            let e: EventRecord = self.decode(&"event", v)?;
            put_index_rows(&mut batch, cf, self.group, &e);
            n += 1;
            if n % REINDEX_BATCH == 0 {
                self.db.write_buffered(std::mem::take(&mut batch))?;
            }
            it.next();
        }
        it.status().map_err(rocks_err("scan events to index"))?;
        batch.put_cf(cf, &marker, INDEX_VERSION.to_be_bytes());
        self.db.write_buffered(batch)?;
        if n > 0 {
            tracing::info!(
                group = self.group,
                events = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "partition indexes rebuilt"
            );
        }
        Ok(())
    }

    /// Up to `limit` events matching `f` (none of a deleted stream), in
    /// (timestamp, offset) order (descending if asked) from `from` on
    /// (inclusive); `None` from: nothing. Returns them, whether more may
    /// follow (the limit or [`MAX_READ_BYTES`] stopped the scan), and what
    /// the scan did.
    pub fn query(
        &self,
        f: &super::query::Filter,
        from: super::query::Bound,
        descending: bool,
        limit: usize,
    ) -> Result<(Vec<EventRecord>, bool, super::query::QueryStats), StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut deleted = HashMap::new();
        let (more, stats) = self.scan_index(f, from, descending, |_, offset, stats| {
            if out.len() >= limit || (bytes >= MAX_READ_BYTES && !out.is_empty()) {
                return Ok(None);
            }
            if let Some(e) = self.event_at(offset)? {
                stats.events_loaded += 1;
                if f.matches(&e) && !self.in_deleted_stream(&e, &mut deleted)? {
                    bytes += e.data.len() + e.stream.len() + 64;
                    out.push(e);
                }
            }
            Ok(Some(()))
        })?;
        Ok((out, more, stats))
    }

    /// As [`PartitionStore::query`] for a filter its index decides alone
    /// ([`Filter::index_decides`](super::query::Filter::index_decides)):
    /// the (timestamp, offset) of up to `limit` matches, loading no event
    /// (the caller loads the ones it keeps with
    /// [`PartitionStore::live_event_at`]).
    pub fn query_positions(
        &self,
        f: &super::query::Filter,
        from: super::query::Bound,
        descending: bool,
        limit: usize,
    ) -> Result<(Vec<(u64, u64)>, bool, super::query::QueryStats), StorageError> {
        debug_assert!(f.index_decides());
        let mut out = Vec::new();
        let (more, stats) = self.scan_index(f, from, descending, |ts, offset, _| {
            if out.len() >= limit {
                return Ok(None);
            }
            out.push((ts, offset));
            Ok(Some(()))
        })?;
        Ok((out, more, stats))
    }

    /// The event at `offset`, unless absent or in a deleted stream.
    pub fn live_event_at(&self, offset: u64) -> Result<Option<EventRecord>, StorageError> {
        let Some(e) = self.event_at(offset)? else {
            return Ok(None);
        };
        Ok((!self.in_deleted_stream(&e, &mut HashMap::new())?).then_some(e))
    }

    fn in_deleted_stream(&self, e: &EventRecord, cache: &mut HashMap<String, bool>) -> Result<bool, StorageError> {
        if let Some(d) = cache.get(&e.stream) {
            return Ok(*d);
        }
        let d = self.stream(&e.stream)?.is_some_and(|s| s.deleted);
        cache.insert(e.stream.clone(), d);
        Ok(d)
    }

    /// Walks the index `f` calls for, within its time range, from `from`
    /// (inclusive) in the query's direction, calling `visit(ts, offset,
    /// stats)` for each row until it returns `None` (then more may follow:
    /// the first return is true). Counts the rows examined.
    fn scan_index(
        &self,
        f: &super::query::Filter,
        from: super::query::Bound,
        descending: bool,
        mut visit: impl FnMut(u64, u64, &mut super::query::QueryStats) -> Result<Option<()>, StorageError>,
    ) -> Result<(bool, super::query::QueryStats), StorageError> {
        let mut stats = super::query::QueryStats::default();
        let Some(start) = from else {
            return Ok((false, stats));
        };
        let index = f.index(&self.complete_fields());
        stats.index = Some(index);
        let prefix = match index {
            super::query::Index::Correlation => index_prefix(self.group, index, &f.correlation_id),
            super::query::Index::Type => index_prefix(self.group, index, &f.event_type),
            super::query::Index::Time => index_prefix(self.group, index, ""),
            super::query::Index::Field(i) => {
                let p = &f.predicates[i];
                let super::query::PredicateOp::Eq(v) = &p.op else {
                    unreachable!("a field index serves eq predicates only")
                };
                let mut k = field_rows_prefix(self.group, &p.path.join("."));
                k.extend_from_slice(&super::query::value_key(v).expect("planned for a scalar"));
                k
            }
        };
        let key = |(ts, off): (u64, u64)| {
            let mut k = prefix.clone();
            time_suffix(&mut k, ts, off);
            k
        };
        // The scan's ends, inclusive, in (ts, offset).
        let (lo, hi) = if descending {
            let Some(top) = f.to_ms.map_or(Some(u64::MAX), |t| t.checked_sub(1)) else {
                return Ok((false, stats));
            };
            ((f.from_ms.unwrap_or(0), 0), start.min((top, u64::MAX)))
        } else {
            let top = match f.to_ms {
                Some(0) => return Ok((false, stats)),
                Some(t) => (t - 1, u64::MAX),
                None => (u64::MAX, u64::MAX),
            };
            (start.max((f.from_ms.unwrap_or(0), 0)), top)
        };
        if lo > hi {
            return Ok((false, stats));
        }
        let (lo_key, hi_key) = (key(lo), key(hi));
        let mut it = self.db.rocks().raw_iterator_cf(self.db.cf(CF_SM));
        if descending {
            it.seek_for_prev(&hi_key);
        } else {
            it.seek(&lo_key);
        }
        let mut more = false;
        while let Some(k) = it.key() {
            if k < lo_key.as_slice() || k > hi_key.as_slice() {
                break;
            }
            let n = k.len();
            let ts = offset_of(self.group, "index row", &k[n - 16..n - 8])?;
            let offset = offset_of(self.group, "index row", &k[n - 8..])?;
            if stats.rows_examined >= super::query::MAX_QUERY_ROWS || visit(ts, offset, &mut stats)?.is_none() {
                more = true;
                break;
            }
            stats.rows_examined += 1;
            stats.last = Some((ts, offset));
            if descending {
                it.prev();
            } else {
                it.next();
            }
        }
        it.status().map_err(rocks_err("scan index"))?;
        Ok((more, stats))
    }

    /// An iterator over the keys starting with `prefix` (a table, or a
    /// name's rows within one), positioned at `from` (at or after it).
    fn prefix_iter(&self, prefix: &[u8], from: &[u8]) -> rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(prefix_end(prefix).expect("a table prefix or an encoded name never ends in 0xff"));
        let mut it = self.db.rocks().raw_iterator_cf_opt(self.db.cf(CF_SM), ro);
        it.seek(from);
        it
    }

    /// The group id.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The shared DB.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// A copy of the replicated scalar state.
    pub fn state(&self) -> PartitionState {
        self.state.read().expect("partition state lock").clone()
    }

    /// Offset the next event gets.
    pub fn next_offset(&self) -> u64 {
        self.state.read().expect("partition state lock").next_offset
    }

    /// Notified with the next offset whenever events are appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.offset_tx.subscribe()
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: &dyn std::fmt::Display,
        v: &[u8],
    ) -> Result<T, StorageError> {
        codec::decode(
            RecordRef {
                cf: CF_SM,
                group: self.group,
                record: what,
            },
            v,
        )
    }

    fn get_raw(&self, key: &[u8], context: &'static str) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .rocks()
            .get_cf(self.db.cf(CF_SM), key)
            .map_err(rocks_err(context))
    }

    /// The stream's record.
    pub fn stream(&self, stream: &str) -> Result<Option<StreamRecord>, StorageError> {
        match self.get_raw(&stream_key(self.group, stream), "read stream")? {
            None => Ok(None),
            Some(v) => self.decode(&format_args!("stream {stream:?}"), &v).map(Some),
        }
    }

    /// The event at `offset`.
    pub fn event_at(&self, offset: u64) -> Result<Option<EventRecord>, StorageError> {
        match self.get_raw(&event_key(self.group, offset), "read event")? {
            None => Ok(None),
            Some(v) => self.decode(&format_args!("event at offset {offset}"), &v).map(Some),
        }
    }

    /// Offset of the event with `id`, deleted stream or not.
    fn offset_of_id(&self, id: &[u8; 16]) -> Result<Option<u64>, StorageError> {
        match self.get_raw(&id_key(self.group, id), "read event id")? {
            None => Ok(None),
            Some(v) => offset_of(self.group, "event id index", &v).map(Some),
        }
    }

    /// Where the events with these ids were appended (deleted stream or
    /// not), in their order: from what the entry being applied appended,
    /// else with one batched RocksDB lookup for the rest (an append checks
    /// every id it brings).
    fn appended_ids(&self, staged: &Staged, ids: &[&[u8; 16]]) -> Result<Vec<Option<Known>>, StorageError> {
        let mut out: Vec<Option<Known>> = ids
            .iter()
            .map(|id| staged.ids.as_ref().and_then(|m| m.get(*id)).copied().map(Known::Staged))
            .collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let keys: Vec<Vec<u8>> = missing.iter().map(|&i| id_key(self.group, ids[i])).collect();
            let found = self.db.rocks().batched_multi_get_cf(self.db.cf(CF_SM), &keys, false);
            for (&i, r) in missing.iter().zip(found) {
                if let Some(v) = r.map_err(rocks_err("read event id"))? {
                    out[i] = Some(Known::Stored(offset_of(self.group, "event id index", &v)?));
                }
            }
        }
        Ok(out)
    }

    /// The event with `id`, unless its stream was deleted.
    pub fn get(&self, id: &[u8; 16]) -> Result<Option<EventRecord>, StorageError> {
        let Some(off) = self.offset_of_id(id)? else {
            return Ok(None);
        };
        let Some(e) = self.event_at(off)? else {
            // Removed by retention since the id was read.
            if self.offset_of_id(id)?.is_none() {
                return Ok(None);
            }
            return Err(StorageError::Corrupt {
                cf: CF_SM,
                group: self.group,
                record: format!("event id index entry for offset {off}"),
                reason: "no event at that offset".into(),
            });
        };
        if self.stream(&e.stream)?.is_some_and(|s| s.deleted) {
            return Ok(None);
        }
        Ok(Some(e))
    }

    /// Up to `limit` events of `stream` from version `from` in `dir`
    /// (`from` 0 means the start: version 1 forward, the last backward).
    /// `Err(StreamDeleted)` for a deleted stream; an unknown stream reads
    /// as empty with version 0.
    pub fn read_stream(
        &self,
        stream: &str,
        from: u64,
        dir: Direction,
        limit: usize,
    ) -> Result<Result<(Vec<EventRecord>, StreamRecord), Rejection>, StorageError> {
        let rec = self.stream(stream)?.unwrap_or_default();
        if rec.deleted {
            return Ok(Err(Rejection::StreamDeleted(stream.to_string())));
        }
        // Versions below the first kept one were removed by retention.
        let first = match rec.version {
            0 => 1,
            v => self.first_version(stream)?.unwrap_or(v + 1),
        };
        let versions: Vec<u64> = match dir {
            Direction::Forward => (from.max(first)..=rec.version).take(limit).collect(),
            Direction::Backward => {
                let top = if from == 0 { rec.version } else { from.min(rec.version) };
                (first..=top).rev().take(limit).collect()
            }
        };
        let mut out = Vec::with_capacity(versions.len());
        let mut bytes = 0usize;
        for v in versions {
            if bytes >= MAX_READ_BYTES {
                break;
            }
            let key = stream_event_key(self.group, stream, v);
            let Some(raw) = self.get_raw(&key, "read stream index")? else {
                if self.removed_since(stream, v)? {
                    continue;
                }
                return Err(StorageError::Corrupt {
                    cf: CF_SM,
                    group: self.group,
                    record: format!("stream {stream:?} version {v}"),
                    reason: "missing from the stream index".into(),
                });
            };
            let off = offset_of(self.group, "stream index", &raw)?;
            match self.event_at(off)? {
                Some(e) => {
                    bytes += e.data.len() + e.stream.len() + 64;
                    out.push(e);
                }
                None if self.removed_since(stream, v)? => {}
                None => {
                    return Err(StorageError::Corrupt {
                        cf: CF_SM,
                        group: self.group,
                        record: format!("stream {stream:?} version {v}"),
                        reason: format!("no event at offset {off}"),
                    });
                }
            }
        }
        Ok(Ok((out, rec)))
    }

    /// Up to `limit` events (and about [`MAX_READ_BYTES`]) from `offset`
    /// on, in offset order, skipping deleted streams. Returns them and the offset to continue from.
    pub fn read_partition(&self, offset: u64, limit: usize) -> Result<(Vec<EventRecord>, u64), StorageError> {
        self.read_partition_bytes(offset, limit, MAX_READ_BYTES)
    }

    /// [`PartitionStore::read_partition`], stopping once `max_bytes` of
    /// events are read (at least one event is, if any remains).
    pub fn read_partition_bytes(
        &self,
        offset: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<EventRecord>, u64), StorageError> {
        let mut it = self.prefix_iter(&table_prefix(self.group, EVENT), &event_key(self.group, offset));
        let mut out = Vec::new();
        let mut next = offset;
        let mut bytes = 0usize;
        let mut deleted: HashMap<String, bool> = HashMap::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if out.len() >= limit || bytes >= max_bytes {
                break;
            }
            bytes += v.len();
            let off = offset_of(self.group, "event key", &k[k.len() - 8..])?;
            let e: EventRecord = self.decode(&format_args!("event at offset {off}"), v)?;
            next = off + 1;
            let gone = match deleted.get(&e.stream) {
                Some(d) => *d,
                None => {
                    let d = self.stream(&e.stream)?.is_some_and(|s| s.deleted);
                    deleted.insert(e.stream.clone(), d);
                    d
                }
            };
            if !gone {
                out.push(e);
            }
            it.next();
        }
        it.status().map_err(rocks_err("scan events"))?;
        Ok((out, next))
    }

    // ---------------------------------------------------------------- apply

    /// Applies one committed entry; returns its response (`revision` is the
    /// next offset after it).
    pub fn apply_entry(&self, entry: &Entry) -> Result<Response, StorageError> {
        let _applying = self.apply_lock.lock().expect("apply lock");
        let log_id = entry.log_id();
        // A dropped field index stops serving queries before its rows go
        // (a query in between scans another index instead of empty rows).
        if let EntryPayload::Normal(c) = &entry.payload {
            if let Op::IndexField { field, create: false } = &c.op {
                self.fields.write().expect("fields lock").retain(|(n, _, _)| n != field);
            }
        }
        let mut st = self.state();
        let mut batch = WriteBatch::default();
        let mut staged = Staged::default();
        let result = match &entry.payload {
            EntryPayload::Blank => OpResult::None,
            EntryPayload::Membership(m) => {
                st.membership = StoredMembership::new(Some(log_id.clone()), m.clone());
                OpResult::None
            }
            EntryPayload::Normal(Command {
                op: Op::Batch(cmds), ..
            }) => self.apply_batch(&mut st, &mut batch, &mut staged, cmds)?,
            // Every rejection happens before execute writes anything.
            EntryPayload::Normal(cmd) => match self.execute(&mut st, &mut batch, &mut staged, &cmd.op)? {
                Ok(r) => r,
                Err(rej) => OpResult::Rejected(rej),
            },
        };
        st.last_applied = Some(log_id);
        batch.put_cf(
            self.db.cf(CF_SM),
            table_prefix(self.group, STATE),
            codec::encode("partition state", &st)?,
        );
        let next = st.next_offset;
        {
            let mut guard = self.state.write().expect("partition state lock");
            self.db.write_buffered(batch)?;
            *guard = st;
        }
        {
            let mut c = self.committed.lock().expect("committed lock");
            if staged.bytes.is_some() {
                c.bytes = staged.bytes;
            }
            if c.streams.len() + staged.streams.len() > STREAM_CACHE_ENTRIES {
                c.streams.clear();
            }
            c.streams.extend(staged.streams);
        }
        if matches!(&entry.payload, EntryPayload::Normal(c) if matches!(c.op, Op::IndexField { .. })) {
            self.load_fields()?;
        }
        self.offset_tx.send_if_modified(|n| {
            let changed = *n != next;
            *n = next;
            changed
        });
        Ok(Response { revision: next, result })
    }

    /// The appends of a batch entry, in order, each as if it were its own
    /// entry (its own checks, deduplication, result or rejection), into
    /// one RocksDB batch; later ones read what earlier ones wrote from
    /// `staged`. A rejected append writes nothing (every rejection comes
    /// before the first write), so each writes straight into the batch.
    fn apply_batch(
        &self,
        st: &mut PartitionState,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        cmds: &[Command],
    ) -> Result<OpResult, StorageError> {
        if cmds
            .iter()
            .any(|c| !matches!(c.op, Op::Append(_)) || c.session.is_some())
        {
            return Ok(OpResult::Rejected(Rejection::InvalidArgument {
                field: "batch".into(),
                reason: "a partition batch holds only appends".into(),
            }));
        }
        staged.ids = Some(HashMap::new());
        let mut out = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let result = match self.execute(st, batch, staged, &cmd.op)? {
                Ok(r) => r,
                Err(rej) => OpResult::Rejected(rej),
            };
            out.push(Response {
                revision: st.next_offset,
                result,
            });
        }
        Ok(OpResult::Batch(out))
    }

    fn check_expected(stream: &str, rec: &StreamRecord, expected: ExpectedVersion) -> Result<(), Rejection> {
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => rec.version == 0,
            ExpectedVersion::Exists => rec.version > 0,
            ExpectedVersion::Exact(v) => rec.version == v,
        };
        if ok {
            Ok(())
        } else {
            Err(Rejection::WrongExpectedVersion {
                stream: stream.to_string(),
                expected,
                actual: rec.version,
            })
        }
    }

    /// The stream's record as apply last wrote it: this entry's earlier
    /// writes, then the committed cache, then RocksDB.
    fn stream_in_apply(&self, staged: &Staged, stream: &str) -> Result<Option<StreamRecord>, StorageError> {
        if let Some((_, rec)) = staged.streams.iter().rev().find(|(s, _)| s == stream) {
            return Ok(Some(rec.clone()));
        }
        if let Some(rec) = self.committed.lock().expect("committed lock").streams.get(stream) {
            return Ok(Some(rec.clone()));
        }
        self.stream(stream)
    }

    /// The stored byte count as apply last wrote it (as above).
    fn stored_bytes_in_apply(&self, staged: &Staged) -> Result<u64, StorageError> {
        if let Some(b) = staged.bytes.or(self.committed.lock().expect("committed lock").bytes) {
            return Ok(b);
        }
        self.stored_bytes()
    }

    /// Runs `op` onto `st` and `batch`; the stream records and byte count
    /// it writes are also recorded in `staged`. Every rejection happens
    /// before anything is written or staged.
    fn execute(
        &self,
        st: &mut PartitionState,
        batch: &mut WriteBatch,
        staged: &mut Staged,
        op: &Op,
    ) -> Result<Result<OpResult, Rejection>, StorageError> {
        let cf = self.db.cf(CF_SM);
        match op {
            Op::Append(a) => {
                if let Err(r) = super::check_append(a) {
                    return Ok(Err(r));
                }
                // Retries: every id known means the first attempt landed.
                let known: Vec<Known> = if crate::failpoint::active("no-dedup") {
                    Vec::new()
                } else {
                    let ids: Vec<&[u8; 16]> = a.events.iter().map(|e| &e.id).collect();
                    self.appended_ids(staged, &ids)?.into_iter().flatten().collect()
                };
                if !known.is_empty() {
                    // The first one's offset and version, if it went to
                    // this stream: from the entry being applied or from
                    // its stored event.
                    let first = match &known[0] {
                        Known::Staged(s) => (staged.streams[s.append].0 == a.stream).then_some((s.offset, s.version)),
                        Known::Stored(off) => self
                            .event_at(*off)?
                            .filter(|e| e.stream == a.stream)
                            .map(|e| (e.offset, e.version)),
                    };
                    let offsets: Vec<u64> = known.iter().map(Known::offset).collect();
                    let same = known.len() == a.events.len() && offsets.windows(2).all(|w| w[1] == w[0] + 1);
                    return Ok(match (same, first) {
                        (true, Some((first_offset, first_version))) => Ok(OpResult::Appended {
                            first_offset,
                            first_version,
                            count: a.events.len() as u64,
                            duplicate: true,
                        }),
                        _ => Err(Rejection::InvalidArgument {
                            field: "append.events".into(),
                            reason: format!(
                                "{} of {} event ids were already appended (first at offset {}) and the rest were not: retry the same append or use new ids",
                                known.len(),
                                a.events.len(),
                                offsets[0]
                            ),
                        }),
                    });
                }
                let mut rec = self.stream_in_apply(staged, &a.stream)?.unwrap_or_default();
                if rec.deleted {
                    return Ok(Err(Rejection::StreamDeleted(a.stream.clone())));
                }
                if let Err(r) = Self::check_expected(&a.stream, &rec, a.expected) {
                    return Ok(Err(r));
                }
                let first_offset = st.next_offset;
                let first_version = rec.version + 1;
                let mut bytes = self.stored_bytes_in_apply(staged)?;
                let fields = self.field_paths();
                for e in &a.events {
                    rec.version += 1;
                    let record = EventRecord {
                        id: e.id,
                        stream: a.stream.clone(),
                        event_type: e.event_type.clone(),
                        correlation_id: e.correlation_id.clone(),
                        causation_id: e.causation_id.clone(),
                        timestamp_ms: a.timestamp_ms,
                        data: e.data.clone(),
                        metadata: e.metadata.clone(),
                        offset: st.next_offset,
                        version: rec.version,
                    };
                    let off = st.next_offset.to_be_bytes();
                    let encoded = codec::encode("event", &record)?;
                    bytes += encoded.len() as u64;
                    batch.put_cf(cf, event_key(self.group, st.next_offset), encoded);
                    batch.put_cf(cf, id_key(self.group, &e.id), off);
                    if let Some(ids) = staged.ids.as_mut() {
                        let append = staged.streams.len();
                        ids.insert(
                            e.id,
                            AppendedId {
                                offset: st.next_offset,
                                append,
                                version: rec.version,
                            },
                        );
                    }
                    batch.put_cf(cf, stream_event_key(self.group, &a.stream, rec.version), off);
                    put_index_rows(batch, cf, self.group, &record);
                    for k in field_rows(self.group, &fields, &record) {
                        batch.put_cf(cf, k, []);
                    }
                    st.next_offset += 1;
                }
                batch.put_cf(cf, stream_key(self.group, &a.stream), codec::encode("stream", &rec)?);
                batch.put_cf(cf, table_prefix(self.group, BYTES), bytes.to_be_bytes());
                staged.streams.push((a.stream.clone(), rec));
                staged.bytes = Some(bytes);
                Ok(Ok(OpResult::Appended {
                    first_offset,
                    first_version,
                    count: a.events.len() as u64,
                    duplicate: false,
                }))
            }
            Op::DeleteStream { stream, expected } => {
                if let Err(r) = super::check_stream_id("stream", stream) {
                    return Ok(Err(r));
                }
                let mut rec = self.stream_in_apply(staged, stream)?.unwrap_or_default();
                if rec.deleted {
                    return Ok(Err(Rejection::StreamDeleted(stream.clone())));
                }
                if let Err(r) = Self::check_expected(stream, &rec, *expected) {
                    return Ok(Err(r));
                }
                rec.deleted = true;
                batch.put_cf(cf, stream_key(self.group, stream), codec::encode("stream", &rec)?);
                staged.streams.push((stream.clone(), rec.clone()));
                Ok(Ok(OpResult::StreamDeleted { version: rec.version }))
            }
            Op::RemoveEvents { offsets } => {
                let mut bytes = self.stored_bytes_in_apply(staged)?;
                let mut removed = 0;
                let unique: std::collections::BTreeSet<u64> = offsets.iter().copied().collect();
                let fields = self.field_paths();
                for off in unique {
                    let key = event_key(self.group, off);
                    let Some(raw) = self.get_raw(&key, "read event")? else {
                        continue;
                    };
                    let e: EventRecord = self.decode(&format_args!("event at offset {off}"), &raw)?;
                    batch.delete_cf(cf, key);
                    batch.delete_cf(cf, id_key(self.group, &e.id));
                    batch.delete_cf(cf, stream_event_key(self.group, &e.stream, e.version));
                    for k in index_rows(self.group, &e)
                        .into_iter()
                        .chain(field_rows(self.group, &fields, &e))
                    {
                        batch.delete_cf(cf, k);
                    }
                    bytes = bytes.saturating_sub(raw.len() as u64);
                    removed += 1;
                }
                batch.put_cf(cf, table_prefix(self.group, BYTES), bytes.to_be_bytes());
                staged.bytes = Some(bytes);
                Ok(Ok(OpResult::Removed { events: removed }))
            }
            Op::IndexField { field, create } => {
                if let Err(r) = super::query::check_field(field) {
                    return Ok(Err(Rejection::InvalidArgument {
                        field: "index.field".into(),
                        reason: r,
                    }));
                }
                let key = field_key(self.group, field);
                let exists = self.get_raw(&key, "read field index")?.is_some();
                match (create, exists) {
                    (true, false) => {
                        let fs = FieldState {
                            created_offset: st.next_offset,
                            built_to: self.first_offset()?.min(st.next_offset),
                        };
                        batch.put_cf(cf, key, codec::encode("field index", &fs)?);
                    }
                    (false, true) => {
                        batch.delete_cf(cf, key);
                        let lo = field_rows_prefix(self.group, field);
                        let mut it = self.prefix_iter(&lo, &lo);
                        while let Some(k) = it.key() {
                            batch.delete_cf(cf, k);
                            it.next();
                        }
                        it.status().map_err(rocks_err("drop field index"))?;
                    }
                    // Already so: a repeated proposal changes nothing.
                    _ => {}
                }
                Ok(Ok(OpResult::None))
            }
            _ => Ok(Err(Rejection::InvalidArgument {
                field: "op".into(),
                reason: "an event partition takes only appends, stream deletes, retention removals and field indexes"
                    .into(),
            })),
        }
    }

    // ------------------------------------------------------------ snapshots

    /// Serializes every row of the partition under one RocksDB snapshot.
    pub fn snapshot_rows(&self) -> Result<(PartitionState, Vec<u8>), StorageError> {
        self.encoded_rows(|_| true)
    }

    /// As [`PartitionStore::snapshot_rows`] without the declared field
    /// indexes (their backfill progresses independently on each replica),
    /// for comparing replicas.
    pub fn replicated_rows(&self) -> Result<(PartitionState, Vec<u8>), StorageError> {
        self.encoded_rows(|k| k.first().is_some_and(|t| !matches!(*t, FIELDS | BY_FIELD)))
    }

    /// Writes every row of the partition, under one RocksDB snapshot, to a
    /// new fsynced snapshot file (streamed: never in memory whole).
    pub fn build_snapshot_file(&self) -> Result<(PartitionState, SnapshotFile), StorageError> {
        self.rows_file()
    }

    /// The partition's current persisted snapshot.
    pub fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>, StorageError> {
        self.current_snapshot()
    }

    /// Replaces the partition's whole state with a snapshot, atomically and
    /// durably, and makes it the current snapshot. Nothing changes unless
    /// the whole file passes its checksum and format checks.
    pub async fn install_snapshot(&self, meta: &SnapshotMeta, file: &SnapshotFile) -> Result<(), StorageError> {
        let mut next = 0;
        self.install_file(meta, file, |batch, st| {
            next = st.next_offset;
            // No backfill step runs on the rows being replaced.
            let _applying = self.apply_lock.lock().expect("apply lock");
            let mut guard = self.state.write().expect("partition state lock");
            self.db.write_buffered(batch)?;
            *self.committed.lock().expect("committed lock") = Committed::default();
            // A snapshot from a node with another index layout: indexed
            // (and its bytes counted) before the new state is published.
            self.ensure_indexes()?;
            self.ensure_bytes()?;
            self.load_fields()?;
            *guard = st;
            Ok(())
        })
        .await?;
        self.offset_tx.send_replace(next);
        Ok(())
    }
}

/// What a partition snapshot holds (for `esf snapshot inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionSummary {
    /// Index of the last log entry the snapshot covers (0: none).
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// Events in the partition (its next offset).
    pub events: u64,
    /// Rows of every table.
    pub rows: u64,
}

fn snapshot_corrupt(group: GroupId, reason: String) -> StorageError {
    StorageError::Corrupt {
        cf: CF_SNAPSHOT,
        group,
        record: "partition snapshot".into(),
        reason,
    }
}

fn decode_snapshot(
    group: GroupId,
    data: &[u8],
) -> Result<(crate::snapshot_record::Blob, PartitionState), StorageError> {
    let at = RecordRef {
        cf: CF_SNAPSHOT,
        group,
        record: &"partition snapshot",
    };
    let blob = crate::snapshot_record::decode_blob(group, "partition snapshot", data)?;
    let st = match blob.rows.iter().find(|(k, _)| k.as_slice() == [STATE]) {
        Some((_, v)) => codec::decode(at, v)?,
        None => PartitionState::default(),
    };
    Ok((blob, st))
}

/// Checks a partition snapshot blob and says what it holds.
pub fn summarize_snapshot(group: GroupId, data: &[u8]) -> Result<PartitionSummary, StorageError> {
    let (blob, st) = decode_snapshot(group, data)?;
    Ok(PartitionSummary {
        last_index: st.last_applied.as_ref().map_or(0, |l| l.index),
        last_term: st.last_applied.as_ref().map_or(0, |l| l.leader_id.term),
        events: st.next_offset,
        rows: blob.rows.len() as u64,
    })
}

impl PartitionStore {
    /// Makes this empty partition the state of a new one-member cluster
    /// seeded from `data` (a partition snapshot from any cluster): the same
    /// events at the same offsets; membership `node_id` alone at `addr`.
    /// Returns the snapshot meta (`None` last log id for a partition that
    /// never applied anything: then nothing is seeded). The caller purges
    /// the log and stores a vote, as for the meta group.
    pub async fn seed_from_snapshot(
        &self,
        data: &[u8],
        node_id: u64,
        addr: &str,
    ) -> Result<Option<SnapshotMeta>, StorageError> {
        if self.state().last_applied.is_some() {
            return Err(snapshot_corrupt(
                self.group,
                "cannot restore into a partition that already has state".into(),
            ));
        }
        let (_, st) = decode_snapshot(self.group, data)?;
        let Some(last) = st.last_applied.clone() else {
            return Ok(None);
        };
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([node_id])],
            std::collections::BTreeMap::from([(node_id, openraft::BasicNode { addr: addr.into() })]),
        )
        .expect("one voter that is also a node is a valid membership");
        let meta = SnapshotMeta {
            last_log_id: Some(last.clone()),
            last_membership: StoredMembership::new(Some(last), membership),
        };
        let file = SnapshotFile::create(&self.db, self.group, data)?;
        self.install_snapshot(&meta, &file).await?;
        Ok(Some(meta))
    }
}

impl SnapshotSource for PartitionStore {
    type State = PartitionState;
    const STATE_TABLE: u8 = STATE;

    fn snapshot_db(&self) -> &Db {
        &self.db
    }

    fn snapshot_group(&self) -> GroupId {
        self.group
    }

    fn state_lock(&self) -> &RwLock<PartitionState> {
        &self.state
    }

    fn meta_of(st: &PartitionState) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: st.last_applied.clone(),
            last_membership: st.membership.clone(),
        }
    }

    fn set_meta(st: &mut PartitionState, meta: &SnapshotMeta) {
        st.last_applied = meta.last_log_id.clone();
        st.membership = meta.last_membership.clone();
    }
}

impl crate::group::GroupStore for PartitionStore {
    fn apply_entry(&self, entry: &Entry) -> Result<Response, StorageError> {
        PartitionStore::apply_entry(self, entry)
    }

    fn install_snapshot(
        &self,
        meta: &SnapshotMeta,
        file: &SnapshotFile,
    ) -> impl std::future::Future<Output = Result<(), StorageError>> + Send {
        PartitionStore::install_snapshot(self, meta, file)
    }
}
