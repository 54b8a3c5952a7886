//! Free space of the data dir's file system, and what a node does when it
//! runs low (the check loop is `cluster::disk_watch`).
//!
//! A node whose disk fills mid-write cannot recover in place: RocksDB
//! stops accepting writes and openraft stops a group for good on a failed
//! log write. So the node stops short of full. Below the floor
//! (`min_free_disk_mb`) it is *low*: it refuses the writes it leads
//! (RESOURCE_EXHAUSTED naming the disk), hands every leadership to another
//! voter and takes none back, refuses new log entries and snapshots from
//! leaders (they retry it later), and `/readyz` says why. The other nodes
//! keep serving. Once a quarter more than the floor is free again it
//! takes entries again and catches up, without a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use esf_raft::openraft::RaftMetrics;
use esf_raft::types::TypeConfig;

use crate::error::{Error, Result};

/// Free space of the file system holding one directory.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    /// Below this many free bytes the node is low (0: never).
    floor: u64,
    low: AtomicBool,
    free: AtomicU64,
    total: AtomicU64,
    /// Set while the storage check has been critical (slow or failing WAL
    /// fsyncs, [`crate::health`]): the node leads nothing, but still takes
    /// log entries (it is a slow follower, not a full one).
    sick: std::sync::Mutex<Option<String>>,
    /// Voters to hand leadership to while sick (alive, storage not
    /// critical, by gossip); set with the sick mark.
    targets: std::sync::Mutex<Vec<u64>>,
}

