//! Event queries against a naive scan: for random events and random
//! queries, paging through a partition's query returns exactly the events
//! a full scan selects, in (timestamp, offset) order either way, and the
//! index the query reads is the one its filter calls for (a type or
//! correlation query never reads the time index, so an index bug cannot
//! hide behind a scan). Also: a partition written before the indexes
//! existed rebuilds them when it opens.

use esf_raft::command::{AppendRequest, Command, ExpectedVersion, NewEvent, Op};
use esf_raft::events::query::{Filter, Index, Predicate};
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

/// One append: (type, correlation, timestamp, n, s, has x).
type Ev = (u8, u8, u64, i64, u8, bool);

fn ev() -> impl Strategy<Value = Ev> {
    (0u8..4, 0u8..5, 0u64..12, 0i64..20, 0u8..3, any::<bool>())
}

fn append(store: &PartitionStore, index: u64, (t, c, ts, n, s, x): Ev) {
    let mut data = serde_json::json!({"n": n, "s": format!("s{s}"), "nested": {"n": n % 5}});
    if x {
        data["x"] = serde_json::Value::Null;
    }
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&index.to_be_bytes());
    let op = Op::Append(AppendRequest {
        stream: format!("st-{}", index % 3),
        expected: ExpectedVersion::Any,
        timestamp_ms: 1_000 + ts,
        events: vec![NewEvent {
            id,
            event_type: format!("T{t}"),
            // Correlation 0: none.
            correlation_id: if c == 0 { String::new() } else { format!("c{c}") },
            causation_id: String::new(),
            data: data.to_string().into_bytes(),
            metadata: Default::default(),
        }],
    });
    store.apply_entry(&entry(index, op)).expect("apply");
}

/// A query: (type, correlation, from, to, predicate, descending, limit).
type Q = (
    Option<u8>,
    Option<u8>,
    Option<u64>,
    Option<u64>,
    Option<(u8, i64)>,
    bool,
    usize,
);

fn query() -> impl Strategy<Value = Q> {
    (
        prop::option::of(0u8..5),
        prop::option::of(0u8..6),
        prop::option::of(0u64..14),
        prop::option::of(0u64..14),
        prop::option::of((0u8..7, 0i64..20)),
        any::<bool>(),
        1usize..7,
    )
}

fn filter((t, c, from, to, pred, _, _): &Q) -> Filter {
    let predicates = pred
        .map(|(kind, v)| {
            let (field, op, value) = match kind {
                0 => ("n", "eq", v.to_string()),
                1 => ("n", "lt", v.to_string()),
                2 => ("nested.n", "ge", (v % 5).to_string()),
                3 => ("s", "in", format!("[\"s{}\", \"s{}\"]", v % 3, (v + 1) % 3)),
                4 => ("x", "exists", String::new()),
                6 => ("s", "eq", format!("\"s{}\"", v % 3)),
                _ => ("n", "gt", v.to_string()),
            };
            vec![Predicate::parse(field, op, &value).expect("valid predicate")]
        })
        .unwrap_or_default();
    Filter {
        event_type: t.map(|t| format!("T{t}")).unwrap_or_default(),
        correlation_id: c.map(|c| format!("c{c}")).unwrap_or_default(),
        from_ms: from.map(|f| 1_000 + f),
        to_ms: to.map(|t| 1_000 + t),
        predicates,
    }
}

