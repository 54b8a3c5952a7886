//! `esf snapshot`: save a backup from a running cluster, inspect a file, restore a data dir from one.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum SnapshotCmd {
    /// Stream a consistent snapshot of every group from the leader into
    /// FILE (written to FILE.part, checked, then renamed).
    Save { file: PathBuf },
    /// Check FILE and print what it holds.
    Inspect { file: PathBuf },
    /// Seed the data directory of a new one-member cluster from FILE
    /// (offline; then start it with `esf serve` and the same node id,
    /// data dir and advertise address).
    Restore {
        file: PathBuf,
        /// New, empty (or absent) data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Id of the restored node.
        #[arg(long, default_value_t = 1)]
        node_id: u64,
        /// Address the restored node will advertise (its --advertise, or
        /// --listen if that is what it advertises).
        #[arg(long, default_value = "127.0.0.1:2379")]
        advertise: String,
    },
}

/// Longest wait for the next chunk of a snapshot (the first one comes once
/// the leader has read its state).
pub(super) const SNAPSHOT_CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) fn sync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))
}

pub(super) fn parent_dir(p: &std::path::Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(super) fn with_suffix(p: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) async fn snapshot_save(c: Client, out: Output, file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let part = with_suffix(file, ".part");
    let mut stream = c.snapshot().await?;
    let mut f = std::fs::File::create(&part).with_context(|| format!("create {}", part.display()))?;
    // Removes the partial file on every early return.
    struct Partial<'a>(&'a std::path::Path, bool);
    impl Drop for Partial<'_> {
        fn drop(&mut self) {
            if !self.1 {
                let _ = std::fs::remove_file(self.0);
            }
        }
    }
    let mut partial = Partial(&part, false);
    let bar = std::io::stderr().is_terminal();
    let mut received = 0u64;
    let mut total = 0u64;
    loop {
        let chunk = match tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, stream.message()).await {
            Err(_) => anyhow::bail!("snapshot: no data for {SNAPSHOT_CHUNK_TIMEOUT:?}; nothing saved"),
            Ok(Err(s)) => anyhow::bail!("snapshot: {}; nothing saved", s.message()),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        total = chunk.total_bytes;
        f.write_all(&chunk.data)
            .with_context(|| format!("write {}", part.display()))?;
        received += chunk.data.len() as u64;
        if bar {
            let pct = if total > 0 { received * 100 / total } else { 100 };
            let filled = (pct / 5) as usize;
            eprint!(
                "\r[{}{}] {pct:>3}% {} / {}",
                "#".repeat(filled),
                ".".repeat(20 - filled.min(20)),
                mib(received),
                mib(total)
            );
        }
    }
    if bar {
        eprintln!();
    }
    if received != total {
        anyhow::bail!("snapshot: the stream ended after {received} of {total} bytes; nothing saved");
    }
    f.sync_all().with_context(|| format!("sync {}", part.display()))?;
    drop(f);
    let (header, groups) =
        crate::backup::file::read(&part).context("the received snapshot does not check out; nothing saved")?;
    std::fs::rename(&part, file).with_context(|| format!("rename {} to {}", part.display(), file.display()))?;
    partial.1 = true;
    sync_dir(&parent_dir(file))?;
    let summary = esf_raft::meta::summarize_snapshot(&groups[0].1)?;
    print(
        out,
        &json!({"file": file.display().to_string(), "bytes": received, "cluster_id": header.cluster_id, "node_id": header.node_id, "revision": summary.revision, "keys": summary.keys}),
        || {
            format!(
                "saved {} ({}) from node {} of {}: revision {}, {} keys\n",
                file.display(),
                mib(received),
                header.node_id,
                header.cluster_id,
                summary.revision,
                summary.keys
            )
        },
    );
    Ok(())
}

