//! What every group's state machine does the same way with snapshots.
//!
//! A snapshot is a file in the DB's snapshot directory holding every `sm`
//! row of the group, read under one RocksDB snapshot, in the blob format
//! ([`Blob`]'s checksummed bincode, the format `esf snapshot save` writes).
//! Files are written and read as streams, so no snapshot is ever held in
//! memory whole: a partition's can be hundreds of MiB. The `snapshot`
//! column family names each group's current file and its meta; the file is
//! fsynced (and renamed into place) before that record is written, and the
//! record durably before openraft learns of the snapshot, so openraft purges
//! logs only below a durable snapshot.
//!
//! Blob layout (bincode 1, fixed-width little-endian integers):
//! `crc32(payload) u32 ++ payload`, payload = `format u32 ++ rows u64 ++`
//! per row `key_len u64 ++ key ++ value_len u64 ++ value`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use esf_storage::codec::{self, RecordRef};
use esf_storage::keys::{CF_SM, CF_SNAPSHOT, GroupId, group_prefix, prefix_end};
use esf_storage::rocksdb::{self, ReadOptions, WriteBatch};
use esf_storage::{Db, StorageError};
use serde_bytes::ByteBuf;

use crate::types::SnapshotMeta;

/// Format number of the snapshot blobs this build writes. Format 2 (data
/// format 3) may hold meta `CHANGES` rows that name what each change
/// replaced, which a build of format 1 cannot read: it refuses such a
/// snapshot by its number instead of failing later on a row.
pub(crate) const FORMAT: u32 = 2;
/// Oldest snapshot format this build reads (format 1 rows are read as
/// they are: see `meta::layout::Changes::decode`).
pub(crate) const OLDEST_FORMAT: u32 = 1;
/// Why a snapshot of `format` cannot be read by this build, if it cannot.
fn unreadable_format(format: u32) -> Option<String> {
    (!(OLDEST_FORMAT..=FORMAT).contains(&format))
        .then(|| format!("snapshot format {format} is not one this build reads ({OLDEST_FORMAT} to {FORMAT})"))
}
/// Bytes before the first row: checksum, format, row count.
const HEADER_BYTES: u64 = 4 + 4 + 8;
/// Buffer of snapshot file reads and writes.
const IO_BUFFER_BYTES: usize = 1 << 20;

/// Serializes changes of which file is a group's current snapshot (builds
/// finishing, installs, upgrades of old records), so a slower build can
/// never replace a newer snapshot. Held only around the record change.
static RECORD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Snapshot files this process has checked end to end (or written): the
/// first [`SnapshotSource::current_snapshot`] after start reads the file
/// once to verify its checksum; later ones trust it.
static VERIFIED: std::sync::Mutex<Option<std::collections::HashSet<PathBuf>>> = std::sync::Mutex::new(None);

fn is_verified(path: &Path) -> bool {
    VERIFIED
        .lock()
        .expect("verified set")
        .as_ref()
        .is_some_and(|s| s.contains(path))
}

fn mark_verified(path: &Path) {
    VERIFIED
        .lock()
        .expect("verified set")
        .get_or_insert_with(Default::default)
        .insert(path.to_path_buf());
}

/// Suffix given to a damaged snapshot file set aside (kept for inspection;
/// never read again, never swept).
pub const DAMAGED_SUFFIX: &str = ".damaged";

/// Reads all of `file` (a snapshot of `group`) and checks its format, row
/// framing and checksum without keeping any row: `Ok(rows)` or
/// [`StorageError::Corrupt`] naming what is wrong. A receiver checks a
/// transferred snapshot with it before installing it.
pub fn verify(file: &SnapshotFile, group: GroupId) -> Result<u64, StorageError> {
    let what = format!("snapshot file {}", file.path().display());
    for_each_row(file, group, &what, |_, _| Ok(()))
}

/// Makes file names unique within a process (with the time, across runs).
static NAME_SEQ: AtomicU64 = AtomicU64::new(0);

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", NAME_SEQ.fetch_add(1, Ordering::Relaxed))
}

fn io_err(what: impl std::fmt::Display, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let context = format!("{what} {}", path.display());
    move |e| StorageError::io(context, e)
}

/// A snapshot's bytes in an open file. The file stays readable through
/// this handle even after a newer snapshot replaced (and unlinked) it.
pub struct SnapshotFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl SnapshotFile {
    /// Opens the snapshot file at `path` for reading.
    pub fn open(path: &Path) -> io::Result<SnapshotFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Writes `data` (a whole blob, e.g. received or restored) to a new
    /// temporary file in `db`'s snapshot directory for `group`, fsynced.
    pub fn create(db: &Db, group: GroupId, data: &[u8]) -> Result<SnapshotFile, StorageError> {
        let mut w = IncomingSnapshot::create(db, group)?;
        w.write(data)?;
        w.finish()
    }