/// Free and total bytes of the file system holding `dir` (for an
/// unprivileged process: `f_bavail`), from statvfs(3).
pub fn space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(dir)?;
    Ok((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
}

/// Whether the node these metrics describe leads, or may lead (it knows
/// no leader other than itself).
pub fn may_lead(m: &RaftMetrics<TypeConfig>) -> bool {
    m.state.is_leader() || m.current_leader.is_none_or(|l| l == m.id)
}

impl DiskGuard {
    /// A guard of `dir` with a floor of `floor_mb` MiB (0: off).
    pub fn new(dir: &Path, floor_mb: u64) -> DiskGuard {
        DiskGuard {
            dir: dir.to_path_buf(),
            floor: floor_mb << 20,
            low: AtomicBool::new(false),
            free: AtomicU64::new(u64::MAX),
            total: AtomicU64::new(0),
            sick: std::sync::Mutex::new(None),
            targets: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Free bytes at which a low node is no longer low: a quarter above
    /// the floor, so a node at the edge does not flap.
    pub fn resume_at(&self) -> u64 {
        self.floor + self.floor / 4
    }

    /// Looks at the free space now; returns `Some(now_low)` when the state
    /// changed.
    pub fn check(&self) -> std::io::Result<Option<bool>> {
        let (free, total) = space(&self.dir)?;
        Ok(self.observe(free, total))
    }

    /// Records `free` of `total` bytes; `Some(now_low)` when the state
    /// changed.
    pub fn observe(&self, free: u64, total: u64) -> Option<bool> {
        self.free.store(free, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        let was = self.low.load(Ordering::SeqCst);
        let now = if was {
            free < self.resume_at()
        } else {
            free < self.floor
        };
        (now != was).then(|| {
            self.low.store(now, Ordering::SeqCst);
            now
        })
    }

    /// Whether the node is low on disk.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::SeqCst)
    }

    /// Free bytes at the last check (`u64::MAX` before the first).
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Size of the file system at the last check.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Why the node is low, if it is.
    pub fn reason(&self) -> Option<String> {
        self.is_low().then(|| {
            format!(
                "disk: {} has {} bytes free, below the floor of {} bytes (min_free_disk_mb); writes resume once {} bytes are free",
                self.dir.display(),
                self.free(),
                self.floor,
                self.resume_at()
            )
        })
    }

    /// Marks the node's storage as failing its check (`Some(why)`) or fine
    /// again; true when that changed.
    pub fn set_sick(&self, why: Option<String>) -> bool {
        let mut s = self.sick.lock().expect("sick lock");
        let changed = s.is_some() != why.is_some();
        *s = why;
        changed
    }

    /// Sets the voters leadership may be handed to (empty: any).
    pub fn set_handover_targets(&self, targets: Vec<u64>) {
        *self.targets.lock().expect("targets lock") = targets;
    }

    /// The voters leadership may be handed to (empty: any).
    pub fn handover_targets(&self) -> Vec<u64> {
        self.targets.lock().expect("targets lock").clone()
    }

    /// Why this node must not lead: its disk is low or its storage fails
    /// its check.
    pub fn leadership_refusal(&self) -> Option<String> {
        self.reason().or_else(|| {
            self.sick
                .lock()
                .expect("sick lock")
                .as_ref()
                .map(|w| format!("storage check critical: {w}"))
        })
    }

    /// RESOURCE_EXHAUSTED for a write this node may lead while it is low:
    /// `metrics` of the group it would go to (asked only when low). A
    /// follower that knows another leader forwards, and that leader's disk
    /// decides; a node that leads, or knows no leader (an election in
    /// progress, after which it may lead), refuses. Metrics lag openraft's
    /// own state by a moment, so "not a leader" alone is not enough: a
    /// lone node just elected would let a write through.
    pub fn refuse_write(&self, metrics: impl FnOnce() -> RaftMetrics<TypeConfig>) -> Result<()> {
        if self.is_low() && may_lead(&metrics()) {
            return self.refuse_if_low();
        }
        Ok(())
    }

    /// RESOURCE_EXHAUSTED while the node is low.
    pub fn refuse_if_low(&self) -> Result<()> {
        match self.reason() {
            Some(r) => Err(Error::ResourceExhausted(r)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_below_the_floor_until_a_quarter_above_it() {
        let g = DiskGuard::new(Path::new("/data"), 100);
        let mib = 1u64 << 20;
        assert_eq!(g.observe(200 * mib, 1000 * mib), None);
        assert!(g.refuse_if_low().is_ok());
        assert_eq!(g.observe(99 * mib, 1000 * mib), Some(true));
        let err = g.refuse_if_low().unwrap_err().to_string();
        assert!(
            err.contains("disk: /data has 103809024 bytes free, below the floor of 104857600 bytes"),
            "{err}"
        );
        // Hysteresis: free again above the floor is not enough.
        assert_eq!(g.observe(110 * mib, 1000 * mib), None);
        assert!(g.is_low());
        assert_eq!(g.observe(125 * mib, 1000 * mib), Some(false));
        assert!(!g.is_low());
    }

    #[test]
    fn sick_storage_refuses_leadership_but_not_writes() {
        let g = DiskGuard::new(Path::new("/data"), 100);
        assert_eq!(g.leadership_refusal(), None);
        assert!(g.set_sick(Some("a WAL fsync took over 300 ms".into())));
        assert!(!g.set_sick(Some("again".into())), "no change");
        assert_eq!(g.leadership_refusal().as_deref(), Some("storage check critical: again"));
        assert!(!g.is_low() && g.refuse_if_low().is_ok());
        assert!(g.set_sick(None));
        assert_eq!(g.leadership_refusal(), None);
    }

    #[test]
    fn a_low_node_refuses_unless_it_knows_another_leader() {
        let g = DiskGuard::new(Path::new("/data"), 100);
        g.observe(0, 1000);
        // Just started or mid-election: no leader known, it may lead next.
        let mut m = RaftMetrics::<TypeConfig>::new_initial(1);
        assert!(g.refuse_write(|| m.clone()).is_err());
        // Its metrics name it leader before they say Leader: still refused.
        m.current_leader = Some(1);
        assert!(g.refuse_write(|| m.clone()).is_err());
        // A follower of node 2 forwards; node 2's disk decides.
        m.current_leader = Some(2);
        assert!(g.refuse_write(|| m.clone()).is_ok());
        // Not low: nothing is refused, and the metrics are not even read.
        let fine = DiskGuard::new(Path::new("/data"), 100);
        assert!(fine.refuse_write(|| unreachable!("metrics read while not low")).is_ok());
    }

    #[test]
    fn a_floor_of_zero_is_never_low() {
        let g = DiskGuard::new(Path::new("/data"), 0);
        assert_eq!(g.observe(0, 1000), None);
        assert!(!g.is_low());
    }

    #[test]
    fn space_of_a_real_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (free, total) = space(dir.path()).expect("statvfs");
        assert!(total > 0 && free <= total, "{free} of {total}");
        assert!(space(&dir.path().join("missing")).is_err());
    }
}
