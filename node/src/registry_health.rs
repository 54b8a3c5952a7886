//! Health checks of registry instances (the records are [`crate::registry`]).
//!
//! The meta leader runs the checks: every [`SCAN_INTERVAL`] it lists the
//! registered instances and probes each one whose interval has passed (at
//! most [`MAX_CONCURRENT_PROBES`] at once, each within the check's
//! timeout): `tcp` connects, `http` sends `GET` and wants a 2xx status,
//! `grpc` asks `grpc.health.v1.Health/Check` and wants SERVING. Only a
//! change of status is written, through Raft, as a txn that puts the
//! instance with its new `health` only if its registration is still the
//! one probed (same mod revision), so a probe never overwrites a newer
//! registration or revives a deregistered instance. A new registration
//! starts `critical` ("not checked yet") until its first probe.
//!
//! A `ttl` check is not probed: the instance reports its status with
//! `CheckUpdate`, which the meta leader serves (followers forward it). The
//! leader keeps the time of each instance's last update in memory
//! ([`crate::context::TtlClock`], a monotonic clock: no wall time crosses nodes) and writes
//! through Raft only when the status or a critical output changes; a scan
//! that finds an update older than the ttl writes critical ("ttl expired").
//! A new leader knows no update yet, so it counts every ttl from when it
//! first sees the instance (as etcd renews leases on a leader change): an
//! instance may stay passing up to one ttl longer across a leader change,
//! never shorter.
//!
//! Why the leader and not the node a registration came through (Consul's
//! agent model): every instance keeps being checked whichever node dies,
//! with no owner to hand over, and a status change is a local proposal.
//! The cost is that one node runs every probe (bounded by
//! [`MAX_CONCURRENT_PROBES`] at a time); a new leader probes every instance
//! once when it takes over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use esf_proto::v1 as pb;
use esf_raft::command::{Command, Compare, CompareOp, CompareTarget, Op, PutRequest, TxnOp, TxnRequest};
use futures::StreamExt;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::context::Ctx;
use crate::convert::{self, consistency};
use crate::registry;

/// How often a node looks for instances whose probe is due.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Probes running at once on one node, at most.
pub const MAX_CONCURRENT_PROBES: usize = 64;
/// Bytes of an HTTP answer read to find its status line, at most.
const MAX_HTTP_HEAD_BYTES: usize = 1024;

