//! Faults an operator hits, on real `esf` processes: each must leave the
//! node honest about its state and lose nothing acknowledged.

use std::io::Read;

use esf_cluster_tests::{Cluster, cli, esf_bin};

/// `esf serve 2>&1 | head` : the reader of the log pipe exits, and the node
/// must keep running (it used to abort with SIGABRT on its next log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_keeps_running_after_its_log_pipe_closes() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let bin = c.bin.clone();
    let id = c.nodes[1].id;
    c.node_mut(id).terminate();
    let mut pipe = c.node_mut(id).start_with_log_pipe(&bin);
    // The node logs on start: the log goes to the pipe. Then the reader
    // goes away.
    let first = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 512];
        let n = pipe.read(&mut buf).expect("read the log pipe");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("reader");
    assert!(!first.is_empty(), "the node logged nothing to its pipe");
    c.wait_ready().await;

    // Leading meta makes it log more (elections, the audit relay's start),
    // all of it into the closed pipe.
    make_meta_leader(&c, id).await;

    let client = c.node(id).client();
    let put = client.put("after-pipe", "kept").await.expect("put through the node");
    assert!(put.header.is_some_and(|h| h.revision > 0));
    let (_, got) = client.get("after-pipe").await.expect("get through the node");
    assert_eq!(got.expect("the key").value, b"kept");
    let child = c.node_mut(id).child.as_mut().expect("node process");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "node {id} exited after its log pipe closed"
    );
}

/// Files of `dir`'s snapshot directory for group `group` ending in `suffix`.
fn snapshot_files(dir: &std::path::Path, group: u32, suffix: &str) -> Vec<std::path::PathBuf> {
    let snaps = dir.join("db").join("snapshots");
    let prefix = format!("g{group}-");
    let Ok(entries) = std::fs::read_dir(&snaps) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(suffix))
        })
        .collect()
}

/// Moves meta leadership to `id`. A transfer to a node that has just
/// restarted may end with another leader (the target did not answer in
/// time): ask again until it leads.
async fn make_meta_leader(c: &Cluster, id: u64) {
    let eps = c.node(id).grpc.clone();
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let (code, out, err) = cli(
            &c.bin,
            &["--endpoints", &eps, "leader", "transfer", "--to", &id.to_string()],
        );
        assert_eq!(code, 0, "leader transfer: {out} {err}");
        if c.wait_ready().await == id {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} never took over meta: {out}\n{}",
            all_logs(c)
        );
    }
}

