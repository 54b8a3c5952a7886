//! Metrics through the `metrics` facade, exported in the Prometheus text
//! format by `metrics-exporter-prometheus` (served on the admin port's
//! `/metrics`; no listener of its own).
//!
//! What is recorded where:
//! - per gRPC method and status code, requests and their latency, by the
//!   request guard every call passes ([`observe_request`]);
//! - per Raft group (meta is group 0, partitions 1..), role, term and log
//!   indexes; storage size, quota, disk, audit and retention figures: read
//!   at scrape time by the admin port and set as gauges.
//!
//! Labels never carry what a client chose: the method label is one of the
//! RPCs in the API's descriptors or `other`, so a caller inventing method
//! names cannot grow the series without bound.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Requests served, by `method` and gRPC status `code`.
pub const REQUESTS: &str = "esf_grpc_requests_total";
/// Request latency until the response headers, by `method`.
pub const LATENCY: &str = "esf_grpc_request_duration_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed as the global one on the
/// first call (a process runs one node; later calls share it).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("the latency buckets are a valid, non-empty list")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only this node's own");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "gRPC requests served, by method and status code.");
    describe_histogram!(
        LATENCY,
        metrics::Unit::Seconds,
        "gRPC request latency until the response headers (a stream: until it opened), by method."
    );
    for (name, help) in GAUGES {
        describe_gauge!(*name, *help);
    }
    for (name, help) in COUNTERS {
        describe_counter!(*name, *help);
    }
}

/// Gauges the admin port sets at scrape time, with their help text.
pub const GAUGES: &[(&str, &str)] = &[
    ("esf_build_info", "Build information (label version)."),
    ("esf_raft_is_leader", "1 if this node leads the group."),
    (
        "esf_raft_role",
        "0 follower, 1 candidate, 2 leader, 3 learner, 4 shutdown.",
    ),
    ("esf_raft_term", "Current Raft term."),
    ("esf_raft_commit_index", "Highest committed log index."),
    ("esf_raft_applied_index", "Highest applied log index."),
    ("esf_raft_last_log_index", "Last log index."),
    ("esf_raft_has_leader", "1 if a leader is known."),
    ("esf_raft_apply_lag", "Committed entries not applied yet."),
    ("esf_kv_revision", "Current store revision."),
    (
        "esf_audit_relayed_revision",
        "Every revision up to this one has its event in the $audit stream.",
    ),
    (
        "esf_audit_lag_revisions",
        "Revisions whose audit event is not appended yet.",
    ),
    (
        "esf_storage_db_bytes",
        "RocksDB live SST plus memtable bytes, all column families.",
    ),
    ("esf_quota_bytes", "Storage quota of the state machines (quota_bytes)."),
    (
        "esf_quota_used_bytes",
        "Bytes the state machines use against the quota.",
    ),
    (
        "esf_quota_alarm",
        "1 while writes that add data are refused for lack of quota.",
    ),
    (
        "esf_disk_free_bytes",
        "Free bytes of the data dir's file system at the last check.",
    ),
    ("esf_disk_total_bytes", "Size of the data dir's file system."),
    (
        "esf_disk_low",
        "1 while free space is below min_free_disk_mb: writes here refused, leadership moved away.",
    ),
    ("esf_node_ready", "1 if /readyz reports ready."),
];

/// Counters the admin port sets at scrape time (from the node's own
/// atomic counters), with their help text.
pub const COUNTERS: &[(&str, &str)] = &[
    (
        "esf_audit_relayed_total",
        "Audit events this node's relay appended (while it led meta).",
    ),
    (
        "esf_audit_retries_total",
        "Audit relay attempts that failed and were retried.",
    ),
    (
        "esf_retention_removed_events_total",
        "Events this node's partition leaders removed by retention.",
    ),
    ("esf_storage_wal_fsyncs_total", "WAL group-commit fsyncs."),
];

/// The request metrics of one method: its latency histogram and a
/// counter per status code, registered on first use. Handles are kept so
/// a request costs a map lookup and two atomic updates, not a registry
/// lookup with freshly built labels.
pub struct RequestMetrics {
    label: &'static str,
    latency: OnceLock<metrics::Histogram>,
    codes: [OnceLock<metrics::Counter>; 17],
}

impl RequestMetrics {
    fn new(label: &'static str) -> RequestMetrics {
        RequestMetrics {
            label,
            latency: OnceLock::new(),
            codes: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Records one request: its gRPC status code and latency.
    pub fn observe(&self, code: i32, elapsed: Duration) {
        let i = usize::try_from(code).ok().filter(|c| *c < CODES.len()).unwrap_or(2);
        self.codes[i]
            .get_or_init(|| metrics::counter!(REQUESTS, "method" => self.label, "code" => CODES[i]))
            .increment(1);
        self.latency
            .get_or_init(|| metrics::histogram!(LATENCY, "method" => self.label))
            .record(elapsed.as_secs_f64());
    }
}

/// Every RPC path of the API and its metrics; `other` for the rest.
fn methods() -> &'static (HashMap<String, RequestMetrics>, RequestMetrics) {
    static METHODS: OnceLock<(HashMap<String, RequestMetrics>, RequestMetrics)> = OnceLock::new();
    METHODS.get_or_init(|| {
        // Handles taken before the recorder exists would record nowhere.
        let _ = handle();
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(esf_proto::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptors are built in");
        let mut out = HashMap::new();
        for file in &fds.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let label: &'static str = Box::leak(path.clone().into_boxed_str());
                    out.insert(path, RequestMetrics::new(label));
                }
            }
        }
        (out, RequestMetrics::new("other"))
    })
}

/// The request metrics of a request path (`other` for a path that is not
/// an RPC of the API).
pub fn request_metrics(path: &str) -> &'static RequestMetrics {
    let (known, other) = methods();
    known.get(path).unwrap_or(other)
}

/// The method label of a request path: the RPC, or `other`.
pub fn method_label(path: &str) -> &'static str {
    request_metrics(path).label
}

const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of gRPC status code `code` (UNKNOWN for anything else).
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|c| CODES.get(c))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Records one request to `path`: its status code and latency.
pub fn observe_request(path: &str, code: i32, elapsed: Duration) {
    request_metrics(path).observe(code, elapsed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_api_or_other() {
        assert_eq!(method_label("/esf.v1.Config/Put"), "/esf.v1.Config/Put");
        assert_eq!(method_label("/esf.v1.RaftTransport/Vote"), "/esf.v1.RaftTransport/Vote");
        assert_eq!(method_label("/esf.v1.RaftTransport/made-up-123"), "other");
        assert_eq!(method_label("/x"), "other");
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
    }

    #[test]
    fn requests_are_rendered_as_counters_and_histograms() {
        let h = handle();
        observe_request("/esf.v1.Config/Range", 5, Duration::from_millis(3));
        let text = h.render();
        assert!(
            text.contains("esf_grpc_requests_total{method=\"/esf.v1.Config/Range\",code=\"NOT_FOUND\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("esf_grpc_request_duration_seconds_bucket{method=\"/esf.v1.Config/Range\",le=\"0.005\"} 1"),
            "{text}"
        );
    }
}
