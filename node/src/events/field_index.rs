//! Declared field indexes: declared in meta (one reserved key per field,
//! `0xff "index/" field`), started and stopped on each partition by its
//! leader through the partition's log (`Op::IndexField`, so every replica
//! writes the same rows for new events), and built for older events by
//! every replica in the background (`PartitionStore::backfill_step`).

use std::collections::BTreeSet;
use std::time::Duration;

use esf_raft::command::{Command, KeyRange, Op};
use esf_raft::group::MetaGroup;
use esf_raft::openraft::async_runtime::WatchReceiver;
use tracing::warn;

use crate::keyspace::Area;

/// How often each node reconciles partitions with the declarations and
/// continues backfills. A fixed poll because the work depends on three
/// changing things (declarations, leadership, backfill progress) and each
/// pass is a few in-memory comparisons when nothing changed; a declaration
/// reaches every partition within it.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// Deadline of one `IndexField` proposal.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

/// The meta key declaring `field`.
pub fn declaration_key(field: &str) -> Vec<u8> {
    Area::FieldIndex.key(field.as_bytes())
}

/// The range of every declaration.
pub fn declarations_range() -> KeyRange {
    Area::FieldIndex.range()
}

/// The field a declaration key names.
pub fn field_of(key: &[u8]) -> Option<String> {
    let f = Area::FieldIndex.name_of(key)?;
    String::from_utf8(f.to_vec()).ok()
}

/// The declared fields as this node's meta replica has them.
pub fn local_declared(meta: &MetaGroup) -> Result<BTreeSet<String>, esf_raft::Error> {
    let req = crate::convert::read_all(declarations_range(), true);
    let (res, _) = meta.store().range(&req)?;
    Ok(res.kvs.iter().filter_map(|kv| field_of(&kv.key)).collect())
}

/// Reconciles every partition with the declarations (on its leader) and
/// backfills (on every replica), every [`SYNC_INTERVAL`], until `stop`.
pub async fn run(
    meta: std::sync::Arc<MetaGroup>,
    partitions: crate::cluster::partitions::Partitions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let declared = match local_declared(&meta) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "field indexes: cannot read the declarations");
                continue;
            }
        };
        for p in partitions.iter() {
            let have: BTreeSet<String> = p.store().field_indexes().into_iter().map(|(f, _)| f).collect();
            let m = p.raft().metrics().borrow_watched().clone();
            if m.current_leader == Some(m.id) && have != declared {
                let changes = declared
                    .difference(&have)
                    .map(|f| (f.clone(), true))
                    .chain(have.difference(&declared).map(|f| (f.clone(), false)));
                for (field, create) in changes {
                    let cmd = Command::new(Op::IndexField {
                        field: field.clone(),
                        create,
                    });
                    match tokio::time::timeout(PROPOSE_DEADLINE, p.write(cmd)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            warn!(group = p.group(), %field, error = %e, "field index change not applied (retried)")
                        }
                        Err(_) => {
                            warn!(group = p.group(), %field, "field index change not applied within {PROPOSE_DEADLINE:?} (retried)")
                        }
                    }
                }
            }
            // Backfill a batch at a time, yielding between batches.
            while p.store().field_indexes().iter().any(|(_, s)| !s.complete()) {
                if *stop.borrow() {
                    return;
                }
                let store = p.store().clone();
                match tokio::task::spawn_blocking(move || store.backfill_step()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        warn!(group = p.group(), error = %e, "field index backfill failed (retried)");
                        break;
                    }
                    Err(e) => {
                        warn!(group = p.group(), error = %e, "field index backfill task failed (retried)");
                        break;
                    }
                }
            }
        }
    }
}
