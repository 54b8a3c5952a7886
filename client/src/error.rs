//! Client errors, classified by what the caller should do, and the one
//! mapping from a gRPC status to them ([`Error::from_status`]).
//!
//! Each gRPC code has its variant; a broken connection
//! ([`esf_proto::wire::is_transport_failure`]) is [`Error::Unavailable`]
//! whatever code tonic gave it. The status's message is kept as the
//! variant's text; the status itself (details, other metadata) is not,
//! except the leader hint of a not-leader answer ([`Error::leader_hint`]).
//! Retrying is the client's job ([`Error::is_retryable`] decides it), not
//! this module's.

use esf_proto::wire::{LEADER_ADDR_METADATA, LEADER_ID_METADATA, is_transport_failure};

/// Errors returned by [`crate::Client`]. New kinds may be added: match
/// with a `_` arm, or classify with [`Error::is_retryable`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid; the message names the field and the reason.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An endpoint string could not be used.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The revision asked for is compacted or in the future.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// Something named does not exist (e.g. a lease).
    #[error("not found: {0}")]
    NotFound(String),
    /// What the request creates exists already (e.g. a lease id or a
    /// durable subscription name).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request cannot be applied in the current state (e.g. an expired
    /// session sequence or a wrong expected version).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The caller is known but not allowed to do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request carries no valid credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The node that answered does not lead what the request needs; the
    /// hint names the leader when the node knows it. The client follows
    /// the hint itself; callers see this only from a call to one named
    /// node (e.g. [`crate::Client::status_all`]) or a stream's end.
    #[error("unavailable: {message}")]
    NotLeader {
        /// The node's message.
        message: String,
        /// Where the leader is, as far as the node knows.
        leader: LeaderHint,
    },
    /// No endpoint could serve the request before the deadline; a write's
    /// outcome is unknown (retrying with the same session is safe).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bound was reached: the storage quota (the message starts with
    /// "quota:"; deletes or compaction free space) or a message size limit.
    /// Retrying unchanged does not help.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The server failed (or answered with a code the client does not
    /// expect, named in the message).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where a node that refused a request as not the leader says the leader
/// is (the `esf-leader-id` / `esf-leader-addr` metadata of its answer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: Option<u64>,
    /// The leader's client address (`host:port`).
    pub addr: Option<String>,
}

impl LeaderHint {
    /// The hint in a status's metadata, if it carries one.
    pub fn from_status(s: &tonic::Status) -> Option<LeaderHint> {
        let get = |key| s.metadata().get(key).and_then(|v| v.to_str().ok());
        let hint = LeaderHint {
            id: get(LEADER_ID_METADATA).and_then(|v| v.parse().ok()),
            addr: get(LEADER_ADDR_METADATA).map(str::to_string),
        };
        (hint.id.is_some() || hint.addr.is_some()).then_some(hint)
    }
}