/// Runs this node's probes until `stop`.
pub async fn run(ctx: Ctx, mut stop: watch::Receiver<bool>) {
    // (service, id, registration revision) -> when it was last probed.
    let mut probed: HashMap<(String, String, u64), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !ctx.meta.raft().is_leader() {
            probed.clear();
            ctx.ttl_checks.clear();
            continue;
        }
        let r = convert::read_all(registry::instances(None), false);
        let Ok((_, res)) = ctx.meta.range(&r, consistency(true)).await else {
            continue;
        };
        let now = Instant::now();
        let instances: Vec<pb::Instance> = res.kvs.iter().map(registry::instance).collect();
        for i in &instances {
            let Some(c) = i.check.as_ref().filter(|c| c.kind == "ttl") else {
                continue;
            };
            let ttl = Duration::from_millis(u64::from(c.ttl_ms));
            let since = ctx.ttl_checks.since_update(i, now);
            if since > ttl && i.health != "critical" {
                let output = format!("ttl of {ttl:?} expired: no CheckUpdate for {:.1}s", since.as_secs_f64());
                record(&ctx, i, "critical", output).await;
            }
        }
        let due: Vec<pb::Instance> = instances
            .iter()
            .cloned()
            .filter(|i| {
                let Some(c) = &i.check else { return false };
                if c.kind == "ttl" {
                    return false;
                }
                let key = (i.service.clone(), i.id.clone(), i.revision);
                probed
                    .get(&key)
                    .is_none_or(|at| now.duration_since(*at) >= Duration::from_millis(u64::from(c.interval_ms)))
            })
            .collect();
        let live: std::collections::HashSet<(String, String)> = res
            .kvs
            .iter()
            .map(registry::instance)
            .map(|i| (i.service, i.id))
            .collect();
        probed.retain(|(s, i, _), _| live.contains(&(s.clone(), i.clone())));
        ctx.ttl_checks.retain(&live);
        let results: Vec<(pb::Instance, Result<(), String>)> = futures::stream::iter(due)
            .map(|i| async move {
                let outcome = probe(i.check.as_ref().expect("filtered on a check")).await;
                (i, outcome)
            })
            .buffer_unordered(MAX_CONCURRENT_PROBES)
            .collect()
            .await;
        for (i, outcome) in results {
            probed.insert((i.service.clone(), i.id.clone(), i.revision), Instant::now());
            let (health, output) = match outcome {
                Ok(()) => ("passing", String::new()),
                Err(e) => ("critical", cut(&e)),
            };
            metrics::counter!("esf_registry_probes_total", "health" => health).increment(1);
            if i.health == health && (health == "passing" || i.health_output == output) {
                continue;
            }
            record(&ctx, &i, health, output).await;
        }
    }
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(registry::MAX_CHECK_OUTPUT_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Writes `i`'s new health if its registration is still the one probed.
pub async fn record(ctx: &Ctx, i: &pb::Instance, health: &str, output: String) {
    let key = registry::instance_key(&i.service, &i.id);
    let stored = pb::Instance {
        lease: 0,
        revision: 0,
        health: health.to_string(),
        health_output: output,
        ..i.clone()
    };
    let op = Op::Txn(TxnRequest {
        compares: vec![Compare {
            key: key.clone(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(i.revision),
        }],
        success: vec![TxnOp::Put(PutRequest {
            key,
            value: stored.encode_to_vec(),
            lease: i.lease,
            prev_kv: false,
        })],
        failure: vec![],
    });
    match ctx.write(Command::new(op)).await {
        Ok(_) => {
            info!(service = %i.service, id = %i.id, health, output = %stored.health_output, "registry instance health changed");
            metrics::counter!("esf_registry_health_changes_total", "health" => health.to_string()).increment(1);
        }
        // Leadership lost meanwhile, or no quorum: the next leader probes
        // again.
        Err(e) => {
            debug!(service = %i.service, id = %i.id, error = %e, "registry health not recorded; retried after the next probe")
        }
    }
}

/// One probe of `c`: Ok if it passes, else why not.
pub async fn probe(c: &pb::HealthCheck) -> Result<(), String> {
    let deadline = Duration::from_millis(u64::from(c.timeout_ms.max(registry::MIN_CHECK_TIMEOUT_MS)));
    match tokio::time::timeout(deadline, probe_once(c)).await {
        Ok(r) => r,
        Err(_) => Err(format!("{} check of {} timed out after {deadline:?}", c.kind, c.target)),
    }
}

async fn probe_once(c: &pb::HealthCheck) -> Result<(), String> {
    match c.kind.as_str() {
        "tcp" => tokio::net::TcpStream::connect(&c.target)
            .await
            .map(|_| ())
            .map_err(|e| format!("tcp connect {}: {e}", c.target)),
        "http" => http_get(&c.target).await,
        "grpc" => grpc_health(&c.target, &c.grpc_service).await,
        other => Err(format!("unknown check kind {other:?}")),
    }
}

async fn http_get(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (host_port, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let mut s = tokio::net::TcpStream::connect(host_port)
        .await
        .map_err(|e| format!("http connect {host_port}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host_port}\r\nUser-Agent: esf-health-check\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("http send: {e}"))?;
    let mut head = Vec::with_capacity(MAX_HTTP_HEAD_BYTES);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_HTTP_HEAD_BYTES {
        let n = s.read(&mut buf).await.map_err(|e| format!("http read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET {url}: HTTP {code}")),
        None => Err(format!("GET {url}: not an HTTP answer: {line:?}")),
    }
}

async fn grpc_health(target: &str, service: &str) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("grpc target {target}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("grpc connect {target}: {e}"))?;
    let r = HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|e| format!("grpc health of {service:?} at {target}: {}", e.message()))?;
    match r.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("grpc health of {service:?} at {target}: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::TtlClock;

    fn check(kind: &str, target: String) -> pb::HealthCheck {
        pb::HealthCheck {
            kind: kind.into(),
            target,
            grpc_service: String::new(),
            interval_ms: 1000,
            timeout_ms: 1000,
            ttl_ms: 0,
        }
    }

    #[tokio::test]
    async fn tcp_and_http_probes_see_what_is_listening() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes()).await;
            }
        });
        assert_eq!(probe(&check("http", format!("http://{addr}/health"))).await, Ok(()));
        let err = probe(&check("http", format!("http://{addr}/health")))
            .await
            .unwrap_err();
        assert!(err.contains("HTTP 503"), "{err}");
        server.await.expect("server");
        // Nothing listens there any more.
        let err = probe(&check("tcp", addr.to_string())).await.unwrap_err();
        assert!(err.contains("tcp connect"), "{err}");
    }

    #[test]
    fn a_ttl_clock_counts_from_the_last_update_or_from_first_sight() {
        let clock = TtlClock::default();
        let i = pb::Instance {
            service: "web".into(),
            id: "w1".into(),
            ..Default::default()
        };
        let t0 = Instant::now();
        // Never updated (a new leader): counted from first sight.
        assert_eq!(clock.since_update(&i, t0), Duration::ZERO);
        assert_eq!(
            clock.since_update(&i, t0 + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        clock.updated(&i);
        assert!(clock.since_update(&i, Instant::now()) < Duration::from_secs(1));
        clock.retain(&std::collections::HashSet::new());
        assert_eq!(clock.since_update(&i, t0 + Duration::from_secs(9)), Duration::ZERO);
    }

    #[test]
    fn bad_checks_name_their_field() {
        let mut c = check("script", "x:1".into());
        let e = registry::check_health_check(&mut c).unwrap_err().to_string();
        assert!(e.contains("instance.check.kind") && e.contains("lease"), "{e}");
        let mut c = check("ttl", "x:1".into());
        let e = registry::check_health_check(&mut c).unwrap_err().to_string();
        assert!(e.contains("instance.check.target"), "{e}");
        let mut c = check("ttl", String::new());
        let e = registry::check_health_check(&mut c).unwrap_err().to_string();
        assert!(e.contains("instance.check.ttl_ms") && e.contains("required"), "{e}");
        c.ttl_ms = 10;
        let e = registry::check_health_check(&mut c).unwrap_err().to_string();
        assert!(e.contains("instance.check.ttl_ms") && e.contains("outside"), "{e}");
        c.ttl_ms = 5_000;
        registry::check_health_check(&mut c).expect("a ttl check");
        assert_eq!((c.interval_ms, c.timeout_ms), (0, 0), "nothing is probed");
        let mut c = check("tcp", "a:1".into());
        c.ttl_ms = 5_000;
        let e = registry::check_health_check(&mut c).unwrap_err().to_string();
        assert!(e.contains("instance.check.ttl_ms"), "{e}");
        let update = |status: &str, output: &str| pb::CheckUpdateRequest {
            service: "web".into(),
            id: "w1".into(),
            status: status.into(),
            output: output.into(),
        };
        registry::check_update(&update("passing", "")).expect("passing");
        let e = registry::check_update(&update("warning", "")).unwrap_err().to_string();
        assert!(e.contains("status"), "{e}");
        let e = registry::check_update(&update("critical", &"x".repeat(300)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("output"), "{e}");
        let mut c = check("http", "https://a:1/".into());
        assert!(
            registry::check_health_check(&mut c)
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        let mut c = check("tcp", "nohost".into());
        assert!(
            registry::check_health_check(&mut c)
                .unwrap_err()
                .to_string()
                .contains("instance.check.target")
        );
        let mut c = check("tcp", "a:1".into());
        c.interval_ms = 0;
        c.timeout_ms = 0;
        registry::check_health_check(&mut c).expect("defaults");
        assert_eq!((c.interval_ms, c.timeout_ms), (10_000, 2_000));
        c.timeout_ms = 20_000;
        assert!(
            registry::check_health_check(&mut c)
                .unwrap_err()
                .to_string()
                .contains("instance.check.timeout_ms")
        );
    }
}
