//! Durability audit: every acknowledged append was covered by a WAL fsync
//! that RocksDB itself counted, and concurrent appends of different groups
//! share fsyncs (group commit).

use std::sync::Arc;

use esf_storage::test_types::TestConfig;
use esf_storage::{Db, LogStore, StorageConfig, StorageError};
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::vote::RaftLeaderId;

type Entry = openraft::alias::EntryOf<TestConfig>;
type LeaderId = openraft::alias::LeaderIdOf<TestConfig>;

fn entry(i: u64) -> Entry {
    Entry::new_blank(openraft::LogId::new(LeaderId::new(1, 1).to_committed(), i))
}

fn open(dir: &std::path::Path) -> Arc<Db> {
    let mut cfg = StorageConfig::new(dir);
    cfg.statistics = true;
    Db::open(&cfg).expect("open db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ack_is_covered_by_a_rocksdb_wal_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let mut tasks = Vec::new();
    for g in 1..=8u32 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut store = LogStore::<TestConfig>::new(db.clone(), g);
            let mut audit = Vec::new();
            for i in 1..=50u64 {
                let before = db.durability_stats().rocksdb_wal_syncs;
                store.append_flushed([entry(i)]).await.expect("append");
                let after = db.durability_stats().rocksdb_wal_syncs;
                audit.push((i, before, after));
            }
            audit
        }));
    }
    for t in tasks {
        for (i, before, after) in t.await.expect("task") {
            assert!(
                after > before,
                "append {i} acknowledged without a WAL sync counted by RocksDB ({before} -> {after})"
            );
        }
    }
    let stats = db.durability_stats();
    assert!(
        stats.rocksdb_wal_syncs >= stats.fsyncs,
        "every flusher fsync is a RocksDB WAL sync: {stats:?}"
    );
    // 400 appends from 8 concurrent groups: group commit must share fsyncs.
    assert!(
        stats.fsyncs < 400,
        "no fsync was shared: {} fsyncs for 400 appends",
        stats.fsyncs
    );
}

#[tokio::test]
async fn truncate_and_purge_are_durable_and_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        let mut store = LogStore::<TestConfig>::new(db.clone(), 7);
        store.append_flushed((1..=20).map(entry)).await.expect("append");
        store
            .truncate_after(Some(openraft::LogId::new(LeaderId::new(1, 1).to_committed(), 15)))
            .await
            .expect("truncate");
        store
            .purge(openraft::LogId::new(LeaderId::new(1, 1).to_committed(), 5))
            .await
            .expect("purge");
        // Another group's log is untouched.
        let mut other = LogStore::<TestConfig>::new(db, 8);
        other.append_flushed((1..=3).map(entry)).await.expect("append other");
    }
    let db = open(dir.path());
    let store = LogStore::<TestConfig>::new(db.clone(), 7);
    let st = store.log_state().expect("state");
    assert_eq!(st.last_purged_log_id.map(|l| l.index()), Some(5));
    assert_eq!(st.last_log_id.map(|l| l.index()), Some(15));
    let idx: Vec<u64> = store
        .read_range(0, 100)
        .expect("read")
        .iter()
        .map(|e| e.index())
        .collect();
    assert_eq!(
        idx,
        (6..=15).collect::<Vec<_>>(),
        "purged and truncated entries are gone"
    );
    let idx: Vec<u64> = store
        .read_range(6, 100)
        .expect("read")
        .iter()
        .map(|e| e.index())
        .collect();
    assert_eq!(idx, (6..=15).collect::<Vec<_>>());
    let other = LogStore::<TestConfig>::new(db, 8);
    assert_eq!(other.read_range(1, 10).expect("read other").len(), 3);
}

#[tokio::test]
async fn corrupt_entry_is_an_error_naming_group_and_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let mut store = LogStore::<TestConfig>::new(db.clone(), 3);
    store.append_flushed((1..=3).map(entry)).await.expect("append");
    // Damage entry 2 behind the store's back.
    let cf = db.cf(esf_storage::keys::CF_LOG);
    let key = esf_storage::keys::log_key(3, 2);
    let mut raw = db.rocks().get_cf(cf, key).expect("get").expect("present");
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    db.rocks().put_cf(cf, key, raw).expect("put damaged");
    // The store that appended serves them from its tail cache; a store
    // opened on the same DB (as after a restart) reads the disk.
    assert_eq!(store.read_range(1, 4).expect("cached").len(), 3);
    let store = LogStore::<TestConfig>::new(db.clone(), 3);
    let err = store.read_range(1, 4).expect_err("corruption must not read as absent");
    assert!(err.is_corruption());
    let msg = err.to_string();
    assert!(
        msg.contains("raft_log") && msg.contains("group 3") && msg.contains("log index 2"),
        "{msg}"
    );
    assert!(matches!(err, StorageError::Corrupt { .. }));
}

