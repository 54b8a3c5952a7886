//! esf-raft: ESF's Raft layer on openraft `=0.10.0-alpha.37`.
//!
//! - [`types`]: the one openraft `TypeConfig` of every group; every openraft
//!   type the rest of ESF touches is named there.
//! - [`command`]: what is replicated ([`command::Command`]) and what apply
//!   answers ([`command::Response`]).
//! - [`meta`]: the meta group's state machine: an etcd-style MVCC config
//!   store with history, compaction, txn, leases and client sessions.
//! - [`group`]: a running meta group: proposing, linearizable and
//!   serializable reads, response headers, and the leader's lease keeper;
//!   the one openraft state machine of every group.
//! - [`events`]: event partitions: append-only event logs, one Raft group
//!   each, idempotent by event id, with stream versions.
//! - [`limits`]: named bounds with errors that name the field.
//! - [`snapshot_record`]: snapshot files (written and read as streams) and
//!   which one is each group's current snapshot.
//!
//! Not here: networking (the node crate carries Raft RPCs over tonic; tests
//! use an in-process router).

pub mod command;
pub mod error;
pub mod events;
/// Test-only faults (the module lives in esf-storage).
pub use esf_storage::failpoint;
pub mod group;
pub mod lease_keeper;
pub mod limits;
pub mod meta;
pub mod snapshot_record;
pub mod types;

pub use error::{Error, Result};
pub use openraft;
