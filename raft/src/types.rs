//! The openraft type configuration shared by every ESF Raft group.
//!
//! Every openraft type the rest of ESF sees is named here, so the openraft
//! version is contained in this crate.

use crate::command::{Command, Response};

/// A node's id in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// ESF's openraft configuration: one for all groups (meta and event
    /// partitions). Standard Raft leader ids: at most one leader per term
    /// (openraft's default lets several nodes lead one term, each with its
    /// own leader id), which the Jepsen-style tests check.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
);

/// A Raft node handle for a group served by the meta state machine.
pub type MetaRaft = openraft::Raft<TypeConfig, crate::meta::MetaStateMachine>;
/// Snapshot payload: a file holding the group's rows (see
/// `snapshot_record`), streamed rather than held in memory.
pub type SnapshotData = crate::snapshot_record::SnapshotFile;
/// Log id alias.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// Vote alias.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Entry alias.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// Stored membership alias.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot meta alias.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// Raft node info.
pub type Node = openraft::BasicNode;
/// Log store of one group.
pub type LogStore = esf_storage::LogStore<TypeConfig>;
