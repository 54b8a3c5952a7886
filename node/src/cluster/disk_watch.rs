//! The disk check loop: looks at the data dir's free space every
//! `disk_check_interval_ms` and, while the node is low
//! ([`crate::disk::DiskGuard`]), keeps it from leading anything: elections
//! off in every group it is not the only voter of (so an election timeout
//! never makes it a candidate) and every leadership it holds handed to
//! another voter. Transfers *to*
//! it are refused by the Raft transport while it is low. The same holds
//! while its storage check is critical ([`DiskGuard::set_sick`], set by
//! [`crate::health`]), except that it keeps taking log entries.

use std::sync::Arc;
use std::time::Duration;

use esf_raft::group::MetaGroup;
use tracing::{info, warn};

use crate::cluster::formation::ask_meta_hand_over_to;
use crate::cluster::partitions::{Partitions, hand_over_all_to, membership_of};
use crate::disk::DiskGuard;

/// Runs until `stop`.
pub async fn run(
    disk: Arc<DiskGuard>,
    meta: Arc<MetaGroup>,
    partitions: Partitions,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match disk.check() {
            Ok(Some(low)) => {
                if low {
                    warn!(
                        reason = disk.reason().unwrap_or_default(),
                        "disk low: refusing writes here, handing over leadership, taking no log entries"
                    );
                } else {
                    info!(
                        free_bytes = disk.free(),
                        "disk has room again: taking log entries and leadership again"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "disk check failed"),
        }
        // Low disk, or storage failing its check (set by the health task):
        // lead nothing.
        let refusal = disk.leadership_refusal();
        set_elect(&meta, &partitions, refusal.is_none());
        if refusal.is_some() {
            let targets = disk.handover_targets();
            hand_over_all_to(&partitions, &targets).await;
            ask_meta_hand_over_to(&meta, &targets).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Elections on or off in every group of this node (every pass: a node
/// low from the start, voters that change). A group's only voter keeps
/// them on: nobody else could lead it, and its writes are refused anyway.
fn set_elect(meta: &MetaGroup, partitions: &Partitions, on: bool) {
    let me = meta.node_id();
    let alone = |voters: std::collections::BTreeSet<u64>| voters.len() == 1 && voters.contains(&me);
    meta.raft()
        .runtime_config()
        .elect(on || alone(membership_of(meta.raft()).0));
    for p in partitions.iter() {
        let (voters, _) = membership_of(p.raft());
        p.raft().runtime_config().elect(on || alone(voters));
    }
}
