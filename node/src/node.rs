//! `esf serve`: the wiring of one node. It opens the data dir, starts the
//! meta group and the event partitions, serves gRPC (`api`) and admin
//! HTTP (`admin`), forms or joins the cluster (`cluster::formation`),
//! starts the background tasks, and shuts down gracefully. What each part
//! does lives in its own module; this one only puts them together, in
//! order.
//!
//! Shutdown (SIGTERM or SIGINT): /readyz turns 503, partition and meta
//! leadership is handed to other voters (bounded by `drain_timeout_ms`),
//! the servers and background tasks stop, Raft stops and the WAL is
//! flushed. A second signal exits at once.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use esf_raft::events::PartitionGroup;
use esf_raft::group::{GroupOptions, META_GROUP, MetaGroup};
use esf_raft::openraft;
use esf_storage::{Db, StorageConfig};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cluster::partitions::{self, Partitions, Routes};
use crate::cluster::{formation, leaders};
use crate::config::NodeConfig;
use crate::context::Ctx;
use crate::events::{field_index, retention};
use crate::gossip::{self, Gossip};
use crate::health::Health;
use crate::health::checks::{self, Checker};
use crate::identity::{self, Identity};
use crate::net::peer_auth::PeerSecret;
use crate::net::peer_pool::{ClusterId, PeerPool};
use crate::net::raft_network::Network;
use crate::net::tls::NodeTls;
use crate::net::tls_accept;
use crate::{admin, api, audit};

