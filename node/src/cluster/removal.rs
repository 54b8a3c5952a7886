//! How a removed node learns that it was removed.
//!
//! A node taken out of the meta membership keeps the last membership it
//! saw (the leader stops replicating to it, often before it sees the entry
//! that removed it), so on its own it believes it is still a voter. Every
//! [`CHECK_INTERVAL_MS`] a member that is not the meta leader asks the
//! other members it knows for their status; when the meta leader (a node
//! reporting itself as leader, in a term at least that of the newest entry
//! this node holds; not its own vote's term, which a removed node raises
//! when it stands for election and loses) lists a membership without this
//! node, twice in a row, the node records it in
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
    let my_term = newest_entry_term(&m);
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
        match leader_verdict(&resp.into_inner(), me, &cluster, my_term) {
            // The leader's view decides: no need to ask the others.
            Some(verdict) => return verdict,
            None => continue,
        }
    }
    None
}

/// What the status `s` of another node says about member `me`, if `s` is
/// the meta leader's of `cluster` in a term at least `my_term`: `Some(None)`
/// (still a member), `Some(Some(view))` (removed, as `view` explains).
/// `None` when `s` does not decide.
///
/// `my_term` is the term of the newest entry this node holds, not that of
/// its own vote: a member the leader no longer replicates to may win a
/// pre-vote from a follower whose lease lapsed (a loaded machine) and then
/// stand for election in a term no leader ever had; compared with that
/// term, the real leader's answer would never count again.
fn leader_verdict(s: &pb::StatusResponse, me: u64, cluster: &str, my_term: u64) -> Option<Option<String>> {
    let g = s.groups.first()?;
    let leads = g.role == "leader" && g.leader_id == s.node_id;
    if !(leads && s.cluster_id == cluster && g.term >= my_term) {
        return None;
    }
    let member = g.voters.contains(&me) || g.learners.contains(&me);
    Some((!member).then(|| {
        format!(
            "node {} leads meta in term {} with voters {:?} and learners {:?}",
            s.node_id, g.term, g.voters, g.learners
        )
    }))
}

/// The term of the newest log entry `m` reports: the last applied one or
/// the effective membership (appended, maybe not applied yet).
fn newest_entry_term(m: &esf_raft::openraft::RaftMetrics<esf_raft::types::TypeConfig>) -> u64 {
    let applied = m.last_applied.as_ref().map_or(0, |l| l.leader_id.term);
    let membership = m.membership_config.log_id().as_ref().map_or(0, |l| l.leader_id.term);
    applied.max(membership)
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

#[cfg(test)]
mod tests {
    use esf_raft::openraft::vote::RaftLeaderId;

    use super::*;

    fn status(node: u64, role: &str, leader: u64, term: u64, voters: Vec<u64>) -> pb::StatusResponse {
        pb::StatusResponse {
            node_id: node,
            cluster_id: "c".into(),
            groups: vec![pb::GroupStatus {
                role: role.into(),
                leader_id: leader,
                term,
                voters,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_the_leader_of_this_cluster_in_a_recent_enough_term_decides() {
        // Node 2 holds entries up to term 3 and was removed.
        let removed = leader_verdict(&status(1, "leader", 1, 3, vec![1, 3]), 2, "c", 3);
        let view = removed.expect("the leader decides").expect("removed");
        assert!(
            view.contains("node 1 leads meta in term 3 with voters [1, 3]"),
            "{view}"
        );
        // Still a member.
        assert_eq!(
            leader_verdict(&status(1, "leader", 1, 3, vec![1, 2, 3]), 2, "c", 3),
            Some(None)
        );
        // A follower, another cluster, a leader older than what node 2 holds:
        // no decision.
        assert_eq!(
            leader_verdict(&status(3, "follower", 1, 3, vec![1, 3]), 2, "c", 3),
            None
        );
        assert_eq!(
            leader_verdict(&status(1, "leader", 1, 3, vec![1, 3]), 2, "other", 3),
            None
        );
        assert_eq!(leader_verdict(&status(1, "leader", 1, 2, vec![1, 3]), 2, "c", 3), None);
    }

    #[test]
    fn a_failed_candidacy_does_not_hide_the_removal() {
        // Node 2's newest entry is from term 3; it then stood for election
        // in term 4, which nobody won: the term-3 leader still decides.
        let mut m = esf_raft::openraft::RaftMetrics::<esf_raft::types::TypeConfig>::new_initial(2);
        let leader = esf_raft::openraft::alias::LeaderIdOf::<esf_raft::types::TypeConfig>::new(3, 1).to_committed();
        m.last_applied = Some(esf_raft::openraft::LogId::new(leader, 40));
        m.vote = esf_raft::openraft::Vote::new(4, 2);
        assert_eq!(newest_entry_term(&m), 3);
        let verdict = leader_verdict(&status(1, "leader", 1, 3, vec![1, 3]), 2, "c", newest_entry_term(&m));
        assert!(matches!(verdict, Some(Some(_))), "{verdict:?}");
    }
}
