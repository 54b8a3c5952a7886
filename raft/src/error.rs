//! esf-raft's error type, classified by how the caller must react.

use crate::command::Rejection;
use crate::types::NodeId;

/// Errors of proposing to and reading from a Raft group.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was rejected (bad input, compacted revision, ...). Do not
    /// retry unchanged.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// This node is not the leader. Retry at `leader` if known.
    #[error("not the leader of group {group}{}", leader.map(|l| format!("; leader is node {l}")).unwrap_or_default())]
    NotLeader {
        /// Group.
        group: u32,
        /// Current leader, if known.
        leader: Option<NodeId>,
        /// The leader's address, if known.
        leader_addr: Option<String>,
    },
    /// No quorum or a deadline passed: the outcome of a write is unknown.
    /// Retry with the same session sequence.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The storage quota is used up: writes that add data are refused until
    /// deletes or compaction free space.
    #[error(
        "quota: the state machines use {used} bytes, over the quota of {quota} bytes (quota_bytes); delete keys or compact history (esf kv compact) to free space"
    )]
    NoSpace {
        /// Bytes in use.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// Storage failed; the node must stop.
    #[error(transparent)]
    Storage(#[from] esf_storage::StorageError),
    /// Raft stopped (shutdown or fatal error).
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl Error {
    /// The same error for another waiter of one failed proposal (a
    /// coalesced batch): every kind but storage is copied as it is; a
    /// storage failure, which stops the node, is told as `Fatal`.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Rejected(r) => Error::Rejected(r.clone()),
            Error::NotLeader {
                group,
                leader,
                leader_addr,
            } => Error::NotLeader {
                group: *group,
                leader: *leader,
                leader_addr: leader_addr.clone(),
            },
            Error::Unavailable(s) => Error::Unavailable(s.clone()),
            Error::NoSpace { used, quota } => Error::NoSpace {
                used: *used,
                quota: *quota,
            },
            Error::Storage(e) => Error::Fatal(format!("storage: {e}")),
            Error::Fatal(s) => Error::Fatal(s.clone()),
        }
    }

    /// Whether retrying (possibly on another node) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotLeader { .. } | Error::Unavailable(_))
    }

    /// The leader to retry at, if this error names one.
    pub fn leader_hint(&self) -> Option<(NodeId, Option<&str>)> {
        match self {
            Error::NotLeader {
                leader: Some(l),
                leader_addr,
                ..
            } => Some((*l, leader_addr.as_deref())),
            _ => None,
        }
    }
}

impl From<crate::meta::ReadError> for Error {
    fn from(e: crate::meta::ReadError) -> Self {
        match e {
            crate::meta::ReadError::Rejected(r) => Error::Rejected(r),
            crate::meta::ReadError::Storage(s) => Error::Storage(s),
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
