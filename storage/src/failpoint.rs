//! Test-only faults, compiled in only with the `failpoints` cargo feature
//! (no default or release build enables it: `cargo tree -e features -p
//! esf-node` shows it off). With the feature, the comma-separated names in
//! `ESF_FAILPOINTS` are active for the life of the process:
//!
//! - `local-reads`: linearizable reads skip the read-index barrier and
//!   answer from the local state (a deposed or isolated leader serves stale
//!   reads);
//! - `no-dedup`: event appends skip the deduplication by event id (a
//!   retried append is stored twice);
//! - `slow-fsync`: every WAL fsync of the node takes [`SLOW_FSYNC`] longer
//!   (a slow disk: writes stay correct, acknowledgements slow down; the
//!   node's storage check must see it and hand its leadership over).
//!
//! The Jepsen-style tests must catch the first two (`scripts/jepsen.sh
//! --failpoints`); `cluster-tests/tests/gossip.rs` uses the third. The
//! module lives in the lowest crate so every crate can have failpoints;
//! `esf_raft::failpoint` is the same module.

/// How much longer each WAL fsync takes under `slow-fsync`.
pub const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_millis(400);

/// Whether failpoint `name` is active.
#[cfg(feature = "failpoints")]
pub fn active(name: &str) -> bool {
    static ACTIVE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ACTIVE
        .get_or_init(|| {
            let names: Vec<String> = std::env::var("ESF_FAILPOINTS")
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if !names.is_empty() {
                tracing::warn!(failpoints = ?names, "TEST FAILPOINTS ACTIVE: this node breaks its guarantees on purpose");
            }
            names
        })
        .iter()
        .any(|n| n == name)
}

/// Whether failpoint `name` is active: never, in this build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
