//! The node's one RocksDB: opening, options, memory budget, format version,
//! and the durable write path shared by every Raft group.
//!
//! Durability contract: [`Db::write_durable`] returns only after the batch is
//! in the WAL *and* the WAL has been fsynced (through the group-commit
//! [`Flusher`](crate::flusher)). [`Db::write_buffered`] returns after the batch
//! is visible to readers; it becomes durable with the next fsync of any
//! writer (the WAL is one ordered file sequence, so an fsync covers every
//! earlier write of every group). The DB runs with `manual_wal_flush`, so
//! buffered writes are lost by a process crash (SIGKILL) exactly as unsynced
//! writes are lost by a power cut: crash tests can catch a missing fsync.
//!
//! Memory: one LRU block cache is shared by all column families and groups,
//! and memtables are charged to it through a `WriteBufferManager`, so the
//! configured budget bounds both however many groups exist.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteBufferManager,
    WriteOptions,
};
use tracing::info;

use crate::error::{Result, StorageError};
use crate::flusher::Flusher;
use crate::keys::{ALL_CFS, CF_RAFT_META, FORMAT_VERSION_KEY};

/// On-disk format version written at creation and checked at every open.
/// 2: Raft votes and log ids use standard (one leader per term) leader ids.
/// 3: the meta group's change log names what each change replaced, so
/// compaction deletes superseded versions without seeking them.
pub const FORMAT_VERSION: u32 = 3;
/// The one older format a data directory is upgraded from when opened
/// (the upgrade is one write: format 2 rows stay readable as they are).
/// Once upgraded, a build of format 2 refuses the directory.
pub const UPGRADES_FROM_FORMAT: u32 = 2;

/// Directory inside the DB directory that holds the Raft groups' snapshot
/// files (RocksDB ignores subdirectories it did not create).
pub const SNAPSHOT_DIR: &str = "snapshots";

/// Share of each memtable's size given to its bloom filter.
pub const MEMTABLE_BLOOM_RATIO: f64 = 0.05;
/// Default total memory budget for block cache plus memtables.
pub const DEFAULT_MEMORY_BUDGET_BYTES: usize = 256 << 20;
/// Default share of the budget memtables may use before RocksDB flushes.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 64 << 20;

/// How to open the DB.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory holding the RocksDB files.
    pub path: PathBuf,
    /// Block cache capacity; memtables are charged to it too.
    pub memory_budget_bytes: usize,
    /// Memtable budget across all column families (part of the above).
    pub write_buffer_bytes: usize,
    /// Collect RocksDB statistics (tickers such as WAL syncs). Costs a little
    /// CPU; tests use it to audit durability.
    pub statistics: bool,
    /// Read every SST block of every column family once at open, checking
    /// its checksum, so a damaged file stops the node at start instead of
    /// failing (or serving around) a read later. Costs one sequential scan
    /// of the data at each start.
    pub verify_on_open: bool,
}

impl StorageConfig {
    /// Defaults for a data directory.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StorageConfig {
            path: path.into(),
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            statistics: false,
            verify_on_open: true,
        }
    }
}

