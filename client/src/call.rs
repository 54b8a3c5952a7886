//! The one retry and failover loop every unary call and stream open goes
//! through, and the write sessions that make its retries safe.
//!
//! - Each attempt has the per-attempt deadline (`request_timeout`); the
//!   whole call has `retry_deadline`.
//! - A retryable failure ([`Error::is_retryable`]) moves on: to the
//!   leader a not-leader answer names, else to the next endpoint; after a
//!   round over every endpoint the loop backs off (exponential, jittered,
//!   at most [`MAX_BACKOFF`]). Any other failure returns at once.
//! - A write carries a session `(client_id, seq, acked_below)`, the same
//!   on every attempt, so a write whose first attempt committed is applied
//!   once. `acked_below` lets the cluster forget finished sequences.
//!
//! It does not decide where a call goes first (see `routing`) and does not
//! resume streams that break after they opened (see `resume`).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use esf_proto::wire::{LEADER_ADDR_METADATA, random_u64};
use tonic::Streaming;

use crate::endpoint::{Node, Stub};
use crate::{Client, Error, Result, pb};

/// Longest pause between two rounds over the endpoints.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A response whose header names the answering node's cluster.
pub(crate) trait Headed {
    /// The cluster id in the response header, if it has one.
    fn cluster_id(&self) -> Option<&str>;
}

macro_rules! headed {
    ($($t:ty),* $(,)?) => {$(
        impl Headed for $t {
            fn cluster_id(&self) -> Option<&str> {
                self.header.as_ref().map(|h| h.cluster_id.as_str())
            }
        }
    )*};
}

headed!(
    pb::PutResponse,
    pb::SetRetentionResponse,
    pb::CreateIndexResponse,
    pb::DropIndexResponse,
    pb::ListIndexesResponse,
    pb::ListRetentionResponse,
    pb::RangeResponse,
    pb::DeleteResponse,
    pb::TxnResponse,
    pb::HistoryResponse,
    pb::CompactResponse,
    pb::LeaseGrantResponse,
    pb::LeaseRevokeResponse,
    pb::LeaseKeepAliveResponse,
    pb::LeaseTimeToLiveResponse,
    pb::MembersResponse,
    pb::TransferLeaderResponse,
    pb::StatusResponse,
    pb::RegisterResponse,
    pb::DeregisterResponse,
    pb::CheckUpdateResponse,
    pb::LookupResponse,
    pb::ListServicesResponse,
    pb::AppendResponse,
    pb::GetEventResponse,
    pb::ReadStreamResponse,
    pb::ReadPartitionResponse,
    pb::QueryEventsResponse,
    pb::DeleteStreamResponse,
    pb::SubscriptionResponse,
    pb::ListSubscriptionsResponse,
    pb::DeleteSubscriptionResponse,
    pb::ConsumersResponse,
    pb::ConsistencyResponse,
    pb::ClusterHealthResponse,
    pb::AuthenticateResponse,
    pb::AuthStatusResponse,
    pb::AuthChangeResponse,
    pb::UserGetResponse,
    pb::UserListResponse,
    pb::RoleGetResponse,
    pb::RoleListResponse,
);

impl<T> Headed for Streaming<T> {
    fn cluster_id(&self) -> Option<&str> {
        None
    }
}

/// A client's write session: its id and the sequence numbers in flight.
pub(crate) struct Sessions {
    client_id: u64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

impl Sessions {
    /// A new session with a random (odd, so never 0) id.
    pub(crate) fn new() -> Self {
        Sessions {
            client_id: random_u64() | 1,
            next_seq: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
        }
    }

    pub(crate) fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The session of a new write: the next sequence number, and the
    /// lowest one still in flight (every one below it is finished).
    fn begin(&self) -> pb::Session {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let mut inflight = self.in_flight.lock().expect("in-flight lock poisoned");
        inflight.insert(seq);
        let acked_below = *inflight.iter().next().expect("the set holds seq, inserted above");
        pb::Session {
            client_id: self.client_id,
            seq,
            acked_below,
        }
    }

    /// The write of `s` is finished (answered or given up).
    fn end(&self, s: &pb::Session) {
        self.in_flight.lock().expect("in-flight lock poisoned").remove(&s.seq);
    }
}

/// A random pause between half of `max` and `max`.
fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().max(1) as u64;
    Duration::from_nanos(nanos / 2 + random_u64() % (nanos / 2 + 1))
}

