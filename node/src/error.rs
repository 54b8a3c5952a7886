//! The node's error type, and THE one place where an error becomes a gRPC
//! status.
//!
//! Domain code (kv, events, registry, subscriptions, audit, cluster,
//! backup) returns [`Error`]; the gRPC services in `api/` turn it into a
//! [`Status`] with `?` through `From<Error> for Status` below, and nothing
//! else builds a status code. Errors are classified by their type, never
//! by the text of a message: an openraft error by its variant
//! ([`Error::from_membership`]), a peer's answer by its code and the
//! source of a transport failure ([`Error::Peer`]).
//!
//! What the client sees per variant (esf-client maps each code back to a
//! typed variant of its own `Error`):
//!
//! | variant | code |
//! |---|---|
//! | `Invalid { field, reason }`, `Rejected(InvalidArgument)` | INVALID_ARGUMENT `"field: reason"` |
//! | `OutOfRange`, `Rejected(Compacted / FutureRevision)` | OUT_OF_RANGE |
//! | `NotFound`, `Rejected(LeaseNotFound / StreamDeleted)` | NOT_FOUND |
//! | `AlreadyExists`, `Rejected(LeaseExists)` | ALREADY_EXISTS |
//! | `Precondition`, `Rejected(SessionExpired / WrongExpectedVersion)` | FAILED_PRECONDITION |
//! | `PermissionDenied`, `Rejected(PermissionDenied)` | PERMISSION_DENIED |
//! | `Unauthenticated` | UNAUTHENTICATED |
//! | `Unavailable`, `Raft(NotLeader / Unavailable)` | UNAVAILABLE, with `esf-leader-id` / `esf-leader-addr` when known |
//! | `ResourceExhausted`, `Raft(NoSpace)` | RESOURCE_EXHAUSTED |
//! | `Aborted` | ABORTED |
//! | `DataLoss` | DATA_LOSS |
//! | `Storage`, `Raft(Storage / Fatal)` | INTERNAL (DATA_LOSS if damaged, RESOURCE_EXHAUSTED if the disk is full); the message names no path: details go to the log |
//! | `Internal` | INTERNAL |
//! | `Peer(status)` | the peer's status as it came (a broken connection: UNAVAILABLE) |

use esf_proto::wire::{LEADER_ADDR_METADATA, LEADER_ID_METADATA};
use esf_raft::command::Rejection;
use esf_raft::openraft::error::{ClientWriteError, RaftError};
use esf_raft::types::{NodeId, TypeConfig};
use tonic::Status;

