//! Retention against a model: for random events (streams under different
//! rules, random timestamps and sizes) and random rules, removing what
//! `expired` chooses leaves exactly the events the rules keep; a removed
//! event is gone from every read (by id, stream, partition and each
//! secondary index), a stream's kept versions stay contiguous, and the
//! partition's byte count stays exact.

use std::collections::{BTreeMap, BTreeSet};

use esf_raft::command::{AppendRequest, Command, ExpectedVersion, NewEvent, Op, OpResult};
use esf_raft::events::query::Filter;
use esf_raft::events::retention::{RetentionRule, RetentionRules};
use esf_raft::events::store::Direction;
use esf_raft::events::{EventRecord, PartitionStore};
use esf_raft::types::Entry;
use esf_storage::{Db, StorageConfig};
use proptest::prelude::*;

fn entry(index: u64, op: Op) -> Entry {
    use esf_raft::openraft::entry::RaftEntry;
    use esf_raft::openraft::vote::RaftLeaderId;
    let leader = esf_raft::openraft::alias::LeaderIdOf::<esf_raft::types::TypeConfig>::new(1, 1).to_committed();
    Entry::new_normal(esf_raft::openraft::LogId::new(leader, index), Command::new(op))
}

const STREAMS: [&str; 5] = ["orders-1", "orders-2", "tmp-a", "audit", "$audit"];

/// One append: (stream, type, correlation, age step, payload size).
type Ev = (usize, u8, u8, u64, usize);

fn ev() -> impl Strategy<Value = Ev> {
    (0..STREAMS.len(), 0u8..3, 0u8..3, 0u64..4, 0usize..300)
}

fn all_events(store: &PartitionStore) -> Vec<EventRecord> {
    let (events, _) = store.read_partition(0, 100_000).expect("read partition");
    events
}

/// (age limit of the cluster-wide rule, of the `tmp-` rule, byte limit).
type Rules = (Option<u64>, Option<u64>, Option<u64>);

fn rules((all, tmp, bytes): Rules) -> RetentionRules {
    let mut out = Vec::new();
    if all.is_some() || bytes.is_some() {
        out.push(RetentionRule {
            stream_prefix: String::new(),
            max_age_ms: all.unwrap_or(0),
            max_bytes: bytes.unwrap_or(0),
        });
    }
    if let Some(t) = tmp {
        out.push(RetentionRule {
            stream_prefix: "tmp-".into(),
            max_age_ms: t,
            max_bytes: 0,
        });
    }
    RetentionRules(out)
}

