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
//! - The most recently appended entries are also kept decoded in memory
//!   ([`TailCache`]: a contiguous suffix of the log, at most
//!   [`TAIL_CACHE_ENTRIES`] entries and [`TAIL_CACHE_BYTES`] encoded bytes),
//!   so a leader's replication reads what it just appended without a
//!   RocksDB scan and a decode per follower. Truncation and purge drop
//!   cached entries before they touch the DB; a read the cache does not
//!   cover entirely goes to the DB.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

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

/// Most entries a group's [`TailCache`] holds.
pub const TAIL_CACHE_ENTRIES: usize = 4096;
/// Most encoded bytes of entries a group's [`TailCache`] holds (9 groups
/// per node: at most 18 MiB in all).
pub const TAIL_CACHE_BYTES: usize = 2 << 20;

/// The last appended entries of one group, decoded: always a contiguous
/// suffix of the log on disk (or empty).
#[derive(Debug)]
pub struct TailCache<E> {
    /// Index of `entries[0]`.
    first: u64,
    /// Entries with their encoded size.
    entries: VecDeque<(E, usize)>,
    bytes: usize,
}

impl<E: Clone> TailCache<E> {
    fn new() -> Self {
        TailCache {
            first: 0,
            entries: VecDeque::new(),
            bytes: 0,
        }
    }

    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Adds entry `index` (just written to the DB). An index that does not
    /// follow the cached ones starts the cache over at it.
    fn push(&mut self, index: u64, entry: E, size: usize) {
        if self.entries.is_empty() || index != self.end() {
            self.clear();
            self.first = index;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > TAIL_CACHE_ENTRIES || (self.bytes > TAIL_CACHE_BYTES && self.entries.len() > 1) {
            let (_, sz) = self.entries.pop_front().expect("non-empty");
            self.bytes -= sz;
            self.first += 1;
        }
    }

    /// Drops every cached entry after `index` (`None`: all).
    fn truncate_after(&mut self, index: Option<u64>) {
        let keep = match index {
            Some(i) if i >= self.first => (i - self.first + 1).min(self.entries.len() as u64) as usize,
            _ => 0,
        };
        while self.entries.len() > keep {
            let (_, sz) = self.entries.pop_back().expect("non-empty");
            self.bytes -= sz;
        }
    }

    /// Drops every cached entry up to and including `index`.
    fn purge(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            let (_, sz) = self.entries.pop_front().expect("non-empty");
            self.bytes -= sz;
            self.first += 1;
        }
    }

    /// The entries in `[start, end)`, if the cache holds all that the log
    /// has of that range: `start` is cached, and so is everything after it
    /// up to `end` or the log's last entry. (A range starting past the
    /// cache goes to the DB.)
    fn get(&self, start: u64, end: u64) -> Option<Vec<E>> {
        if self.entries.is_empty() || start < self.first || start >= self.end() {
            return None;
        }
        let from = (start - self.first) as usize;
        let to = (end.min(self.end()) - self.first) as usize;
        Some(self.entries.range(from..to).map(|(e, _)| e.clone()).collect())
    }
}

/// Raft log and vote storage of one group. Cheap to clone.
pub struct LogStore<C: RaftTypeConfig> {
    db: Arc<Db>,
    group: GroupId,
    /// Shared by the store and every reader of this group.
    tail: Arc<Mutex<TailCache<C::Entry>>>,
    _c: PhantomData<fn() -> C>,
}