    /// Where the file was when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file (never a valid snapshot).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` from `pos` (any number of readers at once); an error if
    /// the file ends first.
    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }

    /// A buffered reader from the start of the file.
    fn reader(&self) -> BufReader<At<'_>> {
        BufReader::with_capacity(IO_BUFFER_BYTES, At { file: self, pos: 0 })
    }

    /// The whole file in memory (tests and the restore tooling only).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len as usize);
        self.reader().read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Sequential reads of a [`SnapshotFile`] through positioned reads.
struct At<'a> {
    file: &'a SnapshotFile,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A snapshot arriving in pieces (from the leader): a temporary file in the
/// snapshot directory, removed unless [`IncomingSnapshot::finish`] succeeds.
pub struct IncomingSnapshot {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    finished: bool,
}

impl IncomingSnapshot {
    /// A new empty temporary file for a snapshot of `group`.
    pub fn create(db: &Db, group: GroupId) -> Result<IncomingSnapshot, StorageError> {
        Self::create_as(db, group, "in")
    }

    /// A new empty temporary file named for `group` and `kind`.
    fn create_as(db: &Db, group: GroupId, kind: &str) -> Result<IncomingSnapshot, StorageError> {
        let path = db.snapshot_dir().join(format!("g{group}-{kind}-{}.tmp", unique()));
        let file = File::create(&path).map_err(io_err("create", &path))?;
        Ok(IncomingSnapshot {
            path,
            out: Some(BufWriter::with_capacity(IO_BUFFER_BYTES, file)),
            finished: false,
        })
    }