/// What the rules keep, computed from the events alone (offset order):
/// the oldest go while the bytes exceed the limit; then, per rule, events
/// older than its age up to its first younger one.
fn model(events: &[(EventRecord, u64)], r: &RetentionRules, now: u64) -> BTreeSet<u64> {
    let mut total: u64 = events.iter().map(|(_, size)| size).sum();
    let limit = r.max_bytes();
    let mut blocked = vec![false; r.0.len()];
    let mut removed = BTreeSet::new();
    for (e, size) in events {
        if limit > 0 && total > limit && !e.stream.starts_with('$') {
            total -= size;
            removed.insert(e.offset);
            continue;
        }
        let Some(i) = r.rule_for(&e.stream) else { continue };
        let rule = &r.0[i];
        if !blocked[i] && rule.max_age_ms > 0 && now - e.timestamp_ms > rule.max_age_ms {
            removed.insert(e.offset);
        } else {
            blocked[i] = true;
        }
    }
    removed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn retention_removes_exactly_what_the_rules_say_and_everywhere(
        evs in prop::collection::vec(ev(), 1..80),
        r in (
            prop::option::of(prop::sample::select(vec![1000u64, 5000, 20_000])),
            prop::option::of(prop::sample::select(vec![1000u64, 5000, 20_000])),
            prop::option::of(2000u64..30_000),
        ),
        batch in 1usize..50,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let store = PartitionStore::open(db, 1).unwrap();
        // Timestamps mostly rise (one leader's clock), with steps back.
        let mut ts = 0u64;
        for (i, (s, t, c, step, size)) in evs.iter().enumerate() {
            ts = (ts + step * 1000).saturating_sub(if *step == 0 { 500 } else { 0 });
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let op = Op::Append(AppendRequest {
                stream: STREAMS[*s].to_string(),
                expected: ExpectedVersion::Any,
                timestamp_ms: 10_000 + ts,
                events: vec![NewEvent {
                    id,
                    event_type: format!("T{t}"),
                    correlation_id: if *c == 0 { String::new() } else { format!("c{c}") },
                    causation_id: String::new(),
                    data: format!("{{\"pad\":\"{}\"}}", "x".repeat(*size)).into_bytes(),
                    metadata: Default::default(),
                }],
            });
            store.apply_entry(&entry(i as u64 + 1, op)).unwrap();
        }
        let before = all_events(&store);
        let sizes: Vec<(EventRecord, u64)> = before
            .iter()
            .map(|e| (e.clone(), esf_storage::codec::encode("event", e).unwrap().len() as u64))
            .collect();
        prop_assert_eq!(store.stored_bytes().unwrap(), sizes.iter().map(|(_, s)| s).sum::<u64>());
        let rules = rules(r);
        let now = 10_000 + ts + 2_000;
        let want = model(&sizes, &rules, now);
        // Remove in batches of `batch`, as the leader would, until nothing
        // is due.
        let mut index = evs.len() as u64;
        let mut removed = BTreeSet::new();
        let mut sweep = esf_raft::events::store::RetentionSweep::default();
        loop {
            let offsets = store.expired(&rules, now, batch, &mut sweep).unwrap();
            prop_assert!(offsets.len() <= batch);
            if offsets.is_empty() {
                break;
            }
            index += 1;
            let resp = store.apply_entry(&entry(index, Op::RemoveEvents { offsets: offsets.clone() })).unwrap();
            prop_assert_eq!(resp.result, OpResult::Removed { events: offsets.len() as u64 });
            removed.extend(offsets);
        }
        prop_assert_eq!(&removed, &want);

        let after = all_events(&store);
        let kept: BTreeSet<u64> = after.iter().map(|e| e.offset).collect();
        let expect_kept: BTreeSet<u64> = before.iter().map(|e| e.offset).filter(|o| !want.contains(o)).collect();
        prop_assert_eq!(&kept, &expect_kept);
        prop_assert_eq!(
            store.stored_bytes().unwrap(),
            sizes.iter().filter(|(e, _)| !want.contains(&e.offset)).map(|(_, s)| s).sum::<u64>()
        );
        let system: u64 = sizes.iter().filter(|(e, _)| e.stream.starts_with('$')).map(|(_, s)| s).sum();
        if rules.max_bytes() > 0 {
            prop_assert!(store.stored_bytes().unwrap() <= rules.max_bytes().max(system));
        }
        for e in &before {
            let gone = want.contains(&e.offset);
            prop_assert_eq!(store.get(&e.id).unwrap().is_none(), gone, "get {}", e.offset);
        }
        // Streams: kept versions contiguous from the first kept one, and a
        // read returns exactly them.
        let mut by_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for e in &after {
            by_stream.entry(e.stream.as_str()).or_default().push(e.version);
        }
        for s in STREAMS {
            let kept = by_stream.get(s).cloned().unwrap_or_default();
            let (read, rec) = store.read_stream(s, 0, Direction::Forward, 1000).unwrap().unwrap();
            let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
            prop_assert_eq!(&versions, &kept, "stream {}", s);
            if let Some(first) = kept.first() {
                prop_assert_eq!(&kept, &(*first..=rec.version).collect::<Vec<_>>(), "stream {} contiguous", s);
                prop_assert_eq!(store.first_version(s).unwrap(), Some(*first));
            }
            let (back, _) = store.read_stream(s, 0, Direction::Backward, 1000).unwrap().unwrap();
            let mut back: Vec<u64> = back.iter().map(|e| e.version).collect();
            back.reverse();
            prop_assert_eq!(&back, &kept, "stream {} backward", s);
        }
        prop_assert_eq!(store.first_offset().unwrap(), kept.first().copied().unwrap_or(store.next_offset()));
        // Every index forgets removed events: a query by type, by
        // correlation id and by time returns only kept events, and reads
        // only their rows.
        let mut filters = vec![Filter::default()];
        for t in 0..3 {
            filters.push(Filter { event_type: format!("T{t}"), ..Default::default() });
        }
        for c in 1..3 {
            filters.push(Filter { correlation_id: format!("c{c}"), ..Default::default() });
        }
        for f in &filters {
            let (got, _, stats) = store.query(f, Some((0, 0)), false, 1000).unwrap();
            let got: BTreeSet<u64> = got.iter().map(|e| e.offset).collect();
            let expect: BTreeSet<u64> = after.iter().filter(|e| f.matches(e)).map(|e| e.offset).collect();
            prop_assert_eq!(&got, &expect, "{:?}", f);
            prop_assert_eq!(stats.rows_examined, expect.len() as u64, "index rows of {:?}", f);
        }
    }
}
