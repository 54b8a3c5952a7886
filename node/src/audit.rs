//! The audit trail: every revision of the meta store (config puts and
//! deletes, registry changes, subscription positions, keys removed with
//! their lease) becomes exactly one event of the stream [`STREAM`].
//!
//! A relay on the meta leader tails the committed revisions in the meta
//! store's change log and appends them in revision order, a batch per
//! append, to `$audit` with an exact expected version. Each event's id is
//! derived from its revision ([`event_id`]), so a repeated append after a
//! crash or a timeout is answered as a duplicate and never doubles an
//! event. After each batch it records how far it got in meta
//! ([`Op::AuditCursor`], no new revision, so it never audits itself); meta
//! never compacts above that cursor, so no revision is compacted before its
//! event exists. It resumes from the later of that cursor and the last
//! event in the stream. Config writes never wait for it: while the audit
//! partition is unavailable it retries with backoff and the lag grows
//! (`esf status`, metric `esf_audit_lag_revisions`).
//!
//! Lease grants and keep-alives create no revision (as in etcd) and so no
//! audit event; a lease that ends shows as the deletion of its keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use esf_proto::v1 as pb;
use esf_raft::command::{Command, KeyRange, Op, Rejection};
use esf_raft::meta::{ReadError, WatchEvent};
use esf_raft::openraft::async_runtime::WatchReceiver;
use prost::Message;
use serde_json::{Value, json};
use tonic::Code;
use tracing::{info, warn};

use crate::context::{Ctx, Origin};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::keyspace::{self, Area};

/// The stream of audit events (streams starting with `$` are ESF's own).
pub const STREAM: &str = keyspace::AUDIT_STREAM;
/// Most revisions relayed in one append.
pub const BATCH_REVISIONS: u64 = 500;
/// An append stops taking revisions past this many bytes of event data.
pub const BATCH_BYTES: usize = 2 << 20;
/// Values of ESF's own records (retention rules, autopilot actions) up to this many bytes
/// are copied into the audit event (as text, if UTF-8); larger ones are
/// described by their size only. Config values never are: reading `$audit`
/// must not reveal a value the reader's permissions on its key would not
/// (and each copy cost bytes in the partition on every replica); the
/// event names the revision, and `esf kv get KEY --rev R` reads the value
/// with the key's own permission while history keeps it.
pub const MAX_VALUE_BYTES: usize = 1024;
/// Deadline of one append or stream read of the relay.
pub const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// The relay records its cursor in meta at most this often (busy or
/// caught up): each record is a meta write, fsynced on every replica, and
/// recording it after every append doubled a lone client's fsyncs.
pub const CURSOR_INTERVAL: Duration = Duration::from_millis(500);
/// When a caught-up relay sees a new revision it waits this long first, so
/// the revisions committed meanwhile share one append (one partition
/// write instead of one per revision). Delays only the audit trail, never
/// a client's write.
pub const LINGER: Duration = Duration::from_millis(5);
/// First and longest wait between failed attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Revisions below this fit an audit event id.
pub const MAX_AUDITED_REVISION: u64 = 1 << 56;

/// The id of the audit event of `revision`: a UUID (version 8) holding
/// "esfaud" and the revision, the same on every attempt and every node.
pub fn event_id(revision: u64) -> [u8; 16] {
    assert!(
        revision < MAX_AUDITED_REVISION,
        "revision {revision} does not fit an audit id"
    );
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(b"esfaud");
    id[6] = 0x80;
    id[8..].copy_from_slice(&revision.to_be_bytes());
    id[8] |= 0x80;
    id
}

/// What the relay reports (status and metrics on the leader).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Audit events appended by this node's relay (duplicates not counted).
    pub relayed: AtomicU64,
    /// Append attempts that failed and were retried.
    pub retries: AtomicU64,
}