fn all_logs(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| format!("--- node {} ---\n{}", n.id, n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn put_many(c: &Cluster, prefix: &str, n: usize) {
    let client = c.client();
    for i in 0..n {
        client.put(format!("{prefix}{i:04}"), "v").await.expect("put");
    }
}

/// Bytes flipped in a stopped node's meta snapshot file: the node names the
/// damage at start, sets the file aside and builds a new snapshot from its
/// state; a node that joins later gets a good snapshot from it and has
/// every acknowledged key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_found_at_start_and_replaced() {
    let snap_args = ["--snapshot-logs", "50", "--snapshot-keep-logs", "10"];
    let mut c = Cluster::start_with(&esf_bin(), 3, &snap_args);
    let leader = c.wait_ready().await;
    let victim = c.other_than(leader);
    put_many(&c, "snap-a-", 200).await;
    let dir = c.node(victim).dir.clone();
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while snapshot_files(&dir, 0, ".snap").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {victim} built no meta snapshot"
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    c.node_mut(victim).terminate();
    let files = snapshot_files(&dir, 0, ".snap");
    assert_eq!(files.len(), 1, "one current meta snapshot: {files:?}");
    let mut data = std::fs::read(&files[0]).expect("read the snapshot file");
    let at = data.len() / 2;
    for b in &mut data[at..at + 8] {
        *b ^= 0xa5;
    }
    std::fs::write(&files[0], &data).expect("damage the snapshot file");

    let bin = c.bin.clone();
    c.node_mut(victim).start(&bin);
    c.wait_ready().await;
    let log = c.node(victim).log();
    assert!(
        log.contains("snapshot file is damaged"),
        "the damage is not named:\n{log}"
    );
    assert_eq!(
        snapshot_files(&dir, 0, ".damaged").len(),
        1,
        "the damaged file is kept aside"
    );

    // The node leads meta and serves a new member from its own snapshot.
    make_meta_leader(&c, victim).await;
    let eps = c.node(victim).grpc.clone();
    put_many(&c, "snap-b-", 200).await;
    let mut args = snap_args.to_vec();
    args.push("--auto-join=false");
    let id = c.spawn_joining_node_with(&args);
    c.node(id).wait_log("waiting to be added").await;
    let addr = c.node(id).grpc.clone();
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "member", "add", &id.to_string(), &addr]);
    assert_eq!(code, 0, "member add: {out} {err}");
    c.wait_converged().await;
    let r = c
        .node(id)
        .client()
        .range(esf_client::pb::RangeRequest {
            range: Some(esf_client::key_range_prefix(b"snap-".to_vec())),
            serializable: true,
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range on the new node");
    // The leader kept 10 entries behind its snapshots, so the new node
    // started from a snapshot the victim sent.
    assert_eq!(
        r.count,
        400,
        "the new node holds every acknowledged key\n{}",
        all_logs(&c)
    );
}

/// A tmpfs of `mib` MiB mounted at `dir` for the life of the value
/// (unmounted and removed on drop).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs at {} (needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gRPC health status of `service` ("" for the server) at `node`.
async fn grpc_health(node: &esf_cluster_tests::Node, service: &str) -> i32 {
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", node.grpc))
        .expect("uri")
        .timeout(esf_cluster_tests::ADMIN_DEADLINE)
        .connect()
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// Waits until gRPC health of `service` at `node` is `want` (it follows
/// /readyz once a second).
async fn wait_health(
    node: &esf_cluster_tests::Node,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let got = grpc_health(node, service).await;
        if got == want as i32 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health of {service:?} stays {got}, not {want:?}"
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
}

fn event(i: usize, bytes: usize) -> esf_client::pb::EventData {
    esf_client::pb::EventData {
        r#type: "Filled".into(),
        data: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(bytes)).into_bytes(),
        ..Default::default()
    }
}

/// One node of three on a 64 MiB tmpfs, appends until its disk is low:
/// it says so in /readyz, leads nothing, takes no log entries, and the
/// other two keep acknowledging writes. Once space is freed it is ready
/// again without a restart and catches up; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_low_on_disk_steps_back_and_recovers_once_space_is_freed() {
    let mounts = std::sync::Mutex::new(Vec::new());
    let c = Cluster::create(&esf_bin(), 3, None, &["--disk-check-interval-ms", "50"], &|n| {
        if n.id == 3 {
            mounts.lock().unwrap().push(Tmpfs::mount(&n.dir, 64));
            n.add_args(&["--min-free-disk-mb", "16"]);
        }
    });
    let _mounts = mounts;
    c.wait_ready().await;
    let low = c.node(3);
    // Leave about 22 MiB free: above the floor (16) and its resume mark (20).
    let st = rustix::fs::statvfs(&low.dir).expect("statvfs");
    let free = st.f_bavail * st.f_frsize;
    let filler = low.dir.join("filler");
    std::fs::write(&filler, vec![0u8; (free - (22 << 20)) as usize]).expect("write the filler");

    let client = c.client();
    let streams = 16;
    let mut acked = vec![0u64; streams];
    let mut appended = 0;
    loop {
        for (s, n) in acked.iter_mut().enumerate() {
            client
                .append(&format!("fill-{s}"), vec![event(appended, 8 << 10)], None)
                .await
                .expect("append while node 3 fills up");
            *n += 1;
            appended += 1;
        }
        if low.admin_get("/readyz").1.contains("disk: ") {
            break;
        }
        assert!(appended < 8_000, "node 3 never reported its disk low");
    }
    let (code, body) = low.admin_get("/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("disk: ") && body.contains("min_free_disk_mb"), "{body}");
    let (_, metrics) = low.admin_get("/metrics");
    assert!(metrics.contains("esf_disk_low 1"), "{metrics}");

    // The other two keep acknowledging; node 3 leads nothing.
    for (s, n) in acked.iter_mut().enumerate() {
        client
            .append(&format!("fill-{s}"), vec![event(appended, 64)], None)
            .await
            .expect("append while node 3 is low");
        *n += 1;
        appended += 1;
    }
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let st = low.client().status_all().await;
        let led: Vec<u32> = match st.first() {
            Some((_, Ok(s))) => s.groups.iter().filter(|g| g.leader_id == 3).map(|g| g.group).collect(),
            _ => vec![u32::MAX],
        };
        if led.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 still leads groups {led:?}"
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }

    // Space comes back: ready again, same process, caught up.
    let pid = low.child.as_ref().expect("node 3 runs").id();
    std::fs::remove_file(&filler).expect("free the space");
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while low.admin_get("/readyz").0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 not ready after space was freed"
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    assert_eq!(c.node(3).child.as_ref().map(|ch| ch.id()), Some(pid), "not restarted");
    c.wait_converged().await;
    for (s, n) in acked.iter().enumerate() {
        let r = client
            .read_stream(esf_client::pb::ReadStreamRequest {
                stream: format!("fill-{s}"),
                from_version: 1,
                ..Default::default()
            })
            .await
            .expect("read back");
        assert_eq!(r.stream_version, *n, "stream fill-{s}: every acknowledged event kept");
    }
}

