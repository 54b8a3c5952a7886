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

/// The failpoints build of `esf` (scripts/test.sh builds it as
/// `esf-failpoints`).
fn failpoints_bin() -> std::path::PathBuf {
    let bin = esf_bin().with_file_name("esf-failpoints");
    assert!(
        bin.exists(),
        "{} not found: scripts/test.sh builds it (cargo build -p esf-node --features failpoints, copied as esf-failpoints)",
        bin.display()
    );
    bin
}

/// Groups node `id` leads, by its own status.
async fn led_by(c: &Cluster, id: u64) -> Vec<u32> {
    let Some((_, Ok(s))) = c.node(id).client().status_all().await.into_iter().next() else {
        return vec![u32::MAX];
    };
    s.groups
        .iter()
        .filter(|g| g.role == "leader")
        .map(|g| g.group)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_fsyncs_are_slow_hands_over_every_leadership() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    // Node 1 comes back on a disk whose every fsync takes 400 ms longer;
    // its storage check calls over 200 ms critical.
    let sick = 1;
    c.node_mut(sick).terminate();
    {
        let n = c.node_mut(sick);
        n.env.push(("ESF_FAILPOINTS".into(), "slow-fsync".into()));
        n.add_args(&["--fsync-warn-ms", "50", "--fsync-critical-ms", "200"]);
        n.start(&failpoints_bin());
    }
    c.wait_ready().await;
    let (h, _) = wait_view(&c, 2, "node 1 alive with its storage check critical", |h| {
        let n = node_in(h, sick);
        n.liveness == "alive" && n.checks.iter().any(|k| k.name == "storage" && k.status == "critical")
    })
    .await;
    assert!(
        h.reasons.iter().any(|r| r.starts_with("node 1: storage critical")),
        "{h:?}"
    );

    // It steps back (once another voter is seen alive with a healthy disk).
    let started = Instant::now();
    while counter(&c, sick, "esf_failover_actions_total{action=\"evacuate\"}") < 1.0 {
        assert!(started.elapsed() < GOSSIP_DEADLINE, "node 1 never stepped back");
        tokio::time::sleep(POLL).await;
    }
    loop {
        if led_by(&c, sick).await.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < GOSSIP_DEADLINE,
            "node 1 still leads {:?}",
            led_by(&c, sick).await
        );
        tokio::time::sleep(POLL).await;
    }
    // It stays that way: writes go on through the others, and a transfer
    // to it is refused.
    let client = c.client();
    for i in 0..20 {
        client
            .put(format!("k{i}"), "v")
            .await
            .expect("put while node 1 is sick");
    }
    // (The meta leader asks it; it refuses; some healthy voter leads.)
    if let Ok(r) = c.node(2).client().transfer_leader(sick).await {
        assert_ne!(r.leader_id, sick, "leadership moved to the sick node: {r:?}");
    }
    assert_eq!(led_by(&c, sick).await, Vec::<u32>::new());
    let (_, m) = c.node(sick).admin_get("/metrics");
    assert!(
        m.contains("esf_failover_actions_total{action=\"evacuate\"} 1"),
        "{}",
        m.lines()
            .filter(|l| l.contains("failover"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The meta leader, which sees node 1's checks in gossip, records the
    // step back: in the audit trail as esf.autopilot.changed "evacuate".
    let started = Instant::now();
    loop {
        c.wait_audit_caught_up().await;
        let out = audit_tail(&c, 2);
        let evacuations: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("esf.autopilot.changed") && l.contains("evacuate"))
            .collect();
        if !evacuations.is_empty() {
            assert!(evacuations[0].contains("storage check critical"), "{evacuations:?}");
            break;
        }
        assert!(
            started.elapsed() < GOSSIP_DEADLINE,
            "no evacuate event in the audit trail: {}",
            out.lines()
                .filter(|l| l.contains("autopilot"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Autopilot settings short enough for a test (defaults: 30 s dead, 10 s
/// stabilization, looks every second).
const FAST_AUTOPILOT: [&str; 6] = [
    "--autopilot-dead-after-secs",
    "5",
    "--autopilot-stabilization-secs",
    "2",
    "--autopilot-interval-ms",
    "200",
];

async fn members(c: &Cluster, via: u64) -> Option<pb::MembersResponse> {
    c.node(via).client().members().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_replaced_by_a_spare_that_joined_by_itself() {
    let mut c = Cluster::start_with(&esf_bin(), 3, &FAST_AUTOPILOT);
    c.wait_ready().await;
    let mut extra: Vec<&str> = FAST_AUTOPILOT.to_vec();
    extra.push("--auto-join");
    let spare = c.spawn_joining_node_with(&extra);
    // It joins as a learner by itself and stays one: 3 voters is the
    // cluster's voter count (its bootstrap_expect).
    let deadline = Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        if let Some(m) = members(&c, 1).await {
            if m.members.iter().any(|x| x.id == spare && !x.voter) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "node {spare} never became a learner");
        tokio::time::sleep(POLL).await;
    }
    c.wait_converged().await;

    // Writes go on throughout.
    let client = c.client();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            // A steady 50 puts/s, so the audit trail stays short.
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                pace.tick().await;
                match client.put(format!("during-{i}"), "v").await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                i += 1;
            }
            (ok, failed)
        })
    };
    let leader = c.wait_ready().await;
    let victim = c.other_than(leader);
    c.node_mut(victim).kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(90);
    let survivor = c.other_than(victim);
    loop {
        if let Some(m) = members(&c, survivor).await {
            let voters: Vec<u64> = m.members.iter().filter(|x| x.voter).map(|x| x.id).collect();
            if voters.contains(&spare) && !m.members.iter().any(|x| x.id == victim) {
                assert_eq!(voters.len(), 3, "{m:?}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {victim} not replaced by {spare} within 90 s: {:?}",
            members(&c, survivor).await
        );
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "node {victim} replaced by node {spare} {:?} after the kill",
        killed.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = writer.await.expect("writer");
    assert!(ok > 0 && failed.is_empty(), "{ok} puts, failures: {failed:?}");
    client.put("after", "v").await.expect("put after the replacement");
    // Each action is recorded: in the audit trail as esf.autopilot.changed.
    c.wait_audit_caught_up().await;
    let out = audit_tail(&c, survivor);
    let actions: Vec<&str> = out.lines().filter(|l| l.contains("esf.autopilot.changed")).collect();
    assert!(
        actions.iter().any(|l| l.contains("promote")) && actions.iter().any(|l| l.contains("remove")),
        "autopilot actions in the audit trail: {actions:?}"
    );
}

/// Counter `name` in node `id`'s /metrics (0 if absent).
fn counter(c: &Cluster, id: u64, name: &str) -> f64 {
    let (_, m) = c.node(id).admin_get("/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Waits until node `id` (the meta leader) has looked `n` more times.
async fn wait_autopilot_looks(c: &Cluster, id: u64, n: f64) {
    let from = counter(c, id, "esf_autopilot_looks_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(c, id, "esf_autopilot_looks_total") < from + n {
        assert!(Instant::now() < deadline, "node {id}'s autopilot stopped looking");
        tokio::time::sleep(POLL).await;
    }
}

fn voters_of(m: &pb::MembersResponse) -> Vec<u64> {
    m.members.iter().filter(|x| x.voter).map(|x| x.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_voter_that_heals_in_time_stays_and_one_that_does_not_is_removed_once() {
    let Some(net) = esf_cluster_tests::netns::Net::create_or_skip(4) else {
        return;
    };
    let mut args = FAST_AUTOPILOT.to_vec();
    args.extend(["--autopilot-voters", "3"]);
    let c = Cluster::create(&esf_bin(), 4, Some(net), &args, &|_| {});
    let leader = c.wait_ready().await;
    wait_view(&c, leader, "a healthy cluster", |h| h.status == "healthy").await;
    let victim = (1..=4).rev().find(|n| *n != leader).expect("a follower");
    let others: Vec<u64> = (1..=4).filter(|n| *n != victim).collect();
    let net = c.net.as_ref().expect("netns cluster");
    let isolate = || {
        for o in &others {
            net.cut_both(victim, *o).expect("cut");
        }
    };

    // A short partition: gossip calls it dead, it heals before
    // autopilot_dead_after (5 s): nothing changes.
    isolate();
    let cut = Instant::now();
    wait_view(&c, leader, "the victim dead", |h| node_in(h, victim).liveness == "dead").await;
    let detected = cut.elapsed();
    net.heal().expect("heal");
    wait_view(&c, leader, "the victim alive again", |h| {
        node_in(h, victim).liveness == "alive"
    })
    .await;
    eprintln!("partitioned node seen dead by the leader after {detected:?}");
    let m = members(&c, leader).await.expect("members");
    assert_eq!(voters_of(&m).len(), 4, "{m:?}");
    assert_eq!(
        counter(&c, leader, "esf_autopilot_actions_total{action=\"remove\"}"),
        0.0
    );

    // A long one: dead past 5 s with 4 voters for 3 wanted: removed, once.
    isolate();
    let deadline = Instant::now() + Duration::from_secs(90);
    let leader = loop {
        let l = c.wait_ready_without(&[victim]).await;
        if let Some(m) = members(&c, l).await {
            if !m.members.iter().any(|x| x.id == victim) {
                assert_eq!(voters_of(&m).len(), 3, "{m:?}");
                break l;
            }
        }
        assert!(Instant::now() < deadline, "node {victim} never removed");
        tokio::time::sleep(POLL).await;
    };
    net.heal().expect("heal");
    c.node(victim).wait_log("this node was removed from the cluster").await;
    // Many looks later: still the one removal, 3 voters, the cluster whole.
    wait_autopilot_looks(&c, leader, 25.0).await;
    let m = members(&c, leader).await.expect("members");
    assert_eq!(voters_of(&m).len(), 3, "{m:?}");
    assert!(!m.members.iter().any(|x| x.id == victim), "{m:?}");
    let removals: f64 = others
        .iter()
        .map(|o| counter(&c, *o, "esf_autopilot_actions_total{action=\"remove\"}"))
        .sum();
    assert_eq!(removals, 1.0, "one removal in all");
    c.client().put("after", "v").await.expect("put after the removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_slow_link_is_not_a_dead_node() {
    let Some(net) = esf_cluster_tests::netns::Net::create_or_skip(3) else {
        return;
    };
    let c = Cluster::create(&esf_bin(), 3, Some(net), &FAST_AUTOPILOT, &|_| {});
    let leader = c.wait_ready().await;
    wait_view(&c, leader, "a healthy cluster", |h| h.status == "healthy").await;
    let victim = c.other_than(leader);
    let net = c.net.as_ref().expect("netns cluster");
    // 10% of its packets lost, at most 1 Mbit/s queued up to 200 ms.
    net.degrade(victim, 1000, 200, 10).expect("degrade");
    let before: f64 = (1..=3).map(|n| counter(&c, n, "esf_gossip_marked_dead_total")).sum();
    // About 15 s of gossip (75 looks of 200 ms by autopilot on the leader).
    let started = Instant::now();
    wait_autopilot_looks(&c, leader, 75.0).await;
    let observed = started.elapsed();
    let false_positives: f64 = (1..=3)
        .map(|n| counter(&c, n, "esf_gossip_marked_dead_total"))
        .sum::<f64>()
        - before;
    let (dropped, held) = net.degraded(victim);
    eprintln!(
        "degraded link for {observed:?}: {dropped} packets dropped, {held} held back; \
         nodes marked dead by gossip (false positives, all nodes): {false_positives}"
    );
    assert!(dropped > 0, "the degradation dropped nothing");
    // Whatever gossip thought for a moment, the leader kept hearing from
    // it: autopilot changed nothing.
    let m = members(&c, leader).await.expect("members");
    assert_eq!(voters_of(&m).len(), 3, "{m:?}");
    assert_eq!(
        counter(&c, leader, "esf_autopilot_actions_total{action=\"remove\"}"),
        0.0
    );
    net.heal().expect("heal");
    assert!(
        !c.node(victim).log().contains("stopping gossip loop"),
        "gossip stopped on the degraded node: {}",
        c.node(victim)
            .log()
            .lines()
            .filter(|l| l.contains("gossip"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    wait_view(&c, leader, "healthy again", |h| h.status == "healthy").await;
}

/// An HTTP server answering 200 while `up` is true, else 503.
async fn http_health_server(up: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let up = up.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let status = if up.load(std::sync::atomic::Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    addr
}

async fn wait_instance(c: &Cluster, id: &str, what: &str, ok: impl Fn(&pb::Instance) -> bool) -> pb::Instance {
    let deadline = Instant::now() + GOSSIP_DEADLINE;
    loop {
        if let Ok(r) = c.client().lookup("web", &[]).await {
            if let Some(i) = r.instances.iter().find(|i| i.id == id) {
                if ok(i) {
                    return i.clone();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "instance {id}: {what} not seen within {GOSSIP_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_checks_follow_the_instance_and_lookup_leaves_out_critical_ones() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let http = http_health_server(up.clone()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let check = |kind: &str, target: String| pb::HealthCheck {
        kind: kind.into(),
        target,
        interval_ms: 1000,
        timeout_ms: 500,
        ..Default::default()
    };
    let client = c.client();
    let reg = |id: &str, check: Option<pb::HealthCheck>| pb::Instance {
        service: "web".into(),
        id: id.into(),
        address: "10.0.0.1:80".into(),
        check,
        // A client cannot set what the cluster decides.
        health: "passing".into(),
        ..Default::default()
    };
    client
        .register(reg("w1", Some(check("http", format!("http://{http}/health")))))
        .await
        .expect("register w1");
    client
        .register(reg("w2", Some(check("tcp", closed.to_string()))))
        .await
        .expect("register w2");
    client.register(reg("w3", None)).await.expect("register w3");
    // Bad checks are refused, naming the field.
    let bad = client
        .register(reg("w4", Some(check("script", "a:1".into()))))
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("instance.check.kind"), "{bad}");
    let bad = client
        .register(reg("w4", Some(check("ttl", String::new()))))
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("instance.check.ttl_ms"), "{bad}");

    wait_instance(&c, "w1", "passing", |i| i.health == "passing").await;
    let w2 = wait_instance(&c, "w2", "probed", |i| i.health_output != "not checked yet").await;
    assert_eq!(w2.health, "critical");
    assert!(w2.health_output.contains("tcp connect"), "{w2:?}");
    let w3 = wait_instance(&c, "w3", "listed", |_| true).await;
    assert_eq!(w3.health, "", "no check, no health");
    let ids = |r: pb::LookupResponse| r.instances.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(
        ids(client.lookup_passing("web", &[]).await.expect("lookup")),
        ["w1", "w3"]
    );

    // The HTTP endpoint fails: critical, out of passing lookups.
    up.store(false, std::sync::atomic::Ordering::SeqCst);
    let w1 = wait_instance(&c, "w1", "critical", |i| i.health == "critical").await;
    assert!(w1.health_output.contains("HTTP 503"), "{w1:?}");
    assert_eq!(ids(client.lookup_passing("web", &[]).await.expect("lookup")), ["w3"]);

    // The checks move with the meta leader.
    let leader = c.wait_ready().await;
    c.node_mut(leader).kill();
    c.wait_ready_without(&[leader]).await;
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_instance(&c, "w1", "passing again under a new leader", |i| i.health == "passing").await;
    let (code, out, err) = cli(
        &c.bin,
        &[
            "--endpoints",
            &c.node(c.other_than(leader)).grpc,
            "-o",
            "json",
            "registry",
            "get",
            "web",
            "--passing",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let listed: Vec<&str> = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, ["w1", "w3"], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_check_passes_while_the_instance_reports_and_expires_when_it_stops() {
    let c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let follower = c.node(c.other_than(leader)).grpc.clone();
    let esf = |args: &[&str]| {
        let mut all = vec!["--endpoints", follower.as_str(), "-o", "json", "registry"];
        all.extend_from_slice(args);
        cli(&c.bin, &all)
    };
    let (code, _, err) = esf(&["register", "web", "t1", "10.0.0.1:80", "--check-ttl-ms", "2000"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = esf(&["register", "web", "plain", "10.0.0.2:80"]);
    assert_eq!(code, 0, "{err}");
    let t1 = wait_instance(&c, "t1", "registered", |_| true).await;
    assert_eq!(
        (t1.health.as_str(), t1.health_output.as_str()),
        ("critical", "not checked yet")
    );

    // A pass through a follower (forwarded to the meta leader) makes it
    // passing at once.
    let (code, out, err) = esf(&["pass", "web", "t1"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["health"], "passing", "{out}");
    let ids = |r: pb::LookupResponse| r.instances.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let client = c.client();
    assert_eq!(
        ids(client.lookup_passing("web", &[]).await.expect("lookup")),
        ["plain", "t1"]
    );
    // Passes within the ttl keep it passing and write nothing.
    let before = t1_revision(&client).await;
    for _ in 0..3 {
        client.check_update("web", "t1", "passing", "").await.expect("pass");
    }
    assert_eq!(
        t1_revision(&client).await,
        before,
        "a pass that changes nothing is not written"
    );

    // The updates stop: critical once the ttl has run out.
    let t1 = wait_instance(&c, "t1", "expired", |i| i.health == "critical").await;
    assert!(t1.health_output.contains("ttl of 2s expired"), "{t1:?}");
    assert_eq!(ids(client.lookup_passing("web", &[]).await.expect("lookup")), ["plain"]);

    // The instance may report itself critical, with why.
    client.check_update("web", "t1", "passing", "").await.expect("pass");
    let (code, _, err) = esf(&["fail", "web", "t1", "--reason", "database unreachable"]);
    assert_eq!(code, 0, "{err}");
    let t1 = wait_instance(&c, "t1", "failed", |i| i.health_output == "database unreachable").await;
    assert_eq!(t1.health, "critical");

    // Bad updates are refused, naming why.
    let e = client
        .check_update("web", "plain", "passing", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no ttl check"), "{e}");
    let e = client
        .check_update("web", "nobody", "passing", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not registered"), "{e}");
    let (code, _, err) = esf(&["fail", "web", "t1", "--reason", &"x".repeat(300)]);
    assert_ne!(code, 0);
    assert!(err.contains("output"), "{err}");
}

async fn t1_revision(c: &esf_client::Client) -> Option<u64> {
    c.lookup("web", &[])
        .await
        .expect("lookup")
        .instances
        .iter()
        .find(|i| i.id == "t1")
        .map(|i| i.revision)
}

/// The whole audit trail as JSON lines, read through node `via`.
fn audit_tail(c: &Cluster, via: u64) -> String {
    let (code, out, err) = cli(
        &c.bin,
        &[
            "--endpoints",
            &c.node(via).grpc,
            "-o",
            "json",
            "audit",
            "tail",
            "--limit",
            "100000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    out
}
