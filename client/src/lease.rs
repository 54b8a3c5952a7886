//! The Lease service: grant, revoke, keep alive (once, or for as long as
//! the caller wants over a stream at the leader), and time to live.
//!
//! Keys and registry instances attached to a lease go when it expires or
//! is revoked. Keeping a lease alive is the caller's job: nothing here
//! renews a lease in the background except [`Client::lease_keep_alive_forever`]
//! while its future is polled.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::endpoint::LeaseStub;
use crate::{Client, Error, Result, pb};

/// The request sender of an open keep-alive stream.
type KeepAliveSender = tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>;

impl Client {
    /// Grants a lease of `ttl_secs` seconds (`id` 0: the cluster picks one).
    pub async fn lease_grant(&self, ttl_secs: u64, id: u64) -> Result<pb::LeaseGrantResponse> {
        let req = pb::LeaseGrantRequest {
            ttl_secs,
            id,
            session: None,
        };
        self.write(
            "lease grant",
            req,
            |mut c: LeaseStub, r| async move { c.grant(r).await },
        )
        .await
    }

    /// Revokes a lease, deleting its keys.
    pub async fn lease_revoke(&self, id: u64) -> Result<pb::LeaseRevokeResponse> {
        let req = pb::LeaseRevokeRequest { id, session: None };
        self.write(
            "lease revoke",
            req,
            |mut c: LeaseStub, r| async move { c.revoke(r).await },
        )
        .await
    }

    /// Restarts a lease's countdown once (call it well within the TTL, e.g.
    /// every third of it).
    pub async fn lease_keep_alive(&self, id: u64) -> Result<pb::LeaseKeepAliveResponse> {
        self.ask(
            "lease keepalive",
            pb::LeaseKeepAliveRequest { id },
            |mut c: LeaseStub, r| async move { c.keep_alive(r).await },
        )
        .await
    }

    /// The former name of [`Client::lease_keep_alive`].
    pub async fn lease_keepalive(&self, id: u64) -> Result<pb::LeaseKeepAliveResponse> {
        self.lease_keep_alive(id).await
    }

    /// Keeps lease `id` alive over a `KeepAliveStream` at the leader,
    /// renewing every third of its TTL and calling `on_renewed` after each
    /// renewal. Reopens at the new leader when its node fails or stops
    /// leading. Returns `NotFound` once the lease is gone (expired or
    /// revoked), or an error if no leader answers within the retry deadline.
    /// Runs until then: drop (or abort) the future to stop keeping it alive.
    pub async fn lease_keep_alive_forever(
        &self,
        id: u64,
        mut on_renewed: impl FnMut(&pb::LeaseKeepAliveResponse),
    ) -> Result<()> {
        loop {
            // The attempt that opened the stream leaves its sender here.
            let sender: Arc<Mutex<Option<KeepAliveSender>>> = Arc::default();
            let slot = sender.clone();
            let mut responses = self
                .call_at(None, "lease keepalive stream", move |mut c: LeaseStub| {
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    *slot.lock().expect("keepalive sender lock poisoned") = Some(tx);
                    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
                    async move { c.keep_alive_stream(requests).await }
                })
                .await?;
            let Some(tx) = sender.lock().expect("keepalive sender lock poisoned").take() else {
                continue;
            };
            loop {
                if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                match tokio::time::timeout(self.inner.opts.request_timeout, responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl_secs == 0 => {
                        return Err(Error::NotFound(format!("lease {id} not found (expired or revoked)")));
                    }
                    Ok(Ok(Some(r))) => {
                        on_renewed(&r);
                        // Renewal cadence: a third of the TTL leaves two
                        // renewals of slack before expiry.
                        tokio::time::sleep(Duration::from_millis((r.ttl_secs * 1000 / 3).max(100))).await;
                    }
                    Ok(Err(s)) => {
                        let err = Error::from_status(&s);
                        if !err.is_retryable() {
                            return Err(err);
                        }
                        tracing::info!(lease = id, error = %s.message(), "keepalive stream lost; reopening");
                        break;
                    }
                    Ok(Ok(None)) | Err(_) => {
                        tracing::info!(lease = id, "keepalive stream ended; reopening");
                        break;
                    }
                }
            }
        }
    }

    /// Granted TTL, time left, and optionally the attached keys.
    pub async fn lease_ttl(&self, id: u64, keys: bool) -> Result<pb::LeaseTimeToLiveResponse> {
        self.ask(
            "lease ttl",
            pb::LeaseTimeToLiveRequest { id, keys },
            |mut c: LeaseStub, r| async move { c.time_to_live(r).await },
        )
        .await
    }
}
