//! The meta group (group 0): configuration KV with MVCC history, leases and
//! client sessions, replicated by openraft and stored in RocksDB.

pub mod auth;
pub mod layout;
pub mod session;
pub mod store;

pub use layout::{Changes, KvRecord, LeaseRecord};
pub use store::{
    MetaStore, Placement, ReadError, SmState, SnapshotSummary, WatchEvent, auto_compaction_step, summarize_snapshot,
};

/// The meta group's state machine handle given to openraft.
pub type MetaStateMachine = crate::group::GroupStateMachine<MetaStore>;