/// What one attempt on one node gave.
type Attempt<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

impl Client {
    /// One attempt of `f` on `node` within the per-attempt deadline (an
    /// expired deadline is a DEADLINE_EXCEEDED status). `Err` only if the
    /// node's channel cannot be made.
    pub(crate) async fn attempt<S, T, F, Fut>(&self, node: &Node, f: &F) -> Result<Attempt<T>>
    where
        S: Stub,
        F: Fn(S) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let ch = node.pinned(&self.inner.opts, &self.inner.cluster)?;
        let timeout = self.inner.opts.request_timeout;
        Ok(match tokio::time::timeout(timeout, f(S::over(ch))).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        })
    }

    /// Runs `f` against the endpoint `first` (if given), then the preferred
    /// one, failing over and following leader hints until it succeeds,
    /// fails for good, or the deadline passes.
    ///
    /// With credentials ([`crate::ClientOptions::credentials`]) it first
    /// gets a token if it has none, and when a node refuses the token
    /// (UNAUTHENTICATED: expired, or the password changed) gets a new one
    /// and tries once more.
    pub(crate) async fn call_at<S, T, F, Fut>(&self, first: Option<&str>, what: &str, f: F) -> Result<T>
    where
        S: Stub,
        F: Fn(S) -> Fut,
        Fut: Future<Output = Attempt<T>>,
        T: Headed,
    {
        if self.inner.opts.credentials.is_none() {
            return self.call_plain(first, what, &f).await;
        }
        self.authenticate().await?;
        let generation = self.inner.cluster.login_generation();
        match self.call_plain(first, what, &f).await {
            Err(Error::Unauthenticated(_)) => {
                self.relogin(generation).await?;
                self.call_plain(first, what, &f).await
            }
            r => r,
        }
    }

    /// Logs in now, if the client has credentials and has not yet (calls
    /// do it on their own; this moves the cost of the password check,
    /// tens of milliseconds, before the first call). Concurrent callers
    /// share one login.
    pub async fn authenticate(&self) -> Result<()> {
        if self.inner.opts.credentials.is_none() || self.inner.cluster.logged_in() {
            return Ok(());
        }
        let _one = self.inner.login_lock.lock().await;
        if self.inner.cluster.logged_in() {
            return Ok(());
        }
        self.login().await
    }

    /// Logs in again after a node refused the token of login `generation`,
    /// unless another call already has.
    async fn relogin(&self, generation: u64) -> Result<()> {
        let _one = self.inner.login_lock.lock().await;
        if self.inner.cluster.login_generation() != generation {
            return Ok(());
        }
        self.login().await
    }

    /// Trades the credentials for a token, which every request carries
    /// from then on.
    pub(crate) async fn login(&self) -> Result<()> {
        let Some(c) = self.inner.opts.credentials.clone() else {
            return Ok(());
        };
        self.inner.cluster.forget_token();
        let req = pb::AuthenticateRequest {
            name: c.user,
            password: c.password,
        };
        let resp = self
            .call_plain(None, "authenticate", &|mut s: crate::endpoint::AuthStub| {
                let r = req.clone();
                async move { s.authenticate(r).await }
            })
            .await;
        match resp {
            Ok(r) => self.inner.cluster.set_token(Some(&r.token)),
            // Auth is off: calls go without a token (and get one once it
            // is on and a node refuses them).
            Err(Error::FailedPrecondition(_)) => self.inner.cluster.set_token(None),
            Err(e) => Err(e),
        }
    }

    /// [`Client::call_at`] without authenticating.
    async fn call_plain<S, T, F, Fut>(&self, first: Option<&str>, what: &str, f: &F) -> Result<T>
    where
        S: Stub,
        F: Fn(S) -> Fut,
        Fut: Future<Output = Attempt<T>>,
        T: Headed,
    {
        let deadline = tokio::time::Instant::now() + self.inner.opts.retry_deadline;
        let mut tried_this_round = 0usize;
        let mut round = 0u32;
        let mut last;
        let mut first = first.and_then(|a| self.node_index(a));
        loop {
            let (idx, node, n) = self.pick(first.take());
            let status = match self.attempt(&node, f).await? {
                Ok(resp) => {
                    self.follow_answer(resp.metadata());
                    let resp = resp.into_inner();
                    if let Some(id) = resp.cluster_id() {
                        self.inner.cluster.learn(id);
                    }
                    return Ok(resp);
                }
                Err(s) => s,
            };
            let err = Error::from_status(&status);
            if !err.is_retryable() {
                return Err(err);
            }
            last = format!("{}: {}", node.uri, status.message());
            tracing::debug!(endpoint = %node.uri, code = ?status.code(), "retrying {what}");
            let hint = status
                .metadata()
                .get(LEADER_ADDR_METADATA)
                .and_then(|v| v.to_str().ok());
            if !self.follow_hint(hint, &node) {
                // Drop a broken channel so the next attempt reconnects.
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
                    node.drop_channel();
                }
                self.prefer_index((idx + 1) % n);
            }
            tried_this_round += 1;
            let gave_up = || {
                Error::Unavailable(format!(
                    "{what}: no endpoint succeeded within {:?}; last: {last}",
                    self.inner.opts.retry_deadline
                ))
            };
            if tried_this_round >= n {
                tried_this_round = 0;
                round += 1;
                let backoff = jitter((Duration::from_millis(50) * 2u32.saturating_pow(round.min(5))).min(MAX_BACKOFF));
                if tokio::time::Instant::now() + backoff >= deadline {
                    return Err(gave_up());
                }
                // Retry pacing between rounds over every endpoint.
                tokio::time::sleep(backoff).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(gave_up());
            }
        }
    }

    /// [`Client::call_at`] the preferred endpoint, sending `req` (a clone
    /// of it per attempt).
    pub(crate) async fn ask<S, Q, T, F, Fut>(&self, what: &str, req: Q, f: F) -> Result<T>
    where
        S: Stub,
        Q: Clone,
        F: Fn(S, Q) -> Fut,
        Fut: Future<Output = Attempt<T>>,
        T: Headed,
    {
        self.call_at(None, what, |c| f(c, req.clone())).await
    }

    /// [`Client::ask`] for a write: `req` goes in a new session, the same
    /// on every attempt.
    pub(crate) async fn write<S, Q, T, F, Fut>(&self, what: &str, req: Q, f: F) -> Result<T>
    where
        S: Stub,
        Q: InSession,
        F: Fn(S, Q) -> Fut,
        Fut: Future<Output = Attempt<T>>,
        T: Headed,
    {
        let session = self.inner.sessions.begin();
        let r = self.ask(what, req.in_session(session), f).await;
        self.inner.sessions.end(&session);
        r
    }
}

