//! Admin HTTP: `/livez` (process up), `/readyz` (503 with JSON reasons until
//! joined, a leader is known and apply lag is small; and while draining),
//! `/metrics` (Prometheus text).

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
    /// Committed but unapplied entries above which the node is not ready.
    pub max_apply_lag: u64,
    /// This binary's version.
    pub version: &'static str,
    /// The audit relay's counters.
    pub audit: Arc<crate::audit::RelayStats>,
    /// Retention's counters.
    pub retention: Arc<crate::events::retention::RetentionStats>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
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

/// openraft's runtime statistics of the meta group (batch sizes, time per
/// log stage: proposed, submitted, flushed, committed, applied), as text.
async fn raft_stats(State(s): State<AdminState>) -> impl IntoResponse {
    match s.meta.raft().runtime_stats().await {
        Ok(st) => (StatusCode::OK, format!("{}\n", st.display().human_readable())),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("raft stopped: {e}\n")),
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let m = s.meta.raft().metrics().borrow_watched().clone();
    let stats = s.meta.store().db().durability_stats();
    let g = "group=\"0\"";
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, labels: &str, v: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {v}\n"
        ));
    };
    gauge(
        "esf_build_info",
        "Build information.",
        &format!("version=\"{}\"", s.version),
        1,
    );
    gauge(
        "esf_raft_is_leader",
        "1 if this node leads the group.",
        g,
        u64::from(m.state == ServerState::Leader),
    );
    gauge(
        "esf_raft_role",
        "0 follower, 1 candidate, 2 leader, 3 learner, 4 shutdown.",
        g,
        match m.state {
            ServerState::Follower => 0,
            ServerState::Candidate => 1,
            ServerState::Leader => 2,
            ServerState::Learner => 3,
            ServerState::Shutdown => 4,
        },
    );
    gauge("esf_raft_term", "Current Raft term.", g, m.current_term);
    gauge(
        "esf_raft_commit_index",
        "Highest committed log index.",
        g,
        m.local_committed.as_ref().map_or(0, |l| l.index),
    );
    gauge(
        "esf_raft_applied_index",
        "Highest applied log index.",
        g,
        m.last_applied.as_ref().map_or(0, |l| l.index),
    );
    gauge(
        "esf_raft_last_log_index",
        "Last log index.",
        g,
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        "esf_raft_has_leader",
        "1 if a leader is known.",
        g,
        u64::from(m.current_leader.is_some()),
    );
    gauge(
        "esf_kv_revision",
        "Current store revision.",
        g,
        s.meta.store().revision(),
    );
    let (relayed, lag) = crate::audit::lag(&s.meta);
    gauge(
        "esf_audit_relayed_revision",
        "Every revision up to this one has its event in the $audit stream.",
        "",
        relayed,
    );
    gauge(
        "esf_audit_lag_revisions",
        "Revisions whose audit event is not appended yet.",
        "",
        lag,
    );
    gauge(
        "esf_storage_db_bytes",
        "Approximate RocksDB size (SST + memtables).",
        "",
        s.meta.store().db().approximate_size_bytes(),
    );
    gauge(
        "esf_quota_bytes",
        "Storage quota of the state machines (quota_bytes).",
        "",
        s.meta.quota_bytes(),
    );
    gauge(
        "esf_quota_used_bytes",
        "Bytes the state machines use against the quota.",
        "",
        s.meta.quota_used(),
    );
    gauge(
        "esf_quota_alarm",
        "1 while writes that add data are refused for lack of quota.",
        "",
        u64::from(s.meta.quota_exceeded()),
    );
    gauge(
        "esf_disk_free_bytes",
        "Free bytes of the data dir's file system at the last check.",
        "",
        s.disk.free(),
    );
    gauge(
        "esf_disk_total_bytes",
        "Size of the data dir's file system.",
        "",
        s.disk.total(),
    );
    gauge(
        "esf_disk_low",
        "1 while free space is below min_free_disk_mb: writes here refused, leadership moved away.",
        "",
        u64::from(s.disk.is_low()),
    );
    gauge(
        "esf_node_ready",
        "1 if /readyz reports ready.",
        "",
        u64::from(not_ready_reasons(&s).is_empty()),
    );
    for (name, help, v) in [
        (
            "esf_audit_relayed_total",
            "Audit events this node's relay appended (while it led meta).",
            s.audit.relayed.load(Ordering::Relaxed),
        ),
        (
            "esf_retention_removed_events_total",
            "Events this node's partition leaders removed by retention.",
            s.retention.removed.load(Ordering::Relaxed),
        ),
        (
            "esf_audit_retries_total",
            "Audit relay attempts that failed and were retried.",
            s.audit.retries.load(Ordering::Relaxed),
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
    }
    out.push_str(&format!("# HELP esf_storage_wal_fsyncs_total WAL group-commit fsyncs.\n# TYPE esf_storage_wal_fsyncs_total counter\nesf_storage_wal_fsyncs_total {}\n", stats.fsyncs));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
