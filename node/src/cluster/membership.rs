//! Membership of the cluster: adding, promoting and removing nodes and
//! moving the meta leadership, each carried out through the meta group's
//! Raft (one change at a time, bounded by [`MEMBERSHIP_TIMEOUT`]).
//!
//! A node leaves meta only after its partition replicas moved to other
//! nodes (once out of meta it may never learn it was removed); a node is
//! added only after it answers with the id it is added as, belongs to no
//! other cluster and runs the same partition count. The callers (the
//! Cluster gRPC service) make sure these run on the meta leader.

use std::collections::BTreeSet;
use std::time::Duration;

use esf_proto::v1 as pb;
use esf_raft::openraft::async_runtime::WatchReceiver;
use esf_raft::openraft::{BasicNode, ChangeMembers};
use tonic::Request;
use tonic::transport::Channel;

use crate::cluster::{formation, partitions};
use crate::context::Ctx;
use crate::error::{Error, Result};

/// Deadline of a membership change.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

type ClusterStub = pb::cluster_client::ClusterClient<Channel>;

/// Membership operations of the node `ctx` (which leads meta).
pub struct Membership<'a> {
    /// The node's shared state.
    pub ctx: &'a Ctx,
}

impl Membership<'_> {
    /// Whether node `id` is in the meta membership (voter or learner) as
    /// this node knows it.
    pub fn is_member(&self, id: u64) -> bool {
        self.ctx
            .meta
            .raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    /// The members as this node's meta replica knows them, with the leader.
    pub fn members(&self) -> pb::MembersResponse {
        let m = self.ctx.meta.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                holds_data: self.ctx.meta.store().member_replicated(*id).unwrap_or(false),
                liveness: String::new(),
                generation: 0,
            })
            .collect();
        let leader = m.current_leader.unwrap_or(0);
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        pb::MembersResponse {
            header: Some(self.ctx.meta_header()),
            members,
            leader_id: leader,
            leader_addr,
        }
    }
}

impl Membership<'_> {
    /// Before node `id` leaves meta: records a placement without it, then
    /// waits until no partition's leader counts it as a replica (its
    /// replicas moved to other nodes). Once out of meta the node may never
    /// learn it was removed, so it must be out of every partition first.
    async fn drain_partitions(&self, id: u64) -> Result<()> {
        let count = self.ctx.partitions.len() as u32;
        let op =
            partitions::plan_without(&self.ctx.meta, id, count, self.ctx.partition_replicas).map_err(|e| match e {
                Error::Precondition(m) => Error::Precondition(format!("id: {m}")),
                other => other,
            })?;
        self.ctx.meta.write(esf_raft::command::Command::new(op)).await?;
        let deadline = tokio::time::Instant::now() + partitions::MOVE_WAIT_PER_CALL;
        loop {
            let still = self.partitions_on(id).await;
            if still.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "id: partitions {still:?} still have a replica on node {id}; the placement without it is recorded and its replicas are moving: retry to finish the removal"
                )));
            }
            // Polled: the replicas of every partition move independently,
            // on whichever node leads it; the loop ends at the deadline.
            tokio::time::sleep(partitions::MOVE_POLL).await;
        }
    }

    /// Partitions whose leader (as the highest-term leader among the
    /// members' own reports) counts node `id` as a replica, or that have
    /// no reported leader.
    async fn partitions_on(&self, id: u64) -> Vec<u32> {
        let mut reports: Vec<pb::GroupStatus> = self
            .ctx
            .partitions
            .iter()
            .map(|p| partitions::group_status(p.group(), p.raft()))
            .collect();
        let others = other_member_addrs(&self.ctx.meta);
        let asks = others.iter().map(|addr| async move {
            let mut c: ClusterStub = self.ctx.peer(addr).ok()?;
            let mut r = Request::new(pb::StatusRequest {});
            r.set_timeout(partitions::STATUS_TIMEOUT);
            tokio::time::timeout(partitions::STATUS_TIMEOUT, c.status(r))
                .await
                .ok()?
                .ok()
                .map(|s| s.into_inner().groups)
        });
        for groups in futures::future::join_all(asks).await.into_iter().flatten() {
            reports.extend(groups.into_iter().filter(|g| g.group != 0));
        }
        (1..=self.ctx.partitions.len() as u32)
            .filter(|g| {
                let leader = reports
                    .iter()
                    .filter(|r| r.group == *g && r.role == "leader")
                    .max_by_key(|r| r.term);
                match leader {
                    None => true,
                    Some(r) => r.voters.contains(&id) || r.learners.contains(&id),
                }
            })
            .collect()
    }

    /// Before adding node `id` at `addr` (not a member): it must answer,
    /// carry that id, belong to no other cluster (a node of another cluster
    /// would refuse every append, and the add would only time out), and not
    /// hold this one's data.
    async fn check_new_member(&self, id: u64, addr: &str) -> Result<()> {
        let cluster = self.ctx.cluster_id();
        let ask = pb::HelloRequest {
            node_id: self.ctx.meta.node_id(),
            addr: self.ctx.advertise.clone(),
            cluster_id: cluster.clone(),
            has_data: true,
        };
        let r = formation::hello(&self.ctx.pool, addr, &ask)
            .await
            .map_err(|e| Error::unavailable(format!("addr: cannot reach a node at {addr}: {e}")))?;
        if !r.cluster_id.is_empty() && r.cluster_id != cluster {
            return Err(Error::Precondition(format!(
                "addr: the node at {addr} belongs to cluster {}, not {cluster}; start it with an empty data dir to join this one",
                r.cluster_id
            )));
        }
        if r.node_id != id {
            return Err(Error::invalid(
                "id",
                format!("the node at {addr} has node id {}, not {id}", r.node_id),
            ));
        }
        let ours = self.ctx.partitions.len() as u32;
        if r.partitions != ours {
            return Err(Error::Precondition(format!(
                "addr: the node at {addr} runs {} event partitions, this cluster {ours}; restart it with an empty data dir and --partitions {ours}",
                r.partitions
            )));
        }
        // A node learns the cluster id only from that cluster's Raft
        // traffic, as a member. One that holds this cluster's id and is not
        // a member now (the caller checked) was removed, maybe before it
        // ever acknowledged an entry (a join request it sent before `member
        // remove` arriving after it); it joins again only with an empty
        // data dir, as `member remove` promises. (Rarely, a node added by a
        // leader that died before the change committed is refused too: the
        // message says what to do.)
        if r.cluster_id == cluster && !cluster.is_empty() {
            return Err(Error::Precondition(format!(
                "id: node {id} is not a member of cluster {cluster} but holds its data (it was removed); start it with an empty data dir to join again"
            )));
        }
        Ok(())
    }
}

