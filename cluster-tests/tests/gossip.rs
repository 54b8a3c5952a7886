//! Gossip liveness and the cluster health view on real `esf` processes:
//! a killed node is marked dead by every live node, the cluster reports
//! degraded with the reason while quorum holds (and stays ready), a
//! restart shows as a new generation; gossip from outside the cluster
//! (no peer secret) is dropped.

use std::time::{Duration, Instant};

use esf_client::pb;
use esf_cluster_tests::{Cluster, cli, esf_bin};

/// Longest wait for gossip to see a change (a dead node is marked dead
/// after about 8 mean heartbeat gaps of 500 ms; docs/operations.md).
const GOSSIP_DEADLINE: Duration = Duration::from_secs(30);
/// Between two looks at a node's health view.
const POLL: Duration = Duration::from_millis(100);

async fn health(c: &Cluster, via: u64) -> Option<pb::ClusterHealthResponse> {
    c.node(via).client().cluster_health().await.ok()
}

fn node_in(h: &pb::ClusterHealthResponse, id: u64) -> pb::NodeHealth {
    h.nodes
        .iter()
        .find(|n| n.node_id == id)
        .cloned()
        .unwrap_or_else(|| panic!("node {id} missing from {h:?}"))
}

/// Polls node `via`'s health view until `ok` holds; the view that did, and
/// how long it took.
async fn wait_view(
    c: &Cluster,
    via: u64,
    what: &str,
    ok: impl Fn(&pb::ClusterHealthResponse) -> bool,
) -> (pb::ClusterHealthResponse, Duration) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < GOSSIP_DEADLINE {
        if let Some(h) = health(c, via).await {
            if ok(&h) {
                return (h, started.elapsed());
            }
            last = Some(h);
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("node {via}: {what} not seen within {GOSSIP_DEADLINE:?}; last view: {last:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_dead_to_every_live_node_and_returns_as_a_new_generation() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    for id in 1..=3 {
        let (h, _) = wait_view(&c, id, "a healthy cluster", |h| h.status == "healthy").await;
        assert_eq!(h.failure_tolerance, 1, "{h:?}");
        for n in &h.nodes {
            assert_eq!(n.liveness, "alive", "{h:?}");
            assert_eq!(n.status, "passing", "{h:?}");
            let names: Vec<&str> = n.checks.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["storage", "disk", "memory", "raft", "clock"], "{h:?}");
            assert!(
                n.generation > 0 && !n.gossip_addr.is_empty() && !n.admin_addr.is_empty(),
                "{n:?}"
            );
        }
    }
    // Gossip state per node stays under its bound with 8 partitions.
    let (_, metrics) = c.node(1).admin_get("/metrics");
    let bytes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("esf_gossip_state_bytes "))
        .expect("esf_gossip_state_bytes in /metrics")
        .trim()
        .parse()
        .expect("a number");
    assert!(bytes > 0.0 && bytes <= 4096.0, "gossip state of {bytes} bytes");

    let victim = 3;
    let generation = node_in(&health(&c, 1).await.expect("health"), victim).generation;
    c.node_mut(victim).kill();
    let killed = Instant::now();
    let mut took = Vec::new();
    for id in [1, 2] {
        let (h, _) = wait_view(&c, id, "node 3 dead", |h| node_in(h, victim).liveness == "dead").await;
        took.push((id, killed.elapsed()));
        assert_eq!(h.status, "degraded", "{h:?}");
        assert!(
            h.reasons.iter().any(|r| r.starts_with("node 3 ") && r.contains("dead")),
            "{h:?}"
        );
        assert_eq!(h.failure_tolerance, 0, "{h:?}");
        // Quorum holds: the live nodes stay ready.
        let (code, body) = c.node(id).admin_get("/readyz");
        assert_eq!(code, 200, "node {id} /readyz: {body}");
        let (code, body) = c.node(id).admin_get("/health");
        assert_eq!(code, 200, "node {id} /health: {body}");
        assert!(body.contains("\"status\":\"degraded\""), "{body}");
    }
    eprintln!("node 3 seen dead (node, time since the kill): {took:?}");
    // The CLI says so, and exits 1.
    let (code, out, err) = cli(
        &c.bin,
        &["--endpoints", &c.node(1).grpc, "endpoint", "health", "--cluster"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("cluster is degraded") && out.contains("is dead by gossip"),
        "{out}"
    );
    let (code, out, err) = cli(
        &c.bin,
        &["--endpoints", &c.node(2).grpc, "-o", "json", "member", "list"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let dead: Vec<u64> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["liveness"] == "dead")
        .map(|m| m["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(dead, [victim], "{out}");

    // Back, as a new generation, on every node.
    let bin = c.bin.clone();
    c.node_mut(victim).start(&bin);
    for id in 1..=3 {
        let (h, _) = wait_view(&c, id, "node 3 alive again", |h| {
            let n = node_in(h, victim);
            n.liveness == "alive" && n.generation > generation && h.status == "healthy"
        })
        .await;
        assert_eq!(h.failure_tolerance, 1, "{h:?}");
    }
    let (code, out, err) = cli(
        &c.bin,
        &["--endpoints", &c.node(3).grpc, "endpoint", "health", "--cluster"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cluster is healthy"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_without_the_peer_secret_is_dropped() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    wait_view(&c, 1, "a healthy cluster", |h| h.status == "healthy").await;
    let real = node_in(&health(&c, 1).await.expect("health"), 2);
    let cluster_id = c
        .node(1)
        .client()
        .status_all()
        .await
        .into_iter()
        .find_map(|(_, r)| r.ok())
        .expect("status")
        .cluster_id;
    let target: std::net::SocketAddr = real.gossip_addr.parse().expect("gossip address");
    let node1_gossip: std::net::SocketAddr = node_in(&health(&c, 1).await.expect("health"), 1)
        .gossip_addr
        .parse()
        .expect("gossip address");

    // An outsider that knows the cluster id and speaks chitchat, claiming
    // to be node 2 in a newer generation with a failing disk.
    let outsider_addr: std::net::SocketAddr = format!("127.0.0.1:{}", esf_cluster_tests::free_port())
        .parse()
        .expect("addr");
    let config = chitchat::ChitchatConfig {
        chitchat_id: chitchat::ChitchatId::new("2", u64::MAX / 2, outsider_addr),
        cluster_id,
        gossip_interval: Duration::from_millis(100),
        listen_addr: outsider_addr,
        seed_nodes: vec![node1_gossip.to_string(), target.to_string()],
        failure_detector_config: chitchat::FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let forged = vec![
        ("status".to_string(), "critical".to_string()),
        ("checks".to_string(), "disk=critical:forged".to_string()),
    ];
    let outsider = chitchat::spawn_chitchat(config, forged, &chitchat::transport::UdpTransport)
        .await
        .expect("outsider gossip");

    // The nodes drop its datagrams (counted) and never take its state.
    let started = Instant::now();
    let rejected = |id: u64| -> f64 {
        let (_, m) = c.node(id).admin_get("/metrics");
        m.lines()
            .find_map(|l| l.strip_prefix("esf_gossip_rejected_total "))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    };
    while rejected(1) < 5.0 {
        assert!(
            started.elapsed() < GOSSIP_DEADLINE,
            "node 1 counted no rejected gossip from the outsider"
        );
        tokio::time::sleep(POLL).await;
    }
    let h = health(&c, 1).await.expect("health");
    let n2 = node_in(&h, 2);
    assert_eq!(n2.generation, real.generation, "{h:?}");
    assert!(n2.checks.iter().all(|c| c.reason != "forged"), "{h:?}");
    assert_eq!(h.status, "healthy", "{h:?}");
    // Nor does the outsider learn anything from the nodes.
    let known = outsider
        .with_chitchat(|cc| {
            cc.node_states()
                .keys()
                .map(|id| id.node_id.to_string())
                .collect::<Vec<_>>()
        })
        .await;
    assert_eq!(known, ["2"], "the outsider learned {known:?}");
    outsider.shutdown().await.expect("outsider stops");
}