    /// Appends `data`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let out = self.out.as_mut().expect("written only before finish");
        out.write_all(data).map_err(io_err("write", &self.path))
    }

    /// Flushes and fsyncs the file and opens it for reading.
    pub fn finish(self) -> Result<SnapshotFile, StorageError> {
        self.finish_with(|_| Ok(()))
    }

    /// [`IncomingSnapshot::finish`], calling `last` on the flushed file
    /// before the fsync (to patch in a header).
    fn finish_with(mut self, last: impl FnOnce(&mut File) -> io::Result<()>) -> Result<SnapshotFile, StorageError> {
        let out = self.out.take().expect("finished once");
        let mut file = out
            .into_inner()
            .map_err(|e| io_err("write", &self.path)(e.into_error()))?;
        last(&mut file).map_err(io_err("write", &self.path))?;
        file.sync_data().map_err(io_err("fsync", &self.path))?;
        drop(file);
        let snap = SnapshotFile::open(&self.path).map_err(io_err("open", &self.path))?;
        self.finished = true;
        Ok(snap)
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes rows as a blob, streaming: the header is patched in at the end,
/// its checksum combined from the header's and the rows'. The file is
/// removed unless [`BlobWriter::finish`] succeeds.
struct BlobWriter {
    out: IncomingSnapshot,
    rows_crc: crc32fast::Hasher,
    rows: u64,
}

impl BlobWriter {
    fn create(db: &Db, group: GroupId) -> Result<BlobWriter, StorageError> {
        let mut out = IncomingSnapshot::create_as(db, group, "build")?;
        out.write(&[0; HEADER_BYTES as usize])?;
        Ok(BlobWriter {
            out,
            rows_crc: crc32fast::Hasher::new(),
            rows: 0,
        })
    }

    fn push(&mut self, k: &[u8], v: &[u8]) -> Result<(), StorageError> {
        for part in [
            &(k.len() as u64).to_le_bytes()[..],
            k,
            &(v.len() as u64).to_le_bytes()[..],
            v,
        ] {
            self.rows_crc.update(part);
            self.out.write(part)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Writes the header, fsyncs, and opens the file for reading.
    fn finish(self) -> Result<SnapshotFile, StorageError> {
        let mut head = Vec::with_capacity(HEADER_BYTES as usize);
        head.extend_from_slice(&FORMAT.to_le_bytes());
        head.extend_from_slice(&self.rows.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&self.rows_crc);
        head.splice(0..0, crc.finalize().to_le_bytes());
        self.out.finish_with(|file| {
            file.rewind()?;
            file.write_all(&head)
        })
    }
}

/// Reads a blob's rows as a stream, checking the checksum at the end.
struct BlobReader<'a> {
    r: BufReader<At<'a>>,
    len: u64,
    left: u64,
    stored_crc: u32,
    crc: crc32fast::Hasher,
    group: GroupId,
    what: &'a str,
}

impl<'a> BlobReader<'a> {
    fn open(file: &'a SnapshotFile, group: GroupId, what: &'a str) -> Result<BlobReader<'a>, StorageError> {
        let mut r = BlobReader {
            r: file.reader(),
            len: file.len(),
            left: 0,
            stored_crc: 0,
            crc: crc32fast::Hasher::new(),
            group,
            what,
        };
        if file.len() < HEADER_BYTES {
            return Err(r.corrupt(format!(
                "{} bytes, shorter than the {HEADER_BYTES}-byte header",
                file.len()
            )));
        }
        let mut head = [0u8; HEADER_BYTES as usize];
        r.r.read_exact(&mut head).map_err(|e| r.read_err(e))?;
        r.stored_crc = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        r.crc.update(&head[4..]);
        let format = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        if let Some(reason) = unreadable_format(format) {
            return Err(r.corrupt(reason));
        }
        r.left = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        Ok(r)
    }

    fn corrupt(&self, reason: String) -> StorageError {
        StorageError::Corrupt {
            cf: CF_SNAPSHOT,
            group: self.group,
            record: self.what.to_string(),
            reason,
        }
    }

    fn read_err(&self, e: io::Error) -> StorageError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.corrupt("the file ends inside a row".into())
        } else {
            StorageError::io(format!("read {}", self.what), e)
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StorageError> {
        let mut n = [0u8; 8];
        self.r.read_exact(&mut n).map_err(|e| self.read_err(e))?;
        let n = u64::from_le_bytes(n);
        if n > self.len {
            return Err(self.corrupt(format!("a {n}-byte field in a {}-byte file", self.len)));
        }
        let mut out = vec![0u8; n as usize];
        self.r.read_exact(&mut out).map_err(|e| self.read_err(e))?;
        self.crc.update(&(n).to_le_bytes());
        self.crc.update(&out);
        Ok(out)
    }

    /// The next row; `None` after the last, once the checksum matched.
    fn next_row(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>, StorageError> {
        if self.left == 0 {
            let mut extra = [0u8; 1];
            if self.r.read(&mut extra).map_err(|e| self.read_err(e))? != 0 {
                return Err(self.corrupt("bytes after the last row".into()));
            }
            let actual = std::mem::take(&mut self.crc).finalize();
            if actual != self.stored_crc {
                return Err(self.corrupt(format!(
                    "checksum mismatch: stored {:#010x}, computed {actual:#010x}",
                    self.stored_crc
                )));
            }
            return Ok(None);
        }
        let k = self.bytes()?;
        let v = self.bytes()?;
        self.left -= 1;
        Ok(Some((k, v)))
    }
}

/// Reads every row of `file` (a snapshot of `group`; `what` names it in
/// errors) in order, checking format and checksum. `on_row` may have seen
/// rows of a file that then fails its checksum: it must only collect them
/// (as into a batch written once this returns `Ok`).
pub(crate) fn for_each_row(
    file: &SnapshotFile,
    group: GroupId,
    what: &str,
    mut on_row: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let mut r = BlobReader::open(file, group, what)?;
    let mut rows = 0;
    while let Some((k, v)) = r.next_row()? {
        on_row(k, v)?;
        rows += 1;
    }
    Ok(rows)
}

/// The key range `[lo, hi)` of every row of `group`.
pub(crate) fn group_bounds(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let lo = group_prefix(group).to_vec();
    let hi = prefix_end(&lo).unwrap_or_else(|| vec![0xff; 5]);
    (lo, hi)
}

/// Visits every `sm` row of `group` as seen by `snap`, without the group
/// prefix.
fn scan_rows(
    db: &Db,
    snap: &RocksSnapshot<'_>,
    group: GroupId,
    mut on_row: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let (lo, hi) = group_bounds(group);
    let mut ro = ReadOptions::default();
    ro.set_snapshot(snap);
    ro.set_iterate_lower_bound(lo.clone());
    ro.set_iterate_upper_bound(hi);
    // A snapshot scan reads everything once: keep it out of the block cache.
    ro.fill_cache(false);
    let mut it = db.rocks().raw_iterator_cf_opt(db.cf(CF_SM), ro);
    it.seek(&lo);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        on_row(&k[4..], v)?;
        it.next();
    }
    it.status().map_err(|e| StorageError::Rocks {
        context: format!("snapshot scan of group {group}"),
        source: e,
    })
}

/// Every `sm` row of `group` as seen by `snap`, without the group prefix,
/// in memory (backups and replica comparison).
fn dump_rows(db: &Db, snap: &RocksSnapshot<'_>, group: GroupId) -> Result<Vec<(ByteBuf, ByteBuf)>, StorageError> {
    let mut rows = Vec::new();
    scan_rows(db, snap, group, |k, v| {
        rows.push((ByteBuf::from(k), ByteBuf::from(v)));
        Ok(())
    })?;
    Ok(rows)
}

/// Writes every `sm` row of `group` as seen by `snap` to a new fsynced
/// snapshot file (temporary until [`save`] or an install places it).
fn write_rows(db: &Db, snap: &RocksSnapshot<'_>, group: GroupId) -> Result<SnapshotFile, StorageError> {
    let mut w = BlobWriter::create(db, group)?;
    scan_rows(db, snap, group, |k, v| w.push(k, v))?;
    w.finish()
}

/// Key of `group`'s current-snapshot record (its meta and file name).
fn record_key(group: GroupId) -> Vec<u8> {
    let mut k = group_prefix(group).to_vec();
    k.extend_from_slice(b"/file");
    k
}

/// `group`'s current snapshot: its meta, file name (in the snapshot
/// directory) and size.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    meta: SnapshotMeta,
    file: String,
    len: u64,
}

