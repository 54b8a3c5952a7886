//! A data directory of format 2 holds `CHANGES` rows that do not say
//! what each change replaced. A store that starts on such rows and goes
//! on under format 3 must answer every read as one that always ran
//! format 3, and once compaction has passed the old rows, hold the same
//! rows.

use super::*;
use esf_storage::StorageConfig;
use openraft::vote::RaftLeaderId;

fn entry(index: u64, op: Op) -> Entry {
    let leader = openraft::alias::LeaderIdOf::<crate::types::TypeConfig>::new(1, 1).to_committed();
    Entry::new_normal(openraft::LogId::new(leader, index), Command::new(op))
}

/// The `i`th command of a fixed mix of puts, deletes and prefix deletes.
fn op(i: u64, x: &mut u64) -> Op {
    *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let k = format!("k{}", (*x >> 33) % 23).into_bytes();
    match (*x >> 20) % 9 {
        0 => Op::Delete(DeleteRequest {
            range: KeyRange::Key(k),
            prev_kv: false,
        }),
        1 => Op::Delete(DeleteRequest {
            range: KeyRange::Prefix(b"k1".to_vec()),
            prev_kv: false,
        }),
        _ => Op::Put(PutRequest {
            key: k,
            value: format!("v{i}").into_bytes(),
            lease: 0,
            prev_kv: false,
        }),
    }
}

fn open(dir: &std::path::Path, history: u64) -> Arc<MetaStore> {
    let store = MetaStore::open(Db::open(&StorageConfig::new(dir)).unwrap(), 0).unwrap();
    let limits = Limits {
        history_revisions: history,
        ..Limits::default()
    };
    store.apply_entry(&entry(1, Op::SetLimits(limits))).unwrap();
    store
}

/// Rewrites every `CHANGES` row as format 2 wrote it.
fn downgrade_changes(store: &MetaStore) -> usize {
    let lo = layout::table_prefix(store.group, layout::CHANGES);
    let hi = prefix_end(&lo).unwrap();
    let snap = store.db.rocks().snapshot();
    let mut it = store.sm_iter(&snap, &lo, &hi);
    it.seek(&lo);
    let mut batch = WriteBatch::default();
    let mut n = 0;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let (_, c) = store.decode_changes_row(k, v).unwrap();
        assert!(c.replaced.is_some(), "written as format 3");
        batch.put_cf(store.db.cf(CF_SM), k, Changes::encode_format2(&c.keys));
        n += 1;
        it.next();
    }
    store.db.rocks().write(batch).unwrap();
    n
}

fn everything(store: &MetaStore, rev: u64) -> RangeResult {
    let req = RangeRequest {
        range: KeyRange::Prefix(Vec::new()),
        revision: rev,
        limit: 0,
        count_only: false,
        keys_only: false,
    };
    store.range(&req).unwrap().0
}

#[test]
fn format2_change_rows_are_read_and_compacted_like_format3_ones() {
    const HISTORY: u64 = 16;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (fresh, upgraded) = (open(a.path(), HISTORY), open(b.path(), HISTORY));
    let (mut xa, mut xb) = (7u64, 7u64);
    let mut index = 2;
    for i in 0..600 {
        fresh.apply_entry(&entry(index, op(i, &mut xa))).unwrap();
        upgraded.apply_entry(&entry(index, op(i, &mut xb))).unwrap();
        index += 1;
    }
    assert!(downgrade_changes(&upgraded) > 0);
    // The change feed (with the versions each change replaced, found by
    // a seek for the old rows) and every readable revision agree.
    let from = fresh.state().compact_revision + 1;
    assert_eq!(
        upgraded.events(&KeyRange::Prefix(Vec::new()), from, 0, true).unwrap(),
        fresh.events(&KeyRange::Prefix(Vec::new()), from, 0, true).unwrap(),
    );
    assert!(
        fresh
            .events(&KeyRange::Prefix(Vec::new()), from, 0, true)
            .unwrap()
            .0
            .iter()
            .any(|e| e.prev_kv.is_some()),
        "the feed names replaced versions"
    );
    // Compaction now runs over old rows, then over mixed windows, then
    // over new ones only.
    for i in 600..1200 {
        fresh.apply_entry(&entry(index, op(i, &mut xa))).unwrap();
        upgraded.apply_entry(&entry(index, op(i, &mut xb))).unwrap();
        index += 1;
        let st = fresh.state();
        assert_eq!(upgraded.state().compact_revision, st.compact_revision);
        if i % 50 == 0 {
            for rev in st.compact_revision.max(1)..=st.revision {
                assert_eq!(everything(&upgraded, rev), everything(&fresh, rev), "revision {rev}");
            }
        }
    }
    assert!(fresh.state().compact_revision > 700, "compaction passed the old rows");
    assert_eq!(
        upgraded.state_hash().unwrap().0,
        fresh.state_hash().unwrap().0,
        "past the old rows, the upgraded store holds the same rows"
    );
}
