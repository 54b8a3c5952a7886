//! Node checks: each gives a status (passing, warning, critical) and a
//! reason. They run every `check_interval_ms` on every node; the results
//! are published in gossip (so every node's `/health` shows every node's
//! checks) and served by this node's admin `/health`.
//!
//! | check | critical | warning |
//! |---|---|---|
//! | `storage` | an fsync of the WAL fails or takes over `fsync_critical_ms` | over `fsync_warn_ms` |
//! | `disk` | free space under `min_free_disk_mb` | under twice that |
//! | `memory` | | resident memory over `max_rss_mb` |
//! | `raft` | no meta leader known | a held partition without a leader; apply lag over `max_apply_lag` |
//! | `clock` | | a peer's clock over `max_clock_offset_ms` away |

use std::sync::Arc;
use std::time::{Duration, Instant};

use esf_raft::group::MetaGroup;
use esf_raft::openraft::async_runtime::WatchReceiver;
use serde::Serialize;

use crate::cluster::partitions::Partitions;
use crate::disk::DiskGuard;

/// A check's outcome, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Passing,
    /// Works, but something needs a look.
    Warning,
    /// Does not work as it should.
    Critical,
}

impl Status {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `storage`, `disk`, `memory`, `raft`, `clock`.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// Why (empty when passing).
    pub reason: String,
}

impl Check {
    fn new(name: &str, status: Status, reason: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            reason: reason.into(),
        }
    }
}

/// Thresholds of the checks (from the node config).
#[derive(Debug, Clone)]
pub struct Limits {
    /// A WAL fsync slower than this is a warning.
    pub fsync_warn: Duration,
    /// A WAL fsync slower than this (or failing) is critical.
    pub fsync_critical: Duration,
    /// Resident memory above this is a warning (bytes).
    pub max_rss_bytes: u64,
    /// Committed but unapplied entries above this are a warning.
    pub max_apply_lag: u64,
    /// A peer clock further than this is a warning (ms).
    pub max_clock_offset_ms: u64,
    /// After this many storage checks in a row critical, the node hands
    /// over its leadership and leads nothing ([`crate::disk::DiskGuard::set_sick`]).
    pub evacuate_after_checks: u32,
    /// ... until this many in a row are not critical.
    pub return_after_checks: u32,
}

/// What the checks look at.
#[derive(Clone)]
pub struct Checker {
    /// The meta group (its store holds the DB).
    pub meta: Arc<MetaGroup>,
    /// The event partitions.
    pub partitions: Partitions,
    /// Free space of the data dir.
    pub disk: Arc<DiskGuard>,
    /// Thresholds.
    pub limits: Limits,
}

impl Checker {
    /// Runs every check; `clock_offsets` are (node id, offset ms) of the
    /// peers measured lately.
    pub async fn run(&self, clock_offsets: &[(u64, i64)]) -> Vec<Check> {
        vec![
            self.storage().await,
            self.disk(),
            self.memory(),
            self.raft(),
            self.clock(clock_offsets),
        ]
    }

    /// Times one WAL fsync (shared with the writes in flight, as any
    /// write's would be).
    async fn storage(&self) -> Check {
        let db = self.meta.store().db().clone();
        let started = Instant::now();
        let limit = self.limits.fsync_critical;
        match tokio::time::timeout(limit, db.sync()).await {
            Err(_) => Check::new(
                "storage",
                Status::Critical,
                format!("a WAL fsync took over {} ms (fsync_critical_ms)", limit.as_millis()),
            ),
            Ok(Err(e)) => Check::new("storage", Status::Critical, format!("WAL fsync failed: {e}")),
            Ok(Ok(())) => {
                let took = started.elapsed();
                if took > self.limits.fsync_warn {
                    Check::new(
                        "storage",
                        Status::Warning,
                        format!(
                            "a WAL fsync took {} ms, over {} ms (fsync_warn_ms)",
                            took.as_millis(),
                            self.limits.fsync_warn.as_millis()
                        ),
                    )
                } else {
                    Check::new("storage", Status::Passing, "")
                }
            }
        }
    }

    fn disk(&self) -> Check {
        if let Some(r) = self.disk.reason() {
            return Check::new("disk", Status::Critical, r);
        }
        let floor = self.disk.resume_at() * 4 / 5;
        let free = self.disk.free();
        if floor > 0 && free < floor * 2 {
            return Check::new(
                "disk",
                Status::Warning,
                format!("{free} bytes free, under twice the floor of {floor} bytes (min_free_disk_mb)"),
            );
        }
        Check::new("disk", Status::Passing, "")
    }

