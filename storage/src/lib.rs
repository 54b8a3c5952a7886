//! esf-storage: the node's one RocksDB, its key layout, and the Raft log and
//! vote storage shared by every Raft group.
//!
//! - [`Db`] opens RocksDB with column families for Raft logs, Raft metadata,
//!   state machine data and snapshots, keyed by group id (see [`keys`]), a
//!   shared block cache and memtable budget, and an on-disk format version.
//! - Durable writes go through one group-commit flusher: concurrent writers,
//!   of any group, share one WAL fsync and are acknowledged only after it.
//! - [`LogStore`] implements openraft's `RaftLogStorage` for any group id.
//!   `append` returns only after the fsync covering it (openraft #2118).
//! - Every value is checksummed ([`codec`]); a damaged record is an error that
//!   names its column family, group and record, never "absent".
//!
//! Not here: the state machines (esf-raft owns the `sm` column family's
//! layout), networking, and per-group WAL files (one WAL is the point).

pub mod codec;
mod db;
pub mod error;
pub mod failpoint;
mod flusher;
pub mod keys;
mod log_store;

pub use db::{
    DEFAULT_MEMORY_BUDGET_BYTES, DEFAULT_WRITE_BUFFER_BYTES, Db, DurabilityStats, FORMAT_VERSION, StorageConfig,
    UPGRADES_FROM_FORMAT,
};
pub use error::{Result, StorageError};
pub use flusher::FLUSH_QUEUE_CAPACITY;
pub use keys::GroupId;
pub use log_store::{LogReader, LogStore};
pub use rocksdb;
pub mod test_types;
