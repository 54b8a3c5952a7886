//! Property test: random put / delete / txn / compact / lease sequences on the
//! meta store agree with a plain in-memory model, response by response, and
//! at every readable revision afterwards; a snapshot installed into a fresh
//! store yields the identical state hash.

use std::collections::{BTreeMap, BTreeSet};

use esf_raft::command::*;
use esf_raft::limits::Limits;
use esf_raft::meta::MetaStore;
use esf_raft::openraft::entry::RaftEntry;
use esf_raft::openraft::vote::RaftLeaderId;
use esf_raft::types::{Entry, SnapshotMeta};
use esf_storage::{Db, StorageConfig};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    create: u64,
    modr: u64,
    version: u64,
    value: Vec<u8>,
    lease: u64,
}

impl Rec {
    fn kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone(),
            create_revision: self.create,
            mod_revision: self.modr,
            version: self.version,
            lease: self.lease,
        }
    }
}

#[derive(Default)]
struct Model {
    /// First revision of the batch entry being applied: auto-compaction
    /// stays below it.
    batch_first: Option<u64>,
    rev: u64,
    compact: u64,
    history: u64,
    keys: BTreeMap<Vec<u8>, Vec<(u64, Option<Rec>)>>,
    leases: BTreeMap<u64, BTreeSet<Vec<u8>>>,
    next_lease: u64,
    /// The audit relay's cursor; compaction never goes above it.
    audit: Option<u64>,
}

impl Model {
    fn new() -> Self {
        Model {
            history: Limits::default().history_revisions,
            next_lease: 1,
            ..Default::default()
        }
    }

    fn at(&self, key: &[u8], rev: u64) -> Option<&Rec> {
        self.keys
            .get(key)?
            .iter()
            .rev()
            .find(|(r, _)| *r <= rev)
            .and_then(|(_, rec)| rec.as_ref())
    }

    fn current(&self, key: &[u8]) -> Option<&Rec> {
        self.at(key, self.rev)
    }