/// Version reported in status and metrics.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the node until it is told to stop.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    // The secret first: a bad one stops the node before it touches its
    // data dir.
    let secret = match &cfg.peer_secret_file {
        Some(f) => PeerSecret::load(f)?,
        None => PeerSecret::default(),
    };
    // TLS files too (docs/security.md, "TLS").
    let tls = NodeTls::load(&cfg)?;
    let identity = open_identity(&cfg)?;
    let has_data = cfg.data_dir.join("db").join("CURRENT").exists();
    let cluster_id: ClusterId = Arc::new(std::sync::RwLock::new(identity.cluster_id.clone()));
    let db = open_storage(&cfg)?;
    let gossip_secret = secret.bytes().map(<[u8]>::to_vec);
    let pool = PeerPool::new(secret).with_tls(tls.as_ref().map(|t| t.peer.clone()));
    let (meta, partitions) = start_groups(&cfg, identity, &db, &pool, &cluster_id).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let routes = Arc::new(Routes::default());
    routes.load(&meta);
    let leader_log = Arc::new(leaders::LeaderLog::default());
    tokio::spawn(leaders::watch_leaders(
        META_GROUP,
        meta.raft().clone(),
        leader_log.clone(),
        stop_rx.clone(),
    ));
    for p in partitions.iter() {
        tokio::spawn(leaders::watch_leaders(
            p.group(),
            p.raft().clone(),
            leader_log.clone(),
            stop_rx.clone(),
        ));
    }
    let disk = Arc::new(crate::disk::DiskGuard::new(&cfg.data_dir, cfg.min_free_disk_mb));
    // Low from the start if it already is: no leadership, no writes.
    if let Err(e) = disk.check() {
        warn!(error = %e, dir = %cfg.data_dir.display(), "disk check failed");
    }
    let removed: Arc<std::sync::OnceLock<String>> = Arc::default();
    let ctx = Ctx {
        removed: removed.clone(),
        disk: disk.clone(),
        stop: stop_rx.clone(),
        meta: meta.clone(),
        partitions: partitions.clone(),
        recorded_partitions: Arc::default(),
        routes: routes.clone(),
        partition_replicas: cfg.partition_replicas,
        leaders: leader_log,
        pool,
        cluster_id: cluster_id.clone(),
        advertise: cfg.advertise(),
        version: VERSION,
        snapshots_in_progress: Arc::new(tokio::sync::Semaphore::new(1)),
        auth_token_ttl: Duration::from_secs(cfg.auth_token_ttl_secs),
        client_cert_auth: cfg.client_cert_auth,
        ttl_checks: Default::default(),
    };

    // A node with data takes Raft traffic at once; one without waits for
    // the formation check.
    let gate = Arc::new(AtomicBool::new(has_data));
    let draining = Arc::new(AtomicBool::new(false));
    let gossip = Gossip::new(
        gossip::Settings {
            listen: cfg.gossip_listen(),
            advertise: cfg.gossip_advertise(),
            admin: cfg.admin_listen.clone(),
            interval: Duration::from_millis(cfg.gossip_interval_ms),
            phi_threshold: cfg.gossip_phi_threshold,
            dead_grace: Duration::from_secs(cfg.gossip_dead_grace_secs),
            join: cfg.join.clone(),
        },
        gossip_secret,
    );
    let health = Health::new(
        Checker {
            meta: meta.clone(),
            partitions: partitions.clone(),
            disk: disk.clone(),
            limits: checks::Limits {
                fsync_warn: Duration::from_millis(cfg.fsync_warn_ms),
                fsync_critical: Duration::from_millis(cfg.fsync_critical_ms),
                max_rss_bytes: cfg.max_rss_bytes(),
                max_apply_lag: cfg.max_apply_lag,
                max_clock_offset_ms: cfg.max_clock_offset_ms,
                evacuate_after_checks: cfg.evacuate_after_checks,
                return_after_checks: cfg.return_after_checks,
            },
        },
        gossip.clone(),
        Duration::from_millis(cfg.check_interval_ms),
        ctx.advertise.clone(),
        cfg.admin_listen.clone(),
        VERSION,
    );
    let audit_stats = Arc::new(audit::RelayStats::default());
    let retention_stats = Arc::new(retention::RetentionStats::default());
    let admin_state = admin::AdminState {
        retention: retention_stats.clone(),
        audit: audit_stats.clone(),
        meta: meta.clone(),
        draining: draining.clone(),
        disk: disk.clone(),
        removed: removed.clone(),
        partitions: partitions.clone(),
        telemetry: crate::telemetry::handle(),
        max_apply_lag: cfg.max_apply_lag,
        version: VERSION,
        health: health.clone(),
    };
    let grpc_task = serve_grpc(&cfg, &ctx, gate.clone(), tls.as_ref(), admin_state.clone()).await?;
    let admin_task = serve_admin(&cfg, admin_state, stop_rx.clone(), tls.as_ref()).await?;
    info!(tls = tls.is_some(), node_id = cfg.node_id, listen = %cfg.listen, advertise = %ctx.advertise, admin = %cfg.admin_listen, "esf node serving");

    // Formation runs beside the servers; a refusal stops the node.
    let form = tokio::spawn(formation::form_cluster(
        cfg.clone(),
        meta.clone(),
        partitions.clone(),
        cluster_id,
        gate,
        has_data,
        ctx.pool.clone(),
    ));
    let draining_partitions = Arc::new(AtomicBool::new(false));
    let tasks = [
        tokio::spawn(gossip.clone().run(ctx.clone(), stop_rx.clone())),
        tokio::spawn(health.run(stop_rx.clone())),
        tokio::spawn(crate::registry_health::run(ctx.clone(), stop_rx.clone())),
        tokio::spawn(crate::cluster::autopilot::run(
            ctx.clone(),
            gossip.clone(),
            crate::cluster::autopilot::Settings {
                enabled: cfg.autopilot,
                voters: cfg.autopilot_voters(),
                explicit: cfg.autopilot_voters != 0,
                interval: Duration::from_millis(cfg.autopilot_interval_ms),
                dead_after: Duration::from_secs(cfg.autopilot_dead_after_secs),
                stabilization: Duration::from_secs(cfg.autopilot_stabilization_secs),
                max_trailing_logs: cfg.autopilot_max_trailing_logs,
            },
            stop_rx.clone(),
        )),
        tokio::spawn(audit::run_relay(ctx.clone(), audit_stats, stop_rx.clone())),
        tokio::spawn(retention::run(
            ctx.clone(),
            Duration::from_millis(cfg.retention_interval_ms),
            retention_stats,
            stop_rx.clone(),
        )),
        tokio::spawn(field_index::run(meta.clone(), partitions.clone(), stop_rx.clone())),
        tokio::spawn(crate::cluster::removal::run(
            ctx.clone(),
            cfg.data_dir.clone(),
            cfg.join.clone(),
            Duration::from_millis(crate::cluster::removal::CHECK_INTERVAL_MS),
        )),
        tokio::spawn(crate::cluster::disk_watch::run(
            disk,
            meta.clone(),
            partitions.clone(),
            Duration::from_millis(cfg.disk_check_interval_ms),
            stop_rx.clone(),
        )),
        tokio::spawn(partitions::run_reconciler(
            meta.clone(),
            partitions.clone(),
            routes,
            cfg.partition_replicas,
            draining_partitions.clone(),
            stop_rx.clone(),
        )),
    ];

    let outcome = wait_until_stopped(form).await;
    // A second signal exits at once.
    tokio::spawn(async move {
        let Ok(mut again) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            return;
        };
        tokio::select! { _ = again.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        // Not `eprintln!`: it panics when stderr is closed.
        let _ = writeln!(std::io::stderr(), "second signal: exiting now");
        std::process::exit(130);
    });
    info!("shutting down");
    draining.store(true, Ordering::SeqCst);
    // The reconciler keeps handing over what comes back until it stops.
    draining_partitions.store(true, Ordering::SeqCst);
    partitions::hand_over_all(&partitions).await;
    formation::hand_over_leadership(&meta, Duration::from_millis(cfg.drain_timeout_ms)).await;
    let _ = stop_tx.send(true);
    let _ = grpc_task.await;
    let _ = admin_task.await;
    for t in tasks {
        let _ = t.await;
    }
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