/// How a changed key is classified in its audit event.
fn kind_of(key: &[u8]) -> (&'static str, &[u8]) {
    if !keyspace::is_reserved(key) {
        return ("config", key);
    }
    let rest = &key[1..];
    match Area::ALL.into_iter().find(|a| a.name_of(key).is_some()) {
        Some(a) => (a.audit_kind(), rest),
        None => ("internal", rest),
    }
}

fn change_json(e: &WatchEvent) -> (Value, &'static str) {
    let (kind, key) = kind_of(&e.kv.key);
    let mut c = json!({
        "key": String::from_utf8_lossy(key),
        "kind": kind,
        "op": if e.deleted { "delete" } else { "put" },
    });
    if !e.deleted {
        c["version"] = json!(e.kv.version);
        c["value_bytes"] = json!(e.kv.value.len());
        if e.kv.lease != 0 {
            c["lease"] = json!(e.kv.lease);
        }
        if kind == "registry" {
            if let Ok(i) = pb::Instance::decode(e.kv.value.as_slice()) {
                c["service"] = json!(i.service);
                c["instance"] = json!(i.id);
                c["address"] = json!(i.address);
            }
        } else if matches!(kind, "retention" | "autopilot") && e.kv.value.len() <= MAX_VALUE_BYTES {
            if let Ok(s) = std::str::from_utf8(&e.kv.value) {
                c["value"] = json!(s);
            }
        }
    }
    (c, kind)
}

