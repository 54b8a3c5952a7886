//! Where a call goes first: the preferred endpoint, moved by leader hints,
//! and the map of event partition leaders that sends an append straight
//! to its partition's leader.
//!
//! Routing is an optimisation, never a correctness condition: a call sent
//! to the wrong node is forwarded by it or refused with a hint the call
//! loop follows. Addresses learned from hints or the member list join the
//! endpoint list and are never removed. The map is refreshed at most every
//! [`PARTITION_MAP_TTL`] and updated from append answers in between.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use esf_proto::wire::{LEADER_ADDR_METADATA, partition_of};

use crate::endpoint::{ClusterStub, Node, node_uri};
use crate::{Client, pb};

/// How long the client trusts its map of partition leaders before asking
/// again (a stale entry costs one forwarding hop, never correctness).
pub const PARTITION_MAP_TTL: Duration = Duration::from_secs(5);

/// Where each event partition's leader is, as last seen.
pub(crate) struct PartitionMap {
    /// Leader node id per partition (0: none), partition `p` at `p - 1`.
    leaders: Vec<u64>,
    /// Member addresses.
    addrs: HashMap<u64, String>,
    at: Instant,
}

impl Client {
    /// The endpoint to try next (`first` if given, else the preferred
    /// one): its index, the node, and how many endpoints there are.
    pub(crate) fn pick(&self, first: Option<usize>) -> (usize, Arc<Node>, usize) {
        let nodes = self.inner.nodes.lock().expect("nodes lock poisoned");
        let preferred = *self.inner.preferred.lock().expect("preferred lock poisoned");
        let idx = first.unwrap_or(preferred) % nodes.len();
        (idx, nodes[idx].clone(), nodes.len())
    }

    /// The index of the endpoint `addr` (added if unknown; `None` if it
    /// does not parse).
    pub(crate) fn node_index(&self, addr: &str) -> Option<usize> {
        let uri = node_uri(addr, &self.inner.opts).ok()?;
        let mut nodes = self.inner.nodes.lock().expect("nodes lock poisoned");
        Some(match nodes.iter().position(|n| n.uri == uri) {
            Some(i) => i,
            None => {
                nodes.push(Node::new(uri));
                nodes.len() - 1
            }
        })
    }

    /// Makes endpoint `idx` the one tried first.
    pub(crate) fn prefer_index(&self, idx: usize) {
        *self.inner.preferred.lock().expect("preferred lock poisoned") = idx;
    }

    /// After a success: an answer naming the leader (a request the node
    /// forwarded there) moves the next calls to it, if
    /// [`crate::ClientOptions::follow_leader`].
    pub(crate) fn follow_answer(&self, metadata: &tonic::metadata::MetadataMap) {
        if !self.inner.opts.follow_leader {
            return;
        }
        if let Some(addr) = metadata.get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok()) {
            if let Some(idx) = self.node_index(addr) {
                self.prefer_index(idx);
            }
        }
    }

    /// After a refusal: moves to the leader `hint` names, unless it is
    /// `node` itself. Returns whether it moved.
    pub(crate) fn follow_hint(&self, hint: Option<&str>, node: &Node) -> bool {
        let Some(addr) = hint else { return false };
        if node_uri(addr, &self.inner.opts).ok().as_deref() == Some(node.uri.as_str()) {
            return false;
        }
        match self.node_index(addr) {
            Some(idx) => {
                self.prefer_index(idx);
                true
            }
            None => false,
        }
    }

    /// The address of the leader of `stream`'s partition, from a map
    /// refreshed every [`PARTITION_MAP_TTL`] (`None` if unknown).
    pub(crate) async fn partition_leader(&self, stream: &str) -> Option<String> {
        let fresh = {
            let map = self.inner.partitions.lock().expect("partition map lock poisoned");
            map.as_ref().is_some_and(|m| m.at.elapsed() < PARTITION_MAP_TTL)
        };
        if !fresh {
            self.refresh_partition_map().await;
        }
        let map = self.inner.partitions.lock().expect("partition map lock poisoned");
        let m = map.as_ref()?;
        let p = partition_of(stream, m.leaders.len() as u32);
        let leader = *m.leaders.get(p as usize - 1)?;
        m.addrs.get(&leader).cloned()
    }

    /// Asks one node for every group's leader and every member's address.
    async fn refresh_partition_map(&self) {
        let status = self
            .ask("status", pb::StatusRequest {}, |mut c: ClusterStub, r| async move {
                c.status(r).await
            })
            .await;
        let members = self.members().await;
        let mut map = self.inner.partitions.lock().expect("partition map lock poisoned");
        match (status, members) {
            (Ok(s), Ok(m)) if s.groups.len() > 1 => {
                *map = Some(PartitionMap {
                    leaders: s.groups.iter().skip(1).map(|g| g.leader_id).collect(),
                    addrs: m.members.iter().map(|m| (m.id, m.addr.clone())).collect(),
                    at: Instant::now(),
                });
            }
            // Unknown for now: appends go to any node, which forwards.
            _ => {
                if let Some(m) = map.as_mut() {
                    m.at = Instant::now();
                }
            }
        }
    }

    /// An answer from `partition`'s leader came from `node`.
    pub(crate) fn learn_partition_leader(&self, partition: u32, node: u64) {
        let mut map = self.inner.partitions.lock().expect("partition map lock poisoned");
        if let Some(m) = map.as_mut() {
            if let Some(slot) = m.leaders.get_mut((partition as usize).wrapping_sub(1)) {
                *slot = node;
            }
        }
    }
}