/// The data dir's identity, created on first start; a data dir of another
/// node id is refused.
fn open_identity(cfg: &NodeConfig) -> anyhow::Result<Identity> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
    match identity::load(&cfg.data_dir)? {
        Some(id) if id.node_id != cfg.node_id => {
            bail!(
                "node_id: data dir {} belongs to node {}, not {}",
                cfg.data_dir.display(),
                id.node_id,
                cfg.node_id
            )
        }
        Some(Identity {
            removed: Some(why),
            cluster_id,
            ..
        }) => {
            bail!(
                "data dir {}: this node was removed from cluster {cluster_id} ({why}); it will not serve from this data dir again: start it with an empty data dir to join a cluster anew",
                cfg.data_dir.display()
            )
        }
        Some(id) => Ok(id),
        None => {
            let id = Identity {
                node_id: cfg.node_id,
                cluster_id: String::new(),
                partitions: 0,
                removed: None,
            };
            identity::save(&cfg.data_dir, &id)?;
            Ok(id)
        }
    }
}

/// The node's RocksDB; a damaged one stops the node with what to do.
fn open_storage(cfg: &NodeConfig) -> anyhow::Result<Arc<Db>> {
    let mut scfg = StorageConfig::new(cfg.data_dir.join("db"));
    scfg.memory_budget_bytes = (cfg.memory_budget_mb as usize) << 20;
    scfg.write_buffer_bytes = scfg.memory_budget_bytes / 4;
    scfg.verify_on_open = cfg.verify_on_start;
    Db::open(&scfg).map_err(|e| {
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
    })
}