/// The audit event of one revision from its changes (in the order the ops
/// ran). Type: `esf.config.put` / `esf.config.deleted` / `esf.config.changed`
/// (puts and deletes) for config keys, `esf.registry.changed`,
/// `esf.subscription.changed`, `esf.meta.changed` for a mix of kinds. The
/// correlation id is the key when the revision changed one key (so
/// `esf events query --correlation-id KEY` lists a key's changes). `user`
/// is who made the change (auth), recorded in the data and the metadata.
pub fn audit_event(revision: u64, changes: &[WatchEvent], user: Option<&str>) -> pb::EventData {
    let mut list = Vec::with_capacity(changes.len());
    let mut kinds = std::collections::BTreeSet::new();
    let mut bytes = 0;
    for e in changes {
        let (c, kind) = change_json(e);
        kinds.insert(kind);
        // A revision that changed very many keys (a prefix delete, a lease
        // with thousands of keys) lists the first ones only.
        bytes += e.kv.key.len() + 96 + c.get("value").and_then(Value::as_str).map_or(0, str::len);
        if bytes <= MAX_EVENT_DATA_BYTES {
            list.push(c);
        }
    }
    let deletes = changes.iter().filter(|e| e.deleted).count();
    let ty = match kinds.iter().next() {
        Some(&"config") if kinds.len() == 1 => match deletes {
            0 => "esf.config.put",
            d if d == changes.len() => "esf.config.deleted",
            _ => "esf.config.changed",
        },
        Some(&"registry") if kinds.len() == 1 => "esf.registry.changed",
        Some(&"subscription") if kinds.len() == 1 => "esf.subscription.changed",
        Some(&"retention") if kinds.len() == 1 => "esf.retention.changed",
        Some(&"index") if kinds.len() == 1 => "esf.index.changed",
        Some(&"autopilot") if kinds.len() == 1 => "esf.autopilot.changed",
        _ => "esf.meta.changed",
    };
    let correlation_id = match list.as_slice() {
        [one] => one["key"].as_str().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    let mut data = json!({ "revision": revision, "changes": list });
    if let Some(u) = user {
        data["user"] = json!(u);
    }
    if list_len(&data) < changes.len() {
        data["truncated"] = json!(true);
        data["changes_total"] = json!(changes.len());
    }
    pb::EventData {
        id: esf_proto::uuid::format(&event_id(revision)),
        r#type: ty.to_string(),
        correlation_id: if correlation_id.len() <= esf_raft::events::MAX_NAME_BYTES {
            correlation_id
        } else {
            String::new()
        },
        causation_id: String::new(),
        data: serde_json::to_vec(&data).expect("a JSON value always serializes"),
        metadata: std::iter::once(("revision".to_string(), revision.to_string()))
            .chain(user.map(|u| ("user".to_string(), u.to_string())))
            .collect(),
    }
}

/// Bytes of changes one audit event lists at most (the rest are counted
/// in `changes_total`, with `truncated`): well under the 1 MiB event limit.
pub const MAX_EVENT_DATA_BYTES: usize = 256 << 10;

fn list_len(data: &Value) -> usize {
    data["changes"].as_array().map_or(0, Vec::len)
}

/// The revision an audit event records (its `revision` metadata).
pub fn revision_of(e: &pb::RecordedEvent) -> Option<u64> {
    e.metadata.get("revision").and_then(|r| r.parse().ok())
}

/// The revision of `e` if the relay wrote it: it names a revision and its
/// id is [`event_id`] of that revision.
pub fn written_by_relay(e: &pb::RecordedEvent) -> Option<u64> {
    let revision = revision_of(e).filter(|r| *r < MAX_AUDITED_REVISION)?;
    (esf_proto::uuid::parse(&e.id).ok()? == event_id(revision)).then_some(revision)
}

/// Runs the relay whenever this node leads meta, until `stop`.
pub async fn run_relay(ctx: Ctx, stats: Arc<RelayStats>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut metrics = ctx.meta.raft().server_metrics();
    let mut backoff = BACKOFF.0;
    loop {
        if *stop.borrow() {
            return;
        }
        let term = leading_term(&ctx);
        let Some(term) = term else {
            tokio::select! {
                _ = metrics.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let mut relay = Relay {
            ctx: ctx.clone(),
            stats: stats.clone(),
            term,
        };
        match relay.run(&mut stop).await {
            Ok(()) => backoff = BACKOFF.0,
            Err(e) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "audit relay: retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// The term this node leads meta in, if it does (from the server metrics,
/// which change with leadership only, not with every commit).
fn leading_term(ctx: &Ctx) -> Option<u64> {
    use esf_raft::openraft::vote::RaftLeaderId;
    let rx = ctx.meta.raft().server_metrics();
    let m = rx.borrow_watched();
    (m.current_leader == Some(m.id) && m.state.is_leader()).then(|| m.vote.leader_id().term())
}

struct Relay {
    ctx: Ctx,
    stats: Arc<RelayStats>,
    term: u64,
}

impl Relay {
    /// Relays while this node leads in `term`: `Ok` once it no longer does
    /// (or on stop), `Err` on a failure to retry after a pause.
    async fn run(&mut self, stop: &mut tokio::sync::watch::Receiver<bool>) -> Result<()> {
        let store = self.ctx.meta.store().clone();
        let mut revisions = store.subscribe_revision();
        // One receiver, its current value marked seen: `changed` then waits
        // for a real change (a fresh clone would report one at once).
        let mut metrics = self.ctx.meta.raft().server_metrics();
        metrics.borrow_and_update();
        // A new cluster caps compaction from the start (an upgraded one at
        // what is still readable), before the relay can append anything.
        if store.audit_cursor()?.is_none() {
            self.record(store.state().compact_revision).await?;
        }
        let (mut next, mut version) = self.resume_point().await?;
        // What meta has recorded, not where the stream is: a relay that
        // appended and died before recording leaves the stream ahead of
        // the cursor, and this one must record it.
        let mut recorded = store.audit_cursor()?.unwrap_or(0);
        let mut last_record = tokio::time::Instant::now();
        info!(from_revision = next, stream_version = version, "audit relay started");
        loop {
            if *stop.borrow() || leading_term(&self.ctx) != Some(self.term) {
                return Ok(());
            }
            let current = store.revision();
            let caught_up = next > current;
            if recorded < next - 1 && last_record.elapsed() >= CURSOR_INTERVAL {
                self.record(next - 1).await?;
                recorded = next - 1;
                last_record = tokio::time::Instant::now();
            }
            if caught_up {
                // A caught-up relay with something unrecorded records it
                // when the interval ends.
                let record_at = (recorded < next - 1).then_some(last_record + CURSOR_INTERVAL);
                let record_due = async {
                    match record_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = revisions.changed() => tokio::time::sleep(LINGER).await,
                    _ = metrics.changed() => {}
                    _ = stop.changed() => {}
                    _ = record_due => {}
                }
                continue;
            }
            let to = current.min(next + BATCH_REVISIONS - 1);
            let changes = match store.events(&KeyRange::Prefix(Vec::new()), next, to, false) {
                Ok((c, _)) => c,
                Err(ReadError::Rejected(Rejection::Compacted { compact_revision, .. })) => {
                    // Only on a cluster that had history before the relay
                    // existed (after its first cursor nothing above it is
                    // compacted).
                    warn!(
                        from = next,
                        to = compact_revision,
                        "audit relay: revisions compacted before the audit trail existed are not audited"
                    );
                    next = compact_revision + 1;
                    continue;
                }
                Err(e) => return Err(Error::task(&format!("read meta changes {next}..={to}"), e)),
            };
            let mut authors = store.authors(next, to).map_err(Error::Storage)?;
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut last = next - 1;
            for group in changes.chunk_by(|a, b| a.revision == b.revision) {
                if bytes >= BATCH_BYTES {
                    break;
                }
                let rev = group[0].revision;
                if rev != last + 1 {
                    return Err(Error::Internal(format!(
                        "meta change log has no revision {} (next is {rev})",
                        last + 1
                    )));
                }
                let e = audit_event(rev, group, authors.remove(&rev).as_deref());
                bytes += e.data.len();
                batch.push(e);
                last = rev;
            }
            if batch.is_empty() {
                return Err(Error::Internal(format!("meta change log has no revision {next}")));
            }
            let msg = pb::AppendRequest {
                stream: STREAM.to_string(),
                events: batch,
                expected: Some(pb::ExpectedVersion {
                    kind: Some(pb::expected_version::Kind::Exact(version)),
                }),
            };
            let n = msg.events.len() as u64;
            let events = Events(&self.ctx);
            let append = events.append(msg, Origin::Client);
            match tokio::time::timeout(CALL_DEADLINE, append).await {
                Ok(Ok(r)) => {
                    if !r.duplicate {
                        self.stats.relayed.fetch_add(n, Ordering::Relaxed);
                    }
                    version = r.first_version + r.count - 1;
                    next = last + 1;
                }
                // Another relay (a deposed leader) appended first, or a
                // batch with other bounds landed before a crash: start
                // again from the stream's end. Any other refusal is retried
                // after a pause.
                Ok(Err(e)) if stream_moved(&e) => {
                    warn!(error = %e, "audit relay: the stream moved; resuming from its end");
                    let resumed = self.resume_point().await?;
                    // A refusal that moved nothing is an error like any
                    // other (retried after a pause), never a tight loop.
                    if resumed == (next, version) {
                        return Err(Error::task(&format!("append revisions {next}..={last}"), e));
                    }
                    (next, version) = resumed;
                }
                Ok(Err(e)) => return Err(Error::task(&format!("append revisions {next}..={last}"), e)),
                Err(_) => {
                    return Err(Error::unavailable(format!(
                        "append revisions {next}..={last}: no answer within {CALL_DEADLINE:?}"
                    )));
                }
            }
        }
    }

    /// (next revision to relay, the stream's version): after the later of
    /// the recorded cursor and the revision of the stream's last event.
    async fn resume_point(&self) -> Result<(u64, u64)> {
        let req = pb::ReadStreamRequest {
            stream: STREAM.to_string(),
            from_version: 0,
            backward: true,
            limit: 1,
            serializable: false,
        };
        let events = Events(&self.ctx);
        let read = events.read_stream(req, Origin::Client);
        let resp = match tokio::time::timeout(CALL_DEADLINE, read).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Error::task(&format!("read the end of {STREAM}"), e)),
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "read the end of {STREAM}: no answer within {CALL_DEADLINE:?}"
                )));
            }
        };
        // Only an event the relay wrote moves it on: its id is the one the
        // relay derives from its revision. Anything else (no revision, or
        // an id that does not match) leaves the cursor alone to say where
        // to go on, so a forged event cannot make the relay skip changes.
        let in_stream = resp.events.first().and_then(written_by_relay).unwrap_or(0);
        let store = self.ctx.meta.store();
        let cursor = store.audit_cursor()?.unwrap_or(0);
        Ok((in_stream.max(cursor) + 1, resp.stream_version))
    }

    /// Records in meta that every revision up to `revision` is relayed.
    async fn record(&self, revision: u64) -> Result<()> {
        let cmd = Command::new(Op::AuditCursor { revision });
        match tokio::time::timeout(CALL_DEADLINE, self.ctx.meta.write(cmd)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::task(&format!("record audit cursor {revision}"), e)),
            Err(_) => Err(Error::unavailable(format!(
                "record audit cursor {revision}: no answer within {CALL_DEADLINE:?}"
            ))),
        }
    }
}

