//! Admin HTTP: `/livez` (process up), `/readyz` (503 with JSON reasons until
//! joined, a leader is known and apply lag is small; and while draining),
//! `/health` (the cluster's health as this node sees it, JSON), `/metrics`
//! (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use esf_raft::group::MetaGroup;
use esf_raft::openraft::ServerState;
use esf_raft::openraft::async_runtime::WatchReceiver;

/// What the admin endpoints look at.
#[derive(Clone)]
pub struct AdminState {
    /// The meta group, whose Raft metrics decide readiness.
    pub meta: Arc<MetaGroup>,
    /// Set at shutdown: not ready from then on.
    pub draining: Arc<AtomicBool>,
    /// Free space of the data dir: not ready while low.
    pub disk: Arc<crate::disk::DiskGuard>,
    /// Set once the node learned it was removed from the cluster.
    pub removed: Arc<std::sync::OnceLock<String>>,
    /// The event partitions (their Raft figures are in `/metrics`).
    pub partitions: crate::cluster::partitions::Partitions,
    /// The process's metrics recorder, rendered by `/metrics`.
    pub telemetry: metrics_exporter_prometheus::PrometheusHandle,
    /// Committed but unapplied entries above which the node is not ready.
    pub max_apply_lag: u64,
    /// This binary's version.
    pub version: &'static str,
    /// The audit relay's counters.
    pub audit: Arc<crate::audit::RelayStats>,
    /// Retention's counters.
    pub retention: Arc<crate::events::retention::RetentionStats>,
    /// Node checks, gossip and the cluster view.
    pub health: Arc<crate::health::Health>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/debug/raft", get(raft_stats))
        .with_state(state)
}

/// Reasons the node is not ready (empty: ready).
pub fn not_ready_reasons(s: &AdminState) -> Vec<String> {
    let m = s.meta.raft().metrics().borrow_watched().clone();
    let mut reasons = Vec::new();
    if s.draining.load(Ordering::SeqCst) {
        reasons.push("draining".to_string());
    }
    if let Some(r) = s.disk.reason() {
        reasons.push(r);
    }
    if let Some(why) = s.removed.get() {
        reasons.push(why.clone());
    }
    if m.membership_config.membership().get_node(&s.meta.node_id()).is_none() {
        reasons.push("not joined: this node is not a member of a cluster yet".to_string());
    }
    if m.current_leader.is_none() {
        reasons.push("no leader known".to_string());
    }
    let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    if committed.saturating_sub(applied) > s.max_apply_lag {
        reasons.push(format!("apply lag {} above {}", committed - applied, s.max_apply_lag));
    }
    reasons
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let reasons = not_ready_reasons(&s);
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons })),
    )
}

/// The cluster's health as this node sees it (JSON; `esf.v1.Cluster/Health`
/// in gRPC): 200 when healthy or degraded, 503 when unavailable.
async fn health(State(s): State<AdminState>) -> impl IntoResponse {
    let view = s.health.cluster().await;
    let code = if view.status == "unavailable" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(view))
}

/// openraft's runtime statistics of the meta group (batch sizes, time per
/// log stage: proposed, submitted, flushed, committed, applied), as text.
async fn raft_stats(State(s): State<AdminState>) -> impl IntoResponse {
    match s.meta.raft().runtime_stats().await {
        Ok(st) => (StatusCode::OK, format!("{}\n", st.display().human_readable())),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {e}\n")),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    record_state(&s);
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.telemetry.render(),
    )
}

/// The Raft figures of one group as gauges labelled `group`.
fn raft_gauges(group: u32, m: &esf_raft::openraft::RaftMetrics<esf_raft::types::TypeConfig>) {
    use metrics::gauge;
    let g = group.to_string();
    let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    let role = match m.state {
        ServerState::Follower => 0.0,
        ServerState::Candidate => 1.0,
        ServerState::Leader => 2.0,
        ServerState::Learner => 3.0,
        ServerState::Shutdown => 4.0,
    };
    gauge!("esf_raft_is_leader", "group" => g.clone()).set(f64::from(u8::from(m.state == ServerState::Leader)));
    gauge!("esf_raft_role", "group" => g.clone()).set(role);
    gauge!("esf_raft_term", "group" => g.clone()).set(m.current_term as f64);
    gauge!("esf_raft_commit_index", "group" => g.clone()).set(committed as f64);
    gauge!("esf_raft_applied_index", "group" => g.clone()).set(applied as f64);
    gauge!("esf_raft_last_log_index", "group" => g.clone()).set(m.last_log_index.unwrap_or(0) as f64);
    gauge!("esf_raft_apply_lag", "group" => g.clone()).set(committed.saturating_sub(applied) as f64);
    gauge!("esf_raft_has_leader", "group" => g).set(f64::from(u8::from(m.current_leader.is_some())));
}

/// Sets the gauges and counters read from the node's state (the request
/// metrics are recorded as requests pass the guard).
fn record_state(s: &AdminState) {
    use metrics::{counter, gauge};
    gauge!("esf_build_info", "version" => s.version).set(1.0);
    raft_gauges(
        esf_raft::group::META_GROUP,
        &s.meta.raft().metrics().borrow_watched().clone(),
    );
    for p in s.partitions.iter() {
        raft_gauges(p.group(), &p.raft().metrics().borrow_watched().clone());
    }
    let store = s.meta.store();
    gauge!("esf_kv_revision").set(store.revision() as f64);
    let (relayed, lag) = crate::audit::lag(&s.meta);
    gauge!("esf_audit_relayed_revision").set(relayed as f64);
    gauge!("esf_audit_lag_revisions").set(lag as f64);
    gauge!("esf_storage_db_bytes").set(store.db().approximate_size_bytes() as f64);
    gauge!("esf_quota_bytes").set(s.meta.quota_bytes() as f64);
    gauge!("esf_quota_used_bytes").set(s.meta.quota_used() as f64);
    gauge!("esf_quota_alarm").set(f64::from(u8::from(s.meta.quota_exceeded())));
    gauge!("esf_disk_free_bytes").set(s.disk.free() as f64);
    gauge!("esf_disk_total_bytes").set(s.disk.total() as f64);
    gauge!("esf_disk_low").set(f64::from(u8::from(s.disk.is_low())));
    gauge!("esf_node_ready").set(f64::from(u8::from(not_ready_reasons(s).is_empty())));
    counter!("esf_audit_relayed_total").absolute(s.audit.relayed.load(Ordering::Relaxed));
    counter!("esf_audit_retries_total").absolute(s.audit.retries.load(Ordering::Relaxed));
    counter!("esf_retention_removed_events_total").absolute(s.retention.removed.load(Ordering::Relaxed));
    counter!("esf_storage_wal_fsyncs_total").absolute(store.db().durability_stats().fsyncs);
    let g = s.health.gossip();
    counter!("esf_gossip_received_total").absolute(g.stats.received.load(Ordering::Relaxed));
    counter!("esf_gossip_rejected_total").absolute(g.stats.rejected.load(Ordering::Relaxed));
    counter!("esf_gossip_sent_total").absolute(g.stats.sent.load(Ordering::Relaxed));
    counter!("esf_gossip_receive_errors_total").absolute(g.stats.receive_errors.load(Ordering::Relaxed));
    counter!("esf_gossip_sent_bytes_total").absolute(g.stats.sent_bytes.load(Ordering::Relaxed));
}
