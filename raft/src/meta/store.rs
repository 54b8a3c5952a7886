//! The meta state machine's data: an MVCC key-value store in the style of
//! etcd, leases and client sessions, kept in the group's range of the `sm`
//! column family (see [`layout`](super::layout)).
//!
//! Semantics (etcd's, with the differences stated):
//! - One global `revision`, starting at 0 for an empty store; every command
//!   that changes at least one key increments it by one. A delete that
//!   matches nothing and a txn that writes nothing leave it unchanged.
//! - Per key: `create_revision`, `mod_revision`, `version` (1 on creation,
//!   +1 per put, reset by delete).
//! - History: every revision `>= compact_revision` can be read. Writes
//!   auto-compact so that at least `limits.history_revisions` revisions stay
//!   readable (and at most that plus [`auto_compaction_step`]); `Compact`
//!   drops more on request. A read below
//!   `compact_revision` fails with an error naming it.
//! - Txn: compares, then one branch, all at one revision, all or nothing.
//!   Unlike etcd, reads inside a txn see the state *before* the txn (the
//!   branch happens at once), and a key may be written at most once per txn
//!   (etcd rejects duplicate puts too).
//! - Leases: a put may attach its key to a lease; revoking (or expiring) the
//!   lease deletes its keys at one revision. Grants do not change the
//!   revision. Lease timing is not here: the leader's lease keeper proposes
//!   expiries (see `lease_keeper`).
//!
//! Determinism: apply reads only the store and the entry; no clock, no
//! randomness. Each entry is written in one RocksDB batch together with the
//! applied log id, so a crash never leaves half an entry applied. Writes are
//! buffered (not fsynced): the Raft log is durable, and a lost tail of apply
//! writes is re-applied from the log on restart. Log purge is fsynced and is
//! ordered after these writes in the one WAL, so the state a purge relies on
//! is durable whenever the purge is.

use std::sync::{Arc, Mutex, RwLock};

use esf_storage::codec::{self, RecordRef};
use esf_storage::keys::{CF_SM, CF_SNAPSHOT, GroupId, group_prefix, prefix_end};
use esf_storage::rocksdb::{self, DBRawIteratorWithThreadMode, ReadOptions, WriteBatch};
use esf_storage::{Db, StorageError};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::auth::{AuthHead, AuthRow, AuthState, Role, User};
use super::layout::{self, Changes, KvRecord, LeaseRecord};
use super::session::{Check, Session, Sessions};
use crate::command::*;
use crate::limits::Limits;
use crate::snapshot_record::{SnapshotFile, SnapshotSource};
use crate::types::{Entry, LogId, SnapshotMeta, StoredMembership};

/// The replicated scalar state of the meta group, one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmState {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Current store revision.
    pub revision: u64,
    /// Oldest readable revision.
    pub compact_revision: u64,
    /// Next lease id the store assigns.
    pub next_lease_id: u64,
    /// Limits in force.
    pub limits: Limits,
}

impl Default for SmState {
    fn default() -> Self {
        SmState {
            last_applied: None,
            membership: StoredMembership::default(),
            revision: 0,
            compact_revision: 0,
            next_lease_id: 1,
            limits: Limits::default(),
        }
    }
}

/// One change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Revision of the change.
    pub revision: u64,
    /// A delete (then `kv` carries the key, the delete's revision, and an
    /// empty value).
    pub deleted: bool,
    /// The key after the change.
    pub kv: KeyValue,
    /// The version before, when asked for and still readable.
    pub prev_kv: Option<KeyValue>,
}

/// Errors of reads against the store.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The request is invalid or asks for a revision not available.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

type Raw<'a> = DBRawIteratorWithThreadMode<'a, rocksdb::DB>;

/// The meta store of one group. Shared between openraft's state machine
/// worker (writes) and readers.
pub struct MetaStore {
    db: Arc<Db>,
    group: GroupId,
    /// Readers hold it shared while they take a RocksDB snapshot, so a reader
    /// sees a revision and the data of exactly that revision.
    state: RwLock<SmState>,
    sessions: Mutex<Sessions>,
    /// Users, roles and permissions (swapped whole on every change).
    auth: RwLock<Arc<AuthState>>,
    revision_tx: watch::Sender<u64>,
    /// The background reclaim after an explicit compaction, if one ran
    /// (joined when the store is dropped: a thread still compacting while
    /// the process exits crashes in RocksDB's teardown).
    reclaim: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The `AUDIT` row, kept in memory: every write that changes a key
    /// consults it (auto-compaction never goes above it), and reading it
    /// from RocksDB each time cost about 1% of a put's CPU. Reloaded
    /// whenever the row can have changed (an `AuditCursor` entry, a
    /// snapshot install).
    audit_cursor: RwLock<Option<u64>>,
    /// Current values written by the entry being applied and not yet in
    /// RocksDB (see [`Overlay`]). Only the apply path reads it.
    overlay: Mutex<Overlay>,
}

impl Drop for MetaStore {
    fn drop(&mut self) {
        let running = self
            .reclaim
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = running {
            let _ = h.join();
        }
    }
}

/// What a command of the entry being applied reads instead of RocksDB:
/// the current value of keys written earlier in the same entry. An
/// [`Op::Batch`] entry is written in one RocksDB batch at its end, so its
/// later commands must see its earlier ones here. Only single keys are
/// looked up this way; batches hold only commands that read nothing else
/// ([`Op::coalescable`]).
#[derive(Debug, Default)]
struct Overlay {
    /// Written by the command running now (dropped if it is rejected).
    staged: std::collections::HashMap<Vec<u8>, Option<KvRecord>>,
    /// Written by the earlier commands of the entry.
    pending: std::collections::HashMap<Vec<u8>, Option<KvRecord>>,
    /// First revision of the batch entry being applied, if one is:
    /// auto-compaction stays below it, as it reads RocksDB only.
    batch_first_revision: Option<u64>,
}

impl Overlay {
    fn get(&self, key: &[u8]) -> Option<&Option<KvRecord>> {
        self.staged.get(key).or_else(|| self.pending.get(key))
    }

    fn commit_staged(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        self.pending.extend(staged);
    }

    fn clear(&mut self) {
        self.staged.clear();
        self.pending.clear();
        self.batch_first_revision = None;
    }
}

/// Copies every write of one batch into another (all in `cf`).
struct AppendTo<'a> {
    batch: &'a mut WriteBatch,
    cf: &'a rocksdb::ColumnFamily,
}

impl rocksdb::WriteBatchIteratorCf for AppendTo<'_> {
    fn put_cf(&mut self, _cf_id: u32, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.cf, key, value);
    }

    fn delete_cf(&mut self, _cf_id: u32, key: &[u8]) {
        self.batch.delete_cf(self.cf, key);
    }

    fn merge_cf(&mut self, _cf_id: u32, key: &[u8], value: &[u8]) {
        self.batch.merge_cf(self.cf, key, value);
    }
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore").field("group", &self.group).finish()
    }
}

/// The newest version of `key` below revision `rev` (its revision and raw
/// record), using `probe`, an iterator over the history table. Check
/// `probe.status()` afterwards.
fn version_before(probe: &mut Raw<'_>, group: GroupId, key: &[u8], rev: u64) -> Option<(u64, Vec<u8>)> {
    let own = layout::history_key(group, key, 0);
    let own = &own[..own.len() - 8];
    probe.seek_for_prev(layout::history_key(group, key, rev.checked_sub(1)?));
    match (probe.key(), probe.value()) {
        (Some(pk), Some(pv)) if pk.len() == own.len() + 8 && pk.starts_with(own) => {
            let r = u64::from_be_bytes(pk[pk.len() - 8..].try_into().expect("history key ends with 8 bytes"));
            Some((r, pv.to_vec()))
        }
        _ => None,
    }
}

/// Auto-compaction runs once the oldest readable revision trails the kept
/// window by this many revisions: an eighth of the window, at least 1.
pub fn auto_compaction_step(history_revisions: u64) -> u64 {
    (history_revisions / 8).max(1)
}

/// Where event partitions should live, as recorded in meta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Partition -> desired replicas, the preferred leader first.
    pub plan: std::collections::BTreeMap<u32, Vec<u64>>,
    /// Nodes no partition may be placed on (members being removed).
    pub excluded: Vec<u64>,
}

/// The placement row that holds the excluded nodes (partitions start at 1).
const EXCLUDED_FROM_PLACEMENT: u32 = 0;

fn rocks_err(context: &str) -> impl Fn(rocksdb::Error) -> StorageError + '_ {
    move |e| StorageError::Rocks {
        context: context.to_string(),
        source: e,
    }
}

