//! Client errors, classified by what the caller should do.

/// Errors returned by [`crate::Client`].
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The request cannot be applied in the current state (e.g. an expired
    /// session sequence).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// No endpoint could serve the request before the deadline; a write's
    /// outcome is unknown (retrying with the same session is safe).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bound was reached: the storage quota (the message starts with
    /// "quota:"; deletes or compaction free space) or a message size limit.
    /// Retrying unchanged does not help.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The server failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether retrying the same request later (the client does so itself
    /// until its deadline) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    pub(crate) fn from_status(s: &tonic::Status) -> Error {
        use tonic::Code;
        let msg = s.message().to_string();
        // A broken connection (tonic gives HTTP/2 errors various codes):
        // another attempt, maybe on another endpoint, can succeed.
        if msg.contains("h2 protocol error") || msg.contains("transport error") {
            return Error::Unavailable(msg);
        }
        match s.code() {
            Code::InvalidArgument => Error::InvalidArgument(msg),
            Code::OutOfRange => Error::OutOfRange(msg),
            Code::NotFound => Error::NotFound(msg),
            Code::FailedPrecondition | Code::AlreadyExists => Error::FailedPrecondition(msg),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                Error::Unavailable(msg)
            }
            Code::ResourceExhausted => Error::ResourceExhausted(msg),
            _ => Error::Internal(format!("{:?}: {msg}", s.code())),
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