fn read_record(db: &Db, group: GroupId) -> Result<Option<Record>, StorageError> {
    let raw = db
        .rocks()
        .get_pinned_cf(db.cf(CF_SNAPSHOT), record_key(group))
        .map_err(|e| StorageError::Rocks {
            context: "read snapshot record".into(),
            source: e,
        })?;
    raw.map(|v| {
        codec::decode(
            RecordRef {
                cf: CF_SNAPSHOT,
                group,
                record: &"snapshot record",
            },
            &v,
        )
    })
    .transpose()
}

/// The last log index and the size of `group`'s current snapshot.
pub(crate) fn current_size(db: &Db, group: GroupId) -> Result<Option<(u64, u64)>, StorageError> {
    Ok(read_record(db, group)?.map(|r| (r.meta.last_log_id.as_ref().map_or(0, |l| l.index), r.len)))
}

/// When openraft's policy (every `interval` log entries) asks for a
/// snapshot: building one costs its size, so a group whose last snapshot
/// took `n` whole or partial steps of `step_bytes` waits `n * interval`
/// entries since it. The cost per entry stays bounded however large the
/// state grows, and the log kept between snapshots stays proportional to
/// the state. `interval` or `step_bytes` 0: every time asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pacing {
    /// openraft's `LogsSinceLast` threshold.
    pub interval: u64,
    /// Snapshot bytes that each add `interval` entries to the wait.
    pub step_bytes: u64,
}

impl Pacing {
    /// The pacing for openraft config `raft` and `step_bytes`.
    pub fn new(raft: &openraft::Config, step_bytes: u64) -> Pacing {
        let interval = match raft.snapshot_policy {
            openraft::SnapshotPolicy::LogsSinceLast(n) => n,
            openraft::SnapshotPolicy::Never => 0,
        };
        Pacing { interval, step_bytes }
    }

    /// Whether a snapshot is due at `applied_index` after the current one
    /// (`last`: its last log index and size; `None`: there is none).
    pub fn due(&self, last: Option<(u64, u64)>, applied_index: u64) -> bool {
        let Some((index, bytes)) = last else { return true };
        if self.interval == 0 || self.step_bytes == 0 {
            return true;
        }
        let steps = bytes.div_ceil(self.step_bytes).max(1);
        applied_index.saturating_sub(index) >= self.interval.saturating_mul(steps)
    }
}

/// A RocksDB snapshot of the node's DB.
pub(crate) type RocksSnapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>;

