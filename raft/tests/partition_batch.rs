//! Appends coalesced into one batch entry ([`Op::Batch`]) give the same
//! answers and leave the same events, streams and byte count as the same
//! appends applied one entry each: version checks see the earlier appends
//! of the batch, a retried id in the batch is answered as a duplicate, a
//! rejected append changes nothing and does not stop the others.

use esf_raft::command::{AppendRequest, Command, ExpectedVersion, NewEvent, Op, OpResult, Response};
use esf_raft::events::PartitionStore;
use esf_raft::events::store::Direction;
use esf_raft::types::Entry;
use esf_storage::{Db, StorageConfig};
use proptest::prelude::*;

fn entry(index: u64, op: Op) -> Entry {
    use esf_raft::openraft::entry::RaftEntry;
    use esf_raft::openraft::vote::RaftLeaderId;
    let leader = esf_raft::openraft::alias::LeaderIdOf::<esf_raft::types::TypeConfig>::new(1, 1).to_committed();
    Entry::new_normal(esf_raft::openraft::LogId::new(leader, index), Command::new(op))
}

const STREAMS: [&str; 3] = ["s-1", "s-2", "$audit"];

/// (stream, expected version kind, id seed, events).
fn append() -> impl Strategy<Value = AppendRequest> {
    (0..STREAMS.len(), 0u8..5, 0u64..4, 0u8..24, 1usize..4).prop_map(|(s, kind, v, id, n)| AppendRequest {
        stream: STREAMS[s].to_string(),
        expected: match kind {
            0 => ExpectedVersion::NoStream,
            1 => ExpectedVersion::Exists,
            2 | 3 => ExpectedVersion::Exact(v),
            _ => ExpectedVersion::Any,
        },
        timestamp_ms: 1_700_000_000_000,
        events: (0..n)
            .map(|i| NewEvent {
                // Few distinct ids: retries (same ids, same stream) and
                // clashes (same ids elsewhere) both happen.
                id: {
                    let mut b = [0u8; 16];
                    b[0] = id;
                    b[1] = i as u8;
                    b[15] = 1;
                    b
                },
                event_type: format!("t{}", id % 3),
                correlation_id: if id % 2 == 0 { "c".into() } else { String::new() },
                causation_id: String::new(),
                data: format!("{{\"n\":{id}}}").into_bytes(),
                metadata: Default::default(),
            })
            .collect(),
    })
}

fn open() -> (tempfile::TempDir, std::sync::Arc<PartitionStore>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
    let store = PartitionStore::open(db, 1).unwrap();
    (dir, store)
}

/// Events, per-stream reads and the byte count: everything but the
/// applied log id.
fn contents(store: &PartitionStore) -> (Vec<String>, Vec<String>, u64) {
    let (events, _) = store.read_partition(0, 100_000).unwrap();
    let events = events.iter().map(|e| format!("{e:?}")).collect();
    let streams = STREAMS
        .iter()
        .map(|s| format!("{:?}", store.read_stream(s, 1, Direction::Forward, 1000).unwrap()))
        .collect();
    (events, streams, store.stored_bytes().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn batched_appends_match_appends_applied_alone(batches in prop::collection::vec(prop::collection::vec(append(), 1..10), 1..8)) {
        let (_d1, batched) = open();
        let (_d2, alone) = open();
        let mut index_alone = 0;
        for (i, batch) in batches.iter().enumerate() {
            let op = Op::Batch(batch.iter().cloned().map(|a| Command::new(Op::Append(a))).collect());
            let got = batched.apply_entry(&entry(i as u64 + 1, op)).unwrap();
            let mut want = Vec::new();
            for a in batch {
                index_alone += 1;
                let r = alone.apply_entry(&entry(index_alone, Op::Append(a.clone()))).unwrap();
                want.push(Response { revision: r.revision, result: r.result });
            }
            prop_assert_eq!(got.result, OpResult::Batch(want.clone()), "batch {}", i);
            prop_assert_eq!(got.revision, want.last().unwrap().revision);
        }
        prop_assert_eq!(contents(&batched), contents(&alone));
        prop_assert_eq!(batched.state().next_offset, alone.state().next_offset);
    }
}

#[test]
fn a_partition_batch_holds_only_appends() {
    let (_d, store) = open();
    let batch = Op::Batch(vec![Command::new(Op::RemoveEvents { offsets: vec![0] })]);
    let got = store.apply_entry(&entry(1, batch)).unwrap();
    assert!(
        matches!(&got.result, OpResult::Rejected(r) if r.to_string().contains("only appends")),
        "{got:?}"
    );
}

/// Apply keeps the records of streams it appended to and the byte count
/// in memory; a snapshot that replaces the rows must replace them too, or
/// the next append would check its expected version against the stream
/// as it was before the snapshot.
#[test]
fn an_installed_snapshot_replaces_what_apply_remembers() {
    let one = |stream: &str, expected, seed: u8| AppendRequest {
        stream: stream.to_string(),
        expected,
        timestamp_ms: 1_700_000_000_000,
        events: vec![NewEvent {
            id: [seed; 16],
            event_type: "t".into(),
            correlation_id: String::new(),
            causation_id: String::new(),
            data: format!("{{\"seed\":{seed}}}").into_bytes(),
            metadata: Default::default(),
        }],
    };
    let (_d1, warm) = open();
    for (i, seed) in [1u8, 2, 3].into_iter().enumerate() {
        let r = warm
            .apply_entry(&entry(i as u64 + 1, Op::Append(one("s-1", ExpectedVersion::Any, seed))))
            .unwrap();
        assert!(matches!(r.result, OpResult::Appended { .. }), "{r:?}");
    }
    let (_d2, source) = open();
    for (i, seed) in [7u8, 8, 9, 10, 11].into_iter().enumerate() {
        source
            .apply_entry(&entry(i as u64 + 1, Op::Append(one("s-1", ExpectedVersion::Any, seed))))
            .unwrap();
    }
    source
        .apply_entry(&entry(6, Op::Append(one("s-2", ExpectedVersion::NoStream, 12))))
        .unwrap();
    let (st, file) = source.build_snapshot_file().unwrap();
    let meta = esf_raft::types::SnapshotMeta {
        last_log_id: st.last_applied.clone(),
        last_membership: st.membership.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(warm.install_snapshot(&meta, &file)).unwrap();
    // The stream is at version 5 now (not 3), and the byte count is the
    // source's: the same next append gives the same answer and contents.
    let next = Op::Append(one("s-1", ExpectedVersion::Exact(5), 20));
    let got = warm.apply_entry(&entry(7, next.clone())).unwrap();
    let want = source.apply_entry(&entry(7, next)).unwrap();
    assert!(
        matches!(got.result, OpResult::Appended { first_version: 6, .. }),
        "{got:?}"
    );
    assert_eq!(got.result, want.result);
    assert_eq!(contents(&warm), contents(&source));
    let stale = warm
        .apply_entry(&entry(8, Op::Append(one("s-1", ExpectedVersion::Exact(3), 21))))
        .unwrap();
    assert!(matches!(stale.result, OpResult::Rejected(_)), "{stale:?}");
}