#[test]
fn wrong_format_version_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        db.rocks()
            .put_cf(
                db.cf(esf_storage::keys::CF_RAFT_META),
                esf_storage::keys::FORMAT_VERSION_KEY,
                99u32.to_be_bytes(),
            )
            .expect("overwrite version");
    }
    let err = Db::open(&StorageConfig::new(dir.path())).expect_err("must refuse");
    assert!(matches!(err, StorageError::FormatVersion { found: 99, .. }), "{err}");
}

#[test]
fn the_previous_format_is_upgraded_in_place_and_older_ones_refused() {
    let version_of = |db: &Db| {
        let raw = db
            .rocks()
            .get_cf(
                db.cf(esf_storage::keys::CF_RAFT_META),
                esf_storage::keys::FORMAT_VERSION_KEY,
            )
            .expect("read version")
            .expect("a version is written");
        u32::from_be_bytes(raw.as_slice().try_into().expect("4 bytes"))
    };
    let set_version = |db: &Db, v: u32| {
        db.rocks()
            .put_cf(
                db.cf(esf_storage::keys::CF_RAFT_META),
                esf_storage::keys::FORMAT_VERSION_KEY,
                v.to_be_bytes(),
            )
            .expect("overwrite version")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        assert_eq!(version_of(&db), esf_storage::FORMAT_VERSION);
        set_version(&db, esf_storage::UPGRADES_FROM_FORMAT);
    }
    {
        let db = Db::open(&StorageConfig::new(dir.path())).expect("the previous format opens");
        assert_eq!(version_of(&db), esf_storage::FORMAT_VERSION, "upgraded on open");
        set_version(&db, esf_storage::UPGRADES_FROM_FORMAT - 1);
    }
    let err = Db::open(&StorageConfig::new(dir.path())).expect_err("an older format must be refused");
    assert!(
        matches!(err, StorageError::FormatVersion { found, .. } if found == esf_storage::UPGRADES_FROM_FORMAT - 1),
        "{err}"
    );
}

/// The files of `dir` whose name ends with `ext`, largest first.
fn files_ending(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    files
}

/// Flips 16 bytes in the middle of `file`.
fn damage(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).expect("read file");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(file, bytes).expect("write damaged file");
}

#[tokio::test]
async fn a_damaged_wal_record_refuses_to_open_instead_of_dropping_later_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        let mut store = LogStore::<TestConfig>::new(db.clone(), 1);
        // One fsynced write per entry: many WAL records, the damage lands
        // in one that acknowledged writes follow.
        for i in 1..=200 {
            store.append_flushed([entry(i)]).await.expect("append");
        }
    }
    let wal = files_ending(dir.path(), ".log");
    assert!(!wal.is_empty(), "the writes are in a WAL file");
    damage(&wal[0]);
    // RocksDB's default recovery would open here and silently lose every
    // entry after the damaged record.
    let err = Db::open(&StorageConfig::new(dir.path())).expect_err("a damaged WAL must not open");
    assert!(err.is_corruption(), "{err}");
}

#[tokio::test]
async fn a_damaged_sst_file_refuses_to_open_naming_the_column_family() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        let mut store = LogStore::<TestConfig>::new(db.clone(), 1);
        store.append_flushed((1..=5_000).map(entry)).await.expect("append");
        let cf = db.cf(esf_storage::keys::CF_LOG);
        db.rocks().flush_cf(cf).expect("flush to an SST file");
        // Undamaged, it opens and verifies every key.
    }
    let db = Db::open(&StorageConfig::new(dir.path())).expect("an undamaged DB opens");
    assert!(db.verify_checksums().expect("verify") >= 5_000);
    drop(db);
    let sst = files_ending(dir.path(), ".sst");
    assert!(!sst.is_empty(), "the log is in an SST file");
    damage(&sst[0]);
    let err = Db::open(&StorageConfig::new(dir.path())).expect_err("a damaged SST must not open");
    assert!(err.is_corruption(), "{err}");
    assert!(err.to_string().contains("verify column family raft_log"), "{err}");
}