/// What a group's store gives the snapshot code both state machines share,
/// and what that code does the same way for every group (the provided
/// methods).
///
/// Contract: the store's scalar state is one row, `STATE_TABLE` of the
/// group's `sm` range, and apply writes each batch and publishes the state
/// it produced under [`SnapshotSource::state_lock`] held for writing. So
/// rows read under a RocksDB snapshot taken while that lock is held shared
/// are exactly the rows of the state read with it.
pub(crate) trait SnapshotSource: Send + Sync + 'static {
    /// The group's replicated scalar state.
    type State: Clone + Default + serde::Serialize + serde::de::DeserializeOwned + Send + Sync;
    /// Table byte of the state row (its key is the group prefix and this).
    const STATE_TABLE: u8;

    /// The node's DB.
    fn snapshot_db(&self) -> &Db;
    /// The group.
    fn snapshot_group(&self) -> GroupId;
    /// The state, as apply publishes it (see the trait's contract).
    fn state_lock(&self) -> &RwLock<Self::State>;
    /// The last applied log id and membership of `state`, as a snapshot's
    /// meta.
    fn meta_of(state: &Self::State) -> SnapshotMeta;
    /// Sets `state`'s last applied log id and membership to `meta`'s.
    fn set_meta(state: &mut Self::State, meta: &SnapshotMeta);

    /// The meta of the applied state.
    fn applied_meta(&self) -> SnapshotMeta {
        Self::meta_of(&self.state_lock().read().expect("group state lock"))
    }

    /// Index of the last applied log entry (0: none).
    fn applied_index(&self) -> u64 {
        self.applied_meta().last_log_id.map_or(0, |l| l.index)
    }

    /// The state and what `read` reads under one RocksDB snapshot of
    /// exactly that state.
    fn read_at_state<T>(
        &self,
        read: impl FnOnce(&Db, &RocksSnapshot<'_>, GroupId) -> Result<T, StorageError>,
    ) -> Result<(Self::State, T), StorageError> {
        let db = self.snapshot_db();
        let guard = self.state_lock().read().expect("group state lock");
        let snap = db.rocks().snapshot();
        let st = guard.clone();
        drop(guard);
        let out = read(db, &snap, self.snapshot_group())?;
        Ok((st, out))
    }

    /// The state and the encoded blob of the rows whose key (without the
    /// group prefix) `keep` accepts, under one RocksDB snapshot, in memory
    /// (backups and replica comparison).
    fn encoded_rows(&self, keep: impl Fn(&[u8]) -> bool) -> Result<(Self::State, Vec<u8>), StorageError> {
        let (st, mut rows) = self.read_at_state(dump_rows)?;
        rows.retain(|(k, _)| keep(k));
        Ok((st, encode_rows(rows)?))
    }

    /// Writes every row, under one RocksDB snapshot, to a new fsynced
    /// snapshot file (streamed: never in memory whole); with the state of
    /// those rows.
    fn rows_file(&self) -> Result<(Self::State, SnapshotFile), StorageError> {
        self.read_at_state(write_rows)
    }

    /// [`SnapshotSource::rows_file`] with the meta of the state it was read
    /// at.
    fn write_snapshot(&self) -> Result<(SnapshotMeta, SnapshotFile), StorageError> {
        let (st, file) = self.rows_file()?;
        Ok((Self::meta_of(&st), file))
    }

    /// The group's current persisted snapshot. The first call after start
    /// (openraft makes it while opening the group) verifies the file end to
    /// end; a damaged one is set aside ([`DAMAGED_SUFFIX`]) and its record
    /// removed, and this answers `None`: openraft then builds a new
    /// snapshot from the node's state (it does at open when logs were
    /// purged; otherwise its policy builds one later). The state itself
    /// lives in RocksDB, not in the file, so nothing is lost.
    fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, SnapshotFile)>, StorageError> {
        let (db, group) = (self.snapshot_db(), self.snapshot_group());
        let Some((meta, file)) = load(db, group)? else {
            return Ok(None);
        };
        if is_verified(file.path()) {
            return Ok(Some((meta, file)));
        }
        match verify(&file, group) {
            Ok(_) => {
                mark_verified(file.path());
                Ok(Some((meta, file)))
            }
            Err(e) if e.is_corruption() => {
                let aside = set_aside_damaged(db, group, file.path())?;
                tracing::error!(
                    group,
                    file = %aside.display(),
                    error = %e,
                    "snapshot file is damaged: set aside; a new snapshot is built from this node's state"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the group's rows with those of `file` and makes it the
    /// current snapshot, atomically and durably. Nothing changes unless the
    /// whole file passes its checksum and format checks. The new state is
    /// the file's state row (the default if it has none) with `meta`'s last
    /// applied log id and membership: the meta is authoritative for what the
    /// snapshot covers. `publish` gets the complete batch and that state; it
    /// writes the batch (buffered) and publishes the state under
    /// [`SnapshotSource::state_lock`] and whatever other locks the store's
    /// apply takes. Returns once the batch is fsynced and the previous
    /// snapshot file removed.
    fn install_file(
        &self,
        meta: &SnapshotMeta,
        file: &SnapshotFile,
        publish: impl FnOnce(WriteBatch, Self::State) -> Result<(), StorageError> + Send,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        async move {
            let db = self.snapshot_db();
            let group = self.snapshot_group();
            let mut batch = WriteBatch::default();
            let mut st = None;
            replace_rows_from(&mut batch, db, group, file, |k, v| {
                if k == [Self::STATE_TABLE] {
                    let at = RecordRef {
                        cf: CF_SNAPSHOT,
                        group,
                        record: &"snapshot state",
                    };
                    st = Some(codec::decode::<Self::State>(at, v)?);
                }
                Ok(())
            })?;
            let mut st = st.unwrap_or_default();
            Self::set_meta(&mut st, meta);
            let mut state_key = group_prefix(group).to_vec();
            state_key.push(Self::STATE_TABLE);
            batch.put_cf(db.cf(CF_SM), state_key, codec::encode("group state", &st)?);
            // The batch is complete, so the file passed its checksum: make it
            // the current snapshot in the same batch.
            let _lock = record_lock().await;
            let previous = current_file(db, group)?;
            let placed = place(db, group, meta, file)?;
            put_record(&mut batch, db, group, meta, &placed)?;
            publish(batch, st)?;
            db.sync().await?;
            retire(db, previous, &placed);
            Ok(())
        }
    }
}

/// Builds `store`'s snapshot and makes it current ([`save`]), on a blocking
/// thread: seconds of file writing and fsyncs for a large group.
pub(crate) async fn build<S: SnapshotSource>(store: Arc<S>) -> io::Result<(SnapshotMeta, SnapshotFile)> {
    let built = tokio::task::spawn_blocking(move || {
        let (meta, file) = store.write_snapshot()?;
        let file = save(store.snapshot_db(), store.snapshot_group(), &meta, file)?;
        Ok::<_, StorageError>((meta, file))
    })
    .await
    .map_err(io::Error::other)?;
    Ok(built?)
}

/// Whether a snapshot openraft's policy asks for (not a forced one) is
/// due now under `pacing`. An unreadable record builds one.
pub(crate) fn policy_due<S: SnapshotSource>(store: &S, pacing: &Pacing) -> bool {
    match current_size(store.snapshot_db(), store.snapshot_group()) {
        Ok(last) => pacing.due(last, store.applied_index()),
        Err(_) => true,
    }
}

/// Snapshot records of releases that kept the whole blob in RocksDB, under
/// the bare group prefix: `(meta, blob)`.
fn upgrade_old_record(db: &Db, group: GroupId) -> Result<bool, StorageError> {
    let raw = db
        .rocks()
        .get_pinned_cf(db.cf(CF_SNAPSHOT), group_prefix(group))
        .map_err(|e| StorageError::Rocks {
            context: "read snapshot".into(),
            source: e,
        })?;
    let Some(raw) = raw else { return Ok(false) };
    let (meta, data): (SnapshotMeta, Vec<u8>) = codec::decode(
        RecordRef {
            cf: CF_SNAPSHOT,
            group,
            record: &"snapshot",
        },
        &raw,
    )?;
    drop(raw);
    let file = SnapshotFile::create(db, group, &data)?;
    let placed = place(db, group, &meta, &file)?;
    let mut batch = WriteBatch::default();
    put_record(&mut batch, db, group, &meta, &placed)?;
    db.write_durable_blocking(batch)?;
    tracing::info!(group, file = %placed.path().display(), "snapshot moved from RocksDB to its own file");
    Ok(true)
}

/// `group`'s current persisted snapshot, opened.
pub(crate) fn load(db: &Db, group: GroupId) -> Result<Option<(SnapshotMeta, SnapshotFile)>, StorageError> {
    // A build or install may replace the file between reading the record
    // and opening it: read the record again then.
    let mut missing = PathBuf::new();
    for _ in 0..8 {
        let Some(rec) = read_record(db, group)? else {
            if upgrade_old_record(db, group)? {
                continue;
            }
            return Ok(None);
        };
        let path = db.snapshot_dir().join(&rec.file);
        match SnapshotFile::open(&path) {
            Ok(f) => return Ok(Some((rec.meta, f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = path,
            Err(e) => return Err(StorageError::io(format!("open {}", path.display()), e)),
        }
    }
    Err(StorageError::Corrupt {
        cf: CF_SNAPSHOT,
        group,
        record: "snapshot record".into(),
        reason: format!("the file it names, {}, does not exist", missing.display()),
    })
}

/// Makes `file` a placed snapshot of `group` for `meta`: its own fsynced
/// file in the snapshot directory under a final name (a temporary file of
/// this directory is renamed; any other file, e.g. another store's in
/// tests, is copied). Not yet current: see [`put_record`].
pub(crate) fn place(
    db: &Db,
    group: GroupId,
    meta: &SnapshotMeta,
    file: &SnapshotFile,
) -> Result<SnapshotFile, StorageError> {
    let dir = db.snapshot_dir();
    let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
    let path = dir.join(format!("g{group}-{index}-{}.snap", unique()));
    let own_temp = file.path().parent() == Some(dir.as_path())
        && file.path().extension().is_some_and(|e| e == "tmp")
        && file.path().exists();
    if own_temp {
        std::fs::rename(file.path(), &path).map_err(io_err("rename into place", file.path()))?;
    } else {
        let mut w = IncomingSnapshot::create(db, group)?;
        let mut r = file.reader();
        let mut buf = vec![0u8; IO_BUFFER_BYTES];
        loop {
            let n = r.read(&mut buf).map_err(io_err("read", file.path()))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n])?;
        }
        let copy = w.finish()?;
        std::fs::rename(copy.path(), &path).map_err(io_err("rename into place", copy.path()))?;
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", &dir))?;
    // Placed files were written here from the state, or passed their
    // checksum while being installed.
    mark_verified(&path);
    SnapshotFile::open(&path).map_err(io_err("open", &path))
}

/// Renames `group`'s damaged current snapshot file at `path` aside and
/// removes its record, durably (unless another snapshot replaced it
/// meanwhile). Returns the new path.
fn set_aside_damaged(db: &Db, group: GroupId, path: &Path) -> Result<PathBuf, StorageError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(DAMAGED_SUFFIX);
    let aside = PathBuf::from(aside);
    let name = path.file_name().and_then(|n| n.to_str());
    if read_record(db, group)?.is_some_and(|r| Some(r.file.as_str()) == name) {
        let mut batch = WriteBatch::default();
        batch.delete_cf(db.cf(CF_SNAPSHOT), record_key(group));
        db.write_durable_blocking(batch)?;
    }
    std::fs::rename(path, &aside).map_err(io_err("set aside", path))?;
    Ok(aside)
}

/// Adds to `batch`: `placed` (from [`place`]) is `group`'s current snapshot.
pub(crate) fn put_record(
    batch: &mut WriteBatch,
    db: &Db,
    group: GroupId,
    meta: &SnapshotMeta,
    placed: &SnapshotFile,
) -> Result<(), StorageError> {
    let name = placed
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("placed snapshot files have UTF-8 names")
        .to_string();
    let rec = Record {
        meta: meta.clone(),
        file: name,
        len: placed.len(),
    };
    batch.put_cf(
        db.cf(CF_SNAPSHOT),
        record_key(group),
        codec::encode("snapshot record", &rec)?,
    );
    // The record of releases that kept the blob in RocksDB.
    batch.delete_cf(db.cf(CF_SNAPSHOT), group_prefix(group));
    Ok(())
}

/// Held while a group's current snapshot changes.
pub(crate) async fn record_lock() -> tokio::sync::MutexGuard<'static, ()> {
    RECORD_LOCK.lock().await
}

/// Persists a built snapshot as `group`'s current one (fsynced), unless a
/// newer one already is (a snapshot installed while this one was built).
/// Returns the snapshot's file, placed. Blocking (file and directory
/// fsyncs): call it off the async workers, as the build.
pub(crate) fn save(
    db: &Db,
    group: GroupId,
    meta: &SnapshotMeta,
    file: SnapshotFile,
) -> Result<SnapshotFile, StorageError> {
    let _lock = RECORD_LOCK.blocking_lock();
    let previous = read_record(db, group)?;
    if previous
        .as_ref()
        .is_some_and(|p| p.meta.last_log_id >= meta.last_log_id)
    {
        // Still readable through the handle once unlinked.
        let _ = std::fs::remove_file(file.path());
        return Ok(file);
    }
    let placed = place(db, group, meta, &file)?;
    let mut batch = WriteBatch::default();
    put_record(&mut batch, db, group, meta, &placed)?;
    db.write_durable_blocking(batch)?;
    retire(db, previous.map(|p| p.file), &placed);
    Ok(placed)
}

/// The file name of `group`'s current snapshot, if any (to retire it once
/// replaced).
pub(crate) fn current_file(db: &Db, group: GroupId) -> Result<Option<String>, StorageError> {
    Ok(read_record(db, group)?.map(|r| r.file))
}

/// Removes the file of a snapshot that is no longer current (readers that
/// have it open keep reading it).
pub(crate) fn retire(db: &Db, previous: Option<String>, current: &SnapshotFile) {
    if let Some(name) = previous {
        let path = db.snapshot_dir().join(name);
        if path != current.path() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a replaced snapshot file");
            }
        }
    }
}

/// Removes `group`'s snapshot files other than its current one: left by a
/// crash during a build, a transfer or an install. Called at open.
pub(crate) fn sweep(db: &Db, group: GroupId) -> Result<(), StorageError> {
    let current = match read_record(db, group)? {
        Some(r) => Some(r.file),
        None => None,
    };
    let dir = db.snapshot_dir();
    let prefix = format!("g{group}-");
    let entries = std::fs::read_dir(&dir).map_err(io_err("list", &dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", &dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(&prefix) && current.as_deref() != Some(name) && !name.ends_with(DAMAGED_SUFFIX) {
            std::fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
        }
    }
    Ok(())
}

/// A group's snapshot: every `sm` row without the 4-byte group prefix (so
/// it can be installed into another group id, e.g. by a restore). Byte
/// strings as `ByteBuf`: the same bincode encoding as `Vec<u8>`, written in
/// one copy instead of byte by byte.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Blob {
    pub(crate) format: u32,
    pub(crate) rows: Vec<(ByteBuf, ByteBuf)>,
}

