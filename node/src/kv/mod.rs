//! The configuration key-value store as the node serves it: watches over
//! the meta group's MVCC history ([`watch`]). Puts, ranges, txns, history
//! and compaction are single calls into `esf_raft::group::MetaGroup` made
//! by `api/config.rs`; what needs more than one call lives here.

pub mod watch;
