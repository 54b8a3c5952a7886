//! The one reopen loop behind [`crate::ResumableWatch`] and
//! [`crate::ResumableSubscription`]: a server stream that, when its node
//! goes away (or cancels it as too slow), reopens on any endpoint from the
//! position after the last response it returned.
//!
//! - A [`Cursor`] knows the request and the position reached; the loop
//!   asks it to open the stream from there and shows it every response.
//! - A lost stream (it ended, or failed with a retryable error) is
//!   reopened; so is one the node canceled. After [`WATCH_MAX_REOPENS`]
//!   reopens in a row without a response the loop gives up for good.
//! - An error retrying cannot help (e.g. the start revision was compacted)
//!   is returned at once, never retried as a lost stream.
//! - Polling is cancel-safe: the stream and a pending open live in the
//!   loop, not in the caller's future, so a dropped `next()` loses nothing.
//!
//! It does not deduplicate or reorder: the position it reopens from is
//! what keeps responses once each and in order.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::future::BoxFuture;
use futures_core::stream::Stream;

use crate::{Client, Error, Result};

/// Reopens of a watch or subscription in a row without a response before
/// it gives up.
pub const WATCH_MAX_REOPENS: u32 = 5;

/// What a resumable stream follows: its request and how far it got.
pub(crate) trait Cursor: Send + Unpin + 'static {
    /// Responses of the stream.
    type Response: Send + 'static;
    /// The stream (a gRPC server stream; another in tests).
    type Stream: Stream<Item = std::result::Result<Self::Response, tonic::Status>> + Send + Unpin + 'static;
    /// What it is, for messages ("watch", "subscription").
    const WHAT: &'static str;
    /// Opens the stream from the position reached.
    fn open(&self, client: &Client) -> BoxFuture<'static, Result<Self::Stream>>;
    /// Takes in a response: advances the position, and returns the node's
    /// reason if the node canceled the stream with it.
    fn advance(&mut self, resp: &Self::Response) -> Option<String>;
}

/// Where the underlying stream is.
enum Link<S> {
    /// None open (the next poll opens one).
    Closed,
    /// Being opened.
    Opening(BoxFuture<'static, Result<S>>),
    Open(S),
}

/// The reopen loop over a [`Cursor`].
pub(crate) struct Resumable<C: Cursor> {
    client: Client,
    pub(crate) cursor: C,
    link: Link<C::Stream>,
    /// Streams lost in a row without a response.
    failures: u32,
    /// Set once it gave up; every later poll returns this error again.
    ended: Option<Error>,
    /// As a [`Stream`]: it returned an error retrying cannot help.
    stream_done: bool,
}

/// What to do about a status a stream failed with: `None` if the stream
/// is merely lost (reopen it), else the error to return.
pub(crate) fn fatal(status: &tonic::Status) -> Option<Error> {
    let err = Error::from_status(status);
    (!err.is_retryable()).then_some(err)
}

impl<C: Cursor> Resumable<C> {
    pub(crate) fn new(client: Client, cursor: C) -> Self {
        Resumable {
            client,
            cursor,
            link: Link::Closed,
            failures: 0,
            ended: None,
            stream_done: false,
        }
    }

    /// Whether it gave up for good (its last error repeats).
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    fn lost(&mut self) {
        self.link = Link::Closed;
        self.failures += 1;
    }

    /// The next response, or an error. After an error the next poll opens
    /// the stream again from the position reached, unless it ended.
    pub(crate) fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<C::Response>> {
        loop {
            if let Some(e) = &self.ended {
                return Poll::Ready(Err(e.clone()));
            }
            match &mut self.link {
                Link::Closed => {
                    if self.failures >= WATCH_MAX_REOPENS {
                        let e = Error::Unavailable(format!(
                            "{}: reopened {WATCH_MAX_REOPENS} times without a response",
                            C::WHAT
                        ));
                        self.ended = Some(e.clone());
                        return Poll::Ready(Err(e));
                    }
                    self.link = Link::Opening(self.cursor.open(&self.client));
                }
                Link::Opening(open) => match ready!(open.as_mut().poll(cx)) {
                    Ok(stream) => self.link = Link::Open(stream),
                    Err(e) => {
                        // The call loop retried until its deadline already.
                        self.link = Link::Closed;
                        return Poll::Ready(Err(e));
                    }
                },
                Link::Open(stream) => match ready!(Pin::new(stream).poll_next(cx)) {
                    Some(Ok(resp)) => {
                        if let Some(reason) = self.cursor.advance(&resp) {
                            tracing::info!(what = C::WHAT, %reason, "stream canceled by the node; resuming");
                            self.lost();
                            continue;
                        }
                        self.failures = 0;
                        return Poll::Ready(Ok(resp));
                    }
                    Some(Err(status)) => {
                        if let Some(e) = fatal(&status) {
                            self.link = Link::Closed;
                            return Poll::Ready(Err(e));
                        }
                        tracing::info!(what = C::WHAT, error = %status.message(), "stream lost; resuming elsewhere");
                        self.lost();
                    }
                    None => {
                        tracing::info!(what = C::WHAT, "stream ended; resuming elsewhere");
                        self.lost();
                    }
                },
            }
        }
    }

