//! Who a data dir belongs to (`identity.json`): the node id, the cluster
//! it joined and its partition count, written atomically (temp file,
//! fsync, rename, directory fsync). A data dir never changes hands: a node
//! started with another id on it refuses to start.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Who this data dir belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's id, fixed for the life of the data dir.
    pub node_id: u64,
    /// Empty until the node joins a cluster.
    pub cluster_id: String,
    /// Event partitions this node runs (0: not recorded yet).
    #[serde(default)]
    pub partitions: u32,
    /// Set once the node learned that it was removed from its cluster
    /// (what it learned, and when): it never starts on this data dir again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("identity.json")
}

/// The identity recorded in `dir`, if any.
pub fn load(dir: &Path) -> anyhow::Result<Option<Identity>> {
    let p = path(dir);
    if !p.exists() {
        return Ok(None);
    }
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    Ok(Some(
        serde_json::from_str(&s).with_context(|| format!("{} is corrupt", p.display()))?,
    ))
}

/// Records `id` in `dir`, durably (temp file, fsync, rename, directory
/// fsync).
pub fn save(dir: &Path, id: &Identity) -> anyhow::Result<()> {
    let p = path(dir);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(id)?).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("rename to {}", p.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A new random cluster id (`esf-` and 16 hex digits).
pub fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("esf-{:016x}", h.finish())
}