    fn live_in(&self, range: &KeyRange) -> Vec<(Vec<u8>, Rec)> {
        self.keys
            .keys()
            .filter(|k| range.contains(k))
            .filter_map(|k| self.current(k).map(|r| (k.clone(), r.clone())))
            .collect()
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResult, Rejection> {
        let rev = if req.revision == 0 { self.rev } else { req.revision };
        if rev > self.rev {
            return Err(Rejection::FutureRevision {
                requested: rev,
                current: self.rev,
            });
        }
        if rev < self.compact {
            return Err(Rejection::Compacted {
                requested: rev,
                compact_revision: self.compact,
            });
        }
        let mut out = RangeResult::default();
        for k in self.keys.keys().filter(|k| req.range.contains(k)) {
            if let Some(r) = self.at(k, rev) {
                out.count += 1;
                if req.count_only {
                    continue;
                }
                if req.limit == 0 || (out.kvs.len() as u64) < req.limit {
                    let mut kv = r.kv(k);
                    if req.keys_only {
                        kv.value.clear();
                    }
                    out.kvs.push(kv);
                } else {
                    out.more = true;
                }
            }
        }
        Ok(out)
    }

    fn write_put(&mut self, p: &PutRequest, rev: u64) -> Option<KeyValue> {
        let prev = self.current(&p.key).cloned();
        let rec = Rec {
            create: prev.as_ref().map_or(rev, |r| r.create),
            modr: rev,
            version: prev.as_ref().map_or(1, |r| r.version + 1),
            value: p.value.clone(),
            lease: p.lease,
        };
        if let Some(old) = &prev {
            if old.lease != 0 {
                self.leases.get_mut(&old.lease).map(|s| s.remove(&p.key));
            }
        }
        if p.lease != 0 {
            self.leases.get_mut(&p.lease).expect("checked").insert(p.key.clone());
        }
        self.keys.entry(p.key.clone()).or_default().push((rev, Some(rec)));
        if p.prev_kv { prev.map(|r| r.kv(&p.key)) } else { None }
    }

    fn write_delete(&mut self, key: &[u8], rec: &Rec, rev: u64) {
        if rec.lease != 0 {
            self.leases.get_mut(&rec.lease).map(|s| s.remove(key));
        }
        self.keys.get_mut(key).expect("live key has history").push((rev, None));
    }

    fn compare(&self, c: &Compare) -> bool {
        use std::cmp::Ordering;
        let cur = self.current(&c.key);
        let ord = match (&c.target, cur) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(r)) => r.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), r) => r.map_or(0, |r| r.version).cmp(v),
            (CompareTarget::CreateRevision(v), r) => r.map_or(0, |r| r.create).cmp(v),
            (CompareTarget::ModRevision(v), r) => r.map_or(0, |r| r.modr).cmp(v),
            (CompareTarget::Lease(v), r) => r.map_or(0, |r| r.lease).cmp(v),
        };
        match c.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Greater => ord == Ordering::Greater,
            CompareOp::Less => ord == Ordering::Less,
        }
    }

    /// A batch entry: each command as if alone, in order.
    fn apply_batch(&mut self, ops: &[Op]) -> Response {
        self.batch_first = Some(self.rev + 1);
        let out = ops.iter().map(|op| self.apply(op)).collect();
        self.batch_first = None;
        Response {
            revision: self.rev,
            result: OpResult::Batch(out),
        }
    }

    fn apply(&mut self, op: &Op) -> Response {
        let rev = self.rev + 1;
        let mut changed = false;
        let result = match op {
            Op::Put(p) => {
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    OpResult::Rejected(Rejection::LeaseNotFound(p.lease))
                } else {
                    changed = true;
                    OpResult::Put {
                        prev_kv: self.write_put(p, rev),
                    }
                }
            }
            Op::Delete(d) => {
                let live = self.live_in(&d.range);
                for (k, r) in &live {
                    self.write_delete(k, r, rev);
                }
                changed = !live.is_empty();
                OpResult::Delete {
                    deleted: live.len() as u64,
                    prev_kvs: if d.prev_kv {
                        live.iter().map(|(k, r)| r.kv(k)).collect()
                    } else {
                        vec![]
                    },
                }
            }
            Op::Txn(t) => {
                let ok = t.compares.iter().all(|c| self.compare(c));
                let ops = if ok { &t.success } else { &t.failure };
                if ops
                    .iter()
                    .any(|o| matches!(o, TxnOp::Put(p) if p.lease != 0 && !self.leases.contains_key(&p.lease)))
                {
                    let bad = ops
                        .iter()
                        .find_map(|o| match o {
                            TxnOp::Put(p) if p.lease != 0 && !self.leases.contains_key(&p.lease) => Some(p.lease),
                            _ => None,
                        })
                        .unwrap();
                    OpResult::Rejected(Rejection::LeaseNotFound(bad))
                } else {
                    // Reads see the state before the txn.
                    let reads: Vec<Option<RangeResult>> = ops
                        .iter()
                        .map(|o| match o {
                            TxnOp::Range(r) => Some(self.range(r).expect("txn reads are current")),
                            _ => None,
                        })
                        .collect();
                    let mut results = Vec::new();
                    for (o, read) in ops.iter().zip(reads) {
                        results.push(match o {
                            TxnOp::Put(p) => {
                                changed = true;
                                TxnOpResult::Put {
                                    prev_kv: self.write_put(p, rev),
                                }
                            }
                            TxnOp::Delete(d) => {
                                let live: Vec<_> = self
                                    .live_in(&d.range)
                                    .into_iter()
                                    .filter(|(k, _)| !self.keys[k].iter().any(|(rv, x)| *rv == rev && x.is_none()))
                                    .collect();
                                for (k, r) in &live {
                                    self.write_delete(k, r, rev);
                                }
                                changed |= !live.is_empty();
                                TxnOpResult::Delete {
                                    deleted: live.len() as u64,
                                    prev_kvs: if d.prev_kv {
                                        live.iter().map(|(k, r)| r.kv(k)).collect()
                                    } else {
                                        vec![]
                                    },
                                }
                            }
                            TxnOp::Range(_) => TxnOpResult::Range(read.expect("computed above")),
                        });
                    }
                    OpResult::Txn { succeeded: ok, results }
                }
            }
            Op::Compact { revision } => {
                if *revision > self.rev {
                    OpResult::Rejected(Rejection::FutureRevision {
                        requested: *revision,
                        current: self.rev,
                    })
                } else if *revision <= self.compact {
                    OpResult::Rejected(Rejection::Compacted {
                        requested: *revision,
                        compact_revision: self.compact,
                    })
                } else if let Some(a) = self.audit.filter(|a| a < revision) {
                    OpResult::Rejected(Rejection::InvalidArgument {
                        field: "compact.revision".into(),
                        reason: format!(
                            "the audit relay has relayed revisions up to {a} only; compacting to {revision} would lose audit events (see esf status: audit lag)"
                        ),
                    })
                } else {
                    self.compact = *revision;
                    OpResult::Compacted {
                        compact_revision: *revision,
                    }
                }
            }
            Op::SetLimits(l) => {
                self.history = l.history_revisions;
                OpResult::LimitsSet
            }
            Op::MemberReplicated { .. } => OpResult::None,
            Op::AuditCursor { revision } => {
                if *revision > self.rev {
                    OpResult::Rejected(Rejection::FutureRevision {
                        requested: *revision,
                        current: self.rev,
                    })
                } else {
                    self.audit = Some(self.audit.unwrap_or(0).max(*revision));
                    OpResult::None
                }
            }
            Op::Append(_)
            | Op::DeleteStream { .. }
            | Op::RemoveEvents { .. }
            | Op::IndexField { .. }
            | Op::RecordPartitions { .. }
            | Op::PlacePartitions { .. }
            | Op::Auth(_)
            | Op::AsUser { .. }
            | Op::Batch(_) => {
                unreachable!("the model generates no event or auth ops (see tests/auth.rs)")
            }
            Op::LeaseGrant { ttl_secs, .. } => {
                let id = self.next_lease;
                self.next_lease += 1;
                self.leases.insert(id, BTreeSet::new());
                OpResult::LeaseGranted {
                    id,
                    ttl_secs: *ttl_secs,
                }
            }
            Op::LeaseRevoke { id, .. } => match self.leases.remove(id) {
                None => OpResult::Rejected(Rejection::LeaseNotFound(*id)),
                Some(keys) => {
                    let mut n = 0;
                    for k in keys {
                        if let Some(r) = self.current(&k).cloned() {
                            self.keys.get_mut(&k).unwrap().push((rev, None));
                            let _ = r;
                            n += 1;
                        }
                    }
                    changed = n > 0;
                    OpResult::LeaseRevoked { deleted_keys: n }
                }
            },
        };
        if changed {
            self.rev = rev;
            let target = rev
                .saturating_sub(self.history)
                .min(self.audit.unwrap_or(u64::MAX))
                .min(self.batch_first.map_or(u64::MAX, |f| f - 1));
            if target >= self.compact + esf_raft::meta::auto_compaction_step(self.history) {
                self.compact = target;
            }
        }
        Response {
            revision: self.rev,
            result,
        }
    }
}