/// The Raft settings every group runs with.
fn raft_config(cfg: &NodeConfig) -> anyhow::Result<openraft::Config> {
    openraft::Config {
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
    .context("raft settings")
}

/// Starts the meta group and the event partitions: the count recorded in
/// meta, else in the data dir, else the configured one (a new node or
/// cluster).
async fn start_groups(
    cfg: &NodeConfig,
    mut identity: Identity,
    db: &Arc<Db>,
    pool: &PeerPool,
    cluster_id: &ClusterId,
) -> anyhow::Result<(Arc<MetaGroup>, Partitions)> {
    // A follower that has not answered an append within an election
    // timeout is unreachable; openraft's own per-append deadline (the
    // heartbeat interval) tore replication streams down under load.
    let append_deadline = Duration::from_millis(cfg.election_timeout_ms);
    let network = |group| Network {
        group,
        pool: pool.clone(),
        cluster_id: cluster_id.clone(),
        append_deadline,
    };
    let opts = GroupOptions {
        cluster_id: identity.cluster_id.clone(),
        node_id: cfg.node_id,
        raft: Arc::new(raft_config(cfg)?),
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
        quota_bytes: cfg.quota_bytes,
        snapshot_step_bytes: cfg.snapshot_step_mb << 20,
        coalesce: esf_raft::group::CoalesceOptions {
            max_commands: cfg.propose_batch_max,
            max_bytes: cfg.propose_batch_max_bytes,
            max_inflight: cfg.propose_max_inflight,
        },
    };
    let meta = MetaGroup::start(db.clone(), network(META_GROUP), opts.clone())
        .await
        .context("start meta group")?;
    meta.set_cluster_id(&identity.cluster_id);

    let recorded = partitions::recorded_partitions(&meta);
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
    if identity.partitions != partition_count {
        identity.partitions = partition_count;
        identity::save(&cfg.data_dir, &identity)?;
    }
    let mut groups = Vec::with_capacity(partition_count as usize);
    for g in 1..=partition_count {
        let p = PartitionGroup::start(db.clone(), g, network(g), opts.clone())
            .await
            .with_context(|| format!("start partition {g}"))?;
        groups.push(p);
    }
    Ok((meta, Arc::new(groups)))
}

/// Binds the client port and serves every gRPC service on it (over TLS
/// with `tls`) until the node stops.
async fn serve_grpc(
    cfg: &NodeConfig,
    ctx: &Ctx,
    gate: Arc<AtomicBool>,
    tls: Option<&NodeTls>,
    readiness: admin::AdminState,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let (data_dir, node_id, partition_count) = (cfg.data_dir.clone(), cfg.node_id, ctx.partitions.len() as u32);
    let meta_for_adopt = ctx.meta.clone();
    let on_adopt: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |cid: &str| {
        meta_for_adopt.set_cluster_id(cid);
        let id = Identity {
            node_id,
            cluster_id: cid.to_string(),
            partitions: partition_count,
            removed: None,
        };
        if let Err(e) = identity::save(&data_dir, &id) {
            error!(error = %e, "cannot persist cluster id");
        }
        info!(cluster_id = cid, "joined cluster");
    });
    let raft = api::raft::RaftService {
        meta: ctx.meta.clone(),
        partitions: ctx.partitions.clone(),
        cluster_id: ctx.cluster_id.clone(),
        on_adopt,
        gate,
        stop: ctx.stop.clone(),
        disk: ctx.disk.clone(),
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(follow_readiness(health_reporter, readiness.clone(), ctx.stop.clone()));
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
    let router = api::routes(
        &mut api::server(ctx),
        ctx,
        raft,
        readiness.health.clone(),
        health,
        reflection,
    );
    let stop = stopped(ctx.stop.clone());
    Ok(match tls {
        Some(t) => {
            let accepted = tls_accept::accept_tls(incoming, t.grpc.clone(), t.handshake_timeout);
            tokio::spawn(router.serve_with_incoming_shutdown(tls_accept::incoming(accepted), stop))
        }
        None => tokio::spawn(router.serve_with_incoming_shutdown(nodelay(incoming), stop)),
    })
}

/// Binds the admin port and serves `/livez`, `/readyz`, `/metrics` (over
/// TLS with `tls`) until the node stops.
/// How often gRPC health is brought in line with `/readyz`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the standard gRPC health service in line with `/readyz`: the
/// server as a whole (service "") and each registered service answer
/// SERVING while the node is ready and NOT_SERVING otherwise (not joined,
/// no leader, apply lag, draining, disk low, removed), checked every
/// [`HEALTH_INTERVAL`].
async fn follow_readiness(
    reporter: tonic_health::server::HealthReporter,
    state: admin::AdminState,
    mut stop: watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let ready = admin::not_ready_reasons(&state).is_empty();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in [
                "",
                <esf_proto::v1::config_server::ConfigServer<api::config::ConfigService> as tonic::server::NamedService>::NAME,
                <esf_proto::v1::lease_server::LeaseServer<api::lease::LeaseService> as tonic::server::NamedService>::NAME,
                <esf_proto::v1::registry_server::RegistryServer<api::registry::RegistryService> as tonic::server::NamedService>::NAME,
                <esf_proto::v1::events_server::EventsServer<api::events::EventsService> as tonic::server::NamedService>::NAME,
            ] {
                reporter.set_service_status(service, status).await;
            }
            last = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn serve_admin(
    cfg: &NodeConfig,
    state: admin::AdminState,
    stop: watch::Receiver<bool>,
    tls: Option<&NodeTls>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let admin_addr = &cfg.admin_listen;
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("admin_listen: bind {admin_addr}"))?;
    let router = admin::router(state);
    Ok(match tls {
        Some(t) => {
            let local = listener.local_addr().context("admin_listen: local address")?;
            let accepted = tls_accept::accept_tls(listener, t.admin.clone(), t.handshake_timeout);
            let admin = axum::serve(tls_accept::TlsListener::new(accepted, local), router);
            tokio::spawn(async move { admin.with_graceful_shutdown(stopped(stop)).await })
        }
        None => {
            let admin = axum::serve(listener, router);
            tokio::spawn(async move { admin.with_graceful_shutdown(stopped(stop)).await })
        }
    })
}

/// Waits for SIGTERM or SIGINT (or formation refusing this node).
async fn wait_until_stopped(form: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("install SIGTERM handler")?;
    tokio::select! {
        _ = sigterm.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = form => match r {
            Ok(Ok(())) => {
                tokio::select! {
                    _ = sigterm.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("formation task: {e}")),
        },
    }
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

/// Resolves when the node stops.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
