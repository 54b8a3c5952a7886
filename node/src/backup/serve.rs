//! Serving backups: `esf snapshot save` streams the whole cluster's state
//! from one node ([`serve_snapshot`]); a node that does not lead a
//! partition fetches that partition's rows from its leader
//! ([`partition_snapshot`] there). Rows are read under one RocksDB
//! snapshot per group, off the runtime; chunks are bounded in flight
//! ([`file::CHUNKS_IN_FLIGHT`]).
//!
//! Not here: restoring (the CLI writes a data dir from the file, see
//! `cli/backup.rs`) and the file format ([`file`]).

use std::time::Duration;

use esf_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::file;
use crate::cluster::partitions;
use crate::context::Ctx;
use crate::error::{Error, Result};

/// The chunks of a backup, in order; an error ends it.
pub type ChunkStream = ReceiverStream<Result<pb::BackupChunk, Error>>;

/// Streams a backup of the whole cluster's state as this node can read it
/// linearizably: the meta group's rows, then each partition's from its
/// leader (here or fetched), in the `esf snapshot save` file format
/// ([`file`]). One at a time per node.
pub async fn serve_snapshot(ctx: &Ctx) -> Result<ChunkStream> {
    // Every write acknowledged before this call is applied here after
    // the barrier (and a follower answers with the leader hint).
    ctx.meta.linearize().await?;
    let permit = ctx.snapshots_in_progress.clone().try_acquire_owned().map_err(|_| {
        Error::ResourceExhausted("a snapshot is already being served by this node; try again after it".into())
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(file::CHUNKS_IN_FLIGHT);
    let store = ctx.meta.store().clone();
    let partitions = ctx.partitions.clone();
    let ctx = ctx.clone();
    let cluster_id = ctx.cluster_id();
    let node_id = ctx.meta.node_id();
    let version = ctx.version;
    tokio::spawn(async move {
        let _permit = permit;
        let fail = |tx: &tokio::sync::mpsc::Sender<Result<pb::BackupChunk, Error>>, m: String| {
            let _ = tx.try_send(Err(Error::Internal(m)));
        };
        // The rows are read under one RocksDB snapshot per group, off
        // the runtime.
        let built = tokio::task::spawn_blocking(move || store.snapshot_rows()).await;
        let (st, blob) = match built {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return fail(&tx, format!("snapshot: {e}")),
            Err(e) => return fail(&tx, format!("snapshot task: {e}")),
        };
        let mut sections = vec![(
            file::GroupSection {
                group: esf_raft::group::META_GROUP,
                kind: "meta".into(),
                bytes: blob.len() as u64,
            },
            blob,
        )];
        for p in partitions.iter() {
            let built = if p.raft().is_leader() {
                partition_rows(p)
                    .await
                    .map_err(|e| format!("partition {}: {e}", p.group()))
            } else {
                fetch_partition_rows(&ctx, p.group()).await.map_err(|e| e.to_string())
            };
            let data = match built {
                Ok(d) => d,
                Err(e) => return fail(&tx, format!("snapshot: {e}")),
            };
            sections.push((
                file::GroupSection {
                    group: p.group(),
                    kind: "partition".into(),
                    bytes: data.len() as u64,
                },
                data,
            ));
        }
        let header = file::Header {
            cluster_id,
            node_id,
            esf_version: version.to_string(),
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            groups: sections.iter().map(|(g, _)| g.clone()).collect(),
        };
        let head = file::encode_head(&header);
        let total_bytes = (head.len() + sections.iter().map(|(_, d)| d.len()).sum::<usize>()) as u64;
        tracing::info!(bytes = total_bytes, revision = st.revision, last_applied = ?st.last_applied, "serving a snapshot");
        let pieces =
            std::iter::once(head.as_slice()).chain(sections.iter().flat_map(|(_, d)| d.chunks(file::CHUNK_BYTES)));
        for data in pieces {
            let chunk = pb::BackupChunk {
                total_bytes,
                data: data.to_vec(),
            };
            // Bounded: a slow reader holds at most CHUNKS_IN_FLIGHT copies.
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Streams partition `g`'s rows from its leader (this node; a follower
/// answers with the leader's address).
pub async fn partition_snapshot(ctx: &Ctx, g: u32) -> Result<ChunkStream> {
    let n = ctx.partitions.len();
    if g == 0 || g as usize > n {
        return Err(Error::invalid("partition", format!("{g} does not exist (1 to {n})")));
    }
    let p = ctx.partitions[g as usize - 1].clone();
    // Only the leader has everything acknowledged; others answer with
    // its address.
    let data = partition_rows(&p).await?;
    let total_bytes = data.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel(file::CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        for piece in data.chunks(file::CHUNK_BYTES) {
            let chunk = pb::BackupChunk {
                total_bytes,
                data: piece.to_vec(),
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The rows of partition `p` on its leader (this node), after a read-index
/// barrier: everything acknowledged before the call is in them.
async fn partition_rows(p: &esf_raft::events::PartitionGroup) -> Result<Vec<u8>, esf_raft::Error> {
    let g = p.group();
    p.linearize().await?;
    let store = p.store().clone();
    match tokio::task::spawn_blocking(move || store.snapshot_rows()).await {
        Ok(Ok((_, d))) => Ok(d),
        Ok(Err(e)) => Err(esf_raft::Error::Storage(e)),
        Err(e) => Err(esf_raft::Error::Unavailable(format!(
            "partition {g}: snapshot task: {e}"
        ))),
    }
}
/// Deadline of one chunk of a partition's rows fetched from another node.
const PARTITION_CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// The rows of partition `g` from its leader on another node (the leader
/// this node knows, then the planned replicas, following their hints), for
/// a snapshot served by a node that does not lead it.
async fn fetch_partition_rows(ctx: &Ctx, g: u32) -> Result<Vec<u8>> {
    type ClusterStub = pb::cluster_client::ClusterClient<tonic::transport::Channel>;
    let mut last = format!("partition {g}: no replica of it is known");
    let mut targets: std::collections::VecDeque<String> =
        partitions::replica_addrs(&ctx.meta, &ctx.routes, g, &ctx.advertise).into();
    if let esf_raft::Error::NotLeader {
        leader_addr: Some(a), ..
    } = ctx.partitions[g as usize - 1].not_leader_error()
    {
        targets.push_front(a);
    }
    let mut tried = std::collections::BTreeSet::new();
    while let Some(addr) = targets.pop_front() {
        if addr == ctx.advertise || !tried.insert(addr.clone()) {
            continue;
        }
        let fetched = async {
            let mut c: ClusterStub = ctx.peer(&addr)?;
            let mut st = tokio::time::timeout(
                PARTITION_CHUNK_TIMEOUT,
                c.partition_snapshot(pb::PartitionSnapshotRequest { partition: g }),
            )
            .await
            .map_err(|_| Error::unavailable("no answer"))?
            .map_err(Error::Peer)?
            .into_inner();
            let mut data = Vec::new();
            let mut announced = None;
            while let Some(chunk) = tokio::time::timeout(PARTITION_CHUNK_TIMEOUT, st.message())
                .await
                .map_err(|_| Error::unavailable("a chunk did not arrive in time"))?
                .map_err(Error::Peer)?
            {
                data.extend_from_slice(&chunk.data);
                announced = Some(chunk.total_bytes);
                if data.len() as u64 > chunk.total_bytes {
                    return Err(Error::DataLoss("more bytes than announced".into()));
                }
            }
            if announced.is_some_and(|t| t != data.len() as u64) {
                return Err(Error::DataLoss("fewer bytes than announced".into()));
            }
            Ok::<_, Error>(data)
        };
        match fetched.await {
            Ok(d) => return Ok(d),
            Err(e) => {
                let s = Status::from(e);
                if let Some(hint) = s
                    .metadata()
                    .get(esf_proto::wire::LEADER_ADDR_METADATA)
                    .and_then(|v| v.to_str().ok())
                {
                    targets.push_front(hint.to_string());
                }
                last = format!("partition {g} from {addr}: {}", s.message());
            }
        }
    }
    Err(Error::unavailable(last))
}