const KEYS: [&str; 6] = ["a", "ab", "b", "ba", "c", "d\u{0}x"];

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(&KEYS[..]).prop_map(|k| k.as_bytes().to_vec())
}

fn range() -> impl Strategy<Value = KeyRange> {
    prop_oneof![
        key().prop_map(KeyRange::Key),
        prop::sample::select(vec!["", "a", "b", "d"]).prop_map(|p| KeyRange::Prefix(p.as_bytes().to_vec())),
        (key(), key()).prop_filter_map("start < end", |(s, e)| (s < e)
            .then_some(KeyRange::Between { start: s, end: e })),
    ]
}

fn lease_ref() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(0u64), 2 => 1u64..4, 1 => Just(999u64)]
}

fn put() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        prop::collection::vec(any::<u8>(), 0..4),
        lease_ref(),
        any::<bool>(),
    )
        .prop_map(|(key, value, lease, prev_kv)| PutRequest {
            key,
            value,
            lease,
            prev_kv,
        })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2).prop_map(CompareTarget::Value),
        (0u64..3).prop_map(CompareTarget::Version),
        (0u64..10).prop_map(CompareTarget::ModRevision),
        (0u64..10).prop_map(CompareTarget::CreateRevision),
        (0u64..3).prop_map(CompareTarget::Lease),
    ];
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ]);
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

fn read() -> impl Strategy<Value = RangeRequest> {
    (range(), 0u64..3, any::<bool>(), any::<bool>()).prop_map(|(range, limit, count_only, keys_only)| RangeRequest {
        range,
        revision: 0,
        limit,
        count_only,
        keys_only,
    })
}

