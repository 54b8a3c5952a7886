//! Cluster formation, and leaving gracefully.
//!
//! Formation: with no `--join` and `bootstrap_expect == 1` the node
//! initialises a single-node cluster on first start. Otherwise it asks every
//! `--join` peer (Cluster.Hello) until `bootstrap_expect` uninitialised nodes
//! see each other; the lowest node id then initialises the cluster with all
//! of them and chooses the cluster id, which the others learn from its first
//! Raft RPC and persist. If a peer already belongs to a cluster, the node
//! waits to be added (`esf member add`). A node id that a cluster already
//! knows but that comes back with an empty data dir is refused: an operator
//! must remove and re-add it.
//!
//! Leaving: at shutdown the meta leadership is handed to another voter
//! ([`hand_over_leadership`], bounded by `drain_timeout_ms`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use esf_proto::v1 as pb;
use esf_raft::group::MetaGroup;
use esf_raft::openraft::BasicNode;
use esf_raft::openraft::async_runtime::WatchReceiver;
use tracing::{info, warn};

use crate::cluster::partitions::{self, Partitions};
use crate::config::NodeConfig;
use crate::context::PeerStub;
use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::net::peer_pool::{ClusterId, PeerPool};

/// Pause between two rounds of asking the join peers.
pub const JOIN_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Deadline of one Hello to a peer.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

type ClusterStub = pb::cluster_client::ClusterClient<tonic::transport::Channel>;

/// If this node leads meta, asks another voter to take over (without
/// waiting for it); whether it asked.
pub async fn ask_meta_hand_over(meta: &MetaGroup) -> bool {
    ask_meta_hand_over_to(meta, &[]).await
}

/// [`ask_meta_hand_over`], only to a voter in `healthy` (when not empty).
pub async fn ask_meta_hand_over_to(meta: &MetaGroup, healthy: &[u64]) -> bool {
    if !meta.raft().is_leader() {
        return false;
    }
    let me = meta.node_id();
    let target = meta
        .raft()
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .voter_ids()
        .find(|v| *v != me && (healthy.is_empty() || healthy.contains(v)));
    let Some(target) = target else { return false };
    if let Err(e) = meta.raft().trigger().transfer_leader(target).await {
        warn!(error = %e, "leader transfer not started");
        return false;
    }
    true
}

/// At shutdown: hands the meta leadership to another voter, waiting up
/// to `deadline` for it to take over.
pub async fn hand_over_leadership(meta: &MetaGroup, deadline: Duration) {
    if !ask_meta_hand_over(meta).await {
        return;
    }
    let me = meta.node_id();
    let mut rx = meta.raft().metrics();
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let cur = rx.borrow_watched().current_leader;
        if cur.is_some() && cur != Some(me) {
            info!(to = ?cur, "leadership handed over");
            return;
        }
        if tokio::time::timeout_at(until, rx.changed()).await.is_err() {
            warn!("leadership not handed over before the drain deadline");
            return;
        }
    }
}

