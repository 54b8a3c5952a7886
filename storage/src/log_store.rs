//! openraft log storage for one Raft group in the shared DB.
//!
//! Contract (openraft `RaftLogStorage`, made precise here):
//! - `append` writes the entries in one batch and returns; the `IOFlushed`
//!   callback fires from the group-commit flusher once an fsync covers the
//!   batch, in append order. openraft runs `append` inline in its core task,
//!   so returning before the fsync lets the leader replicate and take new
//!   proposals while its own fsync runs.
//! - `save_vote` is one atomic record, fsynced before it returns. Because
//!   the node has one WAL and an fsync covers every byte written before it,
//!   a durable vote also makes every earlier `append` durable. This is what
//!   keeps openraft #2118 (on `become_leader` the log tail is marked flushed
//!   without waiting for the callbacks) harmless: a node only becomes leader
//!   after its candidate vote, queued after all of its appends, was saved.
//! - `truncate_after` and `purge` are fsynced before they return; `purge`
//!   records the purge point in the same batch that deletes the entries.
//! - `save_committed` is buffered: it becomes durable with the next fsync and
//!   is only a restart hint.
//! - A record that fails its checksum or decode is an `InvalidData` error that
//!   names the column family, group and index.

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::alias::{LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{LogState, OptionalSend, RaftLogReader, RaftTypeConfig};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, RecordRef};
use crate::db::Db;
use crate::error::{Result, StorageError};
use crate::keys::{CF_LOG, CF_RAFT_META, GroupId, MetaKind, log_index, log_key, meta_key};

/// Raft log and vote storage of one group. Cheap to clone.
pub struct LogStore<C> {
    db: Arc<Db>,
    group: GroupId,
    _c: PhantomData<fn() -> C>,
}

/// Reader half handed to openraft's replication tasks. Cheap to clone.
pub type LogReader<C> = LogStore<C>;

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            group: self.group,
            _c: PhantomData,
        }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("group", &self.group).finish()
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    /// The log store of `group` in `db`.
    pub fn new(db: Arc<Db>, group: GroupId) -> Self {
        LogStore {
            db,
            group,
            _c: PhantomData,
        }
    }

    /// The group this store serves.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The shared DB.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    fn get_meta<T: DeserializeOwned>(&self, kind: MetaKind, what: &'static str) -> Result<Option<T>> {
        let raw = self
            .db
            .rocks()
            .get_pinned_cf(self.db.cf(CF_RAFT_META), meta_key(self.group, kind))
            .map_err(|e| StorageError::rocks(format!("read {what} of group {}", self.group), e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => {
                let at = RecordRef {
                    cf: CF_RAFT_META,
                    group: self.group,
                    record: &what,
                };
                codec::decode(at, &bytes).map(Some)
            }
        }
    }

    fn decode_entry(&self, key: &[u8], value: &[u8]) -> Result<(u64, C::Entry)> {
        let index = log_index(self.group, key).ok_or_else(|| StorageError::Corrupt {
            cf: CF_LOG,
            group: self.group,
            record: format!("key {key:02x?}"),
            reason: "not a log key of this group".into(),
        })?;
        let record = format!("log index {index}");
        let entry: C::Entry = codec::decode(
            RecordRef {
                cf: CF_LOG,
                group: self.group,
                record: &record,
            },
            value,
        )?;
        if entry.index() != index {
            return Err(StorageError::Corrupt {
                cf: CF_LOG,
                group: self.group,
                record,
                reason: format!("entry carries index {}", entry.index()),
            });
        }
        Ok((index, entry))
    }

    /// Entries with index in `[start, end)` that exist, in order. The log
    /// is contiguous from its first entry (after the purge point) to its
    /// last; a hole in the middle is reported as corruption.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<C::Entry>> {
        let mut out: Vec<C::Entry> = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let from = log_key(self.group, start);
        let iter = self
            .db
            .rocks()
            .iterator_cf(self.db.cf(CF_LOG), IteratorMode::From(&from, Direction::Forward));
        let mut prev: Option<u64> = None;
        for item in iter {
            let (k, v) = item.map_err(|e| StorageError::rocks(format!("scan log of group {}", self.group), e))?;
            let Some(index) = log_index(self.group, &k) else { break };
            if index >= end {
                break;
            }
            if let Some(p) = prev {
                if index != p + 1 {
                    return Err(StorageError::Corrupt {
                        cf: CF_LOG,
                        group: self.group,
                        record: format!("log index {}", p + 1),
                        reason: format!("missing: the log jumps from index {p} to {index}"),
                    });
                }
            }
            let (_, entry) = self.decode_entry(&k, &v)?;
            out.push(entry);
            prev = Some(index);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<C::Entry>> {
        let mut it = self.db.rocks().raw_iterator_cf(self.db.cf(CF_LOG));
        it.seek_for_prev(log_key(self.group, u64::MAX));
        if it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                if log_index(self.group, k).is_some() {
                    return self.decode_entry(k, v).map(|(_, e)| Some(e));
                }
            }
            return Ok(None);
        }
        it.status()
            .map_err(|e| StorageError::rocks(format!("seek last log of group {}", self.group), e))?;
        Ok(None)
    }

    /// Last purged and last present log ids.
    pub fn log_state(&self) -> Result<LogState<C>> {
        let last_purged: Option<LogIdOf<C>> = self.get_meta(MetaKind::LastPurged, "last purged log id")?;
        let last = match self.last_entry()? {
            Some(e) => Some(e.log_id()),
            None => last_purged.clone(),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    /// The persisted vote.
    pub fn vote(&self) -> Result<Option<VoteOf<C>>> {
        self.get_meta(MetaKind::Vote, "vote")
    }

    /// Appends through [`RaftLogStorage::append`] and waits for its
    /// `IOFlushed` callback: the acknowledgement openraft acts on. Tests and
    /// benchmarks use it to treat an append as done exactly when openraft
    /// would.
    pub async fn append_flushed<I>(&mut self, entries: I) -> io::Result<()>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (tx, rx) = C::oneshot();
        self.append(entries, IOFlushed::signal(tx)).await?;
        rx.await.map_err(|_| io::Error::other("append callback dropped"))?
    }
}

