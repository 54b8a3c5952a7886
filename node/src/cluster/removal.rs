//! How a removed node learns that it was removed.
//!
//! A node taken out of the meta membership keeps the last membership it
//! saw (the leader stops replicating to it, often before it sees the entry
//! that removed it), so on its own it believes it is still a voter. Every
//! [`CHECK_INTERVAL_MS`] a member that is not the meta leader asks the
//! other members it knows for their status; when the meta leader (a node
//! reporting itself as leader, in a term at least this node's) lists a
//! membership without this node, twice in a row, the node records it in
//! its identity file (durably: it never serves from that data dir again),
//! refuses every request from then on (UNAVAILABLE, saying so, so clients
//! move on to another endpoint), reports it in `/readyz`, stops its Raft
//! groups and waits for the operator. A node that applied the membership
//! that removed it, after this process saw it as a member, knows it from
//! its own log (twice in a row too). A node that has not joined a cluster
//! yet (waiting to be added) never checks.

use std::path::PathBuf;
use std::time::Duration;

use esf_proto::v1 as pb;
use esf_raft::openraft::async_runtime::WatchReceiver;
use esf_raft::openraft::vote::RaftLeaderId;
use tracing::{error, warn};

use crate::context::Ctx;
use crate::identity;

/// How often a member checks that it still is one, ms.
pub const CHECK_INTERVAL_MS: u64 = 2_000;
/// Deadline of one status call to another member.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// Consecutive checks that must find the leader without this node.
pub const STRIKES: u32 = 2;

/// Runs until the node stops or learns it was removed.
/// `join` (the `--join` addresses) are asked too: a node may not have
/// applied any membership with the others in it.
pub async fn run(ctx: Ctx, data_dir: PathBuf, join: Vec<String>, interval: Duration) {
    let mut stop = ctx.stop.clone();
    let mut strikes = 0;
    // Whether this process has seen the node in its own membership.
    let mut was_member = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let me = ctx.meta.node_id();
        let own = ctx.meta.raft().metrics().borrow_watched().membership_config.clone();
        let member = own.membership().get_node(&me).is_some();
        if was_member && !member {
            // It applied a membership without itself: only a removal does
            // that to a node that was a member (a new node applies older
            // memberships only before it first sees itself in one).
            strikes += 1;
            if strikes >= STRIKES {
                let voters: Vec<u64> = own.membership().voter_ids().collect();
                let view = format!("its log has a membership without it, voters {voters:?}");
                mark_removed(&ctx, &data_dir, view).await;
                return;
            }
            continue;
        }
        was_member |= member;
        // A node that has not joined a cluster (a new one waiting to be
        // added) has nothing to check. One that has may have applied its
        // own removal already: its membership then lacks it, and the
        // leader's answer decides.
        if ctx.cluster_id().is_empty() {
            continue;
        }
        match removed_by(&ctx, &join).await {
            Some(view) => {
                strikes += 1;
                if strikes >= STRIKES {
                    mark_removed(&ctx, &data_dir, view).await;
                    return;
                }
            }
            None => strikes = 0,
        }
    }
}

/// What the meta leader reports, if one answers with a membership
/// without this node.
async fn removed_by(ctx: &Ctx, join: &[String]) -> Option<String> {
    let m = ctx.meta.raft().metrics().borrow_watched().clone();
    let me = ctx.meta.node_id();
    if m.state.is_leader() {
        return None;
    }
    let my_term = m.vote.leader_id().term();
    let cluster = ctx.cluster_id();
    // The members it knows (without itself if it applied its own removal)
    // and the addresses it was started with.
    let mut addrs = crate::cluster::membership::other_member_addrs(&ctx.meta);
    for a in join {
        if *a != ctx.advertise && !addrs.contains(a) {
            addrs.push(a.clone());
        }
    }
    for addr in &addrs {
        let Ok(mut stub) = ctx.peer::<pb::cluster_client::ClusterClient<tonic::transport::Channel>>(addr) else {
            continue;
        };
        let call = stub.status(ctx.forwarded(pb::StatusRequest {}));
        let Ok(Ok(resp)) = tokio::time::timeout(CALL_DEADLINE, call).await else {
            continue;
        };
        let s = resp.into_inner();
        let Some(g) = s.groups.first() else { continue };
        let leads = g.role == "leader" && g.leader_id == s.node_id;
        if leads && s.cluster_id == cluster && g.term >= my_term {
            // The leader's view decides: no need to ask the others.
            let member = g.voters.contains(&me) || g.learners.contains(&me);
            return (!member).then(|| {
                format!(
                    "node {} leads meta in term {} with voters {:?} and learners {:?}",
                    s.node_id, g.term, g.voters, g.learners
                )
            });
        }
    }
    None
}

/// Records the removal durably, refuses everything from now on and stops
/// the Raft groups.
async fn mark_removed(ctx: &Ctx, data_dir: &std::path::Path, view: String) {
    let me = ctx.meta.node_id();
    let why = format!(
        "removed: node {me} was removed from cluster {} ({view}); it serves nothing. Start it with an empty data dir to join again",
        ctx.cluster_id()
    );
    error!(reason = %why, "this node was removed from the cluster");
    let dir = data_dir.to_path_buf();
    let record = why.clone();
    let saved = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut id = identity::load(&dir)?.ok_or_else(|| anyhow::anyhow!("no identity file"))?;
        id.removed = Some(record);
        identity::save(&dir, &id)
    })
    .await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "could not record the removal in the identity file"),
        Err(e) => warn!(error = %e, "could not record the removal in the identity file"),
    }
    let _ = ctx.removed.set(why);
    if let Err(e) = ctx.meta.raft().shutdown().await {
        warn!(error = %e, "meta Raft did not shut down cleanly");
    }
    for p in ctx.partitions.iter() {
        if let Err(e) = p.raft().shutdown().await {
            warn!(group = p.group(), error = %e, "partition Raft did not shut down cleanly");
        }
    }
}