/// The checksummed encoding of `rows`.
pub(crate) fn encode_rows(rows: Vec<(ByteBuf, ByteBuf)>) -> Result<Vec<u8>, StorageError> {
    codec::encode("snapshot", &Blob { format: FORMAT, rows })
}

/// Decodes a blob of `group` (checksum and format); `what` names it in
/// errors.
pub(crate) fn decode_blob(group: GroupId, what: &str, data: &[u8]) -> Result<Blob, StorageError> {
    let blob: Blob = codec::decode(
        RecordRef {
            cf: CF_SNAPSHOT,
            group,
            record: &what,
        },
        data,
    )?;
    if let Some(reason) = unreadable_format(blob.format) {
        return Err(StorageError::Corrupt {
            cf: CF_SNAPSHOT,
            group,
            record: what.to_string(),
            reason,
        });
    }
    Ok(blob)
}

/// Adds to `batch`: delete every row of `group`, then write the rows of
/// `file`, passing each to `on_row` first. An error (a damaged file) leaves
/// a partial batch the caller must drop. Returns the number of rows.
pub(crate) fn replace_rows_from(
    batch: &mut WriteBatch,
    db: &Db,
    group: GroupId,
    file: &SnapshotFile,
    mut on_row: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
) -> Result<u64, StorageError> {
    let cf = db.cf(CF_SM);
    let (lo, hi) = group_bounds(group);
    batch.delete_range_cf(cf, &lo, &hi);
    for_each_row(file, group, "snapshot", |k, v| {
        on_row(&k, &v)?;
        let mut full = lo.clone();
        full.extend_from_slice(&k);
        batch.put_cf(cf, full, v);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use esf_storage::StorageConfig;

    fn rows(n: usize) -> Vec<(ByteBuf, ByteBuf)> {
        (0..n)
            .map(|i| {
                (
                    ByteBuf::from(format!("key-{i:05}").into_bytes()),
                    ByteBuf::from(vec![i as u8; i % 300]),
                )
            })
            .collect()
    }

    #[test]
    fn streamed_file_is_the_blob_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        for n in [0, 1, 1000] {
            let rows = rows(n);
            let mut w = BlobWriter::create(&db, 5).unwrap();
            for (k, v) in &rows {
                w.push(k, v).unwrap();
            }
            let file = w.finish().unwrap();
            assert_eq!(file.to_vec().unwrap(), encode_rows(rows.clone()).unwrap(), "{n} rows");
            let mut back = Vec::new();
            let count = for_each_row(&file, 5, "test", |k, v| {
                back.push((ByteBuf::from(k), ByteBuf::from(v)));
                Ok(())
            })
            .unwrap();
            assert_eq!(count, n as u64);
            assert_eq!(back, rows);
        }
    }

    #[test]
    fn damaged_files_are_corruption_naming_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let good = encode_rows(rows(50)).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("flipped bit", {
                let mut d = good.clone();
                let at = d.len() / 2;
                d[at] ^= 0x10;
                d
            }),
            ("truncated", good[..good.len() - 7].to_vec()),
            ("trailing byte", {
                let mut d = good.clone();
                d.push(0);
                d
            }),
            ("short header", good[..9].to_vec()),
            ("huge length", {
                let mut d = good.clone();
                d[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
                d
            }),
        ];
        for (name, data) in cases {
            let file = SnapshotFile::create(&db, 5, &data).unwrap();
            let err = for_each_row(&file, 5, "incoming snapshot", |_, _| Ok(())).unwrap_err();
            assert!(err.is_corruption(), "{name}: {err}");
            assert!(err.to_string().contains("incoming snapshot"), "{name}: {err}");
        }
    }

    #[test]
    fn pacing_waits_longer_after_larger_snapshots() {
        let p = Pacing {
            interval: 100,
            step_bytes: 1000,
        };
        assert!(p.due(None, 1), "no snapshot yet");
        assert!(!p.due(Some((500, 10)), 599));
        assert!(p.due(Some((500, 10)), 600));
        assert!(p.due(Some((500, 1000)), 600), "exactly one step");
        assert!(!p.due(Some((500, 1001)), 699), "two steps");
        assert!(p.due(Some((500, 1001)), 700));
        assert!(!p.due(Some((500, 10_000)), 1499));
        assert!(p.due(Some((500, 10_000)), 1500));
        let every_time = Pacing {
            interval: 100,
            step_bytes: 0,
        };
        assert!(every_time.due(Some((500, 1 << 40)), 501));
    }

    #[test]
    fn a_snapshot_kept_in_rocksdb_by_an_older_release_moves_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let data = encode_rows(rows(20)).unwrap();
        let meta = SnapshotMeta::default();
        let mut batch = WriteBatch::default();
        batch.put_cf(
            db.cf(CF_SNAPSHOT),
            group_prefix(3),
            codec::encode("snapshot record", &(&meta, &data)).unwrap(),
        );
        db.write_durable_blocking(batch).unwrap();
        let (_, file) = load(&db, 3).unwrap().expect("the old record is found");
        assert_eq!(file.to_vec().unwrap(), data);
        assert_eq!(file.path().parent(), Some(db.snapshot_dir().as_path()));
        let old = db.rocks().get_cf(db.cf(CF_SNAPSHOT), group_prefix(3)).unwrap();
        assert!(old.is_none(), "the old record is gone once moved");
        assert_eq!(current_size(&db, 3).unwrap(), Some((0, data.len() as u64)));
    }

    #[test]
    fn sweep_keeps_only_the_current_file_of_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let data = encode_rows(rows(3)).unwrap();
        let meta = SnapshotMeta::default();
        let current = save(&db, 7, &meta, SnapshotFile::create(&db, 7, &data).unwrap()).unwrap();
        let stray = SnapshotFile::create(&db, 7, &data).unwrap();
        let other = SnapshotFile::create(&db, 8, &data).unwrap();
        sweep(&db, 7).unwrap();
        assert!(current.path().exists());
        assert!(!stray.path().exists());
        assert!(other.path().exists(), "another group's files stay");
        let (_, loaded) = load(&db, 7).unwrap().unwrap();
        assert_eq!(loaded.to_vec().unwrap(), data);
    }
}