/// A single node below its disk floor refuses writes with
/// RESOURCE_EXHAUSTED naming the disk, and says why in /readyz; reads
/// still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_low_on_disk_refuses_writes_naming_the_disk() {
    let c = Cluster::start(&esf_bin(), 1);
    c.wait_ready().await;
    c.client().put("before", "1").await.expect("put while there is room");
    let mut c = c;
    let bin = c.bin.clone();
    let n = c.node_mut(1);
    n.terminate();
    // More than any disk has free.
    n.add_args(&["--min-free-disk-mb", "1000000000"]);
    n.start(&bin);
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    let body = loop {
        if let Ok(addr) = c.node(1).admin.parse::<std::net::SocketAddr>()
            && std::net::TcpStream::connect_timeout(&addr, esf_cluster_tests::ADMIN_DEADLINE).is_ok()
        {
            let (code, body) = c.node(1).admin_get("/readyz");
            if code == 503 && body.contains("disk: ") {
                break body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 never reported its disk low"
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    };
    assert!(body.contains("below the floor of 1048576000000000 bytes"), "{body}");
    let err = c.client().put("after", "2").await.expect_err("a write below the floor");
    assert!(matches!(err, esf_client::Error::ResourceExhausted(_)), "{err:?}");
    assert!(
        err.to_string().contains("disk: ") && err.to_string().contains("min_free_disk_mb"),
        "{err}"
    );
    let err = c
        .client()
        .append("low", vec![event(0, 8)], None)
        .await
        .expect_err("an append below the floor");
    assert!(matches!(err, esf_client::Error::ResourceExhausted(_)), "{err:?}");
    let (_, kv) = c.client().get("before").await.expect("reads still work");
    assert_eq!(kv.expect("before").value, b"1");
    // gRPC health follows /readyz.
    use tonic_health::pb::health_check_response::ServingStatus;
    wait_health(c.node(1), "", ServingStatus::NotServing).await;
    wait_health(c.node(1), "esf.v1.Config", ServingStatus::NotServing).await;
}

/// `member remove` of a running node: it learns it was removed, says so in
/// /readyz, refuses client calls saying why (and clients move on to the
/// other nodes), keeps running for the operator, and refuses to start on
/// its data dir again. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_learns_it_refuses_clients_and_will_not_start_again() {
    let mut c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let victim = c.other_than(leader);
    c.client().put("kept", "1").await.expect("put");
    let bin = c.bin.clone();
    let eps = c.node(leader).grpc.clone();
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "member", "remove", &victim.to_string()]);
    assert_eq!(code, 0, "member remove: {out} {err}");

    let node = c.node(victim);
    let body = wait_removed(&c, victim, leader).await;
    assert!(body.contains(&format!("node {victim} was removed")), "{body}");
    let (code, _, err) = cli(
        &bin,
        &["--endpoints", &node.grpc, "--timeout-secs", "2", "kv", "get", "kept"],
    );
    assert_ne!(code, 0, "a removed node must not serve");
    assert!(err.contains("was removed from cluster"), "{err}");
    // Clients that list it move on to the others.
    let (_, kv) = c.client().get("kept").await.expect("get through the cluster");
    assert_eq!(kv.expect("kept").value, b"1");
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "-o", "json", "member", "list"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["members"]
            .as_array()
            .expect("members")
            .iter()
            .all(|m| m["id"] != victim),
        "{out}"
    );

    // It waited for the operator; a restart on the same data dir is refused.
    let n = c.node_mut(victim);
    assert!(
        n.child.as_mut().expect("running").try_wait().expect("wait").is_none(),
        "it keeps running"
    );
    n.terminate();
    n.start(&bin);
    let status = n.wait_exit();
    assert!(!status.success(), "a removed node's data dir must not start");
    assert!(
        n.log().contains("this node was removed from cluster"),
        "the refusal is not explained:\n{}",
        n.log()
    );
}

/// A member paused (SIGSTOP) through its removal receives nothing of it,
/// and a join request it sent before (a late starter joins through
/// auto_join) may reach the leader only after the removal committed: the
/// leader must not add it back. Resumed, the node learns from the leader
/// that it was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_paused_through_its_removal_learns_it_from_the_leader() {
    let c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let victim = c.other_than(leader);
    c.client().put("kept", "1").await.expect("put");
    let eps = c.node(leader).grpc.clone();
    c.node(victim).pause(true);
    let (code, out, err) = cli(&c.bin, &["--endpoints", &eps, "member", "remove", &victim.to_string()]);
    assert_eq!(code, 0, "member remove: {out} {err}");
    c.client().put("after", "2").await.expect("put after the removal");
    c.node(victim).pause(false);

    let body = wait_removed(&c, victim, leader).await;
    assert!(body.contains(&format!("node {victim} was removed")), "{body}");
    assert!(body.contains("leads meta in term"), "learned from the leader: {body}");
    let (_, kv) = c.client().get("after").await.expect("get through the cluster");
    assert_eq!(kv.expect("after").value, b"2");
}