impl MetaStore {
    /// Opens the store of `group`, loading its state and sessions.
    pub fn open(db: Arc<Db>, group: GroupId) -> Result<Arc<MetaStore>, StorageError> {
        crate::snapshot_record::sweep(&db, group)?;
        let state = Self::load_state(&db, group)?;
        let sessions = Self::load_sessions(&db, group)?;
        let auth = Self::load_auth(&db, group)?;
        let (revision_tx, _) = watch::channel(state.revision);
        let audit_cursor = Self::load_audit_cursor(&db, group)?;
        Ok(Arc::new(MetaStore {
            db,
            group,
            state: RwLock::new(state),
            sessions: Mutex::new(sessions),
            auth: RwLock::new(Arc::new(auth)),
            revision_tx,
            reclaim: Mutex::new(None),
            audit_cursor: RwLock::new(audit_cursor),
            overlay: Mutex::default(),
        }))
    }

    fn load_state(db: &Db, group: GroupId) -> Result<SmState, StorageError> {
        let raw = db
            .rocks()
            .get_pinned_cf(db.cf(CF_SM), layout::state_key(group))
            .map_err(rocks_err("read sm state"))?;
        match raw {
            None => Ok(SmState::default()),
            Some(b) => codec::decode(
                RecordRef {
                    cf: CF_SM,
                    group,
                    record: &"state machine state",
                },
                &b,
            ),
        }
    }