/// The node's RocksDB plus its group-commit flusher. Share it with `Arc`.
pub struct Db {
    db: Arc<DB>,
    opts: Options,
    flusher: Arc<Flusher>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if missing) the DB at `cfg.path`.
    ///
    /// A new DB gets the format version record; an existing one must carry
    /// [`FORMAT_VERSION`] or opening fails with [`StorageError::FormatVersion`].
    pub fn open(cfg: &StorageConfig) -> Result<Arc<Db>> {
        if cfg.write_buffer_bytes > cfg.memory_budget_bytes {
            return Err(StorageError::Invalid(format!(
                "write_buffer_bytes ({}) must not exceed memory_budget_bytes ({})",
                cfg.write_buffer_bytes, cfg.memory_budget_bytes
            )));
        }
        let cache = Cache::new_lru_cache(cfg.memory_budget_bytes);
        let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(cfg.write_buffer_bytes, false, cache.clone());

        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_manual_wal_flush(true);
        opts.set_write_buffer_manager(&wbm);
        // Old WAL files are kept until every CF has flushed; bound them.
        opts.set_max_total_wal_size((cfg.write_buffer_bytes as u64) * 2);
        opts.set_keep_log_file_num(4);
        opts.set_max_background_jobs(2);
        // A damaged WAL record must stop the open. RocksDB's default
        // (point-in-time recovery) replays up to the first bad record and
        // opens without everything after it: a node would come back
        // without log entries and votes it had acknowledged, and could
        // then vote for, or become, a leader that lacks committed writes.
        // Only an incomplete last record (a write torn by a crash, never
        // acknowledged because its fsync did not return) is dropped.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_paranoid_checks(true);
        if cfg.statistics {
            opts.enable_statistics();
        }

        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_bloom_filter(10.0, false);
        // Partitioned index and filters: a point read loads one small
        // partition of each, not a whole (hundreds of KiB) index or filter
        // block. With whole blocks, once the data outgrew the cache every
        // read of a missing key (append deduplication) re-read and
        // re-checksummed them: at 1M events, most of the nodes' CPU.
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);

        let cfs = ALL_CFS.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_write_buffer_size((cfg.write_buffer_bytes / 4).max(1 << 20));
            // A whole-key bloom filter in each memtable: a point read of a
            // key the memtable lacks (every new event id's deduplication
            // check, most current-value reads) skips the skip-list search,
            // which was a tenth of a loaded node's CPU.
            cf_opts.set_memtable_whole_key_filtering(true);
            cf_opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });

        let existed = cfg.path.join("CURRENT").exists();
        let snapshot_dir = cfg.path.join(SNAPSHOT_DIR);
        let db = DB::open_cf_descriptors(&opts, &cfg.path, cfs)
            .map_err(|e| StorageError::rocks(format!("open {}", cfg.path.display()), e))?;
        let db = Arc::new(db);

        let sync_db = db.clone();
        let flusher = Flusher::start(move || {
            if crate::failpoint::active("slow-fsync") {
                std::thread::sleep(crate::failpoint::SLOW_FSYNC);
            }
            sync_db.flush_wal(true).map_err(|e| e.to_string())
        });
        let this = Arc::new(Db {
            db,
            opts,
            flusher,
            path: cfg.path.clone(),
        });
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|e| StorageError::io(format!("create {}", snapshot_dir.display()), e))?;
        this.check_format_version(existed)?;
        if existed && cfg.verify_on_open {
            this.verify_checksums()?;
        }
        info!(path = %cfg.path.display(), existed, "storage opened");
        Ok(this)
    }

    /// Reads every live key of every column family, checking the checksum
    /// of each block read (the whole live data set, sequentially, bypassing
    /// the block cache; blocks holding only deleted keys may be skipped). Returns
    /// the number of keys read, or the first damage found, naming the
    /// column family.
    pub fn verify_checksums(&self) -> Result<u64> {
        let started = std::time::Instant::now();
        let mut keys = 0u64;
        for name in ALL_CFS {
            let mut ro = rocksdb::ReadOptions::default();
            ro.set_verify_checksums(true);
            ro.fill_cache(false);
            let mut it = self.db.raw_iterator_cf_opt(self.cf(name), ro);
            it.seek_to_first();
            while it.valid() {
                keys += 1;
                it.next();
            }
            it.status()
                .map_err(|e| StorageError::rocks(format!("verify column family {name}"), e))?;
        }
        info!(
            keys,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage checksums verified"
        );
        Ok(keys)
    }

    fn check_format_version(&self, existed: bool) -> Result<()> {
        let cf = self.cf(CF_RAFT_META);
        let found = self
            .db
            .get_cf(cf, FORMAT_VERSION_KEY)
            .map_err(|e| StorageError::rocks("read format version", e))?;
        match found {
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StorageError::Corrupt {
                        cf: CF_RAFT_META,
                        group: u32::MAX,
                        record: "format version".into(),
                        reason: format!("{} bytes, expected 4", bytes.len()),
                    })?;
                if found == UPGRADES_FROM_FORMAT {
                    // Format 3 only adds a row encoding that format 2 rows
                    // stay readable beside: the upgrade is the version mark.
                    self.write_format_version()?;
                    info!(
                        path = %self.path.display(),
                        from = found,
                        to = FORMAT_VERSION,
                        "data directory upgraded"
                    );
                    return Ok(());
                }
                if found != FORMAT_VERSION {
                    return Err(StorageError::FormatVersion {
                        path: self.path.display().to_string(),
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
                Ok(())
            }
            None if existed && self.has_any_data()? => Err(StorageError::Corrupt {
                cf: CF_RAFT_META,
                group: u32::MAX,
                record: "format version".into(),
                reason: "missing in a data directory that holds data".into(),
            }),
            None => self.write_format_version(),
        }
    }

    /// Marks the directory as [`FORMAT_VERSION`], durably.
    fn write_format_version(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT_META), FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes());
        self.write_durable_blocking(batch)
    }

    fn has_any_data(&self) -> Result<bool> {
        for name in ALL_CFS {
            let mut it = self.db.raw_iterator_cf(self.cf(name));
            it.seek_to_first();
            if it.valid() {
                return Ok(true);
            }
            it.status()
                .map_err(|e| StorageError::rocks(format!("scan {name}"), e))?;
        }
        Ok(false)
    }

    /// Where the Raft groups keep their snapshot files.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.path.join(SNAPSHOT_DIR)
    }

    /// The raw RocksDB handle, for reads and iterators.
    pub fn rocks(&self) -> &DB {
        &self.db
    }

    /// Handle of a column family created at open.
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family in ALL_CFS is created at open")
    }

    /// Data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_unsynced(&self, batch: WriteBatch) -> Result<u64> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StorageError::rocks("write batch", e))?;
        Ok(self.flusher.ticket())
    }

    /// Writes `batch` atomically and returns once it is fsynced. Concurrent
    /// callers share fsyncs.
    pub async fn write_durable(&self, batch: WriteBatch) -> Result<()> {
        let ticket = self.write_unsynced(batch)?;
        self.flusher.wait_durable(ticket).await
    }

    /// Writes `batch` atomically (visible at once) and calls `on_durable`
    /// from the flusher thread once an fsync covers it, or with the reason it
    /// never will be. Callbacks queued by one caller run in its order.
    /// Returns after the write and the queuing, without waiting for the fsync.
    pub async fn write_then<F>(&self, batch: WriteBatch, on_durable: F) -> Result<()>
    where
        F: FnOnce(std::result::Result<(), String>) + Send + 'static,
    {
        let ticket = self.write_unsynced(batch)?;
        self.flusher.on_durable(ticket, Box::new(on_durable)).await;
        Ok(())
    }

    /// Blocking form of [`Db::write_durable`] for rare writes outside the
    /// hot path (e.g. at open): syncs the WAL itself instead of waiting for
    /// the flusher, so it is safe to call from inside an async runtime.
    pub fn write_durable_blocking(&self, batch: WriteBatch) -> Result<()> {
        self.write_unsynced(batch)?;
        self.db.flush_wal(true).map_err(|e| StorageError::rocks("sync wal", e))
    }

    /// Writes `batch` atomically; it is visible at once and becomes durable
    /// with the next fsync of any writer. Returns the write's ticket.
    pub fn write_buffered(&self, batch: WriteBatch) -> Result<u64> {
        self.write_unsynced(batch)
    }

    /// Makes every write issued so far durable.
    pub async fn sync(&self) -> Result<()> {
        let ticket = self.flusher.ticket();
        self.flusher.wait_durable(ticket).await
    }

    /// Durability counters, for metrics and the durability audit in tests.
    pub fn durability_stats(&self) -> DurabilityStats {
        DurabilityStats {
            fsyncs: self.flusher.fsyncs(),
            synced_through: self.flusher.synced_through(),
            rocksdb_wal_syncs: self.opts.get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced),
        }
    }

    /// Live SST plus memtable bytes of one column family.
    pub fn cf_size_bytes(&self, cf: &str) -> u64 {
        let cf = self.cf(cf);
        let get = |p: &str| self.db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
        get("rocksdb.total-sst-files-size") + get("rocksdb.cur-size-all-mem-tables")
    }

    /// Flushes and compacts one column family so deleted data stops taking
    /// space (runs on the caller's thread; can take a while).
    pub fn reclaim(&self, cf: &str) -> Result<()> {
        let handle = self.cf(cf);
        self.db.flush_cf(handle).map_err(|e| StorageError::rocks("flush", e))?;
        self.db.compact_range_cf(handle, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Live SST plus memtable bytes, for status and metrics.
    pub fn approximate_size_bytes(&self) -> u64 {
        // Per column family: the DB-level properties cover only the
        // default one, which ESF leaves empty.
        crate::keys::ALL_CFS.iter().map(|cf| self.cf_size_bytes(cf)).sum()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.flusher.stop();
        // Writes already issued are made durable on a clean close.
        let _ = self.db.flush_wal(true);
    }
}

/// Counters of the durable write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurabilityStats {
    /// Group-commit fsyncs completed by the flusher.
    pub fsyncs: u64,
    /// Highest write ticket known durable.
    pub synced_through: u64,
    /// RocksDB's own count of WAL file syncs (0 unless statistics are on).
    pub rocksdb_wal_syncs: u64,
}