/// Errors of the node's domain code, classified by what the caller must do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Raft group refused or could not serve the request.
    #[error(transparent)]
    Raft(#[from] esf_raft::Error),
    /// Local storage failed outside a group's request path.
    #[error("storage: {0}")]
    Storage(#[from] esf_storage::StorageError),
    /// A field of the request is bad.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as the API names it (`append.events[2].id`).
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// Something named does not exist; the message says what.
    #[error("{0}")]
    NotFound(String),
    /// Something named exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request cannot be carried out in the current state.
    #[error("{0}")]
    Precondition(String),
    /// A position outside what exists (compacted, in the future).
    #[error("{0}")]
    OutOfRange(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller could not be identified.
    #[error("{0}")]
    Unauthenticated(String),
    /// Not served here or not now: retry (at the leader, if named).
    #[error("{reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// The leader's id, if known.
        leader: Option<NodeId>,
        /// The node to retry at, if known.
        leader_addr: Option<String>,
    },
    /// A bound was reached (one request at a time, a size limit).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Concurrent requests kept winning a race: retry.
    #[error("{0}")]
    Aborted(String),
    /// Data arrived damaged or incomplete.
    #[error("{0}")]
    DataLoss(String),
    /// The answer of another node to a call made on the caller's behalf.
    #[error("{}", .0.message())]
    Peer(Status),
    /// A bug or a failed task on this node.
    #[error("{0}")]
    Internal(String),
}

/// Result alias of the node's domain code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A bad field.
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Invalid {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// Not available here, no leader known.
    pub fn unavailable(reason: impl Into<String>) -> Error {
        Error::Unavailable {
            reason: reason.into(),
            leader: None,
            leader_addr: None,
        }
    }

    /// Not available here; retry at `addr`.
    pub fn unavailable_at(reason: impl Into<String>, addr: Option<String>) -> Error {
        Error::Unavailable {
            reason: reason.into(),
            leader: None,
            leader_addr: addr,
        }
    }

    /// A failed internal task (`what` says which).
    pub fn task(what: &str, e: impl std::fmt::Display) -> Error {
        Error::Internal(format!("{what}: {e}"))
    }

    /// A state machine answered a command with a result of another kind:
    /// a bug (each command has exactly one result kind).
    pub fn unexpected(result: impl std::fmt::Debug) -> Error {
        Error::Internal(format!("unexpected result {result:?}"))
    }

    /// A membership change or leader transfer that openraft refused,
    /// classified by its variant: not the leader (or the entry was
    /// discarded by a leader change) is UNAVAILABLE with the leader it
    /// names; a change it cannot make now (one in progress, a learner
    /// missing, an empty membership) is FAILED_PRECONDITION; a stopped
    /// Raft is INTERNAL.
    pub fn from_membership(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f)) => {
                Error::Unavailable {
                    reason: format!(
                        "not the leader{}",
                        f.leader_id.map(|l| format!("; leader is node {l}")).unwrap_or_default()
                    ),
                    leader: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            RaftError::APIError(
                e @ (ClientWriteError::ChangeMembershipError(_) | ClientWriteError::PreconditionFailed(_)),
            ) => Error::Precondition(e.to_string()),
            RaftError::Fatal(f) => Error::Raft(esf_raft::Error::Fatal(f.to_string())),
        }
    }

    /// The leader's address this error names, if any (a request forwarded
    /// there may succeed).
    pub fn leader_addr(&self) -> Option<&str> {
        match self {
            Error::Raft(esf_raft::Error::NotLeader { leader_addr, .. }) => leader_addr.as_deref(),
            Error::Unavailable { leader_addr, .. } => leader_addr.as_deref(),
            _ => None,
        }
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Error {
        Error::Raft(esf_raft::Error::Rejected(r))
    }
}

/// UNAVAILABLE with the leader hint in metadata.
fn unavailable(reason: String, leader: Option<NodeId>, leader_addr: Option<String>) -> Status {
    let mut s = Status::unavailable(reason);
    if let Some(v) = leader.and_then(|l| l.to_string().parse().ok()) {
        s.metadata_mut().insert(LEADER_ID_METADATA, v);
    }
    if let Some(v) = leader_addr.and_then(|a| a.parse().ok()) {
        s.metadata_mut().insert(LEADER_ADDR_METADATA, v);
    }
    s
}

fn raft_status(e: esf_raft::Error) -> Status {
    use Rejection as R;
    match e {
        esf_raft::Error::Rejected(r) => match &r {
            // The status code already says "invalid argument".
            R::InvalidArgument { field, reason } => Status::invalid_argument(format!("{field}: {reason}")),
            R::Compacted { .. } | R::FutureRevision { .. } => Status::out_of_range(r.to_string()),
            R::LeaseNotFound(_) | R::StreamDeleted(_) => Status::not_found(r.to_string()),
            R::LeaseExists(_) => Status::already_exists(r.to_string()),
            R::SessionExpired { .. } | R::WrongExpectedVersion { .. } => Status::failed_precondition(r.to_string()),
            R::PermissionDenied { .. } => Status::permission_denied(r.to_string()),
        },
        esf_raft::Error::NotLeader {
            leader, leader_addr, ..
        } => unavailable(
            format!(
                "not the leader{}",
                leader.map(|l| format!("; leader is node {l}")).unwrap_or_default()
            ),
            leader,
            leader_addr,
        ),
        esf_raft::Error::Unavailable(m) => Status::unavailable(m),
        e @ esf_raft::Error::NoSpace { .. } => Status::resource_exhausted(e.to_string()),
        esf_raft::Error::Storage(e) => storage_status(&e),
        esf_raft::Error::Fatal(m) => {
            // The reason names files of this node: logged, not sent.
            tracing::error!(reason = %m, "a request met a stopped Raft group");
            if m.contains("No space left on device") {
                Status::resource_exhausted("disk full on this node: the group stopped; see its log")
            } else {
                Status::internal("a Raft group of this node stopped after a storage failure; see its log")
            }
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Raft(e) => raft_status(e),
            Error::Storage(e) => storage_status(&e),
            e @ Error::Invalid { .. } => Status::invalid_argument(e.to_string()),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Precondition(m) => Status::failed_precondition(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Unavailable {
                reason,
                leader,
                leader_addr,
            } => unavailable(reason, leader, leader_addr),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::DataLoss(m) => Status::data_loss(m),
            Error::Peer(s) => peer_status(s),
            Error::Internal(m) => Status::internal(m),
        }
    }
}

/// What a client learns of a storage failure: the kind, never the paths
/// or internals (those go to this node's log).
fn storage_status(e: &esf_storage::StorageError) -> Status {
    tracing::error!(error = %e, "storage failure answered to a client");
    if e.is_no_space() {
        Status::resource_exhausted("disk full on this node: the write was not stored; free space on its data dir")
    } else if e.is_corruption() {
        Status::data_loss("damaged storage on this node; see its log")
    } else {
        Status::internal("storage failure on this node; see its log")
    }
}

/// A status from a call to another node: a failure of the connection
/// itself (whatever code tonic gave it) becomes UNAVAILABLE, so the client
/// retries instead of giving up; any other answer passes through.
fn peer_status(s: Status) -> Status {
    if s.code() != tonic::Code::Unavailable && esf_proto::wire::is_transport_failure(&s) {
        Status::unavailable(format!("a peer node's connection failed: {}", s.message()))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_kind_maps_to_its_code() {
        let cases: Vec<(Error, Code)> = vec![
            (Error::invalid("put.key", "must not be empty"), Code::InvalidArgument),
            (
                Rejection::InvalidArgument {
                    field: "txn.compare".into(),
                    reason: "bad".into(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (Error::NotFound("lease 7".into()), Code::NotFound),
            (Rejection::LeaseNotFound(7).into(), Code::NotFound),
            (Error::AlreadyExists("subscription x".into()), Code::AlreadyExists),
            (Rejection::LeaseExists(7).into(), Code::AlreadyExists),
            (
                Rejection::PermissionDenied {
                    user: "u".into(),
                    reason: "needs write on key \"a\"".into(),
                }
                .into(),
                Code::PermissionDenied,
            ),
            (Error::Precondition("last voter".into()), Code::FailedPrecondition),
            (Error::OutOfRange("future".into()), Code::OutOfRange),
            (
                Error::PermissionDenied("role reader may not write".into()),
                Code::PermissionDenied,
            ),
            (Error::Unauthenticated("no token".into()), Code::Unauthenticated),
            (Error::unavailable("no quorum"), Code::Unavailable),
            (
                Error::ResourceExhausted("one snapshot at a time".into()),
                Code::ResourceExhausted,
            ),
            (
                esf_raft::Error::NoSpace { used: 2, quota: 1 }.into(),
                Code::ResourceExhausted,
            ),
            (Error::Aborted("8 acks won in a row".into()), Code::Aborted),
            (Error::DataLoss("short".into()), Code::DataLoss),
            (Error::Internal("bug".into()), Code::Internal),
            (Error::Peer(Status::not_found("no event")), Code::NotFound),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{text}");
            assert!(
                s.message().contains(&text) || text.contains(s.message()),
                "{text} vs {}",
                s.message()
            );
        }
    }

    #[test]
    fn not_leader_carries_the_hint() {
        let s = Status::from(Error::Raft(esf_raft::Error::NotLeader {
            group: 0,
            leader: Some(2),
            leader_addr: Some("127.0.0.1:2379".into()),
        }));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(
            s.metadata().get(LEADER_ID_METADATA).and_then(|v| v.to_str().ok()),
            Some("2")
        );
        assert_eq!(
            s.metadata().get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok()),
            Some("127.0.0.1:2379")
        );
    }

    #[test]
    fn membership_errors_are_classified_by_variant() {
        use esf_raft::openraft::error::{ChangeMembershipError, EmptyMembership, ForwardToLeader};
        let fwd = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::new(
            3,
            esf_raft::openraft::BasicNode {
                addr: "127.0.0.1:3".into(),
            },
        )));
        match Error::from_membership(fwd) {
            e @ Error::Unavailable { .. } => assert_eq!(e.leader_addr(), Some("127.0.0.1:3")),
            other => panic!("{other:?}"),
        }
        let empty = RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::EmptyMembership(EmptyMembership {}),
        ));
        assert!(matches!(Error::from_membership(empty), Error::Precondition(_)));
    }
}