/// Whether an append refusal means the stream is not where the relay
/// thought: another relay (a deposed leader) appended first (wrong
/// expected version), or a batch with other bounds landed before a crash
/// (some of the batch's event ids are in the stream, refused on field
/// `append.events`). Classified by the refusal's kind and field, here or
/// as a peer node answered (`field: reason`), never by its wording.
fn stream_moved(e: &Error) -> bool {
    const PARTIAL_DUPLICATE_FIELD: &str = "append.events";
    match e {
        Error::Raft(esf_raft::Error::Rejected(Rejection::WrongExpectedVersion { .. })) | Error::Precondition(_) => true,
        Error::Raft(esf_raft::Error::Rejected(Rejection::InvalidArgument { field, .. })) => {
            field == PARTIAL_DUPLICATE_FIELD
        }
        Error::Peer(s) => {
            s.code() == Code::FailedPrecondition
                || (s.code() == Code::InvalidArgument
                    && s.message().split_once(": ").map(|(f, _)| f) == Some(PARTIAL_DUPLICATE_FIELD))
        }
        _ => false,
    }
}

/// How long a compaction waits for the relay to pass its revision.
/// (The relay records its cursor every [`CURSOR_INTERVAL`] while it has
/// something unrecorded; a longer wait would outlast a client's per-call
/// deadline.)
pub const COMPACT_WAIT: Duration = Duration::from_secs(1);
/// Polled: recording the cursor makes no revision, so no watch fires for it.
const COMPACT_POLL: Duration = Duration::from_millis(20);

