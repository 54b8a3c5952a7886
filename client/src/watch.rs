//! [`ResumableWatch`]: a config or registry watch that survives the loss
//! of its node, resuming from the revision after the last one delivered
//! (the reopen loop is `resume`'s).
//!
//! Responses arrive once each and in order. A watch resumed below the
//! cluster's compaction revision gets what the node sends for that case
//! (a snapshot response, or OUT_OF_RANGE, returned at once). Opening a
//! watch and choosing its start revision is `kv` / `registry`'s part.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use futures_core::stream::Stream;

use crate::resume::{Cursor, Resumable};
use crate::{Client, Result, Streaming, pb};

/// A watch request [`ResumableWatch`] can reopen: a config watch or a
/// registry watch.
pub trait WatchRequest: Clone + Send + Sync + Unpin + 'static {
    /// Responses of the stream.
    type Response: Send + 'static;
    /// Opens the stream on the first endpoint that answers.
    fn open(&self, client: &Client) -> impl Future<Output = Result<Streaming<Self::Response>>> + Send;
    /// The request starting after revision `delivered`.
    fn resume_after(&self, delivered: u64) -> Self;
    /// First revision the request asks for.
    fn start_revision(&self) -> u64;
    /// The response's header revision (everything up to it delivered).
    fn revision(resp: &Self::Response) -> Option<u64>;
    /// The cancel reason, if the node canceled the watch.
    fn canceled(resp: &Self::Response) -> Option<&str>;
}

impl WatchRequest for pb::WatchRequest {
    type Response = pb::WatchResponse;
    fn open(&self, client: &Client) -> impl Future<Output = Result<Streaming<pb::WatchResponse>>> + Send {
        client.watch(self.clone())
    }
    fn resume_after(&self, delivered: u64) -> Self {
        Client::watch_from(self, delivered)
    }
    fn start_revision(&self) -> u64 {
        self.start_revision
    }
    fn revision(resp: &pb::WatchResponse) -> Option<u64> {
        resp.header.as_ref().map(|h| h.revision)
    }
    fn canceled(resp: &pb::WatchResponse) -> Option<&str> {
        resp.canceled.then_some(resp.cancel_reason.as_str())
    }
}

impl WatchRequest for pb::RegistryWatchRequest {
    type Response = pb::RegistryWatchResponse;
    fn open(&self, client: &Client) -> impl Future<Output = Result<Streaming<pb::RegistryWatchResponse>>> + Send {
        client.registry_watch(self.clone())
    }
    fn resume_after(&self, delivered: u64) -> Self {
        pb::RegistryWatchRequest {
            start_revision: delivered + 1,
            ..self.clone()
        }
    }
    fn start_revision(&self) -> u64 {
        self.start_revision
    }
    fn revision(resp: &pb::RegistryWatchResponse) -> Option<u64> {
        resp.header.as_ref().map(|h| h.revision)
    }
    fn canceled(resp: &pb::RegistryWatchResponse) -> Option<&str> {
        resp.canceled.then_some(resp.cancel_reason.as_str())
    }
}

/// A watch's position: its request and the revision delivered.
struct WatchCursor<R> {
    req: R,
    /// Every change up to this revision has been returned.
    delivered: u64,
}

impl<R: WatchRequest> Cursor for WatchCursor<R> {
    type Response = R::Response;
    type Stream = Streaming<R::Response>;
    const WHAT: &'static str = "watch";

    fn open(&self, client: &Client) -> BoxFuture<'static, Result<Streaming<R::Response>>> {
        let req = self.req.resume_after(self.delivered);
        let client = client.clone();
        Box::pin(async move { req.open(&client).await })
    }

    fn advance(&mut self, resp: &R::Response) -> Option<String> {
        if let Some(reason) = R::canceled(resp) {
            return Some(reason.to_string());
        }
        if let Some(r) = R::revision(resp) {
            self.delivered = self.delivered.max(r);
        }
        None
    }
}

/// A watch that, when its node goes away (or cancels it as too slow),
/// reopens on any endpoint from the revision after the last one delivered,
/// so its responses have every change once, in order. Gives up after
/// [`crate::WATCH_MAX_REOPENS`] lost streams in a row without a response;
/// an error retrying cannot help is returned at once. `next` is
/// cancel-safe (dropping it, e.g. on a timeout, loses nothing).
///
/// Also a [`Stream`] of the same results, which ends after an error that
/// retrying cannot help.
pub struct ResumableWatch<R: WatchRequest = pb::WatchRequest>(Resumable<WatchCursor<R>>);

impl<R: WatchRequest> ResumableWatch<R> {
    /// Follows `req`, which must name its start revision (not 0).
    pub fn new(client: Client, req: R) -> Self {
        let delivered = req.start_revision().saturating_sub(1);
        ResumableWatch(Resumable::new(client, WatchCursor { req, delivered }))
    }

    /// The next response (events, a snapshot, or a progress notification).
    pub async fn next(&mut self) -> Result<R::Response> {
        self.0.next().await
    }

    /// Every change up to this revision has been returned.
    pub fn delivered(&self) -> u64 {
        self.0.cursor.delivered
    }
}

impl<R: WatchRequest> Stream for ResumableWatch<R> {
    type Item = Result<R::Response>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_item(cx)
    }
}