    /// [`Resumable::poll_step`] as a future.
    pub(crate) async fn next(&mut self) -> Result<C::Response> {
        std::future::poll_fn(|cx| self.poll_step(cx)).await
    }

    /// [`Resumable::poll_step`] as a stream item: the stream ends after an
    /// error retrying cannot help (the resumable is then done).
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<C::Response>>> {
        if self.stream_done {
            return Poll::Ready(None);
        }
        let r = ready!(self.poll_step(cx));
        if matches!(&r, Err(e) if !e.is_retryable() || self.is_ended()) {
            self.stream_done = true;
        }
        Poll::Ready(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tonic::Code;

    /// A scripted stream: its items, then its end.
    struct Script(VecDeque<std::result::Result<u64, tonic::Status>>);

    impl Stream for Script {
        type Item = std::result::Result<u64, tonic::Status>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    /// Responses are revisions; `u64::MAX` is the node canceling the
    /// stream. Each open takes the next script and records where it
    /// started (no script left: a stream that ends at once).
    struct Counter {
        at: u64,
        scripts: Arc<Mutex<VecDeque<Vec<std::result::Result<u64, tonic::Status>>>>>,
        opened_from: Arc<Mutex<Vec<u64>>>,
    }

    impl Cursor for Counter {
        type Response = u64;
        type Stream = Script;
        const WHAT: &'static str = "counter";
        fn open(&self, _: &Client) -> BoxFuture<'static, Result<Script>> {
            self.opened_from.lock().expect("test lock").push(self.at + 1);
            let items = self.scripts.lock().expect("test lock").pop_front().unwrap_or_default();
            Box::pin(std::future::ready(Ok(Script(items.into()))))
        }
        fn advance(&mut self, resp: &u64) -> Option<String> {
            if *resp == u64::MAX {
                return Some("too slow".into());
            }
            self.at = *resp;
            None
        }
    }

    fn resumable(
        scripts: Vec<Vec<std::result::Result<u64, tonic::Status>>>,
    ) -> (Resumable<Counter>, Arc<Mutex<Vec<u64>>>) {
        let client = Client::new(&["127.0.0.1:1"], crate::ClientOptions::default()).expect("valid endpoint");
        let opened_from = Arc::new(Mutex::new(Vec::new()));
        let cursor = Counter {
            at: 0,
            scripts: Arc::new(Mutex::new(scripts.into())),
            opened_from: opened_from.clone(),
        };
        (Resumable::new(client, cursor), opened_from)
    }

    #[tokio::test]
    async fn a_lost_stream_reopens_after_the_last_response() {
        let (mut r, opened_from) = resumable(vec![
            vec![Ok(1), Ok(2), Err(tonic::Status::unavailable("node gone"))],
            vec![Ok(u64::MAX)],
            vec![Ok(3)],
        ]);
        for want in [1, 2, 3] {
            assert_eq!(r.next().await.expect("a response"), want);
        }
        assert_eq!(*opened_from.lock().expect("test lock"), [1, 3, 3]);
    }

    #[tokio::test]
    async fn an_error_retrying_cannot_help_is_returned_at_once() {
        let (mut r, opened_from) = resumable(vec![vec![Ok(1), Err(tonic::Status::out_of_range("compacted"))]]);
        assert_eq!(r.next().await.expect("a response"), 1);
        let e = r.next().await.expect_err("compacted");
        assert!(matches!(e, Error::OutOfRange(_)), "{e}");
        assert_eq!(opened_from.lock().expect("test lock").len(), 1, "not reopened");
        // As a stream it ends there.
        let (mut s, _) = resumable(vec![vec![Err(tonic::Status::permission_denied("no"))]]);
        let first = std::future::poll_fn(|cx| s.poll_item(cx)).await;
        assert!(matches!(first, Some(Err(Error::PermissionDenied(_)))), "{first:?}");
        assert!(std::future::poll_fn(|cx| s.poll_item(cx)).await.is_none());
    }

    #[tokio::test]
    async fn it_gives_up_after_reopens_without_a_response() {
        let (mut r, opened_from) = resumable(Vec::new());
        let e = r.next().await.expect_err("gave up");
        assert!(e.to_string().contains("reopened 5 times"), "{e}");
        assert!(r.is_ended());
        assert_eq!(opened_from.lock().expect("test lock").len(), WATCH_MAX_REOPENS as usize);
        // For good: the same error, no more opens.
        assert_eq!(r.next().await.expect_err("still").to_string(), e.to_string());
        assert_eq!(opened_from.lock().expect("test lock").len(), WATCH_MAX_REOPENS as usize);
    }

    #[test]
    fn only_retryable_failures_count_as_a_lost_stream() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
        ] {
            assert!(fatal(&tonic::Status::new(code, "gone")).is_none(), "{code:?}");
        }
        for code in [
            Code::OutOfRange,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
        ] {
            let e = fatal(&tonic::Status::new(code, "no")).expect("returned at once");
            assert!(!e.is_retryable(), "{code:?}");
        }
    }
}
