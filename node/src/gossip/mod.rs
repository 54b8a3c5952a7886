//! Gossip membership and failure detection (chitchat over signed UDP).
//!
//! Once this node is a member of a cluster it gossips with the other
//! members on UDP (`gossip_listen`, by default the gRPC port number on
//! UDP). It learns where their gossip listens through the `Hello` RPC
//! (`HelloResponse.gossip_addr`), so `--join` stays a list of gRPC
//! addresses. Each node publishes a small state ([`keys`], at most
//! [`MAX_STATE_BYTES`]): its gRPC and admin addresses, version, the
//! groups it leads, its applied index per group and the results of its
//! checks ([`crate::health::checks`]). Its chitchat generation is its
//! start time in ms, so a restart shows as a new generation.
//!
//! Liveness is chitchat's phi detector: phi is the time since a node's
//! last heartbeat divided by the mean gap between its heartbeats (not
//! Cassandra's phi, which has a 1/ln 10 factor), and a node is dead once
//! phi passes `gossip_phi_threshold`. With heartbeats every
//! `gossip_interval_ms` (500) and the threshold at 8, a node that stops is
//! marked dead about 4 s later on every live node (measured in
//! docs/benchmarks.md). Gossip is advisory: it never changes Raft
//! membership by itself.

pub mod transport;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, Heartbeat};
use esf_proto::v1 as pb;
use esf_raft::openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;
use tracing::{info, warn};

use self::transport::{ClockOffsets, GossipKey, SignedUdp, TransportStats};
use crate::context::Ctx;

/// Keys of the state each node publishes.
pub mod keys {
    /// Advertised gRPC address.
    pub const GRPC: &str = "grpc";
    /// Admin HTTP address.
    pub const ADMIN: &str = "admin";
    /// Binary version.
    pub const VERSION: &str = "version";
    /// Groups this node leads: `0,3,5`.
    pub const LEADS: &str = "leads";
    /// Applied index per group: `0:812,1:40,...`.
    pub const APPLIED: &str = "applied";
    /// Worst check status: passing, warning or critical.
    pub const STATUS: &str = "status";
    /// Each check: `name=status[:reason]`, `;`-separated.
    pub const CHECKS: &str = "checks";
}

/// Bound on the bytes of one node's published state (keys and values).
pub const MAX_STATE_BYTES: usize = 4096;
/// A check's reason is cut to this many bytes in gossip.
pub const MAX_REASON_BYTES: usize = 160;
/// Deadline of the `Hello` that asks a member where its gossip listens.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(2);
/// Every this many gossip intervals, members not seen alive are asked
/// again where they gossip and contacted directly (a member added later,
/// or one that came back on another port).
pub const RESEED_EVERY: u32 = 10;

/// Gossip settings (from the node config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// UDP bind address.
    pub listen: String,
    /// Address other nodes send gossip to.
    pub advertise: String,
    /// Admin address published for others.
    pub admin: String,
    /// Time between gossip rounds (and heartbeats).
    pub interval: Duration,
    /// Phi above which a node is dead.
    pub phi_threshold: f64,
    /// A dead node's state is forgotten this long after it died.
    pub dead_grace: Duration,
    /// gRPC addresses to ask for seeds besides the members (`join`).
    pub join: Vec<String>,
}

impl PeerView {
    /// `alive`, `dead` (was alive, is not) or `unknown` (never alive here yet).
    pub fn liveness(&self) -> &'static str {
        match (self.alive, self.seen_alive) {
            (true, _) => "alive",
            (false, true) => "dead",
            (false, false) => "unknown",
        }
    }
}

/// One node as this node's gossip sees it.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// Raft node id.
    pub node_id: u64,
    /// Start time (ms) of the process; changes on restart.
    pub generation: u64,
    /// Where it gossips.
    pub gossip_addr: SocketAddr,
    /// Alive by the failure detector (this node is always alive to itself).
    pub alive: bool,
    /// This node's gossip has called this generation alive at least once
    /// (a node just seen has no heartbeat gaps yet and is not alive to
    /// chitchat: it is "unknown", not "dead", until then).
    pub seen_alive: bool,
    /// Time since its heartbeat last advanced here (None for this node).
    pub heartbeat_age: Option<Duration>,
    /// Its clock minus ours, if measured lately.
    pub clock_offset_ms: Option<i64>,
    /// Its published state.
    pub state: BTreeMap<String, String>,
    /// This node.
    pub is_self: bool,
}

