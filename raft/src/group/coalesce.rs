//! Coalesces concurrent writes to one group into one Raft entry
//! ([`Op::Batch`]): meta writes ([`Op::coalescable`]) and event appends.
//!
//! Every Raft entry costs the same fixed work whatever it holds: openraft's
//! bookkeeping, a log row, its share of replication messages, and an apply
//! step with its own RocksDB write on every replica. Under load most of a
//! small put is that fixed work, so the leader proposes the writes that
//! are waiting together as one entry.
//!
//! - At most `max_inflight` proposals are in Raft at once. While they are,
//!   new writes wait in the queue; when one finishes, everything queued (up
//!   to `max_commands` commands and `max_bytes` bytes) becomes the next
//!   entry. This is group commit: the batch size follows the load.
//! - No linger: a write that finds a free slot is proposed at once, alone,
//!   as a plain entry (a lone client pays nothing, and a batch of one is
//!   never wrapped).
//! - Each command keeps its own session, revision, result and error (see
//!   `MetaStore::apply_entry`); a batch that fails as a whole (no leader,
//!   deadline) fails each of its writes with the same error.
//! - Only [`Op::coalescable`] commands are queued; the rest are proposed
//!   alone, as before.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::propose;
use crate::command::{Command, Op, OpResult, Response};
use crate::error::{Error, Result};
use crate::types::TypeConfig;

/// Bounds of proposal coalescing in every group (node flags
/// `--propose-batch-max`, `--propose-batch-max-bytes`,
/// `--propose-max-inflight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceOptions {
    /// Most commands in one entry; 0 or 1 turns coalescing off.
    pub max_commands: usize,
    /// An entry takes no more commands once it holds this many bytes of
    /// keys and values (a single larger command is proposed alone).
    pub max_bytes: usize,
    /// Proposals in Raft at once; writes arriving meanwhile are queued and
    /// coalesced.
    pub max_inflight: usize,
}

impl Default for CoalesceOptions {
    fn default() -> Self {
        CoalesceOptions {
            max_commands: 256,
            max_bytes: 1 << 20,
            max_inflight: 2,
        }
    }
}

impl CoalesceOptions {
    fn enabled(&self) -> bool {
        self.max_commands > 1 && self.max_inflight > 0
    }
}

struct Queued {
    cmd: Command,
    bytes: usize,
    reply: oneshot::Sender<Result<Response>>,
}

/// The queue in front of one group's proposals.
pub(crate) struct Coalescer {
    tx: mpsc::Sender<Queued>,
    task: JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Coalescer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Coalescer {
    /// Starts the proposer task for `raft` (group `group`), or `None` when
    /// `opts` turn coalescing off.
    pub(crate) fn start<SM>(
        raft: openraft::Raft<TypeConfig, SM>,
        group: u32,
        opts: CoalesceOptions,
        timeout: Duration,
        heartbeat: Duration,
    ) -> Option<Self>
    where
        SM: openraft::storage::RaftStateMachine<TypeConfig>,
    {
        if !opts.enabled() {
            return None;
        }
        // Enough room for every in-flight proposal's worth of waiting
        // writes; a caller beyond it waits (within its deadline) to queue.
        let (tx, rx) = mpsc::channel(opts.max_commands * (opts.max_inflight + 1));
        let task = tokio::spawn(run(raft, group, rx, opts, timeout, heartbeat));
        Some(Coalescer { tx, task, timeout })
    }

    /// Proposes `cmd` (coalescable) with whatever else is waiting and
    /// returns its own response, within the request deadline.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let (reply, rx) = oneshot::channel();
        let queued = Queued {
            bytes: command_bytes(&cmd),
            cmd,
            reply,
        };
        match tokio::time::timeout_at(deadline, self.tx.send(queued)).await {
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "write not queued within {:?}: the leader's proposal queue is full",
                    self.timeout
                )));
            }
            Ok(Err(_)) => return Err(Error::Unavailable("the group is shutting down".into())),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(Error::Unavailable(format!(
                "write not applied within {:?}",
                self.timeout
            ))),
            Ok(Err(_)) => Err(Error::Unavailable(
                "the group stopped before the write was applied".into(),
            )),
            Ok(Ok(r)) => r,
        }
    }
}

/// Bytes a command adds to an entry, roughly: its keys and values.
fn command_bytes(cmd: &Command) -> usize {
    fn op_bytes(op: &Op) -> usize {
        use crate::command::{KeyRange, TxnOp};
        let range = |r: &KeyRange| match r {
            KeyRange::Key(k) | KeyRange::Prefix(k) => k.len(),
            KeyRange::Between { start, end } => start.len() + end.len(),
        };
        match op {
            Op::Put(p) => p.key.len() + p.value.len(),
            Op::Delete(d) => range(&d.range),
            Op::Txn(t) => {
                let compares: usize = t.compares.iter().map(|c| c.key.len() + 16).sum();
                let ops: usize = t
                    .success
                    .iter()
                    .chain(&t.failure)
                    .map(|o| match o {
                        TxnOp::Put(p) => p.key.len() + p.value.len(),
                        TxnOp::Delete(d) => range(&d.range),
                        TxnOp::Range(r) => range(&r.range),
                    })
                    .sum();
                compares + ops
            }
            Op::AsUser { user, op } => user.len() + op_bytes(op),
            Op::Append(a) => {
                a.stream.len()
                    + a.events
                        .iter()
                        .map(|e| {
                            let meta: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
                            64 + e.event_type.len()
                                + e.correlation_id.len()
                                + e.causation_id.len()
                                + e.data.len()
                                + meta
                        })
                        .sum::<usize>()
            }
            _ => 0,
        }
    }
    // Session, lengths and tags.
    64 + op_bytes(&cmd.op)
}

async fn run<SM>(
    raft: openraft::Raft<TypeConfig, SM>,
    group: u32,
    mut rx: mpsc::Receiver<Queued>,
    opts: CoalesceOptions,
    timeout: Duration,
    heartbeat: Duration,
) where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    let slots = Arc::new(Semaphore::new(opts.max_inflight));
    let mut carry: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < opts.max_commands {
            match rx.try_recv() {
                Ok(q) if bytes + q.bytes <= opts.max_bytes => {
                    bytes += q.bytes;
                    batch.push(q);
                }
                Ok(q) => {
                    carry = Some(q);
                    break;
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            propose_batch(&raft, group, batch, timeout, heartbeat).await;
        });
    }
}

async fn propose_batch<SM>(
    raft: &openraft::Raft<TypeConfig, SM>,
    group: u32,
    mut batch: Vec<Queued>,
    timeout: Duration,
    heartbeat: Duration,
) where
    SM: openraft::storage::RaftStateMachine<TypeConfig>,
{
    if batch.len() == 1 {
        let q = batch.pop().expect("one command");
        let _ = q.reply.send(propose(raft, group, q.cmd, timeout, heartbeat).await);
        return;
    }
    let n = batch.len();
    let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|q| (q.cmd, q.reply)).unzip();
    match propose(raft, group, Command::new(Op::Batch(cmds)), timeout, heartbeat).await {
        Ok(Response {
            result: OpResult::Batch(responses),
            ..
        }) if responses.len() == n => {
            for (r, reply) in responses.into_iter().zip(replies) {
                let _ = reply.send(Ok(r));
            }
        }
        // Rejected whole (never for a batch this leader made): each write
        // gets the rejection.
        Ok(other) => {
            for reply in replies {
                let _ = reply.send(Ok(other.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.duplicate()));
            }
        }
    }
}