    fn load_sessions(db: &Db, group: GroupId) -> Result<Sessions, StorageError> {
        let prefix = layout::table_prefix(group, layout::SESSION);
        let mut out = Vec::new();
        let mut it = db.rocks().raw_iterator_cf(db.cf(CF_SM));
        it.seek(&prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&prefix) {
                break;
            }
            let client = u64::from_be_bytes(k[prefix.len()..].try_into().map_err(|_| StorageError::Corrupt {
                cf: CF_SM,
                group,
                record: format!("session key {k:02x?}"),
                reason: "bad length".into(),
            })?);
            let record = format!("session {client}");
            let s: Session = codec::decode(
                RecordRef {
                    cf: CF_SM,
                    group,
                    record: &record,
                },
                v,
            )?;
            out.push((client, s));
            it.next();
        }
        it.status().map_err(rocks_err("scan sessions"))?;
        Ok(Sessions::load(out))
    }

    fn load_auth(db: &Db, group: GroupId) -> Result<AuthState, StorageError> {
        let prefix = layout::table_prefix(group, layout::AUTH);
        let mut out = AuthState::default();
        let mut it = db.rocks().raw_iterator_cf(db.cf(CF_SM));
        it.seek(&prefix);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(&prefix) {
                break;
            }
            let (kind, name) = (k.get(prefix.len()).copied(), &k[(prefix.len() + 1).min(k.len())..]);
            let name = String::from_utf8_lossy(name).into_owned();
            let at = |what: &str| format!("auth {what} {name:?}");
            match kind {
                Some(layout::AUTH_HEAD) => {
                    out.head = codec::decode(
                        RecordRef {
                            cf: CF_SM,
                            group,
                            record: &"auth head",
                        },
                        v,
                    )?;
                }
                Some(layout::AUTH_USER) => {
                    let what = at("user");
                    let u: User = codec::decode(
                        RecordRef {
                            cf: CF_SM,
                            group,
                            record: &what,
                        },
                        v,
                    )?;
                    out.users.insert(name, u);
                }
                Some(layout::AUTH_ROLE) => {
                    let what = at("role");
                    let r: Role = codec::decode(
                        RecordRef {
                            cf: CF_SM,
                            group,
                            record: &what,
                        },
                        v,
                    )?;
                    out.roles.insert(name, r);
                }
                _ => {
                    return Err(StorageError::Corrupt {
                        cf: CF_SM,
                        group,
                        record: format!("auth key {k:02x?}"),
                        reason: "unknown row kind".into(),
                    });
                }
            }
            it.next();
        }
        it.status().map_err(rocks_err("scan auth"))?;
        Ok(out)
    }

    /// Users, roles, permissions and whether auth is on, as last applied.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.read().expect("auth lock").clone()
    }

    /// The users whose commands made revisions `from..=to`, for those a
    /// user made and that are not compacted: one scan, not a read per
    /// revision (the audit relay names the author of every revision).
    pub fn authors(&self, from: u64, to: u64) -> Result<std::collections::BTreeMap<u64, String>, StorageError> {
        let lo = layout::author_key(self.group, from);
        let hi = layout::author_key(self.group, to.saturating_add(1));
        let snap = self.db.rocks().snapshot();
        let mut it = self.sm_iter(&snap, &lo, &hi);
        it.seek(&lo);
        let mut out = std::collections::BTreeMap::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let rev = k[k.len().saturating_sub(8)..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StorageError::Corrupt {
                    cf: CF_SM,
                    group: self.group,
                    record: format!("author row {k:?}"),
                    reason: "its key does not end with a revision".into(),
                })?;
            out.insert(rev, String::from_utf8_lossy(v).into_owned());
            it.next();
        }
        it.status().map_err(rocks_err("authors scan"))?;
        Ok(out)
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
    pub fn state(&self) -> SmState {
        self.state.read().expect("sm state lock").clone()
    }

    /// The replicated limits in force.
    pub fn limits(&self) -> crate::limits::Limits {
        self.state.read().expect("sm state lock").limits
    }

    /// Current revision.
    pub fn revision(&self) -> u64 {
        self.state.read().expect("sm state lock").revision
    }

    /// Notified with the revision after every applied entry that changed it.
    pub fn subscribe_revision(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// Number of sessions kept.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }

    // ---------------------------------------------------------------- reads

    fn sm_iter(&self, snap: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>, lower: &[u8], upper: &[u8]) -> Raw<'_> {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(snap);
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        self.db.rocks().raw_iterator_cf_opt(self.db.cf(CF_SM), ro)
    }

    fn decode_kv(&self, key_desc: &dyn Fn() -> String, v: &[u8]) -> Result<KvRecord, StorageError> {
        let record = key_desc();
        codec::decode(
            RecordRef {
                cf: CF_SM,
                group: self.group,
                record: &record,
            },
            v,
        )
    }

    /// Reads a range. Revision 0 reads the current state. Returns the result
    /// and the store revision it reflects.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResult, u64), ReadError> {
        let st = self.state.read().expect("sm state lock");
        st.limits.check_range("range", &req.range)?;
        let snap = self.db.rocks().snapshot();
        let current = st.revision;
        let compact = st.compact_revision;
        drop(st);
        let result = self.range_at(&snap, req, current, compact)?;
        Ok((result, current))
    }

    fn range_at(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
        req: &RangeRequest,
        current: u64,
        compact: u64,
    ) -> Result<RangeResult, ReadError> {
        let rev = if req.revision == 0 { current } else { req.revision };
        if rev > current {
            return Err(Rejection::FutureRevision {
                requested: rev,
                current,
            }
            .into());
        }
        if rev < compact {
            return Err(Rejection::Compacted {
                requested: rev,
                compact_revision: compact,
            }
            .into());
        }
        let limit = if req.limit == 0 { u64::MAX } else { req.limit };
        let mut out = RangeResult::default();
        let mut push = |key: &[u8], rec: &KvRecord| {
            out.count += 1;
            if req.count_only {
                return;
            }
            if (out.kvs.len() as u64) < limit {
                out.kvs.push(rec.to_kv(key, req.keys_only));
            } else {
                out.more = true;
            }
        };
        if rev == current {
            let (lo, hi) = layout::encoded_bounds(self.group, layout::CURRENT, &req.range);
            let mut it = self.sm_iter(snap, &lo, &hi);
            it.seek(&lo);
            let skip = layout::table_prefix(self.group, layout::CURRENT).len();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let (user_key, _) =
                    esf_storage::keys::decode_bytes(&k[skip..]).ok_or_else(|| StorageError::Corrupt {
                        cf: CF_SM,
                        group: self.group,
                        record: format!("current key {k:02x?}"),
                        reason: "bad key encoding".into(),
                    })?;
                let rec = self.decode_kv(
                    &|| format!("current value of key {:?}", String::from_utf8_lossy(&user_key)),
                    v,
                )?;
                push(&user_key, &rec);
                it.next();
            }
            it.status().map_err(rocks_err("range scan"))?;
        } else {
            let (lo, hi) = layout::encoded_bounds(self.group, layout::HISTORY, &req.range);
            let mut it = self.sm_iter(snap, &lo, &hi);
            let mut probe = self.sm_iter(snap, &lo, &hi);
            let skip = layout::table_prefix(self.group, layout::HISTORY).len();
            it.seek(&lo);
            while let Some(k) = it.key() {
                let (user_key, _) =
                    esf_storage::keys::decode_bytes(&k[skip..]).ok_or_else(|| StorageError::Corrupt {
                        cf: CF_SM,
                        group: self.group,
                        record: format!("history key {k:02x?}"),
                        reason: "bad key encoding".into(),
                    })?;
                // Latest version of this key at or below `rev`.
                probe.seek_for_prev(layout::history_key(self.group, &user_key, rev));
                if let (Some(pk), Some(pv)) = (probe.key(), probe.value()) {
                    let own = layout::history_key(self.group, &user_key, 0);
                    if pk.len() == own.len() && pk[..own.len() - 8] == own[..own.len() - 8] {
                        let rec = self.decode_kv(
                            &|| format!("history of key {:?}", String::from_utf8_lossy(&user_key)),
                            pv,
                        )?;
                        if rec.value.is_some() {
                            push(&user_key, &rec);
                        }
                    }
                }
                probe.status().map_err(rocks_err("history probe"))?;
                // Skip the rest of this key's versions.
                let (_, key_end) =
                    layout::encoded_bounds(self.group, layout::HISTORY, &KeyRange::Key(user_key.clone()));
                it.seek(&key_end);
            }
            it.status().map_err(rocks_err("history scan"))?;
        }
        Ok(out)
    }

    /// Every version of `key` with revision in `[from, to]` (0 = current),
    /// oldest first; tombstones are returned with an empty value and
    /// version 0. Fails if `from` is compacted.
    pub fn history(&self, key: &[u8], from: u64, to: u64) -> Result<(Vec<KeyValue>, u64), ReadError> {
        let st = self.state.read().expect("sm state lock");
        st.limits.check_key("history.key", key)?;
        let snap = self.db.rocks().snapshot();
        let (current, compact) = (st.revision, st.compact_revision);
        drop(st);
        if from < compact {
            return Err(Rejection::Compacted {
                requested: from,
                compact_revision: compact,
            }
            .into());
        }
        let to = if to == 0 { current } else { to.min(current) };
        let lo = layout::history_key(self.group, key, from);
        let hi = layout::history_key(self.group, key, to.saturating_add(1).max(from));
        let mut it = self.sm_iter(&snap, &lo, &hi);
        it.seek(&lo);
        let mut out = Vec::new();
        while let (Some(_), Some(v)) = (it.key(), it.value()) {
            let rec = self.decode_kv(&|| format!("history of key {:?}", String::from_utf8_lossy(key)), v)?;
            out.push(rec.to_kv(key, false));
            it.next();
        }
        it.status().map_err(rocks_err("history scan"))?;
        Ok((out, current))
    }

    /// The events of keys in `range` at revisions `[from, to]` (`to` 0 =
    /// current), in revision order and, within a revision, in the order the
    /// ops ran; with `prev_kv`, each carries the version before it (if not
    /// compacted away). Fails with `Compacted` if `from` is at or below the
    /// compaction revision. Returns the revision it read up to (`to`, or the
    /// current one). Reads one RocksDB snapshot, so a
    /// concurrent compaction cannot tear the result.
    pub fn events(
        &self,
        range: &KeyRange,
        from: u64,
        to: u64,
        prev_kv: bool,
    ) -> Result<(Vec<WatchEvent>, u64), ReadError> {
        let st = self.state.read().expect("sm state lock");
        let snap = self.db.rocks().snapshot();
        let (current, compact) = (st.revision, st.compact_revision);
        drop(st);
        // At the compaction revision itself a delete's tombstone may be
        // gone (compaction drops a tombstone that is a key's latest
        // version), so changes are only complete above it.
        if from < compact || (compact > 0 && from == compact) {
            return Err(Rejection::Compacted {
                requested: from,
                compact_revision: compact,
            }
            .into());
        }
        let to = if to == 0 { current } else { to.min(current) };
        let lo = layout::changes_key(self.group, from);
        let hi = layout::changes_key(self.group, to.saturating_add(1));
        let mut it = self.sm_iter(&snap, &lo, &hi);
        let hist_lo = layout::table_prefix(self.group, layout::HISTORY);
        let hist_hi = prefix_end(&hist_lo).expect("table prefix is not all 0xff");
        let mut probe = self.sm_iter(&snap, &hist_lo, &hist_hi);
        let mut out = Vec::new();
        it.seek(&lo);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (rev, changes) = self.decode_changes_row(k, v)?;
            let replaced = changes.replaced;
            for (i, key) in changes.keys.into_iter().enumerate() {
                if !range.contains(&key) {
                    continue;
                }
                let Some(rec) = self.history_get(&snap, &key, rev)? else {
                    continue;
                };
                let kv = rec.to_kv(&key, false);
                // The version replaced: named by a format 3 row (a point
                // read), else found with a seek.
                let prev = if !prev_kv {
                    None
                } else {
                    match replaced.as_ref().map(|r| r[i].prev) {
                        Some(0) => None,
                        Some(p) => self.history_get(&snap, &key, p)?,
                        None => version_before(&mut probe, self.group, &key, rev)
                            .map(|(_, pv)| {
                                self.decode_kv(&|| format!("history of key {:?}", String::from_utf8_lossy(&key)), &pv)
                            })
                            .transpose()?,
                    }
                }
                .filter(|p| p.value.is_some())
                .map(|p| p.to_kv(&key, false));
                out.push(WatchEvent {
                    revision: rev,
                    deleted: rec.value.is_none(),
                    kv,
                    prev_kv: prev,
                });
            }
            it.next();
        }
        it.status().map_err(rocks_err("events scan"))?;
        probe.status().map_err(rocks_err("events probe"))?;
        Ok((out, to))
    }

    /// Every lease.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, StorageError> {
        let prefix = layout::table_prefix(self.group, layout::LEASE);
        let end = prefix_end(&prefix).expect("table prefix is not all 0xff");
        let snap = self.db.rocks().snapshot();
        let mut it = self.sm_iter(&snap, &prefix, &end);
        it.seek(&prefix);
        let mut out = Vec::new();
        while let (Some(_), Some(v)) = (it.key(), it.value()) {
            out.push(codec::decode(
                RecordRef {
                    cf: CF_SM,
                    group: self.group,
                    record: &"lease",
                },
                v,
            )?);
            it.next();
        }
        it.status().map_err(rocks_err("lease scan"))?;
        Ok(out)
    }

    /// A lease and the keys attached to it.
    pub fn lease(&self, id: u64) -> Result<Option<(LeaseRecord, Vec<Vec<u8>>)>, StorageError> {
        let Some(rec) = self.get_lease(id)? else {
            return Ok(None);
        };
        Ok(Some((rec, self.lease_keys(id)?)))
    }

    fn get_lease(&self, id: u64) -> Result<Option<LeaseRecord>, StorageError> {
        let raw = self
            .db
            .rocks()
            .get_pinned_cf(self.db.cf(CF_SM), layout::lease_key(self.group, id))
            .map_err(rocks_err("read lease"))?;
        match raw {
            None => Ok(None),
            Some(v) => {
                let record = format!("lease {id}");
                codec::decode(
                    RecordRef {
                        cf: CF_SM,
                        group: self.group,
                        record: &record,
                    },
                    &v,
                )
                .map(Some)
            }
        }
    }

    /// After an explicit compaction: flush and compact the `sm` column
    /// family in the background so the dropped history stops counting
    /// against the quota. At most one runs at a time.
    fn schedule_reclaim(&self) {
        let mut running = self.reclaim.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let db = self.db.clone();
        match std::thread::Builder::new().name("esf-reclaim".into()).spawn(move || {
            if let Err(e) = db.reclaim(CF_SM) {
                tracing::warn!(error = %e, "reclaiming space after compaction failed");
            }
        }) {
            Ok(h) => *running = Some(h),
            Err(e) => tracing::warn!(error = %e, "could not start reclaiming space after compaction"),
        }
    }

    /// Decodes one row of the changes table.
    fn decode_changes_row(&self, k: &[u8], v: &[u8]) -> Result<(u64, Changes), StorageError> {
        let rev = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("changes key ends with 8 bytes"));
        let record = format!("changes at revision {rev}");
        let changes = Changes::decode(
            RecordRef {
                cf: CF_SM,
                group: self.group,
                record: &record,
            },
            v,
        )?;
        Ok((rev, changes))
    }

    /// The desired replicas of every placed partition, preferred leader
    /// first, and the nodes excluded from placement (set by
    /// [`Op::PlacePartitions`]).
    pub fn placement(&self) -> Result<Placement, StorageError> {
        let prefix = layout::table_prefix(self.group, layout::PLACEMENT);
        let corrupt = |reason: String| StorageError::Corrupt {
            cf: CF_SM,
            group: self.group,
            record: "partition placement".into(),
            reason,
        };
        let mut out = Placement::default();
        let iter = self.db.rocks().iterator_cf(
            self.db.cf(CF_SM),
            rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(rocks_err("partition placement read"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let p: [u8; 4] = k[prefix.len()..]
                .try_into()
                .map_err(|_| corrupt(format!("key of {} bytes", k.len())))?;
            if v.len() % 8 != 0 {
                return Err(corrupt(format!("value of {} bytes is not a list of u64", v.len())));
            }
            let nodes = v
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8")))
                .collect();
            match u32::from_be_bytes(p) {
                EXCLUDED_FROM_PLACEMENT => out.excluded = nodes,
                p => {
                    out.plan.insert(p, nodes);
                }
            }
        }
        Ok(out)
    }

    /// The event partition count recorded by [`Op::RecordPartitions`].
    pub fn partitions(&self) -> Result<Option<u32>, StorageError> {
        let raw = self
            .db
            .rocks()
            .get_pinned_cf(self.db.cf(CF_SM), layout::table_prefix(self.group, layout::PARTITIONS))
            .map_err(rocks_err("partition count read"))?;
        match raw {
            None => Ok(None),
            Some(v) => (*v)
                .try_into()
                .map(|b| Some(u32::from_be_bytes(b)))
                .map_err(|_| StorageError::Corrupt {
                    cf: CF_SM,
                    group: self.group,
                    record: "partition count".into(),
                    reason: format!("4 bytes expected, found {}", v.len()),
                }),
        }
    }

    /// The last revision the audit relay recorded as relayed
    /// ([`Op::AuditCursor`]); `None` before its first record.
    pub fn audit_cursor(&self) -> Result<Option<u64>, StorageError> {
        Ok(*self.audit_cursor.read().expect("audit cursor lock"))
    }

    fn load_audit_cursor(db: &Db, group: GroupId) -> Result<Option<u64>, StorageError> {
        let raw = db
            .rocks()
            .get_pinned_cf(db.cf(CF_SM), layout::table_prefix(group, layout::AUDIT))
            .map_err(rocks_err("audit cursor read"))?;
        match raw {
            None => Ok(None),
            Some(v) => (*v)
                .try_into()
                .map(|b| Some(u64::from_be_bytes(b)))
                .map_err(|_| StorageError::Corrupt {
                    cf: CF_SM,
                    group,
                    record: "audit cursor".into(),
                    reason: format!("8 bytes expected, found {}", v.len()),
                }),
        }
    }

    fn reload_audit_cursor(&self) -> Result<(), StorageError> {
        let c = Self::load_audit_cursor(&self.db, self.group)?;
        *self.audit_cursor.write().expect("audit cursor lock") = c;
        Ok(())
    }

    /// Whether the leader recorded (with `MemberReplicated`) that it has
    /// replicated to `node_id`.
    pub fn member_replicated(&self, node_id: u64) -> Result<bool, StorageError> {
        let raw = self
            .db
            .rocks()
            .get_pinned_cf(self.db.cf(CF_SM), layout::replicated_key(self.group, node_id))
            .map_err(rocks_err("replicated member read"))?;
        Ok(raw.is_some())
    }

    fn lease_keys(&self, id: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let prefix = layout::lease_key_prefix(self.group, id);
        let end = prefix_end(&prefix).expect("lease prefix is not all 0xff");
        let snap = self.db.rocks().snapshot();
        let mut it = self.sm_iter(&snap, &prefix, &end);
        it.seek(&prefix);
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            let (key, _) =
                esf_storage::keys::decode_bytes(&k[prefix.len()..]).ok_or_else(|| StorageError::Corrupt {
                    cf: CF_SM,
                    group: self.group,
                    record: format!("lease {id} key"),
                    reason: "bad key encoding".into(),
                })?;
            out.push(key);
            it.next();
        }
        it.status().map_err(rocks_err("lease key scan"))?;
        Ok(out)
    }

    fn get_current(&self, key: &[u8]) -> Result<Option<KvRecord>, StorageError> {
        if let Some(rec) = self.overlay.lock().expect("overlay lock").get(key) {
            return Ok(rec.clone());
        }
        self.get_current_stored(key)
    }

    /// The current record of `key` before the command being applied: what
    /// the earlier commands of its batch left, else RocksDB.
    fn get_current_before_command(&self, key: &[u8]) -> Result<Option<KvRecord>, StorageError> {
        if let Some(rec) = self.overlay.lock().expect("overlay lock").pending.get(key) {
            return Ok(rec.clone());
        }
        self.get_current_stored(key)
    }

    fn get_current_stored(&self, key: &[u8]) -> Result<Option<KvRecord>, StorageError> {
        let raw = self
            .db
            .rocks()
            .get_pinned_cf(self.db.cf(CF_SM), layout::current_key(self.group, key))
            .map_err(rocks_err("read key"))?;
        match raw {
            None => Ok(None),
            Some(v) => self
                .decode_kv(
                    &|| format!("current value of key {:?}", String::from_utf8_lossy(key)),
                    &v,
                )
                .map(Some),
        }
    }

    /// FNV-1a hash of every row of the group (all tables), and the applied
    /// log id it reflects. Replicas at the same applied index must agree.
    pub fn state_hash(&self) -> Result<(u64, Option<LogId>), StorageError> {
        let st = self.state.read().expect("sm state lock");
        let snap = self.db.rocks().snapshot();
        let applied = st.last_applied.clone();
        drop(st);
        let lo = group_prefix(self.group).to_vec();
        let hi = prefix_end(&lo).unwrap_or_else(|| vec![0xff; 5]);
        let mut it = self.sm_iter(&snap, &lo, &hi);
        it.seek(&lo);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            feed(k);
            feed(v);
            it.next();
        }
        it.status().map_err(rocks_err("hash scan"))?;
        Ok((h, applied))
    }

    // ---------------------------------------------------------------- apply

    /// Applies one committed entry; returns its response. An [`Op::Batch`]
    /// entry applies its commands in order, each as if it were its own
    /// entry, and writes them all in one RocksDB batch.
    pub fn apply_entry(&self, entry: &Entry) -> Result<Response, StorageError> {
        let log_id = entry.log_id();
        let mut st = self.state.read().expect("sm state lock").clone();
        let compact_before = st.compact_revision;
        let mut batch = WriteBatch::default();
        let mut session_updates = Vec::new();
        let mut staged_auth = None;
        self.overlay.lock().expect("overlay lock").clear();
        let response = match &entry.payload {
            EntryPayload::Blank => Response {
                revision: st.revision,
                result: OpResult::None,
            },
            EntryPayload::Membership(m) => {
                st.membership = StoredMembership::new(Some(log_id.clone()), m.clone());
                Response {
                    revision: st.revision,
                    result: OpResult::None,
                }
            }
            EntryPayload::Normal(Command {
                op: Op::Batch(cmds),
                session,
            }) => {
                if session.is_some() || cmds.iter().any(|c| !c.op.coalescable()) {
                    Response {
                        revision: st.revision,
                        result: OpResult::Rejected(Rejection::InvalidArgument {
                            field: "batch".into(),
                            reason: "a batch holds only puts, single-key deletes and txns of those, without a session of its own".into(),
                        }),
                    }
                } else {
                    self.overlay.lock().expect("overlay lock").batch_first_revision = Some(st.revision + 1);
                    let mut out = Vec::with_capacity(cmds.len());
                    for cmd in cmds {
                        out.push(self.apply_command(
                            &mut st,
                            &mut batch,
                            cmd,
                            log_id.index(),
                            &mut session_updates,
                            &mut staged_auth,
                        )?);
                    }
                    Response {
                        revision: st.revision,
                        result: OpResult::Batch(out),
                    }
                }
            }
            EntryPayload::Normal(cmd) => self.apply_command(
                &mut st,
                &mut batch,
                cmd,
                log_id.index(),
                &mut session_updates,
                &mut staged_auth,
            )?,
        };
        let cf = self.db.cf(CF_SM);
        for (client, session) in &session_updates {
            let key = layout::session_key(self.group, *client);
            match session {
                Some(s) => batch.put_cf(cf, key, codec::encode("session", s)?),
                None => batch.delete_cf(cf, key),
            }
        }
        let compacted = st.compact_revision > compact_before;
        st.last_applied = Some(log_id);
        batch.put_cf(cf, layout::state_key(self.group), codec::encode("sm state", &st)?);
        let revision = st.revision;
        {
            let mut guard = self.state.write().expect("sm state lock");
            self.db.write_buffered(batch)?;
            *guard = st;
            self.overlay.lock().expect("overlay lock").clear();
            if let Some(a) = staged_auth {
                *self.auth.write().expect("auth lock") = Arc::new(a);
            }
        }
        if matches!(&entry.payload, EntryPayload::Normal(c) if matches!(c.op, Op::AuditCursor { .. })) {
            self.reload_audit_cursor()?;
        }
        if compacted && matches!(&entry.payload, EntryPayload::Normal(c) if matches!(c.op, Op::Compact { .. })) {
            self.schedule_reclaim();
        }
        self.revision_tx.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        Ok(response)
    }

    /// Applies one client or internal command at `index` onto `st` and
    /// `batch`: its session decides whether it runs (a retry gets its first
    /// answer), a rejection writes nothing, and the session's rows to write
    /// are added to `session_updates`.
    fn apply_command(
        &self,
        st: &mut SmState,
        batch: &mut WriteBatch,
        cmd: &Command,
        index: u64,
        session_updates: &mut Vec<(u64, Option<Session>)>,
        staged_auth: &mut Option<AuthState>,
    ) -> Result<Response, StorageError> {
        let check = match &cmd.session {
            Some(s) => self.sessions.lock().expect("sessions lock").check(s),
            None => Check::Apply,
        };
        match check {
            Check::Duplicate(resp) => Ok(resp),
            Check::Expired(rej) => Ok(Response {
                revision: st.revision,
                result: OpResult::Rejected(rej),
            }),
            Check::Apply => {
                let mut next = st.clone();
                let mut ops = WriteBatch::default();
                let mut auth = None;
                let outcome = self.execute(&mut next, &mut ops, &cmd.op, &mut auth);
                let mut overlay = self.overlay.lock().expect("overlay lock");
                let resp = match outcome? {
                    Ok(result) => {
                        *st = next;
                        if batch.is_empty() {
                            *batch = ops;
                        } else {
                            ops.iterate_cf(&mut AppendTo {
                                batch,
                                cf: self.db.cf(CF_SM),
                            });
                        }
                        if auth.is_some() {
                            *staged_auth = auth;
                        }
                        overlay.commit_staged();
                        Response {
                            revision: st.revision,
                            result,
                        }
                    }
                    Err(rej) => {
                        overlay.staged.clear();
                        Response {
                            revision: st.revision,
                            result: OpResult::Rejected(rej),
                        }
                    }
                };
                drop(overlay);
                if let Some(s) = &cmd.session {
                    let limits = st.limits;
                    session_updates.extend(self.sessions.lock().expect("sessions lock").record(
                        s,
                        &resp,
                        index,
                        limits.max_session_responses,
                        limits.max_sessions,
                    ));
                }
                Ok(resp)
            }
        }
    }

    /// Runs `op` against `st`, writing into `batch`; an auth change leaves
    /// the new auth state in `auth`, to be swapped in once the batch is
    /// written. The outer `Result` is a storage failure (stop the node);
    /// the inner one a deterministic rejection (nothing is written).
    fn execute(
        &self,
        st: &mut SmState,
        batch: &mut WriteBatch,
        op: &Op,
        auth: &mut Option<AuthState>,
    ) -> Result<Result<OpResult, Rejection>, StorageError> {
        if let Err(rej) = st.limits.check_op(op) {
            return Ok(Err(rej));
        }
        let rev = st.revision + 1;
        let mut changes = Changes::default();
        let result = match op {
            Op::Put(p) => match self.put(batch, p, rev, &mut changes)? {
                Ok(prev_kv) => OpResult::Put { prev_kv },
                Err(r) => return Ok(Err(r)),
            },
            Op::Delete(d) => {
                let (deleted, prev_kvs) = self.delete(batch, d, rev, &mut changes)?;
                OpResult::Delete { deleted, prev_kvs }
            }
            Op::Txn(t) => match self.txn(batch, t, rev, st, &mut changes)? {
                Ok(r) => r,
                Err(r) => return Ok(Err(r)),
            },
            Op::Compact { revision } => {
                if *revision > st.revision {
                    return Ok(Err(Rejection::FutureRevision {
                        requested: *revision,
                        current: st.revision,
                    }));
                }
                if *revision <= st.compact_revision {
                    return Ok(Err(Rejection::Compacted {
                        requested: *revision,
                        compact_revision: st.compact_revision,
                    }));
                }
                if let Some(relayed) = self.audit_cursor()?.filter(|r| r < revision) {
                    return Ok(Err(Rejection::InvalidArgument {
                        field: "compact.revision".into(),
                        reason: format!(
                            "the audit relay has relayed revisions up to {relayed} only; compacting to {revision} would lose audit events (see esf status: audit lag)"
                        ),
                    }));
                }
                self.compact(batch, st.compact_revision, *revision)?;
                st.compact_revision = *revision;
                OpResult::Compacted {
                    compact_revision: *revision,
                }
            }
            Op::SetLimits(l) => {
                st.limits = *l;
                OpResult::LimitsSet
            }
            Op::AuditCursor { revision } => {
                if *revision > st.revision {
                    return Ok(Err(Rejection::FutureRevision {
                        requested: *revision,
                        current: st.revision,
                    }));
                }
                if self.audit_cursor()?.is_none_or(|r| r < *revision) {
                    batch.put_cf(
                        self.db.cf(CF_SM),
                        layout::table_prefix(self.group, layout::AUDIT),
                        revision.to_be_bytes(),
                    );
                }
                OpResult::None
            }
            Op::MemberReplicated { node_id } => {
                batch.put_cf(self.db.cf(CF_SM), layout::replicated_key(self.group, *node_id), []);
                OpResult::None
            }
            Op::RecordPartitions { count } => {
                match self.partitions()? {
                    Some(c) if c != *count => {
                        return Ok(Err(Rejection::InvalidArgument {
                            field: "partitions".into(),
                            reason: format!("the cluster has {c} partitions, fixed at creation; not {count}"),
                        }));
                    }
                    _ => batch.put_cf(
                        self.db.cf(CF_SM),
                        layout::table_prefix(self.group, layout::PARTITIONS),
                        count.to_be_bytes(),
                    ),
                }
                OpResult::None
            }
            Op::PlacePartitions { plan, exclude, include } => {
                // The excluded set changes by delta, so concurrent removals
                // cannot drop each other's exclusion.
                let mut excluded = self.placement()?.excluded;
                excluded.retain(|n| !include.contains(n));
                for n in exclude {
                    if !excluded.contains(n) {
                        excluded.push(*n);
                    }
                }
                excluded.sort_unstable();
                let changed = !exclude.is_empty() || !include.is_empty();
                let rows = plan
                    .iter()
                    .map(|(p, r)| (*p, r))
                    .chain(changed.then_some((EXCLUDED_FROM_PLACEMENT, &excluded)));
                for (p, nodes) in rows {
                    let mut key = layout::table_prefix(self.group, layout::PLACEMENT);
                    key.extend_from_slice(&p.to_be_bytes());
                    let value: Vec<u8> = nodes.iter().flat_map(|n| n.to_be_bytes()).collect();
                    batch.put_cf(self.db.cf(CF_SM), key, value);
                }
                OpResult::None
            }
            Op::Batch(_) => {
                return Ok(Err(Rejection::InvalidArgument {
                    field: "op".into(),
                    reason: "a batch cannot be nested in another command".into(),
                }));
            }
            Op::Append(_) | Op::DeleteStream { .. } | Op::RemoveEvents { .. } | Op::IndexField { .. } => {
                return Ok(Err(Rejection::InvalidArgument {
                    field: "op".into(),
                    reason: "event operations go to an event partition, not the meta group".into(),
                }));
            }
            Op::LeaseGrant { id, ttl_secs } => {
                let id = if *id == 0 {
                    let mut candidate = st.next_lease_id.max(1);
                    while self.get_lease(candidate)?.is_some() {
                        candidate += 1;
                    }
                    st.next_lease_id = candidate + 1;
                    candidate
                } else {
                    if self.get_lease(*id)?.is_some() {
                        return Ok(Err(Rejection::LeaseExists(*id)));
                    }
                    *id
                };
                let rec = LeaseRecord {
                    id,
                    ttl_secs: *ttl_secs,
                    granted_revision: st.revision,
                };
                batch.put_cf(
                    self.db.cf(CF_SM),
                    layout::lease_key(self.group, id),
                    codec::encode("lease", &rec)?,
                );
                OpResult::LeaseGranted {
                    id,
                    ttl_secs: *ttl_secs,
                }
            }
            Op::Auth(change) => {
                let (next, rows) = match self.auth().apply(change) {
                    Ok(x) => x,
                    Err(r) => return Ok(Err(r)),
                };
                self.write_auth_rows(batch, rows)?;
                let auth_revision = next.head.revision;
                *auth = Some(next);
                OpResult::AuthChanged { auth_revision }
            }
            Op::AsUser { user, op } => {
                let state = self.auth();
                if let Err(r) = state.check_op(user, op) {
                    return Ok(Err(r));
                }
                if let Op::LeaseRevoke { id, .. } = &**op {
                    for key in self.lease_keys(*id)? {
                        if let Err(r) = state.require_meta_key(user, super::auth::Need::Write, &key) {
                            return Ok(Err(r));
                        }
                    }
                }
                let before = st.revision;
                let result = self.execute(st, batch, op, auth)?;
                if result.is_ok() && st.revision > before {
                    batch.put_cf(
                        self.db.cf(CF_SM),
                        layout::author_key(self.group, st.revision),
                        user.as_bytes(),
                    );
                }
                return Ok(result);
            }
            Op::LeaseRevoke { id, .. } => {
                if self.get_lease(*id)?.is_none() {
                    return Ok(Err(Rejection::LeaseNotFound(*id)));
                }
                let cf = self.db.cf(CF_SM);
                let mut deleted = 0;
                // Point deletes only (see `compact` on range tombstones).
                for key in self.lease_keys(*id)? {
                    batch.delete_cf(cf, layout::lease_attach_key(self.group, *id, &key));
                    if let Some(prev) = self.get_current(&key)? {
                        self.write_tombstone(batch, &key, &prev, rev);
                        changes.push(key, prev.mod_revision, true);
                        deleted += 1;
                    }
                }
                batch.delete_cf(cf, layout::lease_key(self.group, *id));
                OpResult::LeaseRevoked { deleted_keys: deleted }
            }
        };
        if !changes.keys.is_empty() {
            st.revision = rev;
            batch.put_cf(
                self.db.cf(CF_SM),
                layout::changes_key(self.group, rev),
                changes.encode()?,
            );
            // Auto-compaction: keep `history_revisions` revisions readable,
            // compacting in steps of `auto_compaction_step` revisions so the
            // cost is shared by many writes.
            // Never above the audit relay's cursor.
            let mut target = rev.saturating_sub(st.limits.history_revisions);
            if let Some(relayed) = self.audit_cursor()? {
                target = target.min(relayed);
            }
            // Compaction reads RocksDB only, which does not hold the earlier
            // commands of a batch entry yet.
            if let Some(first) = self.overlay.lock().expect("overlay lock").batch_first_revision {
                target = target.min(first - 1);
            }
            if target >= st.compact_revision + auto_compaction_step(st.limits.history_revisions) {
                self.compact(batch, st.compact_revision, target)?;
                st.compact_revision = target;
            }
        }
        Ok(Ok(result))
    }

    fn write_auth_rows(&self, batch: &mut WriteBatch, rows: Vec<AuthRow>) -> Result<(), StorageError> {
        let cf = self.db.cf(CF_SM);
        for row in rows {
            match row {
                AuthRow::Head(h) => batch.put_cf(
                    cf,
                    layout::auth_key(self.group, layout::AUTH_HEAD, ""),
                    codec::encode::<AuthHead>("auth head", &h)?,
                ),
                AuthRow::User(name, Some(u)) => batch.put_cf(
                    cf,
                    layout::auth_key(self.group, layout::AUTH_USER, &name),
                    codec::encode::<User>("auth user", &u)?,
                ),
                AuthRow::User(name, None) => {
                    batch.delete_cf(cf, layout::auth_key(self.group, layout::AUTH_USER, &name))
                }
                AuthRow::Role(name, Some(r)) => batch.put_cf(
                    cf,
                    layout::auth_key(self.group, layout::AUTH_ROLE, &name),
                    codec::encode::<Role>("auth role", &r)?,
                ),
                AuthRow::Role(name, None) => {
                    batch.delete_cf(cf, layout::auth_key(self.group, layout::AUTH_ROLE, &name))
                }
            }
        }
        Ok(())
    }

    fn put(
        &self,
        batch: &mut WriteBatch,
        p: &PutRequest,
        rev: u64,
        changes: &mut Changes,
    ) -> Result<Result<Option<KeyValue>, Rejection>, StorageError> {
        if p.lease != 0 && self.get_lease(p.lease)?.is_none() {
            return Ok(Err(Rejection::LeaseNotFound(p.lease)));
        }
        let prev = self.get_current(&p.key)?;
        let rec = KvRecord {
            create_revision: prev.as_ref().map_or(rev, |r| r.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |r| r.version + 1),
            value: Some(p.value.clone()),
            lease: p.lease,
        };
        let cf = self.db.cf(CF_SM);
        let encoded = codec::encode("kv record", &rec)?;
        batch.put_cf(cf, layout::current_key(self.group, &p.key), &encoded);
        batch.put_cf(cf, layout::history_key(self.group, &p.key, rev), &encoded);
        self.overlay
            .lock()
            .expect("overlay lock")
            .staged
            .insert(p.key.clone(), Some(rec));
        if let Some(old) = &prev {
            if old.lease != 0 && old.lease != p.lease {
                batch.delete_cf(cf, layout::lease_attach_key(self.group, old.lease, &p.key));
            }
        }
        if p.lease != 0 {
            batch.put_cf(cf, layout::lease_attach_key(self.group, p.lease, &p.key), []);
        }
        changes.push(p.key.clone(), prev.as_ref().map_or(0, |r| r.mod_revision), false);
        Ok(Ok(if p.prev_kv {
            prev.map(|r| r.to_kv(&p.key, false))
        } else {
            None
        }))
    }

    fn write_tombstone(&self, batch: &mut WriteBatch, key: &[u8], prev: &KvRecord, rev: u64) {
        let cf = self.db.cf(CF_SM);
        let tomb = KvRecord {
            create_revision: 0,
            mod_revision: rev,
            version: 0,
            value: None,
            lease: 0,
        };
        batch.delete_cf(cf, layout::current_key(self.group, key));
        self.overlay
            .lock()
            .expect("overlay lock")
            .staged
            .insert(key.to_vec(), None);
        batch.put_cf(
            cf,
            layout::history_key(self.group, key, rev),
            codec::encode("kv tombstone", &tomb).expect("a tombstone always encodes"),
        );
        if prev.lease != 0 {
            batch.delete_cf(cf, layout::lease_attach_key(self.group, prev.lease, key));
        }
    }

    fn live_in_range(&self, range: &KeyRange) -> Result<Vec<(Vec<u8>, KvRecord)>, StorageError> {
        if let KeyRange::Key(key) = range {
            // One key: its current record, through the overlay of the entry
            // being applied (a batch's earlier writes).
            return Ok(self
                .get_current(key)?
                .into_iter()
                .map(|rec| (key.clone(), rec))
                .collect());
        }
        let snap = self.db.rocks().snapshot();
        let req = RangeRequest {
            range: range.clone(),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
        };
        let st = self.state.read().expect("sm state lock");
        let (cur, compact) = (st.revision, st.compact_revision);
        drop(st);
        let res = match self.range_at(&snap, &req, cur, compact) {
            Ok(r) => r,
            Err(ReadError::Storage(e)) => return Err(e),
            Err(ReadError::Rejected(r)) => unreachable!("a current read is never rejected: {r}"),
        };
        Ok(res
            .kvs
            .into_iter()
            .map(|kv| {
                let rec = KvRecord {
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    value: Some(kv.value),
                    lease: kv.lease,
                };
                (kv.key, rec)
            })
            .collect())
    }

    fn delete(
        &self,
        batch: &mut WriteBatch,
        d: &DeleteRequest,
        rev: u64,
        changes: &mut Changes,
    ) -> Result<(u64, Vec<KeyValue>), StorageError> {
        let live = self.live_in_range(&d.range)?;
        let mut prev_kvs = Vec::new();
        for (key, rec) in &live {
            self.write_tombstone(batch, key, rec, rev);
            changes.push(key.clone(), rec.mod_revision, true);
            if d.prev_kv {
                prev_kvs.push(rec.to_kv(key, false));
            }
        }
        Ok((live.len() as u64, prev_kvs))
    }

    fn compare_holds(&self, c: &Compare) -> Result<bool, StorageError> {
        let cur = self.get_current(&c.key)?;
        use std::cmp::Ordering;
        let ord: Option<Ordering> = match (&c.target, &cur) {
            (CompareTarget::Value(_), None) => None,
            (CompareTarget::Value(v), Some(r)) => Some(r.value.as_deref().unwrap_or_default().cmp(v.as_slice())),
            (CompareTarget::Version(v), r) => Some(r.as_ref().map_or(0, |r| r.version).cmp(v)),
            (CompareTarget::CreateRevision(v), r) => Some(r.as_ref().map_or(0, |r| r.create_revision).cmp(v)),
            (CompareTarget::ModRevision(v), r) => Some(r.as_ref().map_or(0, |r| r.mod_revision).cmp(v)),
            (CompareTarget::Lease(v), r) => Some(r.as_ref().map_or(0, |r| r.lease).cmp(v)),
        };
        Ok(match (ord, c.op) {
            (None, _) => false,
            (Some(o), CompareOp::Equal) => o == Ordering::Equal,
            (Some(o), CompareOp::NotEqual) => o != Ordering::Equal,
            (Some(o), CompareOp::Greater) => o == Ordering::Greater,
            (Some(o), CompareOp::Less) => o == Ordering::Less,
        })
    }

    fn txn(
        &self,
        batch: &mut WriteBatch,
        t: &TxnRequest,
        rev: u64,
        st: &SmState,
        changes: &mut Changes,
    ) -> Result<Result<OpResult, Rejection>, StorageError> {
        let mut succeeded = true;
        for c in &t.compares {
            if !self.compare_holds(c)? {
                succeeded = false;
                break;
            }
        }
        let (ops, branch) = if succeeded {
            (&t.success, "txn.success")
        } else {
            (&t.failure, "txn.failure")
        };
        // A key may be written once per txn.
        let mut written: Vec<&KeyRange> = Vec::new();
        let mut put_keys: Vec<&[u8]> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let (range, key) = match op {
                TxnOp::Put(p) => (None, Some(p.key.as_slice())),
                TxnOp::Delete(d) => (Some(&d.range), None),
                TxnOp::Range(_) => (None, None),
            };
            if let Some(k) = key {
                if put_keys.contains(&k) || written.iter().any(|r| r.contains(k)) {
                    return Ok(Err(Rejection::InvalidArgument {
                        field: format!("{branch}[{i}]"),
                        reason: format!(
                            "key {:?} is written more than once in one txn",
                            String::from_utf8_lossy(k)
                        ),
                    }));
                }
                put_keys.push(k);
            }
            if let Some(r) = range {
                if let Some(k) = put_keys.iter().find(|k| r.contains(k)) {
                    return Ok(Err(Rejection::InvalidArgument {
                        field: format!("{branch}[{i}]"),
                        reason: format!("deletes key {:?} that the txn also puts", String::from_utf8_lossy(k)),
                    }));
                }
                written.push(r);
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        let mut deleted_keys: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            results.push(match op {
                TxnOp::Put(p) => match self.put(batch, p, rev, changes)? {
                    Ok(prev_kv) => TxnOpResult::Put { prev_kv },
                    Err(r) => return Ok(Err(r)),
                },
                TxnOp::Delete(d) => {
                    // Overlapping deletes in one txn delete each key once.
                    let live: Vec<_> = self
                        .live_in_range(&d.range)?
                        .into_iter()
                        .filter(|(k, _)| !deleted_keys.contains(k))
                        .collect();
                    let mut prev_kvs = Vec::new();
                    for (key, rec) in &live {
                        self.write_tombstone(batch, key, rec, rev);
                        changes.push(key.clone(), rec.mod_revision, true);
                        deleted_keys.push(key.clone());
                        if d.prev_kv {
                            prev_kvs.push(rec.to_kv(key, false));
                        }
                    }
                    TxnOpResult::Delete {
                        deleted: live.len() as u64,
                        prev_kvs,
                    }
                }
                TxnOp::Range(RangeRequest {
                    range: KeyRange::Key(key),
                    revision: 0,
                    count_only,
                    keys_only,
                    ..
                }) if self
                    .overlay
                    .lock()
                    .expect("overlay lock")
                    .batch_first_revision
                    .is_some() =>
                {
                    // In a batch, RocksDB lacks the earlier commands' writes:
                    // the key's record before this txn, as `range_at` would
                    // give it at the current revision.
                    let mut res = RangeResult::default();
                    if let Some(rec) = self.get_current_before_command(key)? {
                        res.count = 1;
                        if !*count_only {
                            res.kvs.push(rec.to_kv(key, *keys_only));
                        }
                    }
                    TxnOpResult::Range(res)
                }
                TxnOp::Range(r) => {
                    let snap = self.db.rocks().snapshot();
                    match self.range_at(&snap, r, st.revision, st.compact_revision) {
                        Ok(res) => TxnOpResult::Range(res),
                        Err(ReadError::Rejected(rej)) => return Ok(Err(rej)),
                        Err(ReadError::Storage(e)) => return Err(e),
                    }
                }
            });
        }
        Ok(Ok(OpResult::Txn { succeeded, results }))
    }

    /// Compacts the history of every key changed in `[from, to)`: for such a
    /// key let L be its latest version at or below `to`; every version below
    /// L is dropped (none is visible at any revision `>= to`), and L too if it
    /// is a tombstone. Reads at revisions `>= to` are unaffected.
    ///
    /// Only point deletes: range tombstones in the memtable would be
    /// re-fragmented by every later iterator, which made each write slower
    /// than the last. The versions to drop are found without scanning old
    /// tombstones: windows are compacted in order, so below `from` a key has
    /// at most one live version (the one an earlier window kept), and the
    /// versions in `[from, to)` are exactly its entries in the changes log.
    fn compact(&self, batch: &mut WriteBatch, from: u64, to: u64) -> Result<(), StorageError> {
        let cf = self.db.cf(CF_SM);
        let lo = layout::changes_key(self.group, from);
        let hi = layout::changes_key(self.group, to);
        let snap = self.db.rocks().snapshot();
        let mut it = self.sm_iter(&snap, &lo, &hi);
        // Keys changed in the window by rows of format 2, which do not say
        // what each change replaced: their older versions are found with a
        // seek below.
        let mut changed: std::collections::BTreeMap<Vec<u8>, ()> = std::collections::BTreeMap::new();
        it.seek(&lo);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (rev, changes) = self.decode_changes_row(k, v)?;
            match changes.replaced {
                // A change at `rev` below the new compaction revision
                // supersedes the version it replaced, so that version's row
                // goes (a point delete, no seek); a delete's own tombstone
                // goes too. Every version a later window needs is still
                // the latest one at or below `to`.
                Some(replaced) => {
                    for (key, r) in changes.keys.iter().zip(replaced) {
                        if r.prev != 0 {
                            batch.delete_cf(cf, layout::history_key(self.group, key, r.prev));
                        }
                        if r.deleted {
                            batch.delete_cf(cf, layout::history_key(self.group, key, rev));
                        }
                    }
                }
                None => {
                    for key in changes.keys {
                        changed.insert(key, ());
                    }
                }
            }
            batch.delete_cf(cf, k);
            it.next();
        }
        it.status().map_err(rocks_err("compaction scan"))?;
        let (alo, ahi) = (layout::author_key(self.group, from), layout::author_key(self.group, to));
        let mut authors = self.sm_iter(&snap, &alo, &ahi);
        authors.seek(&alo);
        while let Some(k) = authors.key() {
            batch.delete_cf(cf, k);
            authors.next();
        }
        authors.status().map_err(rocks_err("compaction author scan"))?;
        let hist_lo = layout::table_prefix(self.group, layout::HISTORY);
        let hist_hi = prefix_end(&hist_lo).expect("table prefix is not all 0xff");
        let mut probe = self.sm_iter(&snap, &hist_lo, &hist_hi);
        // One seek per key: from the latest version at or below `to`, back
        // through the window's versions to the one kept below it (the same
        // rows the rule above names, found without a point read per
        // version; these were 9% of a loaded leader's CPU).
        for key in changed.into_keys() {
            let own = layout::history_key(self.group, &key, 0);
            let own = &own[..own.len() - 8];
            let version_of = |k: &[u8]| {
                (k.len() == own.len() + 8 && k.starts_with(own))
                    .then(|| u64::from_be_bytes(k[k.len() - 8..].try_into().expect("history key ends with 8 bytes")))
            };
            probe.seek_for_prev(layout::history_key(self.group, &key, to));
            let Some(latest) = probe.key().and_then(version_of) else {
                probe.status().map_err(rocks_err("compaction probe"))?;
                continue;
            };
            let value = probe.value().expect("a valid iterator has a value");
            let rec = self.decode_kv(
                &|| {
                    format!(
                        "history of key {:?} at revision {latest}",
                        String::from_utf8_lossy(&key)
                    )
                },
                value,
            )?;
            if rec.value.is_none() {
                batch.delete_cf(cf, layout::history_key(self.group, &key, latest));
            }
            loop {
                probe.prev();
                let Some(rev) = probe.key().and_then(version_of) else {
                    break;
                };
                batch.delete_cf(cf, layout::history_key(self.group, &key, rev));
                if rev < from {
                    // The one version an earlier window kept; older ones
                    // are gone.
                    break;
                }
            }
            probe.status().map_err(rocks_err("compaction probe"))?;
        }
        Ok(())
    }

    fn history_get(
        &self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
        key: &[u8],
        rev: u64,
    ) -> Result<Option<KvRecord>, StorageError> {
        let raw = snap
            .get_cf(self.db.cf(CF_SM), layout::history_key(self.group, key, rev))
            .map_err(rocks_err("history read"))?;
        raw.map(|v| {
            self.decode_kv(
                &|| format!("history of key {:?} at revision {rev}", String::from_utf8_lossy(key)),
                &v,
            )
        })
        .transpose()
    }

    // ------------------------------------------------------------ snapshots

    /// Serializes every row of the group under one RocksDB snapshot.
    pub fn snapshot_rows(&self) -> Result<(SmState, Vec<u8>), StorageError> {
        self.encoded_rows(|_| true)
    }

    /// Writes every row of the group, under one RocksDB snapshot, to a new
    /// fsynced snapshot file (streamed: never in memory whole).
    pub fn build_snapshot_file(&self) -> Result<(SmState, SnapshotFile), StorageError> {
        self.rows_file()
    }

    /// The group's current persisted snapshot.
    pub fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>, StorageError> {
        self.current_snapshot()
    }

    /// Replaces the group's whole state with a snapshot, atomically and
    /// durably, and makes it the current snapshot. Nothing changes unless
    /// the whole file passes its checksum and format checks.
    pub async fn install_snapshot(&self, meta: &SnapshotMeta, file: &SnapshotFile) -> Result<(), StorageError> {
        let mut revision = 0;
        self.install_file(meta, file, |batch, st| {
            revision = st.revision;
            let mut guard = self.state.write().expect("sm state lock");
            self.db.write_buffered(batch)?;
            *guard = st;
            Ok(())
        })
        .await?;
        *self.sessions.lock().expect("sessions lock") = Self::load_sessions(&self.db, self.group)?;
        *self.auth.write().expect("auth lock") = Arc::new(Self::load_auth(&self.db, self.group)?);
        self.reload_audit_cursor()?;
        self.revision_tx.send_replace(revision);
        Ok(())
    }
}