/// Waits (up to [`COMPACT_WAIT`]) until this node's meta replica records
/// every revision up to `revision` as relayed, or no cursor exists yet.
pub async fn wait_relayed(meta: &esf_raft::group::MetaGroup, revision: u64) {
    let deadline = tokio::time::Instant::now() + COMPACT_WAIT;
    while tokio::time::Instant::now() < deadline {
        match meta.store().audit_cursor() {
            Ok(Some(r)) if r < revision.min(meta.store().revision()) => {}
            _ => return,
        }
        tokio::time::sleep(COMPACT_POLL).await;
    }
}

/// (last relayed revision, revisions not yet relayed) as this node's meta
/// replica knows them.
pub fn lag(ctx_meta: &esf_raft::group::MetaGroup) -> (u64, u64) {
    let store = ctx_meta.store();
    let relayed = store.audit_cursor().ok().flatten().unwrap_or(0);
    (relayed, store.revision().saturating_sub(relayed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use esf_raft::command::KeyValue;

    fn change(key: &[u8], value: &[u8], deleted: bool, revision: u64) -> WatchEvent {
        WatchEvent {
            revision,
            deleted,
            kv: KeyValue {
                key: key.to_vec(),
                value: value.to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            },
            prev_kv: None,
        }
    }

    #[test]
    fn ids_are_per_revision_and_valid_uuids() {
        let a = esf_proto::uuid::format(&event_id(1));
        let b = esf_proto::uuid::format(&event_id(2));
        assert_ne!(a, b);
        assert_eq!(esf_proto::uuid::parse(&a).expect("parses"), event_id(1));
        assert_eq!(event_id(7), event_id(7));
        assert_eq!(&a[14..15], "8", "version 8: {a}");
    }

    #[test]
    fn only_events_with_the_derived_id_move_the_relay() {
        let mut e = pb::RecordedEvent {
            id: esf_proto::uuid::format(&event_id(9)),
            metadata: [("revision".to_string(), "9".to_string())].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(written_by_relay(&e), Some(9));
        // A forged event claiming a far revision under another id.
        e.metadata.insert("revision".into(), u64::MAX.to_string());
        assert_eq!(written_by_relay(&e), None);
        e.id = esf_proto::uuid::format(&esf_proto::uuid::new_v4());
        e.metadata.insert("revision".into(), "9".into());
        assert_eq!(written_by_relay(&e), None);
        e.metadata.clear();
        assert_eq!(written_by_relay(&e), None);
    }

    #[test]
    fn events_are_typed_by_what_changed() {
        let put = audit_event(5, &[change(b"cfg/a", b"1", false, 5)], None);
        assert_eq!(put.r#type, "esf.config.put");
        let by = audit_event(5, &[change(b"cfg/a", b"1", false, 5)], Some("alice"));
        let v: Value = serde_json::from_slice(&by.data).expect("json");
        assert_eq!(
            (v["user"].as_str(), by.metadata.get("user").map(String::as_str)),
            (Some("alice"), Some("alice"))
        );
        assert_eq!(put.correlation_id, "cfg/a");
        let v: Value = serde_json::from_slice(&put.data).expect("json");
        assert_eq!(v["revision"], 5);
        assert!(v["changes"][0].get("value").is_none(), "config values are not copied");
        assert_eq!(v["changes"][0]["value_bytes"], 1);
        assert_eq!(put.metadata["revision"], "5");
        let del = audit_event(6, &[change(b"a", b"", true, 6), change(b"b", b"", true, 6)], None);
        assert_eq!(del.r#type, "esf.config.deleted");
        assert_eq!(del.correlation_id, "");
        let mixed = audit_event(7, &[change(b"a", b"x", false, 7), change(b"b", b"", true, 7)], None);
        assert_eq!(mixed.r#type, "esf.config.changed");
        let mut reg = vec![keyspace::RESERVED_KEY_BYTE];
        reg.extend_from_slice(b"registry/api/i1");
        let r = audit_event(8, &[change(&reg, b"", true, 8)], None);
        assert_eq!(r.r#type, "esf.registry.changed");
        assert_eq!(r.correlation_id, "registry/api/i1");
        let both = audit_event(9, &[change(&reg, b"", true, 9), change(b"k", b"", true, 9)], None);
        assert_eq!(both.r#type, "esf.meta.changed");
        let big = audit_event(10, &[change(b"k", &[b'x'; MAX_VALUE_BYTES + 1], false, 10)], None);
        let v: Value = serde_json::from_slice(&big.data).expect("json");
        assert!(v["changes"][0].get("value").is_none());
        assert_eq!(v["changes"][0]["value_bytes"], MAX_VALUE_BYTES + 1);
    }

    #[test]
    fn a_revision_of_very_many_keys_lists_the_first_and_stays_under_the_event_limit() {
        let many: Vec<WatchEvent> = (0..20_000)
            .map(|i| change(format!("prefix/key-{i:06}").as_bytes(), b"", true, 3))
            .collect();
        let e = audit_event(3, &many, None);
        assert!(e.data.len() <= MAX_EVENT_DATA_BYTES + 1024, "{} bytes", e.data.len());
        assert!(e.data.len() < esf_raft::events::MAX_EVENT_BYTES);
        let v: Value = serde_json::from_slice(&e.data).expect("json");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["changes_total"], 20_000);
        assert_eq!(v["changes"][0]["key"], "prefix/key-000000");
        assert_eq!(e.r#type, "esf.config.deleted");
    }
}
