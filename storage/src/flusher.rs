//! Group commit: one WAL fsync covers every write issued before it.
//!
//! Writers put their batch into RocksDB without syncing (the DB runs with
//! `manual_wal_flush`, so the WAL bytes sit in a user-space buffer), take a
//! *ticket* (a sequence number issued after their write returned), and ask the
//! flusher for durability up to that ticket. The flusher thread takes every
//! pending request, notes the highest ticket issued so far, calls
//! `flush_wal(sync = true)` once, and then completes every request whose
//! ticket it covered. While one fsync runs, new requests queue up and share
//! the next one: there is no linger delay, so a lone writer pays exactly one
//! fsync and concurrent writers (of any group) share them.
//!
//! Invariant: a request completes `Ok` only after an fsync that started after
//! its write returned. `synced_through()` never exceeds the tickets issued
//! before the last completed fsync began.
//!
//! Not done here: retries. A failed fsync fails every waiting request and all
//! later ones (fsync errors are not retryable: the page cache state is
//! unknown, see "fsyncgate"); the node must stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::error::{Result, StorageError};

/// Capacity of the flush request queue: bounds memory if the disk stalls;
/// writers block (asynchronously) once it is full.
pub const FLUSH_QUEUE_CAPACITY: usize = 65_536;

/// Called with the outcome of the fsync that covers a ticket, on the
/// flusher thread, in the order the requests were queued. Must not block.
pub(crate) type OnDurable = Box<dyn FnOnce(Result<(), String>) + Send>;

type Waiter = (u64, OnDurable);

/// Handle to the flusher thread; cheap to share.
pub(crate) struct Flusher {
    tickets: AtomicU64,
    shared: Arc<Shared>,
    queue: Mutex<Option<mpsc::Sender<Waiter>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    synced_through: AtomicU64,
    fsyncs: AtomicU64,
    failed: Mutex<Option<String>>,
}

impl Flusher {
    /// Starts the flusher thread. `sync_wal` must durably persist every WAL
    /// byte written before it was called.
    pub(crate) fn start<F>(sync_wal: F) -> Arc<Flusher>
    where
        F: Fn() -> std::result::Result<(), String> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Waiter>(FLUSH_QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            synced_through: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            failed: Mutex::new(None),
        });
        let flusher = Arc::new(Flusher {
            tickets: AtomicU64::new(0),
            shared: shared.clone(),
            queue: Mutex::new(Some(tx)),
            thread: Mutex::new(None),
        });
        let weak = Arc::downgrade(&flusher);
        let handle = std::thread::Builder::new()
            .name("esf-wal-flusher".into())
            .spawn(move || run(rx, shared, weak, sync_wal))
            .expect("spawning the wal flusher thread");
        *flusher.thread.lock().expect("flusher thread mutex") = Some(handle);
        flusher
    }

    /// Issues a ticket for a write that has just returned from RocksDB.
    pub(crate) fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn issued(&self) -> u64 {
        self.tickets.load(Ordering::SeqCst)
    }

    /// Highest ticket known durable.
    pub(crate) fn synced_through(&self) -> u64 {
        self.shared.synced_through.load(Ordering::SeqCst)
    }

    /// Number of WAL fsyncs performed.
    pub(crate) fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::SeqCst)
    }

    /// Waits until the write holding `ticket` is durable.
    pub(crate) async fn wait_durable(&self, ticket: u64) -> Result<()> {
        if let Some(msg) = self.shared.failed.lock().expect("flusher failure mutex").clone() {
            return Err(StorageError::FlusherStopped(msg));
        }
        if self.synced_through() >= ticket {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.on_durable(
            ticket,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        )
        .await;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StorageError::FlusherStopped(msg)),
            Err(_) => Err(StorageError::FlusherStopped("flusher dropped the request".into())),
        }
    }

    /// Calls `f` once the write holding `ticket` is durable (or with the
    /// reason it never will be). Calls for one caller run in the order that
    /// caller queued them. Returns once `f` is queued (waiting only while the
    /// bounded queue is full), not when it has run.
    pub(crate) async fn on_durable(&self, ticket: u64, f: OnDurable) {
        if let Some(msg) = self.shared.failed.lock().expect("flusher failure mutex").clone() {
            return f(Err(msg));
        }
        let sender = self.queue.lock().expect("flusher queue mutex").clone();
        let Some(sender) = sender else {
            return f(Err("store closed".into()));
        };
        // Even when the ticket is already durable, go through the queue so
        // callbacks keep their order. The queue is bounded; sending waits
        // when the disk stalls.
        if let Err(mpsc::error::SendError((_, f))) = sender.send((ticket, f)).await {
            f(Err("flusher thread exited".into()));
        }
    }

    /// Stops the thread after it has served every queued request.
    pub(crate) fn stop(&self) {
        drop(self.queue.lock().expect("flusher queue mutex").take());
        if let Some(h) = self.thread.lock().expect("flusher thread mutex").take() {
            let _ = h.join();
        }
    }
}

fn run<F>(mut rx: mpsc::Receiver<Waiter>, shared: Arc<Shared>, flusher: std::sync::Weak<Flusher>, sync_wal: F)
where
    F: Fn() -> std::result::Result<(), String>,
{
    let mut waiting: Vec<Waiter> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        waiting.push(first);
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        // Every ticket issued up to now belongs to a write that has returned,
        // so its WAL bytes are in RocksDB's buffer and this fsync covers it.
        let covered = match flusher.upgrade() {
            Some(f) => f.issued(),
            None => break,
        };
        let outcome = sync_wal();
        match &outcome {
            Ok(()) => {
                shared.fsyncs.fetch_add(1, Ordering::SeqCst);
                shared.synced_through.fetch_max(covered, Ordering::SeqCst);
            }
            Err(msg) => {
                error!(error = %msg, "wal fsync failed; storage is no longer durable");
                *shared.failed.lock().expect("flusher failure mutex") = Some(msg.clone());
            }
        }
        // Requests are only queued after their ticket was issued, and
        // `covered` was read after they were taken, so this fsync covers
        // every one of them.
        for (ticket, f) in waiting.drain(..) {
            debug_assert!(
                outcome.is_err() || ticket <= covered,
                "fsync must cover every waiter it completes"
            );
            f(outcome.clone());
        }
    }
}