impl Error {
    /// Whether retrying the same request later (the client does so itself
    /// until its deadline) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::NotLeader { .. })
    }

    /// The leader a refusing node named, if this is a not-leader answer.
    pub fn leader_hint(&self) -> Option<&LeaderHint> {
        match self {
            Error::NotLeader { leader, .. } => Some(leader),
            _ => None,
        }
    }

    /// The error a gRPC status means to a caller: its code's variant with
    /// its message, [`Error::Unavailable`] for a broken connection
    /// (whatever its code), [`Error::NotLeader`] for UNAVAILABLE with a
    /// leader hint.
    pub fn from_status(s: &tonic::Status) -> Error {
        use tonic::Code;
        let msg = s.message().to_string();
        // Another attempt, maybe on another endpoint, can succeed.
        if is_transport_failure(s) {
            return Error::Unavailable(msg);
        }
        match s.code() {
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::OutOfRange => Error::OutOfRange(msg),
            Code::NotFound => Error::NotFound(msg),
            Code::AlreadyExists => Error::AlreadyExists(msg),
            Code::FailedPrecondition => Error::FailedPrecondition(msg),
            Code::PermissionDenied => Error::PermissionDenied(msg),
            Code::Unauthenticated => Error::Unauthenticated(msg),
            Code::Unavailable => match LeaderHint::from_status(s) {
                Some(leader) => Error::NotLeader { message: msg, leader },
                None => Error::Unavailable(msg),
            },
            // The attempt's outcome is unknown: retried like a lost
            // connection (writes carry their session).
            Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => Error::Unavailable(msg),
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            Code::Internal | Code::DataLoss | Code::Unimplemented | Code::Ok => {
                Error::Internal(format!("{:?}: {msg}", s.code()))
            }
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        Error::from_status(&s)
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// The variant each code maps to, by name (the message is kept).
    fn kind(e: &Error) -> &'static str {
        match e {
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::InvalidEndpoint { .. } => "InvalidEndpoint",
            Error::OutOfRange(_) => "OutOfRange",
            Error::NotFound(_) => "NotFound",
            Error::AlreadyExists(_) => "AlreadyExists",
            Error::FailedPrecondition(_) => "FailedPrecondition",
            Error::PermissionDenied(_) => "PermissionDenied",
            Error::Unauthenticated(_) => "Unauthenticated",
            Error::NotLeader { .. } => "NotLeader",
            Error::Unavailable(_) => "Unavailable",
            Error::ResourceExhausted(_) => "ResourceExhausted",
            Error::Internal(_) => "Internal",
        }
    }

    #[test]
    fn every_code_maps_to_its_variant() {
        let table = [
            (Code::Ok, "Internal", false),
            (Code::Cancelled, "Unavailable", true),
            (Code::Unknown, "Unavailable", true),
            (Code::InvalidArgument, "InvalidArgument", false),
            (Code::DeadlineExceeded, "Unavailable", true),
            (Code::NotFound, "NotFound", false),
            (Code::AlreadyExists, "AlreadyExists", false),
            (Code::PermissionDenied, "PermissionDenied", false),
            (Code::ResourceExhausted, "ResourceExhausted", false),
            (Code::FailedPrecondition, "FailedPrecondition", false),
            (Code::Aborted, "Unavailable", true),
            (Code::OutOfRange, "OutOfRange", false),
            (Code::Unimplemented, "Internal", false),
            (Code::Internal, "Internal", false),
            (Code::Unavailable, "Unavailable", true),
            (Code::DataLoss, "Internal", false),
            (Code::Unauthenticated, "Unauthenticated", false),
        ];
        // Every code is in the table once (codes are 0..=16).
        assert_eq!(table.len(), 17);
        for (i, (code, _, _)) in table.iter().enumerate() {
            assert_eq!(*code as usize, i, "table order");
        }
        for (code, want, retryable) in table {
            let e = Error::from_status(&tonic::Status::new(code, "the reason"));
            assert_eq!(kind(&e), want, "{code:?}");
            assert_eq!(e.is_retryable(), retryable, "{code:?}");
            assert!(e.to_string().contains("the reason"), "{code:?}: {e}");
            assert_eq!(e.leader_hint(), None, "{code:?}");
        }
    }

    #[test]
    fn a_not_leader_answer_carries_its_hint() {
        let mut s = tonic::Status::unavailable("not the leader; leader is node 3");
        s.metadata_mut().insert(LEADER_ID_METADATA, "3".parse().expect("ascii"));
        s.metadata_mut()
            .insert(LEADER_ADDR_METADATA, "10.0.0.3:2379".parse().expect("ascii"));
        let e = Error::from(s);
        assert!(e.is_retryable());
        assert_eq!(
            e.leader_hint(),
            Some(&LeaderHint {
                id: Some(3),
                addr: Some("10.0.0.3:2379".into())
            })
        );
        assert_eq!(e.to_string(), "unavailable: not the leader; leader is node 3");

        let mut only_addr = tonic::Status::unavailable("forwarded");
        only_addr
            .metadata_mut()
            .insert(LEADER_ADDR_METADATA, "h:1".parse().expect("ascii"));
        let hint = Error::from_status(&only_addr).leader_hint().cloned();
        assert_eq!(hint.and_then(|h| h.addr).as_deref(), Some("h:1"));
    }

    #[test]
    fn a_broken_connection_is_unavailable_whatever_its_code() {
        // tonic's status for a connection that broke under a call (its
        // code would be UNKNOWN; for an h2 reset, INTERNAL or others).
        let s = tonic::Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        assert!(Error::from_status(&s).is_retryable(), "{s:?}");
        // The same failure relayed by a node arrives as UNAVAILABLE (the
        // node classified it); its text alone never decides.
        let relayed = tonic::Status::unavailable("a peer node's connection failed: broken pipe");
        assert_eq!(kind(&Error::from_status(&relayed)), "Unavailable");
        let text_only = tonic::Status::internal("h2 protocol error: broken pipe");
        assert_eq!(kind(&Error::from_status(&text_only)), "Internal");
        // A server's own INTERNAL stays one.
        let answer = tonic::Status::internal("storage: corrupt record");
        assert_eq!(kind(&Error::from_status(&answer)), "Internal");
    }
}
