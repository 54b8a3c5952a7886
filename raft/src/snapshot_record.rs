//! What every group's state machine does the same way with snapshots: read
//! all of the group's `sm` rows under a RocksDB snapshot, and keep the
//! current snapshot as one fsynced record in the `snapshot` column family.

use esf_storage::codec::{self, RecordRef};
use esf_storage::keys::{CF_SM, CF_SNAPSHOT, GroupId, group_prefix, prefix_end};
use esf_storage::rocksdb::{self, ReadOptions, WriteBatch};
use esf_storage::{Db, StorageError};
use serde_bytes::ByteBuf;

use crate::types::SnapshotMeta;

/// The key range `[lo, hi)` of every row of `group`.
pub(crate) fn group_bounds(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let lo = group_prefix(group).to_vec();
    let hi = prefix_end(&lo).unwrap_or_else(|| vec![0xff; 5]);
    (lo, hi)
}

/// Every `sm` row of `group` as seen by `snap`, without the group prefix.
pub(crate) fn dump_rows(
    db: &Db,
    snap: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    group: GroupId,
) -> Result<Vec<(ByteBuf, ByteBuf)>, StorageError> {
    let (lo, hi) = group_bounds(group);
    let mut ro = ReadOptions::default();
    ro.set_snapshot(snap);
    ro.set_iterate_lower_bound(lo.clone());
    ro.set_iterate_upper_bound(hi);
    let mut it = db.rocks().raw_iterator_cf_opt(db.cf(CF_SM), ro);
    it.seek(&lo);
    let mut rows = Vec::new();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        rows.push((ByteBuf::from(&k[4..]), ByteBuf::from(v)));
        it.next();
    }
    it.status().map_err(|e| StorageError::Rocks {
        context: format!("snapshot scan of group {group}"),
        source: e,
    })?;
    Ok(rows)
}

/// Persists a built or received snapshot as `group`'s current one (fsynced).
pub(crate) async fn save(db: &Db, group: GroupId, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    batch.put_cf(
        db.cf(CF_SNAPSHOT),
        group_prefix(group),
        codec::encode("snapshot record", &(meta, data))?,
    );
    db.write_durable(batch).await
}

/// `group`'s current persisted snapshot.
pub(crate) fn load(db: &Db, group: GroupId) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let raw = db
        .rocks()
        .get_pinned_cf(db.cf(CF_SNAPSHOT), group_prefix(group))
        .map_err(|e| StorageError::Rocks {
            context: "read snapshot".into(),
            source: e,
        })?;
    match raw {
        None => Ok(None),
        Some(v) => codec::decode(
            RecordRef {
                cf: CF_SNAPSHOT,
                group,
                record: &"snapshot",
            },
            &v,
        )
        .map(Some),
    }
}

/// Format number of a snapshot blob.
pub(crate) const FORMAT: u32 = 1;

/// A group's snapshot: every `sm` row without the 4-byte group prefix (so
/// it can be installed into another group id, e.g. by a restore). Byte
/// strings as `ByteBuf`: the same bincode encoding as `Vec<u8>`, written in
/// one copy instead of byte by byte.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Blob {
    pub(crate) format: u32,
    pub(crate) rows: Vec<(ByteBuf, ByteBuf)>,
}

/// The checksummed encoding of `rows`.
pub(crate) fn encode_rows(rows: Vec<(ByteBuf, ByteBuf)>) -> Result<Vec<u8>, StorageError> {
    codec::encode("snapshot", &Blob { format: FORMAT, rows })
}

/// Decodes a blob of `group` (checksum and format); `what` names it in
/// errors.
pub(crate) fn decode_blob(group: GroupId, what: &str, data: &[u8]) -> Result<Blob, StorageError> {
    let blob: Blob = codec::decode(
        RecordRef {
            cf: CF_SNAPSHOT,
            group,
            record: &what,
        },
        data,
    )?;
    if blob.format != FORMAT {
        return Err(StorageError::Corrupt {
            cf: CF_SNAPSHOT,
            group,
            record: what.to_string(),
            reason: format!("snapshot format {} is not {FORMAT}", blob.format),
        });
    }
    Ok(blob)
}

/// Adds to `batch`: delete every row of `group`, then write `rows`.
pub(crate) fn replace_rows(batch: &mut WriteBatch, db: &Db, group: GroupId, rows: &[(ByteBuf, ByteBuf)]) {
    let cf = db.cf(CF_SM);
    let (lo, hi) = group_bounds(group);
    batch.delete_range_cf(cf, &lo, &hi);
    for (k, v) in rows {
        let mut full = lo.clone();
        full.extend_from_slice(k);
        batch.put_cf(cf, full, v);
    }
}
