//! Replicas of different releases must apply the same log to the same
//! rows (a rolling upgrade runs both at once), so the state that a fixed
//! sequence of puts, deletes and range deletes leaves, auto-compaction
//! included, is pinned here by its state hash. A change that moves a
//! hash changes what apply writes: it needs a new format version and an
//! upgrade path, not a new hash.

use esf_raft::command::*;
use esf_raft::limits::Limits;
use esf_raft::meta::MetaStore;
use esf_raft::openraft::entry::RaftEntry;
use esf_raft::openraft::vote::RaftLeaderId;
use esf_raft::types::Entry;
use esf_storage::{Db, StorageConfig};

fn entry(index: u64, op: Op) -> Entry {
    let leader = esf_raft::openraft::alias::LeaderIdOf::<esf_raft::types::TypeConfig>::new(1, 1).to_committed();
    Entry::new_normal(esf_raft::openraft::LogId::new(leader, index), Command::new(op))
}

#[test]
fn a_fixed_command_sequence_leaves_the_rows_it_always_left() {
    // Data format 3: `CHANGES` rows name what each change replaced, and
    // compaction deletes those versions by name.
    let pinned = [
        (3u64, 3000u64, 0xcc86_b6c8_5066_d2f4u64, 2652u64, 2649u64),
        (8, 5000, 0x92c6_3e02_d543_935a, 4365, 4357),
        (16, 4000, 0xf584_05c1_9292_5731, 3511, 3494),
        (64, 6000, 0x9067_ca31_a813_90bc, 5247, 5176),
    ];
    for (h, n, want_hash, want_rev, want_compact) in pinned {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&StorageConfig::new(dir.path())).unwrap();
        let store = MetaStore::open(db, 0).unwrap();
        store
            .apply_entry(&entry(
                1,
                Op::SetLimits(Limits {
                    history_revisions: h,
                    ..Limits::default()
                }),
            ))
            .unwrap();
        let mut x: u64 = 12345;
        for i in 0..n {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = format!("k{}", (x >> 33) % 37).into_bytes();
            let op = if (x >> 20) % 5 == 0 {
                Op::Delete(DeleteRequest {
                    range: KeyRange::Key(k),
                    prev_kv: false,
                })
            } else if (x >> 20) % 7 == 1 {
                Op::Delete(DeleteRequest {
                    range: KeyRange::Prefix(b"k1".to_vec()),
                    prev_kv: false,
                })
            } else {
                Op::Put(PutRequest {
                    key: k,
                    value: format!("v{i}").into_bytes(),
                    lease: 0,
                    prev_kv: false,
                })
            };
            store.apply_entry(&entry(i + 2, op)).unwrap();
        }
        let (hash, _) = store.state_hash().unwrap();
        let st = store.state();
        assert_eq!(
            (hash, st.revision, st.compact_revision),
            (want_hash, want_rev, want_compact),
            "history_revisions {h}, {n} commands: got hash {hash:#x}"
        );
    }
}
