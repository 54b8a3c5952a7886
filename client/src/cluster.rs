//! The Cluster service: members and membership changes, leader transfer,
//! per-node status, consistency fingerprints (for tests) and snapshots.
//!
//! Membership changes go to the meta leader through the usual call loop.
//! [`Client::status_all`] asks every endpoint directly, without failover,
//! so one can see each node's own view; nothing here decides whether a
//! cluster is healthy.

use std::sync::Arc;

use crate::endpoint::{ClusterStub, Node};
use crate::{Client, Error, Result, Streaming, pb};

impl Client {
    /// Members and the leader.
    pub async fn members(&self) -> Result<pb::MembersResponse> {
        self.ask("members", pb::MembersRequest {}, |mut c: ClusterStub, r| async move {
            c.members(r).await
        })
        .await
    }

    /// The cluster's health as the answering node sees it: each member's
    /// gossip liveness and checks, overall status with reasons, failure
    /// tolerance.
    pub async fn cluster_health(&self) -> Result<pb::ClusterHealthResponse> {
        self.ask(
            "health",
            pb::ClusterHealthRequest {},
            |mut c: ClusterStub, r| async move { c.health(r).await },
        )
        .await
    }

    /// Adds a non-voting member `id` reachable at `addr`.
    pub async fn member_add_learner(&self, id: u64, addr: &str) -> Result<pb::MembersResponse> {
        let req = pb::AddLearnerRequest {
            id,
            addr: addr.to_string(),
        };
        self.ask("add learner", req, |mut c: ClusterStub, r| async move {
            c.add_learner(r).await
        })
        .await
    }

    /// Makes learner `id` a voter.
    pub async fn member_promote(&self, id: u64) -> Result<pb::MembersResponse> {
        self.ask(
            "promote",
            pb::PromoteRequest { id },
            |mut c: ClusterStub, r| async move { c.promote(r).await },
        )
        .await
    }

    /// Removes member `id`.
    pub async fn member_remove(&self, id: u64) -> Result<pb::MembersResponse> {
        self.ask("remove", pb::RemoveRequest { id }, |mut c: ClusterStub, r| async move {
            c.remove(r).await
        })
        .await
    }

    /// The former name of [`Client::member_add_learner`].
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<pb::MembersResponse> {
        self.member_add_learner(id, addr).await
    }

    /// The former name of [`Client::member_promote`].
    pub async fn promote(&self, id: u64) -> Result<pb::MembersResponse> {
        self.member_promote(id).await
    }

    /// The former name of [`Client::member_remove`].
    pub async fn remove(&self, id: u64) -> Result<pb::MembersResponse> {
        self.member_remove(id).await
    }

    /// Moves leadership (to `to`, or 0 for any other up-to-date voter).
    pub async fn transfer_leader(&self, to: u64) -> Result<pb::TransferLeaderResponse> {
        self.ask(
            "transfer leader",
            pb::TransferLeaderRequest { to },
            |mut c: ClusterStub, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    /// For tests: the answering node's state fingerprint per group and the
    /// leaders it saw per term.
    pub async fn consistency(&self) -> Result<pb::ConsistencyResponse> {
        self.ask(
            "consistency",
            pb::ConsistencyRequest {},
            |mut c: ClusterStub, r| async move { c.consistency(r).await },
        )
        .await
    }

    /// Opens the stream of a snapshot file of the cluster, served by the
    /// leader (the call follows the leader hint). Read each chunk within a
    /// deadline: the stream has none of its own.
    pub async fn snapshot(&self) -> Result<Streaming<pb::BackupChunk>> {
        self.ask("snapshot", pb::BackupRequest {}, |mut c: ClusterStub, r| async move {
            c.snapshot(r).await
        })
        .await
    }

    /// Status of every member the cluster lists (besides the endpoints
    /// given), each node answering for itself. The members' addresses
    /// join this client's endpoints.
    pub async fn status_members(&self) -> Result<Vec<(String, Result<pb::StatusResponse>)>> {
        let m = self.members().await?;
        for member in &m.members {
            self.node_index(&member.addr);
        }
        Ok(self.status_all().await)
    }

    /// Status of every endpoint, each asked directly (no failover).
    pub async fn status_all(&self) -> Vec<(String, Result<pb::StatusResponse>)> {
        // Each node is asked once, directly; with credentials the token
        // comes first (a failed login shows in every node's answer).
        let login = self.authenticate().await.err().map(|e| e.to_string());
        let nodes: Vec<Arc<Node>> = self.inner.nodes.lock().expect("nodes lock poisoned").clone();
        let mut out = Vec::new();
        if let Some(e) = login {
            for node in nodes {
                out.push((
                    node.uri.clone(),
                    Err(Error::Unauthenticated(format!("login failed: {e}"))),
                ));
            }
            return out;
        }
        for node in nodes {
            let r = self
                .attempt(&node, &|mut c: ClusterStub| async move {
                    c.status(pb::StatusRequest {}).await
                })
                .await
                .and_then(|a| a.map(tonic::Response::into_inner).map_err(Error::from));
            out.push((node.uri.clone(), r));
        }
        out
    }
}
