//! The watch engine: one task per watch that catches up through the meta
//! store's change log and then follows new revisions, into a bounded
//! channel.
//!
//! Bounds: a watcher that falls [`WATCH_BUFFER_RESPONSES`] responses
//! behind is cancelled with the revision to resume from (the buffer is
//! bounded in responses, not bytes: a response holds at most
//! [`WATCH_MAX_EVENTS_PER_RESPONSE`] events). Below the compaction
//! revision a watch starts with the current state as a snapshot. Not here:
//! forwarding (a watch is served by the node it is opened on) or the gRPC
//! types of the stream (`api/config.rs`, `api/registry.rs` map them).

use std::sync::Arc;
use std::time::Duration;

use esf_proto::v1 as pb;
use esf_raft::group::MetaGroup;

use crate::context::Ctx;
use crate::convert;
use crate::error::{Error, Result};

/// Responses a watcher may fall behind by before it is cancelled (it can
/// resume from the revision in the cancel response).
pub const WATCH_BUFFER_RESPONSES: usize = 1024;
/// Most events in one watch response.
pub const WATCH_MAX_EVENTS_PER_RESPONSE: usize = 1000;

/// The responses of one watch, in order; an error ends it.
pub type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchResponse, Error>>;

/// Starts a watch served by this node (see [`run_watch`]); `field`
/// names the request in errors.
pub fn start_watch(
    ctx: &Ctx,
    field: &str,
    range: esf_raft::command::KeyRange,
    start_revision: u64,
    prev_kv: bool,
    progress_notify_ms: u64,
) -> Result<WatchStream> {
    let current = ctx.meta.store().revision();
    if start_revision > current + 1 {
        return Err(Error::OutOfRange(format!(
            "{field}.start_revision: {start_revision} is in the future; the current revision is {current}"
        )));
    }
    // "From now" is now, when the call is answered, not when the
    // watch's task first runs: a change acknowledged after this call
    // returns is always delivered.
    let start_revision = if start_revision == 0 {
        current + 1
    } else {
        start_revision
    };
    let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER_RESPONSES);
    let progress = (progress_notify_ms > 0).then(|| Duration::from_millis(progress_notify_ms));
    tokio::spawn(run_watch(
        ctx.meta.clone(),
        range,
        start_revision,
        prev_kv,
        progress,
        tx,
        ctx.stop.clone(),
    ));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
type WatchSender = tokio::sync::mpsc::Sender<Result<pb::WatchResponse, Error>>;

/// One watch: catches up from `next` through the store's changes log, then
/// follows new revisions. Below the compaction revision it sends the current
/// state as a snapshot first. Responses go into a bounded channel; a watcher
/// that lets it fill up is cancelled with the revision to resume from.
async fn run_watch(
    meta: Arc<MetaGroup>,
    range: esf_raft::command::KeyRange,
    start: u64,
    prev_kv: bool,
    progress: Option<Duration>,
    tx: WatchSender,
    meta_stop: tokio::sync::watch::Receiver<bool>,
) {
    use esf_raft::command::Rejection;
    use esf_raft::meta::ReadError;
    let store = meta.store().clone();
    let mut revisions = store.subscribe_revision();
    let mut next = if start == 0 { store.revision() + 1 } else { start };
    // Every change up to this revision has been sent.
    let mut delivered = next - 1;
    let response = |revision: u64| pb::WatchResponse {
        header: Some(convert::header(meta.header(revision))),
        ..Default::default()
    };
    let cancel = |tx: &WatchSender, delivered: u64, why: &str| {
        let mut c = response(delivered);
        c.canceled = true;
        c.cancel_reason = format!("{why}; resume from revision {}", delivered + 1);
        let _ = tx.try_send(Ok(c));
    };
    // Sends `resp`, which completes revision `done`; false once the watcher
    // is cancelled (its buffer is full: the cancel names the first revision
    // it has not been sent).
    let offer = |tx: &WatchSender, resp: pb::WatchResponse, done: u64, delivered: &mut u64| -> bool {
        // Keep the last slot for the cancel response.
        if tx.capacity() <= 1 {
            cancel(
                tx,
                *delivered,
                &format!("watcher too slow: {WATCH_BUFFER_RESPONSES} responses not yet received"),
            );
            return false;
        }
        if tx.try_send(Ok(resp)).is_err() {
            return false;
        }
        *delivered = done;
        true
    };
    let mut stop = meta_stop.clone();
    loop {
        let current = store.revision();
        if next <= current {
            match store.events(&range, next, current, prev_kv) {
                Ok((events, upto)) => {
                    let chunks: Vec<&[esf_raft::meta::WatchEvent]> =
                        events.chunks(WATCH_MAX_EVENTS_PER_RESPONSE).collect();
                    for (i, chunk) in chunks.iter().enumerate() {
                        let last = i + 1 == chunks.len();
                        // A revision split across responses is complete only
                        // in the response with its last event.
                        let done = if last {
                            upto
                        } else {
                            let r = chunk.last().map_or(upto, |e| e.revision);
                            if chunks[i + 1].first().map(|e| e.revision) == Some(r) {
                                r - 1
                            } else {
                                r
                            }
                        };
                        let mut resp = response(done);
                        resp.events = chunk.iter().map(convert::event).collect();
                        if !offer(&tx, resp, done, &mut delivered) {
                            return;
                        }
                    }
                    next = upto + 1;
                }
                Err(ReadError::Rejected(Rejection::Compacted { .. })) => {
                    let req = esf_raft::command::RangeRequest {
                        range: range.clone(),
                        revision: 0,
                        limit: 0,
                        count_only: false,
                        keys_only: false,
                    };
                    match store.range(&req) {
                        Ok((res, rev)) => {
                            let mut resp = response(rev);
                            resp.snapshot = true;
                            resp.events = res
                                .kvs
                                .into_iter()
                                .map(|kv| pb::Event {
                                    r#type: pb::event::EventType::Put as i32,
                                    kv: Some(convert::kv(kv)),
                                    prev_kv: None,
                                })
                                .collect();
                            if !offer(&tx, resp, rev, &mut delivered) {
                                return;
                            }
                            next = rev + 1;
                        }
                        Err(e) => {
                            let _ = tx.try_send(Err(Error::Internal(format!("watch snapshot: {e}"))));
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.try_send(Err(Error::Internal(format!("watch: {e}"))));
                    return;
                }
            }
            continue;
        }
        let idle = tokio::time::sleep(progress.unwrap_or(Duration::from_secs(86_400)));
        tokio::select! {
            r = revisions.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = idle, if progress.is_some() => {
                let mut resp = response(next - 1);
                resp.progress = true;
                if !offer(&tx, resp, next - 1, &mut delivered) {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => {
                cancel(&tx, delivered, "this node is shutting down");
                return;
            }
            _ = tx.closed() => return,
        }
    }
}