/// Txn branches write each key at most once (the store rejects repeats).
fn branch() -> impl Strategy<Value = Vec<TxnOp>> {
    (
        prop::collection::vec(put(), 0..3),
        prop::option::of(key()),
        prop::option::of(read()),
    )
        .prop_map(|(puts, del, rd)| {
            let mut ops = Vec::new();
            let mut used = BTreeSet::new();
            for p in puts {
                if used.insert(p.key.clone()) {
                    ops.push(TxnOp::Put(p));
                }
            }
            if let Some(k) = del {
                if used.insert(k.clone()) {
                    ops.push(TxnOp::Delete(DeleteRequest {
                        range: KeyRange::Key(k),
                        prev_kv: true,
                    }));
                }
            }
            if let Some(r) = rd {
                ops.push(TxnOp::Range(r));
            }
            ops
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put().prop_map(Op::Put),
        2 => (range(), any::<bool>()).prop_map(|(range, prev_kv)| Op::Delete(DeleteRequest { range, prev_kv })),
        3 => (prop::collection::vec(compare(), 0..3), branch(), branch()).prop_map(|(compares, success, failure)| Op::Txn(TxnRequest { compares, success, failure })),
        1 => (1u64..40).prop_map(|revision| Op::Compact { revision }),
        1 => Just(Op::LeaseGrant { id: 0, ttl_secs: 10 }),
        1 => (1u64..5).prop_map(|id| Op::LeaseRevoke { id, expired: false }),
        1 => (1u64..40).prop_map(|revision| Op::AuditCursor { revision }),
    ]
}

fn entry(index: u64, op: Op) -> Entry {
    let leader = esf_raft::openraft::alias::LeaderIdOf::<esf_raft::types::TypeConfig>::new(1, 1).to_committed();
    Entry::new_normal(esf_raft::openraft::LogId::new(leader, index), Command::new(op))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_model(history in prop::option::of(2u64..12), ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let store = MetaStore::open(db, 0).unwrap();
        let mut model = Model::new();
        let mut index = 0;
        let mut all = Vec::new();
        if let Some(h) = history {
            all.push(Op::SetLimits(Limits { history_revisions: h, ..Limits::default() }));
        }
        all.extend(ops);
        for op in &all {
            index += 1;
            let got = store.apply_entry(&entry(index, op.clone())).unwrap();
            let want = model.apply(op);
            prop_assert_eq!(&got, &want, "op #{} {:?}", index, op);
        }
        // Every readable revision reads the same as the model.
        let st = store.state();
        prop_assert_eq!(st.revision, model.rev);
        prop_assert_eq!(st.compact_revision, model.compact);
        for rev in model.compact.max(1)..=model.rev {
            let req = RangeRequest { range: KeyRange::Prefix(vec![]), revision: rev, limit: 0, count_only: false, keys_only: false };
            let (got, _) = store.range(&req).unwrap();
            prop_assert_eq!(got, model.range(&req).unwrap(), "read at revision {}", rev);
        }
        if model.compact > 1 {
            let req = RangeRequest { range: KeyRange::Prefix(vec![]), revision: model.compact - 1, limit: 0, count_only: false, keys_only: false };
            let err = store.range(&req).unwrap_err().to_string();
            prop_assert!(err.contains(&format!("oldest readable revision is {}", model.compact)), "{}", err);
        }
        // Snapshot (streamed to a file) into a fresh store: identical
        // state hash; the file holds what the in-memory encoding does.
        let (st, file) = store.build_snapshot_file().unwrap();
        prop_assert_eq!(file.to_vec().unwrap(), store.snapshot_rows().unwrap().1);
        let meta = SnapshotMeta { last_log_id: st.last_applied.clone(), last_membership: st.membership.clone() };
        let dir2 = tempfile::tempdir().unwrap();
        let db2 = Db::open(&StorageConfig::new(dir2.path())).unwrap();
        let other = MetaStore::open(db2, 0).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(other.install_snapshot(&meta, &file)).unwrap();
        prop_assert_eq!(store.state_hash().unwrap(), other.state_hash().unwrap());
        prop_assert_eq!(other.state(), store.state());
    }
}

/// The commands the leader coalesces into batches.
fn coalescable_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => put().prop_map(Op::Put),
        2 => (key(), any::<bool>()).prop_map(|(k, prev_kv)| Op::Delete(DeleteRequest { range: KeyRange::Key(k), prev_kv })),
        3 => (prop::collection::vec(compare(), 0..3), branch(), branch()).prop_map(|(compares, success, failure)| Op::Txn(TxnRequest { compares, success, failure })),
    ]
    .prop_filter("coalescable", Op::coalescable)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Batches of coalescable commands (the same keys written several
    /// times in one batch, txns comparing what an earlier command of the
    /// batch wrote), mixed with single entries that scan (range deletes,
    /// leases, compaction), agree with the model command by command and at
    /// every readable revision afterwards.
    #[test]
    fn batched_store_agrees_with_model(
        history in prop::option::of(2u64..12),
        steps in prop::collection::vec(prop_oneof![
            3 => prop::collection::vec(coalescable_op(), 1..12).prop_map(Err),
            1 => op().prop_map(Ok),
        ], 1..30),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let store = MetaStore::open(db, 0).unwrap();
        let mut model = Model::new();
        let mut index = 0;
        if let Some(h) = history {
            let op = Op::SetLimits(Limits { history_revisions: h, ..Limits::default() });
            index += 1;
            store.apply_entry(&entry(index, op.clone())).unwrap();
            model.apply(&op);
        }
        for step in &steps {
            index += 1;
            match step {
                Ok(op) => {
                    let got = store.apply_entry(&entry(index, op.clone())).unwrap();
                    prop_assert_eq!(&got, &model.apply(op), "entry #{} {:?}", index, op);
                }
                Err(ops) => {
                    let batch = Op::Batch(ops.iter().cloned().map(Command::new).collect());
                    let got = store.apply_entry(&entry(index, batch)).unwrap();
                    prop_assert_eq!(&got, &model.apply_batch(ops), "batch entry #{} {:?}", index, ops);
                }
            }
        }
        let st = store.state();
        prop_assert_eq!(st.revision, model.rev);
        prop_assert_eq!(st.compact_revision, model.compact);
        for rev in model.compact.max(1)..=model.rev {
            let req = RangeRequest { range: KeyRange::Prefix(vec![]), revision: rev, limit: 0, count_only: false, keys_only: false };
            let (got, _) = store.range(&req).unwrap();
            prop_assert_eq!(got, model.range(&req).unwrap(), "read at revision {}", rev);
        }
    }
}

