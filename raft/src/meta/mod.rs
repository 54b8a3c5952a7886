//! The meta group (group 0): configuration KV with MVCC history, leases and
//! client sessions, replicated by openraft and stored in RocksDB.

pub mod layout;
pub mod session;
mod state_machine;
pub mod store;

pub use layout::{Changes, KvRecord, LeaseRecord};
pub use state_machine::MetaStateMachine;
pub use store::{
    MetaStore, Placement, ReadError, SmState, SnapshotSummary, WatchEvent, auto_compaction_step, summarize_snapshot,
};