/// What a meta snapshot holds (for `esf snapshot inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotSummary {
    /// Index of the last log entry the snapshot covers.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// Store revision.
    pub revision: u64,
    /// Oldest readable revision.
    pub compact_revision: u64,
    /// Live keys (config keys and registry instances).
    pub keys: u64,
    /// Leases.
    pub leases: u64,
    /// Rows of every table.
    pub rows: u64,
    /// Voters of the snapshot's membership.
    pub voters: Vec<u64>,
}

fn snapshot_corrupt(reason: String) -> StorageError {
    StorageError::Corrupt {
        cf: CF_SNAPSHOT,
        group: 0,
        record: "snapshot file".into(),
        reason,
    }
}

/// Decodes a snapshot blob (checksum, format) and its state row.
fn decode_snapshot(data: &[u8]) -> Result<(crate::snapshot_record::Blob, SmState), StorageError> {
    let at = RecordRef {
        cf: CF_SNAPSHOT,
        group: 0,
        record: &"snapshot file",
    };
    let blob = crate::snapshot_record::decode_blob(0, "snapshot file", data)?;
    let state_suffix = layout::state_key(0)[4..].to_vec();
    let state = blob
        .rows
        .iter()
        .find(|(k, _)| **k == state_suffix)
        .ok_or_else(|| snapshot_corrupt("it has no state record".into()))?;
    let st: SmState = codec::decode(at, &state.1)?;
    if st.last_applied.is_none() {
        return Err(snapshot_corrupt("it is the snapshot of an empty group".into()));
    }
    Ok((blob, st))
}