impl Membership<'_> {
    /// Adds node `id` at `addr` as a learner, once it caught up.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<pb::MembersResponse> {
        if id == 0 {
            return Err(Error::invalid("id", "must not be 0"));
        }
        esf_proto::wire::parse_endpoint(&addr).map_err(|e| Error::invalid("addr", e))?;
        // A member already: nothing to add (and an exclusion it may have,
        // being removed, stays). Decided before anything that waits (the
        // hello below waits for the node to answer): a join request a node
        // sent before `member remove` must not add it back once the
        // removal has committed.
        if self.is_member(id) {
            return Ok(self.members());
        }
        self.check_new_member(id, &addr).await?;
        // A node that left meta since `member remove` excluded it.
        let readmit = partitions::readmit(&self.ctx.meta, id)?;
        if let Some(op) = readmit {
            self.ctx.meta.write(esf_raft::command::Command::new(op)).await?;
        }
        let fut = self.ctx.meta.raft().add_learner(id, BasicNode { addr }, true);
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut)
            .await
            .map_err(|_| Error::unavailable(format!("learner not caught up within {MEMBERSHIP_TIMEOUT:?}")))?
            .map_err(Error::from_membership)?;
        Ok(self.members())
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<pb::MembersResponse> {
        let m = self.ctx.meta.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Error::NotFound(format!(
                "id: node {id} is not a member; add it as a learner first"
            )));
        }
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        voters.insert(id);
        self.change(ChangeMembers::ReplaceAllVoters(voters)).await?;
        Ok(self.members())
    }

    /// Removes node `id` (voter or learner) after its partitions moved.
    pub async fn remove(&self, id: u64) -> Result<pb::MembersResponse> {
        let m = self.ctx.meta.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Error::NotFound(format!("id: node {id} is not a member")));
        }
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) && voters.len() == 1 {
            return Err(Error::Precondition("id: cannot remove the last voter".into()));
        }
        self.drain_partitions(id).await?;
        if voters.remove(&id) {
            self.change(ChangeMembers::ReplaceAllVoters(voters)).await?;
        }
        if self.is_member(id) {
            self.change(ChangeMembers::RemoveNodes([id].into())).await?;
        }
        Ok(self.members())
    }

    /// One membership change, within [`MEMBERSHIP_TIMEOUT`].
    async fn change(&self, change: ChangeMembers<u64, BasicNode>) -> Result<()> {
        let fut = self.ctx.meta.raft().change_membership(change, false);
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut)
            .await
            .map_err(|_| Error::unavailable("membership change timed out"))?
            .map_err(Error::from_membership)?;
        Ok(())
    }

    /// Moves the meta leadership to voter `to` (0: any other voter) and
    /// waits until another node leads; the new leader's id.
    pub async fn transfer_leader(&self, to: u64) -> Result<u64> {
        let raft = self.ctx.meta.raft();
        let m = raft.metrics().borrow_watched().clone();
        let me = self.ctx.meta.node_id();
        let target = if to == 0 {
            m.membership_config
                .membership()
                .voter_ids()
                .find(|v| *v != me)
                .ok_or_else(|| Error::Precondition("to: no other voter".into()))?
        } else {
            if !m.membership_config.membership().voter_ids().any(|v| v == to) {
                return Err(Error::invalid("to", format!("node {to} is not a voter")));
            }
            to
        };
        if target != me {
            raft.trigger()
                .transfer_leader(target)
                .await
                .map_err(|f| Error::Raft(esf_raft::Error::Fatal(f.to_string())))?;
            let mut rx = raft.metrics();
            let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
            loop {
                let cur = rx.borrow_watched().current_leader;
                if cur.is_some() && cur != Some(me) {
                    break;
                }
                if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                    return Err(Error::unavailable("leadership did not move within the deadline"));
                }
            }
        }
        Ok(raft.metrics().borrow_watched().current_leader.unwrap_or(0))
    }
}

/// The gRPC addresses of the meta members other than this node, as its own
/// membership lists them.
pub fn other_member_addrs(meta: &esf_raft::group::MetaGroup) -> Vec<String> {
    let me = meta.node_id();
    partitions::membership_of(meta.raft())
        .1
        .into_iter()
        .filter(|(id, _)| *id != me)
        .map(|(_, node)| node.addr)
        .collect()
}