/// This node's gossip: started once it is a member of a cluster.
pub struct Gossip {
    settings: Settings,
    secret: Option<Vec<u8>>,
    generation: u64,
    handle: OnceLock<ChitchatHandle>,
    /// The transport's counters.
    pub stats: Arc<TransportStats>,
    /// Peers' clock offsets.
    pub clocks: Arc<ClockOffsets>,
    heartbeats: Mutex<HashMap<ChitchatId, (Heartbeat, Instant)>>,
    ever_alive: Mutex<std::collections::HashSet<ChitchatId>>,
    last_live: Mutex<std::collections::HashSet<ChitchatId>>,
    /// The state this node publishes next round (set by the health task).
    published: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("advertise", &self.settings.advertise)
            .field("started", &self.handle.get().is_some())
            .finish()
    }
}

impl Gossip {
    /// Gossip for this node (not started).
    pub fn new(settings: Settings, secret: Option<Vec<u8>>) -> Arc<Gossip> {
        Arc::new(Gossip {
            settings,
            secret,
            generation: transport::unix_ms(),
            handle: OnceLock::new(),
            stats: Arc::default(),
            clocks: Arc::default(),
            heartbeats: Mutex::default(),
            ever_alive: Mutex::default(),
            last_live: Mutex::default(),
            published: Mutex::default(),
        })
    }

    /// Where other nodes send gossip to this one.
    pub fn advertise(&self) -> &str {
        &self.settings.advertise
    }

    /// This process's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The gossip settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether gossip runs (the node is a member of a cluster).
    pub fn started(&self) -> bool {
        self.handle.get().is_some()
    }

    /// Sets what this node publishes from the next round on. Past
    /// [`MAX_STATE_BYTES`] the applied indexes are left out; a state still
    /// over it is dropped (logged).
    pub fn publish(&self, mut state: BTreeMap<String, String>) {
        let size_of = |s: &BTreeMap<String, String>| -> usize { s.iter().map(|(k, v)| k.len() + v.len()).sum() };
        // The applied indexes (informational, long with many partitions)
        // go first, so status and checks always get through.
        if size_of(&state) > MAX_STATE_BYTES {
            state.remove(keys::APPLIED);
        }
        let size = size_of(&state);
        metrics::gauge!("esf_gossip_state_bytes").set(size as f64);
        if size > MAX_STATE_BYTES {
            warn!(
                bytes = size,
                max = MAX_STATE_BYTES,
                "gossip state over its bound: not published"
            );
            return;
        }
        *self.published.lock().expect("published lock") = state;
    }

    /// Every node this node's gossip knows (the newest generation of each
    /// node id), this one included.
    pub async fn view(&self) -> Vec<PeerView> {
        let Some(h) = self.handle.get() else {
            return Vec::new();
        };
        let chitchat = h.chitchat();
        let guard = chitchat.lock().await;
        let me = guard.self_chitchat_id().clone();
        let live: std::collections::HashSet<ChitchatId> = guard.live_nodes().cloned().collect();
        let beats = self.heartbeats.lock().expect("heartbeats lock");
        let mut ever = self.ever_alive.lock().expect("ever alive lock");
        ever.retain(|id| guard.node_states().contains_key(id));
        ever.extend(live.iter().cloned());
        let mut newest: BTreeMap<u64, PeerView> = BTreeMap::new();
        for (id, st) in guard.node_states() {
            let Ok(node_id) = id.node_id.parse::<u64>() else {
                continue;
            };
            let is_self = *id == me;
            let view = PeerView {
                node_id,
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr,
                alive: live.contains(id),
                seen_alive: ever.contains(id),
                heartbeat_age: (!is_self).then(|| beats.get(id).map(|(_, at)| at.elapsed())).flatten(),
                clock_offset_ms: (!is_self)
                    .then(|| self.clocks.of(id.gossip_advertise_addr, self.settings.interval * 20))
                    .flatten(),
                state: st.key_values().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                is_self,
            };
            match newest.get(&node_id) {
                Some(old) if old.generation >= view.generation => {}
                _ => {
                    newest.insert(node_id, view);
                }
            }
        }
        newest.into_values().collect()
    }