/// Reader half handed to openraft's replication tasks. Cheap to clone.
pub type LogReader<C> = LogStore<C>;

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            group: self.group,
            tail: self.tail.clone(),
            _c: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("group", &self.group).finish()
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    /// The log store of `group` in `db`.
    pub fn new(db: Arc<Db>, group: GroupId) -> Self {
        LogStore {
            db,
            group,
            tail: Arc::new(Mutex::new(TailCache::new())),
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
        if let Some(cached) = self.tail.lock().expect("log tail cache lock").get(start, end) {
            return Ok(cached);
        }
        let from = log_key(self.group, start);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(log_key(self.group, end));
        let iter =
            self.db
                .rocks()
                .iterator_cf_opt(self.db.cf(CF_LOG), opts, IteratorMode::From(&from, Direction::Forward));
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
    C::Entry: Serialize + DeserializeOwned + Clone,
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
    C::Entry: Serialize + DeserializeOwned + Clone,
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
        let mut written = Vec::new();
        for entry in entries {
            let value = codec::encode("log entry", &entry)?;
            batch.put_cf(cf, log_key(self.group, entry.index()), &value);
            written.push((entry, value.len()));
        }
        // The entries are written (readable by replication) before this
        // returns; the callback fires from the flusher once an fsync covers
        // them, so openraft keeps working during the fsync.
        self.db
            .write_then(batch, move |outcome| {
                callback.io_completed(outcome.map_err(io::Error::other));
            })
            .await?;
        // Cached once in the DB and before `append` returns: a read racing
        // the append may miss entries at the end, which openraft allows for
        // entries whose append has not returned.
        let mut tail = self.tail.lock().expect("log tail cache lock");
        for (entry, size) in written {
            tail.push(entry.index(), entry, size);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> std::result::Result<(), io::Error> {
        let start = match &last_log_id {
            Some(id) => id.index() + 1,
            None => 0,
        };
        // The cache lets go first: until the DB write, a read misses it and
        // sees what the DB still has, as without a cache.
        self.tail
            .lock()
            .expect("log tail cache lock")
            .truncate_after(last_log_id.as_ref().map(|id| id.index()));
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.db.cf(CF_LOG),
            log_key(self.group, start),
            log_key(self.group, u64::MAX),
        );
        Ok(self.db.write_durable(batch).await?)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> std::result::Result<(), io::Error> {
        self.tail.lock().expect("log tail cache lock").purge(log_id.index());
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

#[cfg(test)]
mod tests {
    use super::{TAIL_CACHE_BYTES, TAIL_CACHE_ENTRIES, TailCache};

    fn cache(first: u64, n: u64) -> TailCache<u64> {
        let mut c = TailCache::new();
        for i in first..first + n {
            c.push(i, i * 10, 1);
        }
        c
    }

    #[test]
    fn the_tail_cache_answers_only_ranges_it_holds_from_their_start() {
        let c = cache(5, 4); // 5..=8
        assert_eq!(c.get(5, 9), Some(vec![50, 60, 70, 80]));
        assert_eq!(c.get(6, 8), Some(vec![60, 70]));
        // Past the log's end: what the log has.
        assert_eq!(c.get(7, 100), Some(vec![70, 80]));
        // Before the cache, or starting at or past its end: the DB answers.
        assert_eq!(c.get(4, 9), None);
        assert_eq!(c.get(9, 12), None);
        assert_eq!(TailCache::<u64>::new().get(0, 1), None);
    }

    #[test]
    fn truncation_purge_and_a_gap_keep_it_a_suffix_of_the_log() {
        let mut c = cache(5, 4);
        c.truncate_after(Some(6));
        assert_eq!((c.get(5, 100), c.get(7, 8)), (Some(vec![50, 60]), None));
        c.push(7, 700, 1); // a new entry 7 after the conflict
        assert_eq!(c.get(5, 100), Some(vec![50, 60, 700]));
        c.purge(5);
        assert_eq!((c.get(5, 6), c.get(6, 100)), (None, Some(vec![60, 700])));
        c.truncate_after(Some(2)); // below the cache: nothing kept
        assert_eq!(c.get(6, 7), None);
        c.truncate_after(None);
        let mut c = cache(5, 2);
        c.push(9, 90, 1); // not after 6: starts over at 9
        assert_eq!((c.get(5, 7), c.get(9, 10)), (None, Some(vec![90])));
        c.purge(100);
        assert_eq!(c.get(9, 10), None);
    }

    #[test]
    fn it_holds_at_most_its_entry_and_byte_bounds() {
        let c = cache(0, TAIL_CACHE_ENTRIES as u64 + 10);
        assert_eq!(c.entries.len(), TAIL_CACHE_ENTRIES);
        assert_eq!(c.get(9, 11), None);
        assert_eq!(c.get(10, 11), Some(vec![100]));
        let mut c = TailCache::new();
        for i in 0..5u64 {
            c.push(i, i, TAIL_CACHE_BYTES / 2);
        }
        // Two halves fit; the oldest went.
        assert_eq!((c.entries.len(), c.bytes, c.first), (2, TAIL_CACHE_BYTES, 3));
        // One entry larger than the bound is kept alone.
        c.push(5, 5, TAIL_CACHE_BYTES * 3);
        assert_eq!((c.entries.len(), c.get(5, 6)), (1, Some(vec![5])));
    }
}
