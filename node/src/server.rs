//! `esf serve`: opens the data dir, starts the meta group, serves gRPC and
//! admin HTTP, forms or joins the cluster, and shuts down gracefully.
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
//! Shutdown (SIGTERM or SIGINT): /readyz turns 503, leadership is handed to
//! another voter (bounded by `drain_timeout_ms`), the servers stop, Raft
//! stops and the WAL is flushed. A second signal exits at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use esf_client::pb;
use esf_raft::events::PartitionGroup;
use esf_raft::group::{GroupOptions, MetaGroup};
use esf_raft::openraft::async_runtime::WatchReceiver;
use esf_raft::openraft::{self, BasicNode};
use esf_storage::{Db, StorageConfig};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::NodeConfig;
use crate::registry::RegistryService;
use crate::service::{ClusterService, ConfigService, Ctx, LeaseService};
use crate::transport::{MAX_MESSAGE_BYTES, Network, PeerPool, RaftService};

/// Version reported in status and metrics.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Pause between two rounds of asking the join peers.
pub const JOIN_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Deadline of one Hello to a peer.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Who this data dir belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub node_id: u64,
    /// Empty until the node joins a cluster.
    pub cluster_id: String,
    /// Event partitions this node runs (0: not recorded yet).
    #[serde(default)]
    pub partitions: u32,
}

fn identity_path(dir: &Path) -> PathBuf {
    dir.join("identity.json")
}

fn load_identity(dir: &Path) -> anyhow::Result<Option<Identity>> {
    let p = identity_path(dir);
    if !p.exists() {
        return Ok(None);
    }
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    Ok(Some(
        serde_json::from_str(&s).with_context(|| format!("{} is corrupt", p.display()))?,
    ))
}

pub(crate) fn save_identity(dir: &Path, id: &Identity) -> anyhow::Result<()> {
    let p = identity_path(dir);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(id)?).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("rename to {}", p.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub(crate) fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("esf-{:016x}", h.finish())
}