/// Checks a snapshot blob and says what it holds.
pub fn summarize_snapshot(data: &[u8]) -> Result<SnapshotSummary, StorageError> {
    let (blob, st) = decode_snapshot(data)?;
    let count = |table: u8| blob.rows.iter().filter(|(k, _)| k.first() == Some(&table)).count() as u64;
    let last = st.last_applied.clone().expect("checked by decode_snapshot");
    Ok(SnapshotSummary {
        last_index: last.index,
        last_term: last.leader_id.term,
        revision: st.revision,
        compact_revision: st.compact_revision,
        keys: count(layout::CURRENT),
        leases: count(layout::LEASE),
        rows: blob.rows.len() as u64,
        voters: st.membership.membership().voter_ids().collect(),
    })
}

impl MetaStore {
    /// Makes this empty store the state of a new one-member cluster seeded
    /// from `data`, a snapshot taken from any cluster: the same keys,
    /// revisions, history, leases and sessions; membership `node_id` alone at
    /// `addr`; the record of which members hold data is dropped (it named
    /// the old cluster's nodes). Durable when it returns. The returned meta
    /// is the snapshot's; the caller also purges the log up to its last log
    /// id and stores a vote at least as new.
    pub async fn seed_from_snapshot(
        &self,
        data: &[u8],
        node_id: u64,
        addr: &str,
    ) -> Result<(SnapshotMeta, SnapshotSummary), StorageError> {
        if self.state().last_applied.is_some() {
            return Err(snapshot_corrupt(
                "cannot restore into a store that already has state".into(),
            ));
        }
        let summary = summarize_snapshot(data)?;
        let (mut blob, st) = decode_snapshot(data)?;
        // The old cluster's members: which held data, where partitions
        // were placed (the new cluster plans again over its one member).
        blob.rows
            .retain(|(k, _)| k.first() != Some(&layout::REPLICATED) && k.first() != Some(&layout::PLACEMENT));
        let membership = openraft::Membership::new(
            vec![std::collections::BTreeSet::from([node_id])],
            std::collections::BTreeMap::from([(node_id, openraft::BasicNode { addr: addr.into() })]),
        )
        .expect("one voter that is also a node is a valid membership");
        let meta = SnapshotMeta {
            last_log_id: st.last_applied.clone(),
            last_membership: StoredMembership::new(st.last_applied.clone(), membership),
        };
        let data = crate::snapshot_record::encode_rows(blob.rows)?;
        let file = SnapshotFile::create(&self.db, self.group, &data)?;
        self.install_snapshot(&meta, &file).await?;
        Ok((meta, summary))
    }
}

impl SnapshotSource for MetaStore {
    type State = SmState;
    const STATE_TABLE: u8 = layout::STATE;

    fn snapshot_db(&self) -> &Db {
        &self.db
    }

    fn snapshot_group(&self) -> GroupId {
        self.group
    }

    fn state_lock(&self) -> &RwLock<SmState> {
        &self.state
    }

    fn meta_of(st: &SmState) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: st.last_applied.clone(),
            last_membership: st.membership.clone(),
        }
    }

    fn set_meta(st: &mut SmState, meta: &SnapshotMeta) {
        st.last_applied = meta.last_log_id.clone();
        st.membership = meta.last_membership.clone();
    }
}

impl crate::group::GroupStore for MetaStore {
    fn apply_entry(&self, entry: &Entry) -> Result<Response, StorageError> {
        MetaStore::apply_entry(self, entry)
    }

    fn install_snapshot(
        &self,
        meta: &SnapshotMeta,
        file: &SnapshotFile,
    ) -> impl std::future::Future<Output = Result<(), StorageError>> + Send {
        MetaStore::install_snapshot(self, meta, file)
    }
}

#[cfg(test)]
#[path = "store_upgrade_tests.rs"]
mod upgrade_tests;