    /// Runs gossip once the node is a member of a cluster, until `stop`.
    pub async fn run(self: Arc<Self>, ctx: Ctx, mut stop: watch::Receiver<bool>) {
        let cluster_id = tokio::select! {
            c = wait_for_membership(&ctx) => c,
            _ = stop.wait_for(|s| *s) => return,
        };
        let listen = match resolve(&self.settings.listen).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "gossip_listen: cannot resolve; gossip is off");
                return;
            }
        };
        let advertise = match resolve(&self.settings.advertise).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "gossip_advertise: cannot resolve; gossip is off");
                return;
            }
        };
        let seeds = self.seeds(&ctx).await;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(ctx.meta.node_id().to_string(), self.generation, advertise),
            cluster_id: cluster_id.clone(),
            gossip_interval: self.settings.interval,
            listen_addr: listen,
            seed_nodes: seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: self.settings.phi_threshold,
                // Heartbeat gaps above this are dropped from the mean.
                max_interval: self.settings.interval * 20,
                // The mean assumed before any gap was seen.
                initial_interval: self.settings.interval,
                dead_node_grace_period: self.settings.dead_grace,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: self.settings.dead_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let transport = SignedUdp {
            key: GossipKey::derive(self.secret.as_deref(), &cluster_id),
            advertise,
            stats: self.stats.clone(),
            clocks: self.clocks.clone(),
        };
        let initial: Vec<(String, String)> = self
            .published
            .lock()
            .expect("published lock")
            .clone()
            .into_iter()
            .collect();
        let handle = match chitchat::spawn_chitchat(config, initial, &transport).await {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "gossip did not start");
                return;
            }
        };
        info!(listen = %listen, advertise = %advertise, generation = self.generation, seeds = ?seeds, "gossip started");
        let _ = self.handle.set(handle);
        let mut round = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            self.publish_round().await;
            round = round.wrapping_add(1);
            if round % RESEED_EVERY == 0 {
                self.reseed(&ctx).await;
            }
        }
        if let Some(h) = self.handle.get() {
            let _ = h.initiate_shutdown();
        }
    }

    /// Copies the published state into chitchat and notes whose heartbeat
    /// advanced.
    async fn publish_round(&self) {
        let Some(h) = self.handle.get() else { return };
        let state = self.published.lock().expect("published lock").clone();
        let chitchat = h.chitchat();
        let mut guard = chitchat.lock().await;
        let mine = guard.self_node_state();
        for (k, v) in &state {
            if mine.get(k) != Some(v.as_str()) {
                mine.set(k.clone(), v.clone());
            }
        }
        let stale: Vec<String> = mine
            .key_values()
            .filter(|(k, _)| !state.contains_key(*k))
            .map(|(k, _)| k.to_string())
            .collect();
        for k in stale {
            mine.delete(&k);
        }
        // Nodes this round calls dead that the last one called alive.
        let live: std::collections::HashSet<ChitchatId> = guard.live_nodes().cloned().collect();
        {
            let mut ever = self.ever_alive.lock().expect("ever alive lock");
            let mut prev = self.last_live.lock().expect("last live lock");
            let died = prev
                .iter()
                .filter(|id| !live.contains(*id) && guard.node_states().contains_key(*id))
                .count();
            if died > 0 {
                metrics::counter!("esf_gossip_marked_dead_total").increment(died as u64);
            }
            ever.extend(live.iter().cloned());
            *prev = live;
        }
        let now = Instant::now();
        let mut beats = self.heartbeats.lock().expect("heartbeats lock");
        let ids: Vec<(ChitchatId, Heartbeat)> = guard
            .node_states()
            .iter()
            .map(|(id, st)| (id.clone(), st.heartbeat()))
            .collect();
        beats.retain(|id, _| ids.iter().any(|(i, _)| i == id));
        for (id, hb) in ids {
            match beats.get(&id) {
                Some((old, _)) if *old == hb => {}
                _ => {
                    beats.insert(id, (hb, now));
                }
            }
        }
    }

    /// Gossip addresses of the members and `join` peers.
    async fn seeds(&self, ctx: &Ctx) -> Vec<SocketAddr> {
        let me = ctx.meta.node_id();
        let m = ctx.meta.raft().metrics().borrow_watched().clone();
        let mut peers: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(_, n)| n.addr.clone())
            .collect();
        for j in &self.settings.join {
            if !peers.contains(j) && *j != ctx.advertise {
                peers.push(j.clone());
            }
        }
        let asks = peers.iter().map(|p| gossip_addr_of(ctx, p));
        let mut out: Vec<SocketAddr> = futures::future::join_all(asks).await.into_iter().flatten().collect();
        out.sort();
        out.dedup();
        out
    }

    /// Contacts members this node does not see alive.
    async fn reseed(&self, ctx: &Ctx) {
        let Some(h) = self.handle.get() else { return };
        let alive: Vec<u64> = self
            .view()
            .await
            .into_iter()
            .filter(|p| p.alive)
            .map(|p| p.node_id)
            .collect();
        let m = ctx.meta.raft().metrics().borrow_watched().clone();
        let missing: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| !alive.contains(id))
            .map(|(_, n)| n.addr.clone())
            .collect();
        let asks = futures::future::join_all(missing.iter().map(|a| gossip_addr_of(ctx, a)));
        if let Ok(found) = tokio::time::timeout(HELLO_DEADLINE * 2, asks).await {
            for g in found.into_iter().flatten() {
                let _ = h.gossip(g);
            }
        }
    }
}