/// Runs the node until it is told to stop.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
    let identity = match load_identity(&cfg.data_dir)? {
        Some(id) if id.node_id != cfg.node_id => {
            bail!(
                "node_id: data dir {} belongs to node {}, not {}",
                cfg.data_dir.display(),
                id.node_id,
                cfg.node_id
            )
        }
        Some(id) => id,
        None => {
            let id = Identity {
                node_id: cfg.node_id,
                cluster_id: String::new(),
                partitions: 0,
            };
            save_identity(&cfg.data_dir, &id)?;
            id
        }
    };
    let has_data = cfg.data_dir.join("db").join("CURRENT").exists();
    let advertise = cfg.advertise();
    let cluster_id = Arc::new(RwLock::new(identity.cluster_id.clone()));

    let mut scfg = StorageConfig::new(cfg.data_dir.join("db"));
    scfg.memory_budget_bytes = (cfg.memory_budget_mb as usize) << 20;
    scfg.write_buffer_bytes = scfg.memory_budget_bytes / 4;
    scfg.verify_on_open = cfg.verify_on_start;
    let db = Db::open(&scfg).map_err(|e| {
        if e.is_corruption() {
            anyhow::anyhow!(
                "open storage: {e}: the data dir {} is damaged and this node will not start on it; \
                 rebuild it from its peers: `esf member remove {id}`, empty the data dir, start the node \
                 with --join and `esf member add {id} ADDR` (docs/operations.md, \"Damaged storage\")",
                cfg.data_dir.display(),
                id = cfg.node_id
            )
        } else {
            anyhow::anyhow!("open storage: {e}")
        }
    })?;

    let raft_cfg = openraft::Config {
        cluster_name: "esf".into(),
        heartbeat_interval: cfg.heartbeat_interval_ms,
        election_timeout_min: cfg.election_timeout_ms,
        election_timeout_max: cfg.election_timeout_ms * 2,
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election. Restoring leadership
        // in the same term (openraft's default) is unsafe here: the leader's
        // last log entries and applied state are not fsynced before its
        // followers acknowledge, so after a whole-cluster crash it could
        // come back without entries its followers committed and append
        // different ones at the same (term, index), which the followers
        // would take as already matching. Found by the kill-all Jepsen
        // scenario (replicas diverged, acknowledged events moved).
        enable_leader_restore: Some(false),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: cfg.snapshot_keep_logs,
        ..Default::default()
    }
    .validate()
    .context("raft settings")?;
    let pool = PeerPool::default();
    // A follower that has not answered an append within an election
    // timeout is unreachable; openraft's own per-append deadline (the
    // heartbeat interval) tore replication streams down under load.
    let append_deadline = Duration::from_millis(cfg.election_timeout_ms);
    let network = Network {
        group: 0,
        pool: pool.clone(),
        cluster_id: cluster_id.clone(),
        append_deadline,
    };
    let opts = GroupOptions {
        cluster_id: identity.cluster_id.clone(),
        node_id: cfg.node_id,
        raft: Arc::new(raft_cfg),
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
        quota_bytes: cfg.quota_bytes,
        snapshot_step_bytes: cfg.snapshot_step_mb << 20,
    };
    let meta = MetaGroup::start(db.clone(), network, opts.clone())
        .await
        .context("start meta group")?;
    meta.set_cluster_id(&identity.cluster_id);

    // Event partitions: the count recorded in meta, else in the data dir,
    // else the configured one (a new node or cluster).
    let recorded = crate::partitions::recorded_partitions(&meta);
    let partition_count = recorded
        .or((identity.partitions != 0).then_some(identity.partitions))
        .unwrap_or(cfg.partitions);
    if partition_count != cfg.partitions {
        info!(
            configured = cfg.partitions,
            recorded = partition_count,
            "partitions: using the count fixed when the cluster was created"
        );
    }
    let mut identity = identity;
    if identity.partitions != partition_count {
        identity.partitions = partition_count;
        save_identity(&cfg.data_dir, &identity)?;
    }
    let mut groups = Vec::with_capacity(partition_count as usize);
    for g in 1..=partition_count {
        let network = Network {
            group: g,
            pool: pool.clone(),
            cluster_id: cluster_id.clone(),
            append_deadline,
        };
        let p = PartitionGroup::start(db.clone(), g, network, opts.clone())
            .await
            .with_context(|| format!("start partition {g}"))?;
        groups.push(p);
    }
    let partitions: crate::partitions::Partitions = Arc::new(groups);

    let data_dir = cfg.data_dir.clone();
    let node_id = cfg.node_id;
    let meta_for_adopt = meta.clone();
    let on_adopt: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |cid: &str| {
        meta_for_adopt.set_cluster_id(cid);
        if let Err(e) = save_identity(
            &data_dir,
            &Identity {
                node_id,
                cluster_id: cid.to_string(),
                partitions: partition_count,
            },
        ) {
            error!(error = %e, "cannot persist cluster id");
        }
        info!(cluster_id = cid, "joined cluster");
    });

    // gRPC.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let draining_partitions = Arc::new(AtomicBool::new(false));
    let routes = Arc::new(crate::partitions::Routes::default());
    routes.load(&meta);
    let leaders = Arc::new(crate::observer::LeaderLog::default());
    tokio::spawn(crate::observer::watch_leaders(
        esf_raft::group::META_GROUP,
        meta.raft().clone(),
        leaders.clone(),
        stop_rx.clone(),
    ));
    for p in partitions.iter() {
        tokio::spawn(crate::observer::watch_leaders(
            p.group(),
            p.raft().clone(),
            leaders.clone(),
            stop_rx.clone(),
        ));
    }
    let ctx = Ctx {
        stop: stop_rx.clone(),
        meta: meta.clone(),
        partitions: partitions.clone(),
        recorded_partitions: Arc::default(),
        routes: routes.clone(),
        partition_replicas: cfg.partition_replicas,
        leaders,
        pool: pool.clone(),
        cluster_id: cluster_id.clone(),
        advertise: advertise.clone(),
        version: VERSION,
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::config_server::ConfigServer<ConfigService>>()
        .await;
    health_reporter
        .set_serving::<pb::lease_server::LeaseServer<LeaseService>>()
        .await;
    health_reporter
        .set_serving::<pb::registry_server::RegistryServer<RegistryService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(esf_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection service")?;
    let listen: std::net::SocketAddr = tokio::net::lookup_host(&cfg.listen)
        .await
        .with_context(|| format!("listen: resolve {}", cfg.listen))?
        .next()
        .with_context(|| format!("listen: {} resolves to nothing", cfg.listen))?;
    let incoming = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen: bind {listen}"))?;
    let draining = Arc::new(AtomicBool::new(false));
    // A node with data takes Raft traffic at once; one without waits for
    // the formation check.
    let gate = Arc::new(AtomicBool::new(has_data));
    // Requests pinned to another cluster are refused (UNAVAILABLE, so the
    // client moves on to its next endpoint).
    let ours = cluster_id.clone();
    let pin = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        let theirs = req
            .metadata()
            .get(esf_client::CLUSTER_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mine = ours.read().expect("cluster id lock").clone();
        if !theirs.is_empty() && !mine.is_empty() && theirs != mine {
            return Err(tonic::Status::unavailable(format!(
                "cluster: this node belongs to cluster {mine}, not {theirs}"
            )));
        }
        Ok(req)
    };
    let grpc = tonic::transport::Server::builder()
        .add_service(pb::config_server::ConfigServer::with_interceptor(
            ConfigService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::cluster_server::ClusterServer::with_interceptor(
            ClusterService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::lease_server::LeaseServer::with_interceptor(
            LeaseService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::registry_server::RegistryServer::with_interceptor(
            RegistryService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::subscriptions_server::SubscriptionsServer::with_interceptor(
            crate::subscriptions::SubscriptionsService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            pb::events_server::EventsServer::new(crate::events::EventsService(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            pin,
        ))
        .add_service(
            pb::raft_transport_server::RaftTransportServer::new(RaftService {
                meta: meta.clone(),
                partitions: partitions.clone(),
                cluster_id: cluster_id.clone(),
                on_adopt,
                gate: gate.clone(),
                stop: stop_rx.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(nodelay(incoming), wait_for(stop_rx.clone()));
    let grpc_task = tokio::spawn(grpc);

    // Admin HTTP.
    let admin_addr = &cfg.admin_listen;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("admin_listen: bind {admin_addr}"))?;
    let audit_stats = Arc::new(crate::audit::RelayStats::default());
    let retention_stats = Arc::new(crate::retention::RetentionStats::default());
    let admin_state = crate::admin::AdminState {
        retention: retention_stats.clone(),
        audit: audit_stats.clone(),
        meta: meta.clone(),
        draining: draining.clone(),
        max_apply_lag: cfg.max_apply_lag,
        version: VERSION,
    };
    let admin = axum::serve(admin_listener, crate::admin::router(admin_state))
        .with_graceful_shutdown(wait_for(stop_rx.clone()));
    let admin_task = tokio::spawn(async move { admin.await });
    info!(node_id = cfg.node_id, listen = %cfg.listen, advertise = %advertise, admin = %cfg.admin_listen, "esf node serving");

    // Formation runs beside the servers; a refusal stops the node.
    let form = tokio::spawn(form_cluster(
        cfg.clone(),
        meta.clone(),
        partitions.clone(),
        cluster_id.clone(),
        gate,
        has_data,
    ));

    let relay = tokio::spawn(crate::audit::run_relay(ctx.clone(), audit_stats, stop_rx.clone()));
    let retention = tokio::spawn(crate::retention::run(
        ctx.clone(),
        Duration::from_millis(cfg.retention_interval_ms),
        retention_stats,
        stop_rx.clone(),
    ));
    let field_indexes = tokio::spawn(crate::field_index::run(
        meta.clone(),
        partitions.clone(),
        stop_rx.clone(),
    ));
    let reconciler = tokio::spawn(crate::partitions::run_reconciler(
        meta.clone(),
        partitions.clone(),
        routes,
        cfg.partition_replicas,
        draining_partitions.clone(),
        stop_rx.clone(),
    ));

    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("install SIGTERM handler")?;
    let outcome = tokio::select! {
        _ = sigterm.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = form => match r {
            Ok(Ok(())) => wait_signal(&mut sigterm).await,
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("formation task: {e}")),
        },
    };
    // A second signal exits at once.
    tokio::spawn(async move {
        let mut again =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = again.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
    info!("shutting down");
    draining.store(true, Ordering::SeqCst);
    // The reconciler keeps handing over what comes back until it stops.
    draining_partitions.store(true, Ordering::SeqCst);
    crate::partitions::hand_over_all(&partitions).await;
    hand_over_leadership(&meta, Duration::from_millis(cfg.drain_timeout_ms)).await;
    let _ = stop_tx.send(true);
    let _ = grpc_task.await;
    let _ = admin_task.await;
    let _ = reconciler.await;
    let _ = relay.await;
    let _ = retention.await;
    let _ = field_indexes.await;
    for p in partitions.iter() {
        p.shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("partition {} raft shutdown: {e}", p.group()))?;
    }
    meta.shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    db.sync().await.context("final wal flush")?;
    info!("stopped");
    outcome
}

async fn wait_signal(sigterm: &mut tokio::signal::unix::Signal) -> anyhow::Result<()> {
    tokio::select! {
        _ = sigterm.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: small replies (heartbeat
/// acks, read-index confirmations) must not wait for a delayed ACK.
fn nodelay(l: tokio::net::TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(l).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

async fn wait_for(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn hand_over_leadership(meta: &MetaGroup, deadline: Duration) {
    if !meta.raft().is_leader() {
        return;
    }
    let me = meta.node_id();
    let target = meta
        .raft()
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .voter_ids()
        .find(|v| *v != me);
    let Some(target) = target else { return };
    if let Err(e) = meta.raft().trigger().transfer_leader(target).await {
        warn!(error = %e, "leader transfer not started");
        return;
    }
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

async fn hello(pool: &PeerPool, peer: &str, me: &pb::HelloRequest) -> Option<pb::HelloResponse> {
    hello_checked(pool, peer, me).await.ok()
}

/// Asks the node at `peer` who it is, within [`HELLO_TIMEOUT`].
pub(crate) async fn hello_checked(
    pool: &PeerPool,
    peer: &str,
    me: &pb::HelloRequest,
) -> Result<pb::HelloResponse, String> {
    let ch = pool.channel(peer)?;
    let mut req = tonic::Request::new(me.clone());
    req.set_timeout(HELLO_TIMEOUT);
    match tokio::time::timeout(HELLO_TIMEOUT, pb::cluster_client::ClusterClient::new(ch).hello(req)).await {
        Err(_) => Err(format!("no answer within {HELLO_TIMEOUT:?}")),
        Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

async fn form_cluster(
    cfg: NodeConfig,
    meta: Arc<MetaGroup>,
    partitions: crate::partitions::Partitions,
    cluster_id: crate::transport::ClusterId,
    gate: Arc<AtomicBool>,
    has_data: bool,
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
        let cid = new_cluster_id();
        adopt(&cfg, &meta, &cluster_id, &cid)?;
        open_gate();
        let members = BTreeMap::from([(cfg.node_id, me)]);
        crate::partitions::initialize_all(&partitions, &members).await;
        meta.raft()
            .initialize(members)
            .await
            .context("initialize single-node cluster")?;
        info!(cluster_id = %cid, "initialised a single-node cluster");
        return Ok(());
    }
    let pool = PeerPool::default();
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
            let Some(r) = hello(&pool, &peer, &ask).await else {
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
            conclusive = Some(r.cluster_id.clone());
            break;
        }
        if let Some(cid) = conclusive {
            open_gate();
            info!(cluster_id = %cid, "a cluster exists; waiting to be added (esf member add)");
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
                let cid = new_cluster_id();
                adopt(&cfg, &meta, &cluster_id, &cid)?;
                let members: BTreeMap<u64, BasicNode> =
                    seen.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
                crate::partitions::initialize_all(&partitions, &members).await;
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

fn adopt(
    cfg: &NodeConfig,
    meta: &MetaGroup,
    cluster_id: &crate::transport::ClusterId,
    cid: &str,
) -> anyhow::Result<()> {
    *cluster_id.write().expect("cluster id lock") = cid.to_string();
    meta.set_cluster_id(cid);
    save_identity(
        &cfg.data_dir,
        &Identity {
            node_id: cfg.node_id,
            cluster_id: cid.to_string(),
            partitions: load_identity(&cfg.data_dir)?.map_or(0, |i| i.partitions),
        },
    )
}