#[test]
fn a_batch_with_a_command_that_scans_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
    let store = MetaStore::open(db, 0).unwrap();
    let put = Op::Put(PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        lease: 0,
        prev_kv: false,
    });
    let scan = Op::Delete(DeleteRequest {
        range: KeyRange::Prefix(b"a".to_vec()),
        prev_kv: false,
    });
    let batch = Op::Batch(vec![Command::new(put), Command::new(scan)]);
    let got = store.apply_entry(&entry(1, batch)).unwrap();
    match got.result {
        OpResult::Rejected(Rejection::InvalidArgument { field, .. }) => assert_eq!(field, "batch"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(store.state().revision, 0, "nothing of a rejected batch is applied");
}

#[test]
fn txn_writing_a_key_twice_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(Db::open(&StorageConfig::new(dir.path())).unwrap(), 0).unwrap();
    let put = |k: &str| {
        TxnOp::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
        })
    };
    let op = Op::Txn(TxnRequest {
        compares: vec![],
        success: vec![put("x"), put("x")],
        failure: vec![],
    });
    let resp = store.apply_entry(&entry(1, op)).unwrap();
    match resp.result {
        OpResult::Rejected(Rejection::InvalidArgument { field, reason }) => {
            assert_eq!(field, "txn.success[1]");
            assert!(reason.contains("written more than once"), "{reason}");
        }
        other => panic!("expected rejection, got {other:?}"),
    }
    assert_eq!(store.revision(), 0);
    let del = TxnOp::Delete(DeleteRequest {
        range: KeyRange::Prefix(b"x".to_vec()),
        prev_kv: false,
    });
    let op = Op::Txn(TxnRequest {
        compares: vec![],
        success: vec![put("xy"), del],
        failure: vec![],
    });
    assert!(matches!(
        store.apply_entry(&entry(2, op)).unwrap().result,
        OpResult::Rejected(Rejection::InvalidArgument { .. })
    ));
    assert_eq!(store.revision(), 0);
}