pub(super) fn snapshot_inspect(out: Output, file: &std::path::Path) -> anyhow::Result<()> {
    let (header, groups) = crate::backup::file::read(file)?;
    let mut rows = Vec::new();
    let mut parts = Vec::new();
    for (g, data) in &groups {
        if g.kind == "partition" {
            parts.push((g.clone(), esf_raft::events::store::summarize_snapshot(g.group, data)?));
        } else {
            rows.push((g.clone(), esf_raft::meta::summarize_snapshot(data)?));
        }
    }
    let mut list: Vec<Value> = rows
        .iter()
        .map(|(g, s)| json!({"group": g.group, "kind": g.kind, "bytes": g.bytes, "summary": s}))
        .collect();
    list.extend(
        parts
            .iter()
            .map(|(g, s)| json!({"group": g.group, "kind": g.kind, "bytes": g.bytes, "summary": s})),
    );
    let v = json!({
        "cluster_id": header.cluster_id, "node_id": header.node_id, "esf_version": header.esf_version,
        "created_unix_ms": header.created_unix_ms, "groups": list,
    });
    print(out, &v, || {
        let mut t = format!(
            "snapshot of {} from node {} (esf {}), taken at unix ms {}\n",
            header.cluster_id, header.node_id, header.esf_version, header.created_unix_ms
        );
        t += &format!(
            "{:<6} {:<9} {:<10} {:<10} {:<10} {:<8} {:<7} {:<10} {}\n",
            "GROUP", "KIND", "BYTES", "INDEX", "REVISION", "KEYS", "LEASES", "COMPACTED", "VOTERS"
        );
        for (g, s) in &rows {
            t += &format!(
                "{:<6} {:<9} {:<10} {:<10} {:<10} {:<8} {:<7} {:<10} {:?}\n",
                g.group, g.kind, g.bytes, s.last_index, s.revision, s.keys, s.leases, s.compact_revision, s.voters
            );
        }
        for (g, s) in &parts {
            t += &format!(
                "{:<6} {:<9} {:<10} {:<10} events: {}\n",
                g.group, g.kind, g.bytes, s.last_index, s.events
            );
        }
        t
    });
    Ok(())
}

pub(super) async fn snapshot_restore(
    out: Output,
    file: &std::path::Path,
    data_dir: &std::path::Path,
    node_id: u64,
    advertise: &str,
) -> anyhow::Result<()> {
    if node_id == 0 {
        anyhow::bail!("--node-id: must be at least 1");
    }
    esf_client::parse_endpoint(advertise).map_err(|e| anyhow::anyhow!("--advertise: {e}"))?;
    let (header, groups) = crate::backup::file::read(file)?;
    if let Ok(mut entries) = std::fs::read_dir(data_dir) {
        if entries.next().is_some() {
            anyhow::bail!(
                "--data-dir: {} is not empty; restore needs a new data directory (nothing was changed)",
                data_dir.display()
            );
        }
    }
    // Build it beside the target and rename it into place at the end, so a
    // failed restore leaves no half-seeded data directory.
    let tmp = with_suffix(data_dir, ".restoring");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("remove leftover {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let seeded = async {
        let db = esf_storage::Db::open(&esf_storage::StorageConfig::new(tmp.join("db")))?;
        let (_, meta) = groups
            .iter()
            .find(|(g, _)| g.kind == "meta")
            .expect("decode checks a meta group");
        let summary = esf_raft::group::seed_from_snapshot(db.clone(), meta, node_id, advertise).await?;
        let mut events = 0;
        for (g, data) in groups.iter().filter(|(g, _)| g.kind == "partition") {
            events += esf_raft::events::group::seed_from_snapshot(db.clone(), g.group, data, node_id, advertise)
                .await?
                .events;
        }
        anyhow::Ok((summary, events))
    }
    .await;
    let (summary, events) = match seeded {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("restore {}", file.display())));
        }
    };
    let cluster_id = crate::identity::new_cluster_id();
    crate::identity::save(
        &tmp,
        &crate::identity::Identity {
            node_id,
            cluster_id: cluster_id.clone(),
            partitions: groups.iter().filter(|(g, _)| g.kind == "partition").count() as u32,
            removed: None,
        },
    )?;
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).with_context(|| format!("replace empty {}", data_dir.display()))?;
    }
    std::fs::rename(&tmp, data_dir).with_context(|| format!("rename {} to {}", tmp.display(), data_dir.display()))?;
    sync_dir(&parent_dir(data_dir))?;
    print(
        out,
        &json!({"data_dir": data_dir.display().to_string(), "node_id": node_id, "advertise": advertise, "cluster_id": cluster_id, "from_cluster_id": header.cluster_id, "revision": summary.revision, "keys": summary.keys, "events": events}),
        || {
            format!(
                "restored revision {} ({} keys, {events} events) of {} into {} as node {} of new cluster {}; start it with: esf serve --node-id {node_id} --data-dir {} --listen {advertise} --advertise {advertise} (--listen may be a wider address on the same port, e.g. 0.0.0.0)\n",
                summary.revision,
                summary.keys,
                header.cluster_id,
                data_dir.display(),
                node_id,
                cluster_id,
                data_dir.display()
            )
        },
    );
    Ok(())
}