/// Waits (up to [`esf_cluster_tests::READY_DEADLINE`]) until node `victim`
/// answers `/readyz` with 503 saying it was removed; that body. Panics with
/// its log and the leader's if it never does.
async fn wait_removed(c: &Cluster, victim: u64, leader: u64) -> String {
    let node = c.node(victim);
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let (code, body) = node.admin_get("/readyz");
        if code == 503 && body.contains("was removed from cluster") {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {victim} never learned it was removed: {body}\n{}\n--- leader (node {leader}) ---\n{}",
            node.log(),
            c.node(leader).log()
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
}

/// The value of the first series of `/metrics` text `text` starting with
/// `series` (name and labels as rendered).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// /readyz and /metrics of a serving node: Raft figures for the meta group
/// and every partition, requests counted per method and code with latency
/// histograms, and the real size of the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_cover_every_group_and_every_request() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let node = c.node(1);
    let (code, body) = node.admin_get("/readyz");
    assert_eq!((code, body.as_str()), (200, "{\"ready\":true,\"reasons\":[]}"));
    use tonic_health::pb::health_check_response::ServingStatus;
    wait_health(node, "", ServingStatus::Serving).await;
    wait_health(node, "esf.v1.Events", ServingStatus::Serving).await;
    let client = node.client();
    for i in 0..50 {
        client.put(format!("m-{i}"), vec![b'v'; 512]).await.expect("put");
    }
    client
        .append("metered", vec![event(0, 64)], None)
        .await
        .expect("append");
    let err = client.get("").await.expect_err("an empty key is refused");
    assert!(matches!(err, esf_client::Error::InvalidArgument(_)), "{err:?}");

    let (code, text) = node.admin_get("/metrics");
    assert_eq!(code, 200);
    for group in 0..=8 {
        let role = metric(&text, &format!("esf_raft_role{{group=\"{group}\"}}"));
        assert!(role.is_some_and(|r| r <= 2.0), "group {group} role {role:?}:\n{text}");
        let term = metric(&text, &format!("esf_raft_term{{group=\"{group}\"}}"));
        assert!(term.is_some_and(|t| t >= 1.0), "group {group} term {term:?}");
    }
    let puts = metric(
        &text,
        "esf_grpc_requests_total{method=\"/esf.v1.Config/Put\",code=\"OK\"}",
    );
    assert_eq!(puts, Some(50.0), "{text}");
    let bad = metric(
        &text,
        "esf_grpc_requests_total{method=\"/esf.v1.Config/Range\",code=\"INVALID_ARGUMENT\"}",
    );
    assert_eq!(bad, Some(1.0), "{text}");
    let put_latency = metric(
        &text,
        "esf_grpc_request_duration_seconds_count{method=\"/esf.v1.Config/Put\"}",
    );
    assert_eq!(put_latency, Some(50.0), "{text}");
    assert!(
        text.contains("# TYPE esf_grpc_request_duration_seconds histogram"),
        "{text}"
    );
    let db = metric(&text, "esf_storage_db_bytes").expect("db size");
    assert!(db > 25_000.0, "50 puts of 512 bytes and more, not {db}");
    assert_eq!(metric(&text, "esf_node_ready"), Some(1.0));
    assert_eq!(metric(&text, "esf_disk_low"), Some(0.0));
}

/// `--log-format json`: every log line is one JSON object with the node
/// id; lines of a Raft group carry it in their span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_node_and_the_group() {
    let c = Cluster::start_with(&esf_bin(), 3, &["--log-format", "json"]);
    c.wait_ready().await;
    c.client().put("k", "v").await.expect("put");
    let log = c.node(2).log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 10, "{log}");
    assert!(
        lines
            .iter()
            .all(|v| v["node"] == 2 && v["level"].is_string() && v["message"].is_string())
    );
    let groups: std::collections::BTreeSet<u64> = lines
        .iter()
        .filter(|v| v["span"]["name"] == "raft")
        .filter_map(|v| v["span"]["group"].as_u64())
        .collect();
    assert!(
        groups.contains(&0) && groups.len() > 1,
        "groups seen in spans: {groups:?}"
    );
}