/// Waits until this node is a member of a cluster; its cluster id.
async fn wait_for_membership(ctx: &Ctx) -> String {
    let mut metrics = ctx.meta.raft().metrics();
    loop {
        let cid = ctx.cluster_id();
        let member = metrics
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&ctx.meta.node_id())
            .is_some();
        if member && !cid.is_empty() {
            return cid;
        }
        // The cluster id is not in the Raft metrics: look again at least
        // every second.
        let _ = tokio::time::timeout(Duration::from_secs(1), metrics.changed()).await;
    }
}

/// Where the node at gRPC address `addr` gossips: its answer to `Hello`,
/// else the same host and port on UDP (the default).
async fn gossip_addr_of(ctx: &Ctx, addr: &str) -> Option<SocketAddr> {
    let me = pb::HelloRequest {
        node_id: ctx.meta.node_id(),
        addr: ctx.advertise.clone(),
        cluster_id: ctx.cluster_id(),
        has_data: true,
    };
    let told = tokio::time::timeout(HELLO_DEADLINE, crate::cluster::formation::hello(&ctx.pool, addr, &me))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|r| r.gossip_addr)
        .filter(|g| !g.is_empty());
    let target = told.unwrap_or_else(|| strip_scheme(addr).to_string());
    resolve(&target).await.ok()
}

fn strip_scheme(addr: &str) -> &str {
    addr.strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr)
        .trim_end_matches('/')
}

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let a = strip_scheme(addr);
    tokio::time::timeout(HELLO_DEADLINE, tokio::net::lookup_host(a))
        .await
        .map_err(|_| anyhow::anyhow!("{a}: name lookup timed out"))?
        .map_err(|e| anyhow::anyhow!("{a}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{a} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_their_scheme() {
        assert_eq!(strip_scheme("https://10.0.0.1:2379/"), "10.0.0.1:2379");
        assert_eq!(strip_scheme("127.0.0.1:2379"), "127.0.0.1:2379");
    }
}