/// A write request, which carries its session.
pub(crate) trait InSession: Clone {
    /// The request in session `s`.
    fn in_session(self, s: pb::Session) -> Self;
}

macro_rules! in_session {
    ($($t:ty),* $(,)?) => {$(
        impl InSession for $t {
            fn in_session(self, s: pb::Session) -> Self {
                Self { session: Some(s), ..self }
            }
        }
    )*};
}

in_session!(
    pb::PutRequest,
    pb::DeleteRequest,
    pb::TxnRequest,
    pb::CompactRequest,
    pb::LeaseGrantRequest,
    pb::LeaseRevokeRequest,
    pb::RegisterRequest,
    pb::DeregisterRequest,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_release_acknowledged_sequences() {
        let s = Sessions::new();
        let a = s.begin();
        let b = s.begin();
        assert_eq!((a.seq, a.acked_below), (1, 1));
        assert_eq!((b.seq, b.acked_below), (2, 1));
        s.end(&a);
        let d = s.begin();
        assert_eq!((d.seq, d.acked_below), (3, 2));
        assert_eq!(a.client_id, d.client_id);
        assert_eq!(a.client_id, s.client_id());
        assert_eq!(s.client_id() & 1, 1, "a session id is never 0");
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_its_bound() {
        for max in [Duration::from_nanos(1), Duration::from_millis(50), MAX_BACKOFF] {
            for _ in 0..100 {
                let j = jitter(max);
                assert!(j >= max / 2 && j <= max, "{j:?} of {max:?}");
            }
        }
    }
}