    fn memory(&self) -> Check {
        match resident_bytes() {
            Some(rss) if rss > self.limits.max_rss_bytes => Check::new(
                "memory",
                Status::Warning,
                format!(
                    "resident memory {} MiB is over {} MiB (max_rss_mb)",
                    rss >> 20,
                    self.limits.max_rss_bytes >> 20
                ),
            ),
            Some(_) => Check::new("memory", Status::Passing, ""),
            None => Check::new("memory", Status::Warning, "resident memory unknown (/proc/self/statm)"),
        }
    }

    fn raft(&self) -> Check {
        let m = self.meta.raft().metrics().borrow_watched().clone();
        if m.current_leader.is_none() {
            return Check::new("raft", Status::Critical, "no meta leader known");
        }
        let mut problems = Vec::new();
        let lag = |m: &esf_raft::openraft::RaftMetrics<esf_raft::types::TypeConfig>| {
            let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
            let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
            committed.saturating_sub(applied)
        };
        if lag(&m) > self.limits.max_apply_lag {
            problems.push(format!("meta apply lag {}", lag(&m)));
        }
        let me = self.meta.node_id();
        for p in self.partitions.iter() {
            let pm = p.raft().metrics().borrow_watched().clone();
            if !pm.membership_config.membership().voter_ids().any(|v| v == me) {
                continue;
            }
            if pm.current_leader.is_none() {
                problems.push(format!("partition {} has no leader", p.group()));
            } else if lag(&pm) > self.limits.max_apply_lag {
                problems.push(format!("partition {} apply lag {}", p.group(), lag(&pm)));
            }
        }
        if problems.is_empty() {
            Check::new("raft", Status::Passing, "")
        } else {
            Check::new(
                "raft",
                Status::Warning,
                format!("{} (max_apply_lag {})", problems.join(", "), self.limits.max_apply_lag),
            )
        }
    }

    fn clock(&self, offsets: &[(u64, i64)]) -> Check {
        let max = self.limits.max_clock_offset_ms as i64;
        let far: Vec<String> = offsets
            .iter()
            .filter(|(_, o)| o.abs() > max)
            .map(|(id, o)| format!("node {id} {o:+} ms"))
            .collect();
        if far.is_empty() {
            Check::new("clock", Status::Passing, "")
        } else {
            Check::new(
                "clock",
                Status::Warning,
                format!("clock offset over {max} ms (max_clock_offset_ms): {}", far.join(", ")),
            )
        }
    }
}

/// This process's resident memory, from VmRSS in /proc/self/status (in
/// kB there, whatever the page size).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The worst status of `checks` (passing when there are none).
pub fn worst(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Passing)
}

/// `checks` as published in gossip: `name=status[:reason]` joined by `;`
/// (reasons cut to [`crate::gossip::MAX_REASON_BYTES`], `;` replaced).
pub fn encode(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| {
            let mut s = format!("{}={}", c.name, c.status.as_str());
            if !c.reason.is_empty() {
                let mut r: String = c.reason.replace(';', ",");
                if r.len() > crate::gossip::MAX_REASON_BYTES {
                    let mut end = crate::gossip::MAX_REASON_BYTES;
                    while !r.is_char_boundary(end) {
                        end -= 1;
                    }
                    r.truncate(end);
                }
                s.push(':');
                s.push_str(&r);
            }
            s
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The checks of [`encode`]'s text (unparsable parts skipped).
pub fn decode(text: &str) -> Vec<Check> {
    text.split(';')
        .filter_map(|part| {
            let (name, rest) = part.split_once('=')?;
            let (status, reason) = rest.split_once(':').unwrap_or((rest, ""));
            Some(Check::new(name, Status::parse(status)?, reason))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_grows_with_what_is_touched() {
        let before = resident_bytes().expect("VmRSS");
        assert!(before > 1 << 20, "{before}");
        // 64 MiB written page by page is resident.
        let touched = vec![1u8; 64 << 20];
        let after = resident_bytes().expect("VmRSS");
        assert!(after >= before + (48 << 20), "{before} -> {after}");
        assert_eq!(touched.iter().map(|b| u64::from(*b)).sum::<u64>(), 64 << 20);
    }

    #[test]
    fn checks_survive_their_gossip_encoding() {
        let checks = vec![
            Check::new("storage", Status::Passing, ""),
            Check::new("raft", Status::Warning, "partition 3 has no leader; and more: x=y"),
            Check::new("disk", Status::Critical, "é".repeat(200)),
        ];
        let text = encode(&checks);
        let back = decode(&text);
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], checks[0]);
        assert_eq!(back[1].reason, "partition 3 has no leader, and more: x=y");
        assert_eq!(back[2].status, Status::Critical);
        assert!(back[2].reason.len() <= crate::gossip::MAX_REASON_BYTES);
        assert_eq!(worst(&back), Status::Critical);
        assert_eq!(worst(&[]), Status::Passing);
        assert!(decode("junk;storage=bogus;x=passing").len() == 1);
    }
}