/// Every page of the query, following the position after each page's last
/// event; checks that each page stays within its limit.
fn page_through(store: &PartitionStore, f: &Filter, descending: bool, limit: usize) -> Vec<EventRecord> {
    let mut out: Vec<EventRecord> = Vec::new();
    let mut from = Some(if descending { (u64::MAX, u64::MAX) } else { (0, 0) });
    loop {
        let (page, more, stats) = store.query(f, from, descending, limit).expect("query");
        assert!(page.len() <= limit);
        assert!(stats.events_loaded <= stats.rows_examined);
        let Some(last) = page.last() else { break };
        from = if descending {
            match last.offset.checked_sub(1) {
                Some(o) => Some((last.timestamp_ms, o)),
                None => last.timestamp_ms.checked_sub(1).map(|t| (t, u64::MAX)),
            }
        } else {
            Some((last.timestamp_ms, last.offset + 1))
        };
        out.extend(page);
        if !more {
            break;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn queries_return_what_a_scan_selects_through_the_right_index(
        events in prop::collection::vec(ev(), 0..80),
        queries in prop::collection::vec(query(), 1..8),
        (index_n, index_s, declared_at) in (any::<bool>(), any::<bool>(), 0usize..80),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let store = PartitionStore::open(db, 1).unwrap();
        // Field indexes declared part-way through the appends: later
        // events get rows when appended, earlier ones by the backfill.
        let mut index = 0;
        let declare = |index: &mut u64| {
            for (field, on) in [("n", index_n), ("s", index_s)] {
                if on {
                    *index += 1;
                    store.apply_entry(&entry(*index, Op::IndexField { field: field.into(), create: true })).unwrap();
                }
            }
        };
        for (i, e) in events.iter().enumerate() {
            if i == declared_at {
                declare(&mut index);
            }
            index += 1;
            append(&store, index, *e);
        }
        if declared_at >= events.len() {
            declare(&mut index);
        }
        while !store.backfill_step().unwrap() {}
        let declared: Vec<String> = store.field_indexes().into_iter().filter(|(_, s)| s.complete()).map(|(f, _)| f).collect();
        let (all, _) = store.read_partition(0, 10_000).unwrap();
        prop_assert_eq!(all.len(), events.len());
        for q in &queries {
            let f = filter(q);
            let (descending, limit) = (q.5, q.6);
            let mut want: Vec<EventRecord> = all.iter().filter(|e| f.matches(e)).cloned().collect();
            want.sort_by_key(|e| (e.timestamp_ms, e.offset));
            if descending {
                want.reverse();
            }
            let got = page_through(&store, &f, descending, limit);
            prop_assert_eq!(
                got.iter().map(|e| e.offset).collect::<Vec<_>>(),
                want.iter().map(|e| e.offset).collect::<Vec<_>>(),
                "query {:?}", q
            );
            if f.index_decides() {
                // Positions alone (the node loads only what it keeps).
                let start = if descending { (u64::MAX, u64::MAX) } else { (0, 0) };
                let (at, more, _) = store.query_positions(&f, Some(start), descending, usize::MAX).unwrap();
                prop_assert!(!more);
                prop_assert_eq!(
                    at.iter().map(|p| p.1).collect::<Vec<_>>(),
                    want.iter().map(|e| e.offset).collect::<Vec<_>>(),
                    "positions of query {:?}", q
                );
            }
            let field_eq = match q.4 {
                Some((0, v)) if index_n => Some(("n", serde_json::json!(v))),
                Some((6, v)) if index_s => Some(("s", serde_json::json!(format!("s{}", v % 3)))),
                _ => None,
            };
            let expected_index = match (q.1, field_eq.is_some(), q.0) {
                (Some(_), _, _) => Index::Correlation,
                (None, true, _) => Index::Field(0),
                (None, false, Some(_)) => Index::Type,
                (None, false, None) => Index::Time,
            };
            prop_assert_eq!(f.index(&declared), expected_index);
            // The index bounds the work: a type or correlation query reads
            // no row of another type or correlation id.
            if expected_index != Index::Time && f.from_ms.is_none() && f.to_ms.is_none() {
                let (_, _, stats) = store.query(&f, Some((0, 0)), false, usize::MAX).unwrap();
                let narrowed = all.iter().filter(|e| match expected_index {
                    Index::Correlation => e.correlation_id == f.correlation_id,
                    Index::Field(_) => {
                        let (field, v) = field_eq.as_ref().expect("a field query");
                        let data: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
                        esf_raft::events::query::compare(&data[*field], v) == Some(std::cmp::Ordering::Equal)
                    }
                    _ => e.event_type == f.event_type,
                }).count() as u64;
                prop_assert_eq!(stats.rows_examined, narrowed, "query {:?}", q);
                prop_assert_eq!(stats.index, Some(expected_index));
            }
        }
    }
}

#[test]
fn a_partition_without_indexes_rebuilds_them_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
    {
        let store = PartitionStore::open(db.clone(), 2).unwrap();
        for i in 1..=30u64 {
            append(&store, i, ((i % 3) as u8, (i % 4) as u8, i % 7, i as i64, 0, false));
        }
    }
    // Drop every index row and the version marker, as a partition written
    // before the indexes existed has none.
    let cf = db.cf(esf_storage::keys::CF_SM);
    let mut lo = esf_storage::keys::group_prefix(2).to_vec();
    lo.push(6);
    let mut hi = esf_storage::keys::group_prefix(2).to_vec();
    hi.push(10);
    db.rocks().delete_range_cf(cf, &lo, &hi).unwrap();
    let f = Filter {
        event_type: "T1".into(),
        ..Default::default()
    };
    let store = PartitionStore::open(db, 2).unwrap();
    let (got, more, _) = store.query(&f, Some((0, 0)), false, 100).unwrap();
    assert!(!more);
    assert_eq!(got.len(), 10, "every T1 event found through the rebuilt index");
}