/// Deadline of one request to be added as a learner (the leader answers
/// once this node caught up).
pub const JOIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait between two requests to be added.
pub const JOIN_REQUEST_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// `auto_join`: asks the leader (at `leader`, else whoever the members
/// say leads) to add this node as a learner, until it is a member.
/// Autopilot on the leader promotes it to voter when the cluster has
/// fewer than `autopilot_voters`.
async fn ask_to_join(cfg: NodeConfig, meta: Arc<MetaGroup>, pool: PeerPool, mut leader: String, cluster_id: String) {
    let mut wait = JOIN_RETRY_INTERVAL;
    loop {
        let member = meta
            .raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&cfg.node_id)
            .is_some();
        if member {
            info!("added to the cluster as a learner");
            return;
        }
        let ch = match pool.channel(&leader) {
            Ok(ch) => ch,
            Err(e) => {
                warn!(leader = %leader, error = %e, "join request: no channel to the leader; asking again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(JOIN_REQUEST_BACKOFF_MAX);
                continue;
            }
        };
        let mut req = tonic::Request::new(pb::AddLearnerRequest {
            id: cfg.node_id,
            addr: cfg.advertise(),
        });
        req.set_timeout(JOIN_REQUEST_TIMEOUT);
        req.metadata_mut().insert(
            esf_proto::wire::FORWARDED_METADATA,
            "1".parse().expect("static metadata value"),
        );
        pool.secret().sign(&mut req);
        match tokio::time::timeout(
            JOIN_REQUEST_TIMEOUT,
            <ClusterStub as PeerStub>::connect(ch).add_learner(req),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => {
                warn!(leader = %leader, error = %s.message(), "join request refused; asking again");
                // A new leader may have been named.
                let ask = pb::HelloRequest {
                    node_id: cfg.node_id,
                    addr: cfg.advertise(),
                    cluster_id: cluster_id.clone(),
                    has_data: false,
                };
                if let Ok(r) = hello(&pool, &leader, &ask).await {
                    if !r.is_leader && !r.leader_addr.is_empty() {
                        leader = r.leader_addr;
                    }
                }
            }
            Err(_) => warn!(leader = %leader, "join request not answered in time; asking again"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(JOIN_REQUEST_BACKOFF_MAX);
    }
}

/// Asks the node at `peer` who it is, within [`HELLO_TIMEOUT`].
pub async fn hello(pool: &PeerPool, peer: &str, me: &pb::HelloRequest) -> Result<pb::HelloResponse> {
    let ch = pool
        .channel(peer)
        .map_err(|e| Error::unavailable(format!("peer {peer}: {e}")))?;
    let mut req = tonic::Request::new(me.clone());
    req.set_timeout(HELLO_TIMEOUT);
    // From a node, not a client: passes the request guard with auth on.
    req.metadata_mut().insert(
        esf_proto::wire::FORWARDED_METADATA,
        "1".parse().expect("static metadata value"),
    );
    pool.secret().sign(&mut req);
    match tokio::time::timeout(HELLO_TIMEOUT, <ClusterStub as PeerStub>::connect(ch).hello(req)).await {
        Err(_) => Err(Error::unavailable(format!("no answer within {HELLO_TIMEOUT:?}"))),
        Ok(Err(s)) => Err(Error::Peer(s)),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// Forms or joins the cluster (see the module doc); returns once this node
/// is initialised, initialised the cluster or waits to be added. An error
/// (a wiped member) stops the node.
pub async fn form_cluster(
    cfg: NodeConfig,
    meta: Arc<MetaGroup>,
    partitions: Partitions,
    cluster_id: ClusterId,
    gate: Arc<AtomicBool>,
    has_data: bool,
    pool: PeerPool,
) -> anyhow::Result<()> {
    let open_gate = || gate.store(true, std::sync::atomic::Ordering::SeqCst);
    // Asked of the Raft core itself, not of its metrics: right after start
    // the metrics may not show the membership read from disk yet, and a
    // restored or restarted node would then try to initialize again.
    let initialized = || async {
        meta.raft()
            .with_raft_state(|st| st.membership_state.effective().membership().nodes().next().is_some())
            .await
            .context("meta group stopped")
    };
    if initialized().await? {
        open_gate();
        return Ok(());
    }
    let me = BasicNode { addr: cfg.advertise() };
    if cfg.join.is_empty() && cfg.bootstrap_expect <= 1 {
        let cid = identity::new_cluster_id();
        adopt(&cfg, &meta, &cluster_id, &cid)?;
        open_gate();
        let members = BTreeMap::from([(cfg.node_id, me)]);
        partitions::initialize_all(&partitions, &members).await;
        meta.raft()
            .initialize(members)
            .await
            .context("initialize single-node cluster")?;
        info!(cluster_id = %cid, "initialised a single-node cluster");
        return Ok(());
    }
    let ask = pb::HelloRequest {
        node_id: cfg.node_id,
        addr: cfg.advertise(),
        cluster_id: cluster_id.read().expect("cluster id lock").clone(),
        has_data,
    };
    loop {
        if initialized().await? {
            open_gate();
            return Ok(());
        }
        let mut seen: BTreeMap<u64, String> = BTreeMap::from([(cfg.node_id, cfg.advertise())]);
        // A cluster exists and its leader says whether we are a member.
        let mut conclusive = None;
        // A cluster exists, but only followers answered; the highest index
        // they know committed.
        let mut unconfirmed = None;
        let mut committed = 0;
        let mut peers: Vec<String> = cfg.join.clone();
        let mut i = 0;
        while i < peers.len() {
            let peer = peers[i].clone();
            i += 1;
            if peer == cfg.advertise() {
                continue;
            }
            let Ok(r) = hello(&pool, &peer, &ask).await else {
                continue;
            };
            if !r.initialized {
                if r.node_id != 0 {
                    seen.insert(r.node_id, r.addr);
                }
                continue;
            }
            if r.asker_is_member && !has_data {
                bail!(
                    "node_id: node {} is already a member of cluster {} but its data dir {} is empty; remove it (esf member remove {}) and add it again",
                    cfg.node_id,
                    r.cluster_id,
                    cfg.data_dir.display(),
                    cfg.node_id
                );
            }
            if !r.is_leader {
                // A "no" is only conclusive from the leader (a follower may
                // not have applied the latest record yet): ask it too.
                if !r.leader_addr.is_empty() && !peers.contains(&r.leader_addr) {
                    peers.push(r.leader_addr.clone());
                }
                unconfirmed = Some(r.cluster_id.clone());
                committed = committed.max(r.committed_index);
                continue;
            }
            conclusive = Some((r.cluster_id.clone(), peer.clone()));
            break;
        }
        if let Some((cid, leader)) = conclusive {
            open_gate();
            if cfg.auto_join {
                info!(cluster_id = %cid, leader = %leader, "a cluster exists; asking its leader to add this node as a learner (auto_join)");
                tokio::spawn(ask_to_join(
                    cfg.clone(),
                    meta.clone(),
                    pool.clone(),
                    leader,
                    cid.clone(),
                ));
            } else {
                info!(cluster_id = %cid, "a cluster exists; waiting to be added (esf member add)");
            }
            return Ok(());
        }
        if let Some(cid) = unconfirmed {
            if committed == 0 {
                // A cluster being formed: it has elected no leader and
                // committed nothing, so no member can have lost anything.
                // Its first election may need this node's vote.
                open_gate();
                info!(cluster_id = %cid, "joining a cluster that is being formed");
                return Ok(());
            }
            info!(cluster_id = %cid, "a cluster exists but its leader did not answer; asking again");
        } else if seen.len() as u64 >= cfg.bootstrap_expect {
            open_gate();
            let lowest = *seen.keys().next().expect("contains self");
            if lowest == cfg.node_id {
                let cid = identity::new_cluster_id();
                adopt(&cfg, &meta, &cluster_id, &cid)?;
                let members: BTreeMap<u64, BasicNode> =
                    seen.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
                partitions::initialize_all(&partitions, &members).await;
                meta.raft()
                    .initialize(members.clone())
                    .await
                    .context("initialize cluster")?;
                info!(cluster_id = %cid, members = ?members.keys().collect::<Vec<_>>(), "initialised the cluster");
            } else {
                info!(
                    initializer = lowest,
                    "waiting for the lowest node id to initialise the cluster"
                );
            }
            return Ok(());
        } else {
            info!(seen = seen.len(), expect = cfg.bootstrap_expect, "waiting for peers");
        }
        // Retry pacing: peers that are not up yet cannot notify us, so ask
        // again after a fixed interval (the loop ends when the cluster forms).
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

fn adopt(cfg: &NodeConfig, meta: &MetaGroup, cluster_id: &ClusterId, cid: &str) -> anyhow::Result<()> {
    *cluster_id.write().expect("cluster id lock") = cid.to_string();
    meta.set_cluster_id(cid);
    identity::save(
        &cfg.data_dir,
        &Identity {
            node_id: cfg.node_id,
            cluster_id: cid.to_string(),
            partitions: identity::load(&cfg.data_dir)?.map_or(0, |i| i.partitions),
            removed: None,
        },
    )
}