#[test]
fn retried_write_in_a_session_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(Db::open(&StorageConfig::new(dir.path())).unwrap(), 0).unwrap();
    let leader = esf_raft::openraft::alias::LeaderIdOf::<esf_raft::types::TypeConfig>::new(1, 1).to_committed();
    let cmd = Command {
        session: Some(SessionRef {
            client_id: 42,
            seq: 1,
            acked_below: 0,
        }),
        op: Op::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
        }),
    };
    let first = store
        .apply_entry(&Entry::new_normal(
            esf_raft::openraft::LogId::new(leader, 1),
            cmd.clone(),
        ))
        .unwrap();
    let retry = store
        .apply_entry(&Entry::new_normal(esf_raft::openraft::LogId::new(leader, 2), cmd))
        .unwrap();
    assert_eq!(first, retry);
    assert_eq!(store.revision(), 1, "the retry must not write again");
    let (r, _) = store.range(&RangeRequest::key("k")).unwrap();
    assert_eq!(r.kvs[0].version, 1);
    // Sessions survive a reopen (they are replicated state).
    let db = store.db().clone();
    drop(store);
    let again = MetaStore::open(db, 0).unwrap();
    assert_eq!(again.session_count(), 1);
}

#[test]
fn compaction_never_passes_the_audit_cursor_and_the_cursor_never_moves_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = MetaStore::open(Db::open(&StorageConfig::new(dir.path())).unwrap(), 0).unwrap();
    let mut index = 0;
    let mut apply = |op: Op| {
        index += 1;
        store.apply_entry(&entry(index, op)).unwrap().result
    };
    let put = |i: u64| {
        Op::Put(PutRequest {
            key: format!("k{i}").into_bytes(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
        })
    };
    apply(Op::SetLimits(Limits {
        history_revisions: 2,
        ..Limits::default()
    }));
    for i in 1..=3 {
        apply(put(i));
    }
    assert_eq!(apply(Op::AuditCursor { revision: 3 }), OpResult::None);
    assert!(matches!(
        apply(Op::AuditCursor { revision: 9 }),
        OpResult::Rejected(Rejection::FutureRevision {
            requested: 9,
            current: 3
        })
    ));
    // Twenty more revisions: auto-compaction would keep only the last two.
    for i in 4..=23 {
        apply(put(i));
    }
    assert_eq!(store.revision(), 23);
    assert!(store.state().compact_revision <= 3, "{:?}", store.state());
    match apply(Op::Compact { revision: 10 }) {
        OpResult::Rejected(Rejection::InvalidArgument { field, reason }) => {
            assert_eq!(field, "compact.revision");
            assert!(reason.contains("up to 3"), "{reason}");
        }
        other => panic!("compaction above the audit cursor: {other:?}"),
    }
    assert_eq!(apply(Op::AuditCursor { revision: 2 }), OpResult::None);
    assert_eq!(store.audit_cursor().unwrap(), Some(3), "the cursor never moves back");
    // Once the relay moves on, compaction follows.
    apply(Op::AuditCursor { revision: 23 });
    apply(put(24));
    assert_eq!(store.state().compact_revision, 22);
}

/// A snapshot file damaged in transit is refused before anything changes:
/// the receiving store keeps its rows, its state and its current snapshot.
#[test]
fn installing_a_damaged_snapshot_changes_nothing() {
    let put = |k: &str| {
        Op::Put(PutRequest {
            key: k.into(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let source = MetaStore::open(Db::open(&StorageConfig::new(dir.path())).unwrap(), 0).unwrap();
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        source.apply_entry(&entry(i as u64 + 1, put(k))).unwrap();
    }
    let (st, file) = source.build_snapshot_file().unwrap();
    let meta = SnapshotMeta {
        last_log_id: st.last_applied.clone(),
        last_membership: st.membership.clone(),
    };
    let mut data = file.to_vec().unwrap();
    let last = data.len() - 1;
    data[last] ^= 0x40;

    let dir2 = tempfile::tempdir().unwrap();
    let db2 = Db::open(&StorageConfig::new(dir2.path())).unwrap();
    let target = MetaStore::open(db2.clone(), 0).unwrap();
    target.apply_entry(&entry(1, put("kept"))).unwrap();
    let (hash, state) = (target.state_hash().unwrap(), target.state());
    let damaged = esf_raft::snapshot_record::SnapshotFile::create(&db2, 0, &data).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(target.install_snapshot(&meta, &damaged)).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert_eq!(target.state_hash().unwrap(), hash);
    assert_eq!(target.state(), state);
    assert!(target.load_snapshot().unwrap().is_none(), "no snapshot became current");
    rt.block_on(target.install_snapshot(&meta, &file)).unwrap();
    assert_eq!(target.state_hash().unwrap(), source.state_hash().unwrap());
}