fn range_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<C::Entry>, io::Error> {
        let (start, end) = range_bounds(&range);
        Ok(self.read_range(start, end)?)
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.vote()?)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<C>, io::Error> {
        Ok(self.log_state()?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> std::result::Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.db.cf(CF_RAFT_META),
            meta_key(self.group, MetaKind::Vote),
            codec::encode("vote", vote)?,
        );
        Ok(self.db.write_durable(batch).await?)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> std::result::Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        let key = meta_key(self.group, MetaKind::Committed);
        match committed {
            Some(c) => batch.put_cf(self.db.cf(CF_RAFT_META), key, codec::encode("committed", &c)?),
            None => batch.delete_cf(self.db.cf(CF_RAFT_META), key),
        }
        self.db.write_buffered(batch)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.get_meta(MetaKind::Committed, "committed log id")?)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> std::result::Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(CF_LOG);
        for entry in entries {
            let value = codec::encode("log entry", &entry)?;
            batch.put_cf(cf, log_key(self.group, entry.index()), value);
        }
        // The entries are written (readable by replication) before this
        // returns; the callback fires from the flusher once an fsync covers
        // them, so openraft keeps working during the fsync.
        self.db
            .write_then(batch, move |outcome| {
                callback.io_completed(outcome.map_err(io::Error::other));
            })
            .await?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> std::result::Result<(), io::Error> {
        let start = match &last_log_id {
            Some(id) => id.index() + 1,
            None => 0,
        };
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.db.cf(CF_LOG),
            log_key(self.group, start),
            log_key(self.group, u64::MAX),
        );
        Ok(self.db.write_durable(batch).await?)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> std::result::Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.db.cf(CF_RAFT_META),
            meta_key(self.group, MetaKind::LastPurged),
            codec::encode("last purged log id", &log_id)?,
        );
        batch.delete_range_cf(
            self.db.cf(CF_LOG),
            log_key(self.group, 0),
            log_key(self.group, log_id.index() + 1),
        );
        Ok(self.db.write_durable(batch).await?)
    }
}
