//! Real `esf` processes on loopback.

use std::collections::BTreeMap;

use esf_client::pb;
use esf_cluster_tests::{Cluster, cli, esf_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_every_node_serves_every_write() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    // Write through each node (followers forward to the leader).
    for n in &c.nodes {
        n.client()
            .put(format!("k{}", n.id), format!("v{}", n.id))
            .await
            .expect("put through node");
    }
    let mut cluster_ids = std::collections::BTreeSet::new();
    for n in &c.nodes {
        for w in &c.nodes {
            let (h, kv) = n.client().get(format!("k{}", w.id)).await.expect("linearizable get");
            assert_eq!(
                kv.map(|kv| kv.value),
                Some(format!("v{}", w.id).into_bytes()),
                "node {} reading k{}",
                n.id,
                w.id
            );
            assert_eq!(h.revision, 3, "header revision");
            cluster_ids.insert(h.cluster_id);
        }
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster id in every header: {cluster_ids:?}");
    assert!(!cluster_ids.iter().next().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_during_writes_loses_no_acknowledged_write() {
    let mut c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let client = c.client();
    let mut acked = BTreeMap::new();
    for i in 0..40 {
        let k = format!("w{i:04}");
        client.put(k.clone(), k.clone()).await.expect("put before the crash");
        acked.insert(k.clone(), k);
    }
    c.node_mut(leader).kill();
    // Writes keep being acknowledged by the new leader.
    for i in 40..80 {
        let k = format!("w{i:04}");
        if client.put(k.clone(), k.clone()).await.is_ok() {
            acked.insert(k.clone(), k);
        }
    }
    assert!(
        acked.len() >= 70,
        "the cluster stopped acknowledging writes after the leader died: {}",
        acked.len()
    );
    let bin = c.bin.clone();
    c.node_mut(leader).start(&bin);
    c.wait_converged().await;
    for n in &c.nodes {
        let r = n
            .client()
            .range(pb::RangeRequest {
                range: Some(esf_client::key_range_prefix(b"w".to_vec())),
                serializable: true,
                ..Default::default()
            })
            .await
            .expect("serializable range");
        let have: BTreeMap<String, String> = r
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap()))
            .collect();
        for (k, v) in &acked {
            assert_eq!(have.get(k), Some(v), "node {} lost acknowledged write {k}", n.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_works_when_the_first_endpoint_is_dead_and_rejects_bad_input() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let bin = esf_bin();
    let dead = format!("127.0.0.1:{}", esf_cluster_tests::free_port());
    let eps = format!("{dead},{},{}", c.nodes[0].grpc, c.nodes[1].grpc);
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "kv", "put", "greeting", "hello"]);
    assert_eq!(code, 0, "put with a dead first endpoint: {err}");
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "kv", "get", "greeting"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "greeting\nhello\n");
    let (code, out, _) = cli(&bin, &["--endpoints", &eps, "-o", "json", "kv", "get", "greeting"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json output");
    assert_eq!(v["kvs"][0]["value"], "hello");

    let live = c.nodes[0].grpc.as_str();
    // An oversized value through the client library (too big for argv).
    let err = c.nodes[0]
        .client()
        .put("big", vec![b'x'; 1024 * 1024 + 1])
        .await
        .expect_err("oversized value must fail");
    assert!(matches!(err, esf_client::Error::InvalidArgument(_)), "{err}");
    assert!(
        err.to_string()
            .contains("put.value: is 1048577 bytes, over the limit of 1048576 (max_value_bytes)"),
        "{err}"
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--endpoints", live, "kv", "put", "", "v"],
            "put.key: must not be empty",
        ),
        (
            vec!["--endpoints", "localhost", "kv", "get", "k"],
            "invalid endpoint \"localhost\": expected host:port",
        ),
        (
            vec!["--endpoints", live, "kv", "get", "k", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (
            vec!["--endpoints", live, "kv", "get", "k", "--rev", "999999"],
            "newer than the current revision",
        ),
        (
            vec![
                "--endpoints",
                live,
                "kv",
                "txn",
                r#"{"sucess":[{"put":{"key":"t-typo","value":"v"}}]}"#,
            ],
            "txn: unknown field `sucess`",
        ),
    ];
    for (args, want) in cases {
        let (code, _, err) = cli(&bin, &args);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: stderr {err:?} should contain {want:?}");
    }
    let ops: Vec<String> = (0..129)
        .map(|i| format!("{{\"put\":{{\"key\":\"t{i}\",\"value\":\"v\"}}}}"))
        .collect();
    let spec = format!("{{\"success\":[{}]}}", ops.join(","));
    let (code, _, err) = cli(&bin, &["--endpoints", live, "kv", "txn", &spec]);
    assert_ne!(code, 0);
    assert!(err.contains("txn.success: has 129 ops, over the limit of 128"), "{err}");
    // Nothing was written by the rejected requests.
    let (_, out, _) = cli(
        &bin,
        &["--endpoints", live, "kv", "get", "t", "--prefix", "--count-only"],
    );
    assert_eq!(out.trim(), "0");
    // A txn prints the results of the branch it ran.
    let spec = r#"{"compare":[{"key":"tx","target":"version","version":0}],"success":[{"put":{"key":"tx","value":"one"}},{"get":{"key":"tx"}}],"failure":[{"get":{"key":"tx"}}]}"#;
    let (code, out, err) = cli(&bin, &["--endpoints", live, "kv", "txn", spec]);
    assert_eq!(code, 0, "{err}");
    // Reads in a txn see the state before it.
    let rev: u64 = out
        .strip_prefix("SUCCESS\nput: revision ")
        .and_then(|r| r.strip_suffix("\nget: (not found)\n"))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("txn output: {out:?}"));
    assert!(rev > 0, "{out}");
    let (code, out, err) = cli(&bin, &["--endpoints", live, "-o", "json", "kv", "txn", spec]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json output");
    assert_eq!(v["succeeded"], false);
    assert_eq!(v["results"][0]["get"]["kvs"][0]["value"], "one", "{v}");

    // Values from stdin and from a file, byte for byte (a trailing newline
    // included).
    let (code, _, err) = esf_cluster_tests::cli_with_stdin(
        &bin,
        &["--endpoints", live, "kv", "put", "from-stdin"],
        b"line one\nline two\n",
    );
    assert_eq!(code, 0, "{err}");
    let file = c.nodes[0].dir.with_extension("value");
    std::fs::write(&file, b"{\"from\":\"file\"}").expect("write the value file");
    let f = file.to_str().expect("utf-8 path");
    let (code, _, err) = cli(&bin, &["--endpoints", live, "kv", "put", "from-file", "--from-file", f]);
    assert_eq!(code, 0, "{err}");
    let client = c.nodes[0].client();
    let (_, kv) = client.get("from-stdin").await.expect("get");
    assert_eq!(kv.expect("from-stdin").value, b"line one\nline two\n");
    let (_, kv) = client.get("from-file").await.expect("get");
    assert_eq!(kv.expect("from-file").value, b"{\"from\":\"file\"}");
    let (code, _, err) = cli(
        &bin,
        &["--endpoints", live, "kv", "put", "k", "--from-file", "/nonexistent/v"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("--from-file: read /nonexistent/v"), "{err}");
    let (code, _, err) = cli(
        &bin,
        &[
            "--endpoints",
            live,
            "events",
            "append",
            "cli-data",
            "--type",
            "t",
            "--data",
            &format!("@{f}"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&bin, &["--endpoints", live, "-o", "json", "events", "read", "cli-data"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"from\":\"file\""), "{out}");

    // A read cut by the reply's limit says how to go on.
    let lines: String = (0..1000)
        .map(|i| format!("{{\"type\":\"t\",\"data\":{{\"i\":{i}}}}}\n"))
        .collect();
    let (code, _, err) = esf_cluster_tests::cli_with_stdin(
        &bin,
        &["--endpoints", live, "events", "append", "long", "--batch", "-"],
        lines.as_bytes(),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&bin, &["--endpoints", live, "events", "append", "long", "--type", "t"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&bin, &["--endpoints", live, "events", "read", "long"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1000);
    assert!(
        err.contains("the stream has more: esf events read long --from 1001"),
        "{err}"
    );
    let (code, out, err) = cli(&bin, &["--endpoints", live, "events", "read", "long", "--from", "1001"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1);
    assert!(!err.contains("has more"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_node_with_empty_data_dir_is_refused() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let victim = c.nodes.iter().map(|n| n.id).max().unwrap();
    // The cluster must know the victim held data: `member list` says so once
    // a leader has recorded replicating to it.
    let eps = c.nodes[0].grpc.clone();
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let (code, out, err) = cli(&c.bin, &["--endpoints", &eps, "-o", "json", "member", "list"]);
        assert_eq!(code, 0, "member list: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let holds = v["members"]
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["id"] == victim && m["holds_data"] == true);
        if holds {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {victim} never recorded as holding data: {out}"
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    let n = c.node_mut(victim);
    n.kill();
    std::fs::remove_dir_all(&n.dir).expect("wipe data dir");
    let bin = c.bin.clone();
    let n = c.node_mut(victim);
    n.start(&bin);
    // It must exit by itself (bounded wait: a hang fails the test).
    let status = n.wait_exit();
    assert!(!status.success(), "a wiped known node must refuse to start");
    assert!(
        n.log().contains("already a member of cluster") && n.log().contains("esf member remove"),
        "{}",
        n.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_as_learner_is_promoted_and_removed() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    c.client().put("before", "1").await.expect("put");
    for i in 0..16 {
        c.client()
            .append(&format!("before-{i}"), vec![event("Before", i)], None)
            .await
            .expect("append before the join");
    }
    // A node started with another partition count is refused.
    // The operator's way (auto-join off): `esf member add`.
    let odd = c.spawn_joining_node_with(&["--partitions", "4", "--auto-join=false"]);
    c.node(odd).wait_log("waiting to be added").await;
    let odd_addr = c.node(odd).grpc.clone();
    let (code, _, err) = cli(
        &esf_bin(),
        &[
            "--endpoints",
            &c.nodes[0].grpc,
            "member",
            "add",
            &odd.to_string(),
            &odd_addr,
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("runs 4 event partitions, this cluster 8"), "{err}");
    c.node_mut(odd).kill();
    let id = c.spawn_joining_node_with(&["--auto-join=false"]);
    let addr = c.node(id).grpc.clone();
    // The operator adds a node once it is up and waiting to be added.
    c.node(id).wait_log("waiting to be added").await;
    let bin = esf_bin();
    let eps = c.nodes[0].grpc.clone();
    // The wrong id for that address is refused, naming both.
    let wrong = (id + 10).to_string();
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "member", "add", &wrong, &addr]);
    assert_ne!(code, 0, "member add with a wrong id must fail");
    assert!(
        err.contains(&format!("id: the node at {addr} has node id {id}, not {wrong}")),
        "{err}"
    );
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "member", "add", &id.to_string(), &addr]);
    assert_eq!(code, 0, "member add: {err}");
    assert!(out.contains("learner"), "{out}");
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "member", "promote", &id.to_string()]);
    assert_eq!(code, 0, "member promote: {err}");
    assert_eq!(out.matches("voter").count(), 4, "{out}");
    // The new voter has the data written before it joined.
    c.client().put("after", "2").await.expect("put with 4 voters");
    c.wait_converged().await;
    let r = c
        .node(id)
        .client()
        .range(pb::RangeRequest {
            range: Some(esf_client::key_range_prefix(vec![])),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("range on new node");
    assert_eq!(r.count, 2, "new node holds every key");
    // ... and its share of the event partitions: with 4 voters each of the
    // 8 partitions keeps 3 replicas, so the plan gives every node 6, and
    // moves little (each partition the new node takes drops one replica).
    c.wait_converged().await;
    let status = c.node(id).client().status_all().await;
    let groups = status[0].1.as_ref().expect("status").groups.clone();
    let partitions = groups.len() as u32 - 1;
    let held: Vec<u32> = groups
        .iter()
        .filter(|g| g.group != 0 && g.held)
        .map(|g| g.group)
        .collect();
    assert_eq!(held.len(), 6, "node {id} holds its share: {groups:?}");
    for g in groups.iter().filter(|g| g.group != 0) {
        assert_eq!(g.planned.len(), 3, "3 replicas per partition: {g:?}");
    }
    let replicas_on =
        |groups: &[pb::GroupStatus]| -> usize { groups.iter().filter(|g| g.group != 0 && g.held).count() };
    for n in 1..=3 {
        let s = c.node(n).client().status_all().await;
        let gs = s[0].1.as_ref().expect("status").groups.clone();
        assert_eq!(replicas_on(&gs), 6, "node {n} holds 6 partitions: {gs:?}");
    }
    // Every node answers for every partition (its own replica, or one
    // elsewhere), with the same events at the same offsets.
    let on_new = partition_logs(c.node(id), partitions).await;
    assert_eq!(
        on_new,
        partition_logs(c.node(1), partitions).await,
        "the new node serves every event"
    );
    assert_eq!(on_new.iter().map(Vec::len).sum::<usize>(), 16);
    assert!(
        r.header.unwrap().cluster_id.starts_with("esf-"),
        "new node adopted the cluster id"
    );
    // A subscription through the new node, which serves 6 partitions from
    // its own replicas: when they move away it continues elsewhere.
    let mut sub = c.node(id).client().subscribe_resumable(pb::SubscribeRequest::default());
    let mut delivered = std::collections::BTreeSet::new();
    loop {
        let r = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, sub.next())
            .await
            .expect("subscription progress")
            .expect("subscription");
        delivered.extend(r.events.iter().map(|e| e.id.clone()));
        if r.caught_up {
            break;
        }
    }
    assert_eq!(delivered.len(), 16);
    // Removed: its replicas move to the other nodes first.
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "member", "remove", &id.to_string()]);
    assert_eq!(code, 0, "member remove: {err}");
    assert!(!out.contains(&addr), "{out}");
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let status = c.node(1).client().status_all().await;
        let groups = status[0].1.as_ref().expect("status").groups.clone();
        // With 3 voters left every node holds every partition again.
        if groups
            .iter()
            .all(|g| g.held && !g.voters.contains(&id) && !g.learners.contains(&id) && g.leader_id != 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions kept node {id}: {groups:?}"
        );
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    let before = partitions_seen_by(c.node(id)).await;
    assert!(
        before.iter().all(|(_, held, _)| !held),
        "the removed node holds nothing: {before:?}"
    );
    for i in 0..16 {
        c.client()
            .append(&format!("after-{i}"), vec![event("After", i)], None)
            .await
            .expect("append after the removal");
    }
    let after = partitions_seen_by(c.node(id)).await;
    assert_eq!(before, after, "a removed node receives no events");
    while delivered.len() < 32 {
        let r = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, sub.next())
            .await
            .expect("the subscription goes on after its replicas moved")
            .expect("subscription");
        for e in &r.events {
            assert!(delivered.insert(e.id.clone()), "delivered twice: {e:?}");
        }
    }
    c.wait_converged_without(&[id]).await;
    let logs = partition_logs(c.node(1), partitions).await;
    assert_eq!(
        logs.iter().map(Vec::len).sum::<usize>(),
        32,
        "no acknowledged event lost"
    );
    for n in 2..=3 {
        assert_eq!(
            partition_logs(c.node(n), partitions).await,
            logs,
            "node {n} has the same events"
        );
    }
    c.client().put("later", "3").await.expect("put after removal");
    let r = c
        .node(id)
        .client()
        .range(pb::RangeRequest {
            range: Some(esf_client::key_range_key(b"later".to_vec())),
            serializable: true,
            ..Default::default()
        })
        .await;
    assert!(
        r.map(|r| r.count).unwrap_or(0) == 0,
        "a removed node must not receive new writes"
    );
}

/// (partition, held, last log index) as `node` reports them.
async fn partitions_seen_by(node: &esf_cluster_tests::Node) -> Vec<(u32, bool, u64)> {
    let status = node.client().status_all().await;
    status[0]
        .1
        .as_ref()
        .expect("status")
        .groups
        .iter()
        .filter(|g| g.group != 0)
        .map(|g| (g.group, g.held, g.last_log_index))
        .collect()
}

#[test]
fn config_validate_names_the_bad_key_and_its_source() {
    let bin = esf_bin();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "node_id = 3\nlisten = \"127.0.0.1:7000\"\n").unwrap();
    let (code, out, err) = cli(&bin, &["config", "validate", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "node_id = \"three\"\n").unwrap();
    let (code, _, err) = cli(&bin, &["config", "validate", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("node_id") && err.contains("bad.toml"), "{err}");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "nodeid = 3\n").unwrap();
    let (code, _, err) = cli(&bin, &["config", "validate", unknown.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("nodeid"), "{err}");
    let (code, _, err) = cli(&bin, &["serve", "--listen", "nowhere"]);
    assert_ne!(code, 0);
    assert!(err.contains("listen: invalid endpoint \"nowhere\""), "{err}");
    let (code, _, err) = cli(&bin, &["serve", "--snapshot-step-mb", "2000000000"]);
    assert_ne!(code, 0);
    assert!(err.contains("snapshot_step_mb: must be at most"), "{err}");
    // A node that joins others must have the cluster's peer secret, and a
    // usable one.
    let (code, _, err) = cli(&bin, &["serve", "--join", "127.0.0.1:7001"]);
    assert_ne!(code, 0);
    assert!(err.contains("peer_secret_file: required with join"), "{err}");
    let short = dir.path().join("short-secret");
    std::fs::write(&short, "abc\n").unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = cli(
        &bin,
        &[
            "serve",
            "--join",
            "127.0.0.1:7001",
            "--data-dir",
            data.to_str().unwrap(),
            "--peer-secret-file",
            short.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("peer_secret_file") && err.contains("16 to 1024"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_over_leadership_and_exits_cleanly() {
    let mut c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    c.client().put("k", "v").await.expect("put");
    // An open watch on the stopping node ends with a cancel, not a hang.
    let mut watch = c
        .node(leader)
        .client()
        .watch(pb::WatchRequest {
            range: Some(esf_client::key_range_prefix(b"k".to_vec())),
            ..Default::default()
        })
        .await
        .expect("watch");
    let status = c.node_mut(leader).terminate().expect("was running");
    assert!(
        status.success(),
        "graceful stop must exit 0: {status:?}\n{}",
        c.node(leader).log()
    );
    assert!(
        c.node(leader).log().contains("leadership handed over"),
        "{}",
        c.node(leader).log()
    );
    let last = watch
        .message()
        .await
        .expect("cancel response")
        .expect("a last response");
    assert!(
        last.canceled && last.cancel_reason.contains("shutting down"),
        "{last:?}"
    );
    let new = c.wait_ready().await;
    assert_ne!(new, leader);
    let (_, kv) = c.client().get("k").await.expect("get after hand-over");
    assert_eq!(kv.unwrap().value, b"v");
    // A follower of an idle cluster (its replication stream open, nothing
    // to send) stops promptly too.
    let follower = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != new && id != leader)
        .expect("a follower");
    let status = c.node_mut(follower).terminate().expect("was running");
    assert!(status.success(), "{status:?}\n{}", c.node(follower).log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_of_another_cluster_cannot_be_added_and_keeps_its_data() {
    let a = Cluster::start(&esf_bin(), 3);
    a.wait_ready().await;
    let b = Cluster::start(&esf_bin(), 1);
    b.wait_ready().await;
    b.client().put("b-key", "b-value").await.expect("put into cluster b");
    let bin = esf_bin();
    let eps = a.nodes[0].grpc.clone();
    let other = b.nodes[0].grpc.clone();
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "member", "add", "4", &other]);
    assert_ne!(code, 0, "adding a node of another cluster must fail: {out}");
    assert!(
        err.contains("addr: the node at") && err.contains("belongs to cluster esf-"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
    // Nothing changed on either side.
    let (code, out, _) = cli(&bin, &["--endpoints", &eps, "member", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("voter").count(), 3, "{out}");
    assert!(!out.contains(&other), "{out}");
    let (_, kv) = b.client().get("b-key").await.expect("get from cluster b");
    assert_eq!(kv.map(|kv| kv.value), Some(b"b-value".to_vec()));

    // A client learns its cluster from the first answer and is pinned to
    // it: an endpoint that now belongs to another cluster (say, a reused
    // address) refuses it, and the client moves on.
    let learner = a.client();
    learner.put("a-key", "1").await.expect("put into cluster a");
    let a_id = learner.cluster_id().expect("learned the cluster id");
    let mut eps = vec![other.clone()];
    eps.extend(a.nodes.iter().map(|n| n.grpc.clone()));
    let pinned = esf_client::Client::new(
        &eps,
        esf_client::ClientOptions::new().with_cluster_id(Some(a_id.clone())),
    )
    .expect("client");
    let r = pinned.put("pinned-key", "v").await.expect("put reaches cluster a");
    assert_eq!(r.header.expect("header").cluster_id, a_id);
    let (_, kv) = b.client().get("pinned-key").await.expect("get from cluster b");
    assert!(kv.is_none(), "cluster b never saw the pinned client's write");
    let only_b = esf_client::Client::new(
        &[other.as_str()],
        esf_client::ClientOptions::new()
            .with_cluster_id(Some(a_id))
            .with_retry_deadline(std::time::Duration::from_secs(2)),
    )
    .expect("client");
    let err = only_b
        .put("x", "y")
        .await
        .expect_err("a node of another cluster refuses");
    assert!(
        err.to_string().contains("cluster: this node belongs to cluster esf-"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_key_lives_while_kept_alive_and_goes_when_the_lease_does() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let bin = esf_bin();
    let eps: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let eps = eps.join(",");
    // Bad TTLs are refused, naming the field.
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "lease", "grant", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("lease.ttl_secs"), "{err}");
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "lease", "grant", "999999999"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("lease.ttl_secs") && err.contains("max_lease_ttl_secs"),
        "{err}"
    );
    // A 2 s lease with a key, kept alive through every node in turn (followers
    // forward to the leader) for longer than its TTL.
    let client = c.client();
    let lease = client.lease_grant(2, 0).await.expect("grant").id;
    client
        .put_with(pb::PutRequest::new(&b"svc/a"[..], &b"up"[..]).with_lease(lease))
        .await
        .expect("put with lease");
    let start = tokio::time::Instant::now();
    let mut i = 0;
    while start.elapsed() < std::time::Duration::from_secs(5) {
        let r = c.nodes[i % 3].client().lease_keepalive(lease).await.expect("keepalive");
        assert_eq!(r.ttl_secs, 2);
        i += 1;
        // Keepalive cadence: a quarter of the TTL.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (_, kv) = client.get("svc/a").await.expect("get");
    assert!(kv.is_some(), "a kept-alive lease keeps its key");
    let (code, out, err) = cli(
        &bin,
        &[
            "--endpoints",
            &eps,
            "-o",
            "json",
            "lease",
            "ttl",
            &lease.to_string(),
            "--keys",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["granted_ttl_secs"], 2);
    assert_eq!(v["keys"], serde_json::json!(["svc/a"]));
    // Keepalives stop: the key goes once the TTL runs out.
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let (_, kv) = client.get("svc/a").await.expect("get");
        if kv.is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "leased key outlived its lease");
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    let (code, _, err) = cli(
        &bin,
        &["--endpoints", &eps, "lease", "keepalive", &lease.to_string(), "--once"],
    );
    assert_ne!(code, 0, "an expired lease cannot be kept alive");
    assert!(
        err.contains(&format!("lease {lease}")) && err.contains("not found"),
        "{err}"
    );
    // Revoke deletes the keys at once.
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "-o", "json", "lease", "grant", "60"]);
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).expect("json")["id"]
        .as_u64()
        .expect("id");
    let (code, _, err) = cli(
        &bin,
        &[
            "--endpoints",
            &eps,
            "kv",
            "put",
            "svc/b",
            "up",
            "--lease",
            &id.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(
        &bin,
        &["--endpoints", &eps, "-o", "json", "lease", "revoke", &id.to_string()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"deleted_keys\":1"), "{out}");
    let (_, kv) = client.get("svc/b").await.expect("get");
    assert!(kv.is_none(), "revoking deletes the lease's keys");
}

/// Collects watch events until `n` have arrived; returns (snapshot flags,
/// events) in arrival order.
async fn watch_events(stream: &mut esf_client::Streaming<pb::WatchResponse>, n: usize) -> Vec<(bool, pb::Event)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while out.len() < n {
        let resp = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("watch events within the deadline")
            .expect("watch stream")
            .expect("stream open");
        assert!(!resp.canceled, "{}", resp.cancel_reason);
        for e in resp.events {
            out.push((resp.snapshot, e));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_revision_once_and_a_snapshot_after_compaction() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let client = c.client();
    let first = client.put("w/a", "1").await.expect("put").header.unwrap().revision;
    // A watch on a follower-or-leader node from the first revision, with
    // previous values: sees history, then live changes, in order.
    let node = c.nodes[1].client();
    let req = pb::WatchRequest {
        range: Some(esf_client::key_range_prefix(b"w/".to_vec())),
        start_revision: first,
        prev_kv: true,
        progress_notify_ms: 0,
    };
    let mut stream = node.watch(req).await.expect("watch");
    client.put("w/a", "2").await.expect("put");
    client.put("other", "x").await.expect("put outside the range");
    client.put("w/b", "1").await.expect("put");
    client
        .delete(pb::DeleteRequest::of(pb::KeyRange::key(&b"w/a"[..])))
        .await
        .expect("delete");
    let got = watch_events(&mut stream, 4).await;
    let summary: Vec<(i32, String, String, Option<String>)> = got
        .iter()
        .map(|(snap, e)| {
            assert!(!snap);
            let kv = e.kv.clone().unwrap();
            (
                e.r#type,
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                e.prev_kv.clone().map(|p| String::from_utf8(p.value).unwrap()),
            )
        })
        .collect();
    let put = pb::event::EventType::Put as i32;
    let del = pb::event::EventType::Delete as i32;
    assert_eq!(
        summary,
        vec![
            (put, "w/a".into(), "1".into(), None),
            (put, "w/a".into(), "2".into(), Some("1".into())),
            (put, "w/b".into(), "1".into(), None),
            (del, "w/a".into(), "".into(), Some("2".into())),
        ]
    );
    let revs: Vec<u64> = got.iter().map(|(_, e)| e.kv.as_ref().unwrap().mod_revision).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "increasing revisions: {revs:?}");
    // From a compacted revision: the current state as a snapshot, then live.
    let last = client.put("w/c", "1").await.expect("put").header.unwrap().revision;
    // Compaction never passes the audit relay (it is refused after a
    // short wait): let the relay pass `last` first, however slow the
    // machine.
    c.wait_audit_caught_up().await;
    client.compact(last).await.expect("compact");
    // The watch goes to a follower: let it apply the compaction first.
    c.wait_converged().await;
    let req = pb::WatchRequest {
        range: Some(esf_client::key_range_prefix(b"w/".to_vec())),
        start_revision: first,
        prev_kv: false,
        progress_notify_ms: 0,
    };
    let mut stream = c.nodes[2].client().watch(req).await.expect("watch from compacted");
    let snap = watch_events(&mut stream, 2).await;
    assert!(snap.iter().all(|(s, _)| *s), "first the snapshot");
    let keys: Vec<String> = snap
        .iter()
        .map(|(_, e)| String::from_utf8(e.kv.clone().unwrap().key).unwrap())
        .collect();
    assert_eq!(keys, vec!["w/b".to_string(), "w/c".to_string()]);
    client.put("w/d", "1").await.expect("put");
    let live = watch_events(&mut stream, 1).await;
    assert!(!live[0].0);
    assert_eq!(live[0].1.kv.clone().unwrap().key, b"w/d".to_vec());
    // A future start revision is a clear error.
    let err = node
        .watch(pb::WatchRequest {
            range: Some(esf_client::key_range_key(b"w/a".to_vec())),
            start_revision: 1_000_000,
            ..Default::default()
        })
        .await
        .expect_err("future revision");
    assert!(
        err.to_string().contains("watch.start_revision") && err.to_string().contains("future"),
        "{err}"
    );
    // The CLI prints events and stops after --count.
    let eps = c.nodes[0].grpc.clone();
    let (code, out, err) = cli(
        &esf_bin(),
        &[
            "--endpoints",
            &eps,
            "kv",
            "watch",
            "w/",
            "--prefix",
            "--rev",
            &first.to_string(),
            "--count",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("SNAPSHOT w/b 1"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumable_watch_sees_every_revision_once_when_its_node_is_killed() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let eps: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let watcher = esf_client::Client::new(&eps, esf_client::ClientOptions::default()).expect("client");
    let mut watch = watcher
        .watch_resumable(pb::WatchRequest {
            range: Some(esf_client::key_range_prefix(b"r/".to_vec())),
            ..Default::default()
        })
        .await
        .expect("watch");
    let writer = c.client();
    let mut acked = vec![writer.put("r/first", "v").await.expect("put").header.unwrap().revision];
    let first = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, watch.next())
        .await
        .expect("first event")
        .expect("watch");
    let victim = first.header.as_ref().unwrap().node_id;
    let mut seen: Vec<u64> = first
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    let mut served_by = std::collections::BTreeSet::from([victim]);
    for i in 0..60 {
        if i == 20 {
            // Kill the node serving the watch, mid-stream.
            c.node_mut(victim).kill();
        }
        if let Ok(r) = writer.put(format!("r/{i}"), "v").await {
            acked.push(r.header.unwrap().revision);
        }
        // Read what has arrived so far, without waiting for more.
        while let Ok(Ok(resp)) = tokio::time::timeout(std::time::Duration::ZERO, watch.next()).await {
            served_by.insert(resp.header.as_ref().unwrap().node_id);
            seen.extend(resp.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
    }
    let last = *acked.last().expect("some writes were acknowledged");
    while seen.last().copied().unwrap_or(0) < last {
        let resp = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, watch.next())
            .await
            .expect("watch keeps delivering after its node died")
            .expect("watch");
        served_by.insert(resp.header.as_ref().unwrap().node_id);
        seen.extend(resp.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    assert!(
        served_by.contains(&victim) && served_by.len() > 1,
        "the watch was served by the victim, then elsewhere: {served_by:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {seen:?}"
    );
    for r in &acked {
        assert!(seen.contains(r), "acknowledged revision {r} never delivered: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_quota_are_refused_until_compaction_frees_space() {
    let c = Cluster::start_with(&esf_bin(), 3, &["--quota-bytes", "4194304"]);
    c.wait_ready().await;
    let client = c.client();
    client.put("keep", "small").await.expect("put under the quota");
    // 256 KiB versions of one key: history keeps them all until compaction.
    let big = vec![b'x'; 256 << 10];
    let mut refused = None;
    for _ in 0..64 {
        match client.put("big", big.clone()).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let err = refused.expect("writes past a 4 MiB quota must be refused");
    assert!(err.contains("quota") && err.contains("quota_bytes"), "{err}");
    // The alarm shows in status; reads and deletes still work.
    let eps = c.nodes.iter().map(|n| n.grpc.clone()).collect::<Vec<_>>().join(",");
    let (code, out, _) = cli(&esf_bin(), &["--endpoints", &eps, "-o", "json", "endpoint", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"quota_alarm\":true"), "{out}");
    let (_, kv) = client.get("keep").await.expect("read past the quota");
    assert_eq!(kv.unwrap().value, b"small".to_vec());
    let del = client
        .delete(pb::DeleteRequest::of(pb::KeyRange::key(&b"big"[..])))
        .await
        .expect("delete past the quota");
    let rev = del.header.unwrap().revision;
    c.wait_audit_caught_up().await;
    // Compaction drops the history; the space is reclaimed in the
    // background and the alarm clears itself.
    client.compact(rev).await.expect("compact past the quota");
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        match client.put("after", "1").await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline && e.to_string().contains("quota"),
                "put after compaction: {e}"
            ),
        }
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    let (_, kv) = client.get("after").await.expect("get");
    assert!(kv.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_keepalive_keeps_a_lease_across_a_leader_kill() {
    let mut c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let client = c.client();
    let lease = client.lease_grant(2, 0).await.expect("grant").id;
    client
        .put_with(pb::PutRequest::new(&b"svc/k"[..], &b"up"[..]).with_lease(lease))
        .await
        .expect("put with lease");
    let keeper_client = c.client();
    let renewals = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = renewals.clone();
    let keeper = tokio::spawn(async move {
        keeper_client
            .lease_keep_alive_forever(lease, |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .await
    });
    // Kill the leader once the keeper is renewing, then let more than two
    // TTLs pass (keepalive cadence) under the new leader.
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while renewals.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no renewals");
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    c.node_mut(leader).kill();
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while c.wait_ready().await == leader {
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    let before = renewals.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while renewals.load(std::sync::atomic::Ordering::SeqCst) < before + 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the keeper did not resume at the new leader"
        );
        assert!(!keeper.is_finished(), "keeper stopped: {:?}", keeper.await);
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    let (_, kv) = c.client().get("svc/k").await.expect("get");
    assert!(kv.is_some(), "the lease survived the leader change while kept alive");
    // Stop keeping it alive: the key goes.
    keeper.abort();
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    loop {
        let (_, kv) = c.client().get("svc/k").await.expect("get");
        if kv.is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "key outlived its lease");
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
}

/// The next registry watch response with events.
async fn registry_events(w: &mut esf_client::ResumableWatch<pb::RegistryWatchRequest>) -> Vec<pb::RegistryEvent> {
    loop {
        let resp = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, w.next())
            .await
            .expect("registry watch event within the deadline")
            .expect("registry watch");
        if !resp.events.is_empty() {
            return resp.events;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_instance_lives_while_kept_alive_across_a_leader_kill() {
    use pb::registry_event::EventType;
    let mut c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let bin = esf_bin();
    let eps = c.endpoints();
    let client = c.client();

    // Bad input: clear errors, nothing registered.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["registry", "register", "api", "api-1", ""],
            "instance.address: is required",
        ),
        (
            vec!["registry", "register", "a/b", "api-1", "10.0.0.1:80"],
            "instance.service: '/' is not allowed",
        ),
        (
            vec!["registry", "register", "api", "api-1", "10.0.0.1:80", "--lease", "4242"],
            "lease 4242 not found",
        ),
        (
            vec!["registry", "register", "api", "api-1", "10.0.0.1:80", "--meta", "zone"],
            "--meta: \"zone\" is not KEY=VALUE",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["--endpoints", eps.as_str()];
        all.extend(args.iter());
        let (code, _, err) = cli(&bin, &all);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: stderr {err:?} should contain {want:?}");
    }
    assert!(client.list_services().await.expect("list").services.is_empty());
    // The registry's keys are not reachable through the config store.
    let err = client.put(vec![0xff, b'x'], "v").await.expect_err("reserved key");
    assert!(
        err.to_string()
            .contains("put.key: keys starting with byte 0xff are reserved"),
        "{err}"
    );
    let reserved = || esf_client::key_range_prefix(vec![0xff]);
    let err = client
        .range(pb::RangeRequest {
            range: Some(reserved()),
            ..Default::default()
        })
        .await
        .expect_err("reserved range");
    assert!(
        err.to_string()
            .contains("range.range.prefix: keys starting with byte 0xff"),
        "{err}"
    );
    let err = client
        .delete(pb::DeleteRequest {
            range: Some(reserved()),
            ..Default::default()
        })
        .await
        .expect_err("reserved delete");
    assert!(err.to_string().contains("delete.range.prefix"), "{err}");
    let err = client
        .txn(pb::TxnRequest {
            success: vec![pb::TxnOp {
                op: Some(pb::txn_op::Op::Put(pb::PutRequest {
                    key: vec![0xff, b'r'],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
        .await
        .expect_err("reserved txn put");
    assert!(
        err.to_string()
            .contains("txn.success[0].put.key: keys starting with byte 0xff"),
        "{err}"
    );

    let mut w = client
        .registry_watch_resumable(pb::RegistryWatchRequest {
            service: "api".into(),
            ..Default::default()
        })
        .await
        .expect("registry watch");
    let ttl_eps = eps.clone();
    let mut keeper = esf_cluster_tests::CliProcess::spawn(
        &bin,
        &[
            "--endpoints",
            &ttl_eps,
            "-o",
            "json",
            "registry",
            "register",
            "api",
            "api-1",
            "10.0.0.1:8080",
            "--tag",
            "v2",
            "--meta",
            "zone=a",
            "--ttl",
            "2",
        ],
    );
    let up = registry_events(&mut w).await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].r#type, EventType::Up as i32);
    let inst = up[0].instance.clone().expect("instance");
    assert_eq!((inst.service.as_str(), inst.id.as_str()), ("api", "api-1"));
    assert_eq!(inst.address, "10.0.0.1:8080");
    assert_eq!(inst.tags, vec!["v2".to_string()]);
    assert_eq!(inst.metadata.get("zone").map(String::as_str), Some("a"));
    assert_ne!(inst.lease, 0);

    // Lookup by tag, list, and the CLI's view.
    assert_eq!(
        client
            .lookup("api", &["v2".into()])
            .await
            .expect("lookup")
            .instances
            .len(),
        1
    );
    assert!(
        client
            .lookup("api", &["v1".into()])
            .await
            .expect("lookup")
            .instances
            .is_empty()
    );
    let services = client.list_services().await.expect("list").services;
    assert_eq!(
        services
            .iter()
            .map(|s| (s.name.as_str(), s.instances))
            .collect::<Vec<_>>(),
        vec![("api", 1)]
    );
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "registry", "get", "api", "--tag", "v2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("api/api-1 10.0.0.1:8080 tags=v2 zone=a lease="),
        "{out}"
    );
    let (_, out, _) = cli(
        &bin,
        &["--endpoints", &eps, "kv", "get", "", "--prefix", "--count-only"],
    );
    assert_eq!(out.trim(), "0", "registry keys are not config keys");
    let wide = client
        .range(pb::RangeRequest {
            range: Some(pb::KeyRange {
                kind: Some(pb::key_range::Kind::Between(pb::Between {
                    start: vec![0x01],
                    end: vec![0xff, 0xff, 0xff],
                })),
            }),
            ..Default::default()
        })
        .await
        .expect("a range reaching past 0xff is cut at 0xff");
    assert!(wide.kvs.is_empty(), "{:?}", wide.kvs);
    let ttl = client.lease_ttl(inst.lease, true).await.expect("lease ttl");
    assert!(
        ttl.keys.is_empty(),
        "registry keys are not listed as config keys: {:?}",
        ttl.keys
    );

    // Kill the leader while the keeper runs; let more than two TTLs of
    // renewals pass under the new one.
    keeper.wait_lines("ttl_secs", 2).await;
    c.node_mut(leader).kill();
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while c.wait_ready().await == leader {
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    let renewed = keeper.lines().iter().filter(|l| l.contains("ttl_secs")).count();
    keeper.wait_lines("ttl_secs", renewed + 6).await;
    let found = client.lookup("api", &[]).await.expect("lookup").instances;
    assert_eq!(found.len(), 1, "the instance stays while kept alive");
    assert_eq!(found[0].revision, inst.revision, "not re-registered");

    // Keepalives stop (the keeper dies): the instance goes once the TTL
    // runs out, and the watch (resumed if its node was the one killed)
    // sees exactly that next.
    keeper.signal("KILL");
    let down = registry_events(&mut w).await;
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].r#type, EventType::Down as i32);
    let gone = down[0].instance.clone().expect("instance");
    assert_eq!(
        (gone.service.as_str(), gone.id.as_str(), gone.address.as_str()),
        ("api", "api-1", "10.0.0.1:8080")
    );
    assert!(client.lookup("api", &[]).await.expect("lookup").instances.is_empty());

    // A keeper stopped with SIGTERM deregisters at once; deregister works
    // from the CLI.
    let mut keeper = esf_cluster_tests::CliProcess::spawn(
        &bin,
        &[
            "--endpoints",
            &eps,
            "registry",
            "register",
            "api",
            "api-2",
            "10.0.0.2:8080",
            "--ttl",
            "60",
        ],
    );
    assert_eq!(registry_events(&mut w).await[0].r#type, EventType::Up as i32);
    assert!(keeper.signal("TERM").success());
    assert_eq!(registry_events(&mut w).await[0].r#type, EventType::Down as i32);
    let (code, _, err) = cli(
        &bin,
        &["--endpoints", &eps, "registry", "register", "web", "w1", "10.0.0.3:80"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "registry", "deregister", "web", "w1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "deregistered web/w1\n");
    assert!(client.list_services().await.expect("list").services.is_empty());
}

/// Every live key with its metadata, and the store revision, read through
/// `client`.
async fn all_keys(client: &esf_client::Client) -> (u64, Vec<pb::KeyValue>) {
    let r = client
        .range(pb::RangeRequest {
            range: Some(esf_client::key_range_prefix(Vec::new())),
            ..Default::default()
        })
        .await
        .expect("range every key");
    (r.header.expect("header").revision, r.kvs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_a_live_cluster_restores_into_a_new_node_with_the_same_keys_and_revisions() {
    let c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let bin = esf_bin();
    let client = c.client();
    for i in 0..40 {
        client
            .put(format!("cfg/{}", i % 15), format!("v{i}"))
            .await
            .expect("put");
    }
    client
        .delete(pb::DeleteRequest::of(pb::KeyRange::key(&b"cfg/3"[..])))
        .await
        .expect("delete");
    c.wait_audit_caught_up().await;
    client.compact(20).await.expect("compact");
    let lease = client.lease_grant(600, 0).await.expect("grant").id;
    client
        .put_with(pb::PutRequest::new(&b"leased"[..], &b"x"[..]).with_lease(lease))
        .await
        .expect("leased put");
    client
        .register(pb::Instance {
            service: "api".into(),
            id: "a1".into(),
            address: "10.0.0.1:80".into(),
            ..Default::default()
        })
        .await
        .expect("register");
    for i in 0..20 {
        client
            .append(&format!("ledger-{}", i % 6), vec![event("Entry", i)], None)
            .await
            .expect("append");
    }
    let (revision, keys) = all_keys(&client).await;
    let history = client
        .history(pb::HistoryRequest {
            key: b"cfg/1".to_vec(),
            from_revision: 20,
            ..Default::default()
        })
        .await
        .expect("history")
        .versions;

    // Save through a follower first in the endpoint list: the call follows
    // the leader hint.
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower");
    let eps = format!("{},{}", follower.grpc, c.endpoints());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.snap");
    let file_s = file.display().to_string();
    // Once every revision has its audit event, the saved partitions hold
    // exactly those and the test's events.
    let audited = c.wait_audit_caught_up().await;
    let (code, out, err) = cli(&bin, &["--endpoints", &eps, "snapshot", "save", &file_s]);
    assert_eq!(code, 0, "save: {err}");
    assert!(out.starts_with(&format!("saved {file_s}")), "{out}");
    assert!(!dir.path().join("backup.snap.part").exists());
    let (code, out, err) = cli(&bin, &["-o", "json", "snapshot", "inspect", &file_s]);
    assert_eq!(code, 0, "inspect: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("inspect json");
    let summary = &v["groups"][0]["summary"];
    assert_eq!(summary["revision"], revision, "{v}");
    assert_eq!(
        summary["keys"],
        keys.len() as u64 + 1,
        "config keys and the instance: {v}"
    );
    assert_eq!(summary["leases"], 1);
    assert_eq!(summary["compact_revision"], 20);
    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 9, "meta and 8 partitions: {v}");
    let events: u64 = groups.iter().filter_map(|g| g["summary"]["events"].as_u64()).sum();
    assert_eq!(
        events,
        20 + audited,
        "the test's 20 and one audit event per revision: {v}"
    );
    c.wait_converged().await;
    let logs = partition_logs(&c.nodes[0], 8).await;

    // Corrupt and truncated files: a clear error, and no data dir created.
    let bytes = std::fs::read(&file).expect("read snapshot");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let bad = dir.path().join("bad.snap");
    let short = dir.path().join("short.snap");
    std::fs::write(&bad, &flipped).expect("write");
    std::fs::write(&short, &bytes[..bytes.len() - 7]).expect("write");
    let target = dir.path().join("restored");
    for (f, want) in [(&bad, "checksum mismatch"), (&short, "truncated")] {
        let (code, _, err) = cli(
            &bin,
            &[
                "snapshot",
                "restore",
                &f.display().to_string(),
                "--data-dir",
                &target.display().to_string(),
            ],
        );
        assert_ne!(code, 0);
        assert!(err.contains(want), "stderr {err:?} should contain {want:?}");
        assert!(!target.exists(), "a failed restore leaves nothing behind");
    }

    // Restore into a new single node and start it.
    let port = esf_cluster_tests::free_port();
    let advertise = format!("127.0.0.1:{port}");
    let (code, out, err) = cli(
        &bin,
        &[
            "snapshot",
            "restore",
            &file_s,
            "--data-dir",
            &target.display().to_string(),
            "--node-id",
            "7",
            "--advertise",
            &advertise,
        ],
    );
    assert_eq!(code, 0, "restore: {err}");
    assert!(out.contains(&format!("restored revision {revision}")), "{out}");
    let (code, _, err) = cli(
        &bin,
        &[
            "snapshot",
            "restore",
            &file_s,
            "--data-dir",
            &target.display().to_string(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");
    let mut node = esf_cluster_tests::Node::standalone(dir.path(), 7, target.clone(), port);
    node.start(&bin);
    assert_eq!(node.wait_leader().await, 7);
    let restored = node.client();
    let (rev2, keys2) = all_keys(&restored).await;
    assert_eq!(rev2, revision, "same revision");
    assert_eq!(keys2, keys, "same keys, values, create/mod revisions, versions, leases");
    let history2 = restored
        .history(pb::HistoryRequest {
            key: b"cfg/1".to_vec(),
            from_revision: 20,
            ..Default::default()
        })
        .await
        .expect("history")
        .versions;
    assert_eq!(history2, history, "same history above the compaction");
    let members = restored.members().await.expect("members");
    assert_eq!(
        members
            .members
            .iter()
            .map(|m| (m.id, m.addr.as_str()))
            .collect::<Vec<_>>(),
        vec![(7, advertise.as_str())]
    );
    let old_cluster = client
        .members()
        .await
        .expect("members")
        .header
        .expect("header")
        .cluster_id;
    assert_ne!(
        members.header.expect("header").cluster_id,
        old_cluster,
        "a new cluster id"
    );
    assert_eq!(restored.lookup("api", &[]).await.expect("lookup").instances.len(), 1);
    assert_eq!(
        restored.lease_ttl(lease, false).await.expect("lease").granted_ttl_secs,
        600
    );
    node.wait_leader().await;
    assert_eq!(
        partition_logs(&node, 8).await,
        logs,
        "the same events at the same offsets"
    );
    let appended = restored
        .append("ledger-0", vec![event("Entry", 99)], None)
        .await
        .expect("append after restore");
    assert!(!appended.duplicate);
    // It takes writes, continuing the revision sequence.
    let r = restored.put("after", "restore").await.expect("put after restore");
    assert_eq!(r.header.expect("header").revision, revision + 1);
    // And it comes back after a crash with everything.
    node.kill();
    node.start(&bin);
    node.wait_leader().await;
    let (rev3, keys3) = all_keys(&node.client()).await;
    assert_eq!(rev3, revision + 1);
    assert_eq!(keys3.len(), keys.len() + 1);
}

/// Every event of partitions `1..=partitions` as `node` holds them
/// (serializable reads of its own replica): per partition, (id, stream,
/// version) in offset order, offsets checked to be 0, 1, 2, ...
async fn partition_logs(node: &esf_cluster_tests::Node, partitions: u32) -> Vec<Vec<(String, String, u64)>> {
    let client = node.client();
    let mut out = Vec::new();
    for p in 1..=partitions {
        let mut log = Vec::new();
        let mut seen = 0;
        for e in esf_cluster_tests::read_whole_partition(&client, p)
            .await
            .expect("read partition")
        {
            assert_eq!(e.offset, seen, "partition {p} offsets are dense");
            seen += 1;
            // ESF's own streams (the audit trail) are not the test's.
            if !e.stream.starts_with('$') {
                log.push((e.id, e.stream, e.version));
            }
        }
        out.push(log);
    }
    out
}

fn event(t: &str, n: u64) -> pb::EventData {
    pb::EventData {
        r#type: t.into(),
        data: format!("{{\"n\":{n}}}").into_bytes(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_partition_leader_kill_once_on_every_replica() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let partitions = {
        let st = c.client().status_all().await;
        st[0].1.as_ref().expect("status").groups.len() as u32 - 1
    };
    assert_eq!(partitions, 8, "default partition count");
    let client = c.client();
    let first = client
        .append("victim", vec![event("Init", 0)], None)
        .await
        .expect("first append");
    let part = first.partition;
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    let leader = loop {
        let l = c.group_leader(1, part).await;
        if l != 0 {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "partition {part} has no leader");
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    };
    // A subscription served by the node that will be killed.
    let mut eps = vec![c.node(leader).grpc.clone()];
    eps.extend(c.nodes.iter().filter(|n| n.id != leader).map(|n| n.grpc.clone()));
    let sub_client = esf_client::Client::new(&eps, Default::default()).expect("client");
    let mut sub = sub_client.subscribe_resumable(pb::SubscribeRequest::default());
    sub.next().await.expect("subscription start");

    // Writers append (with ids the client picks, so retries deduplicate)
    // while the partition's leader is killed.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let client = c.client();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0..40u64 {
                let stream = if w == 0 {
                    "victim".to_string()
                } else {
                    format!("s-{w}-{}", i % 7)
                };
                match client.append(&stream, vec![event("Tick", i)], None).await {
                    Ok(r) => acked
                        .lock()
                        .expect("acked")
                        .push((r.ids[0].clone(), stream, r.partition, r.first_offset)),
                    Err(_) => failed += 1,
                }
            }
            failed
        }));
    }
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while acked.lock().expect("acked").len() < 30 {
        assert!(tokio::time::Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    c.node_mut(leader).kill();
    let mut failed = 0;
    for w in writers {
        failed += w.await.expect("writer");
    }
    let acked = acked.lock().expect("acked").clone();
    assert!(
        acked.len() as u64 + failed == 160 && acked.len() >= 150,
        "acked {} failed {failed}",
        acked.len()
    );

    // A retried append (same ids) is applied once: same positions.
    let (id, stream, p, off) = acked[0].clone();
    let again = client
        .append(
            &stream,
            vec![pb::EventData {
                id: id.clone(),
                ..event("Tick", 0)
            }],
            None,
        )
        .await
        .expect("retry");
    assert!(again.duplicate, "retry of {:?} answered {again:?}", acked[0]);
    assert_eq!((again.partition, again.first_offset), (p, off));

    // Every acked event once, at its position, the same on every replica.
    let bin = c.bin.clone();
    c.node_mut(leader).start(&bin);
    c.wait_converged().await;
    let logs: Vec<_> = {
        let mut v = Vec::new();
        for n in &c.nodes {
            v.push(partition_logs(n, partitions).await);
        }
        v
    };
    assert_eq!(logs[0], logs[1], "replicas 1 and 2 hold the same events");
    assert_eq!(logs[0], logs[2], "replicas 1 and 3 hold the same events");
    let mut seen = std::collections::HashSet::new();
    for log in &logs[0] {
        for (id, _, _) in log {
            assert!(seen.insert(id.clone()), "event {id} is stored twice");
        }
    }
    for (id, stream, p, off) in &acked {
        let at = &logs[0][*p as usize - 1][*off as usize];
        assert_eq!(
            (&at.0, &at.1),
            (id, stream),
            "acked event at partition {p} offset {off}"
        );
    }
    // Stream versions are dense per stream.
    let victim = client
        .read_stream(pb::ReadStreamRequest {
            stream: "victim".into(),
            ..Default::default()
        })
        .await
        .expect("read victim");
    let versions: Vec<u64> = victim.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=victim.stream_version).collect::<Vec<_>>());

    // The subscription (its node was killed) delivers every stored event
    // once, in offset order per partition.
    let total: usize = logs[0].iter().map(Vec::len).sum();
    let mut got: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    let mut n = 0;
    while n < total {
        let r = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, sub.next())
            .await
            .expect("subscription progress")
            .expect("subscription");
        for e in r.events {
            got.entry(e.partition).or_default().push(e.offset);
            n += 1;
        }
    }
    for (p, offs) in &got {
        assert_eq!(
            *offs,
            (0..offs.len() as u64).collect::<Vec<_>>(),
            "partition {p} delivered once, in order"
        );
        assert_eq!(offs.len(), logs[0][*p as usize - 1].len());
    }

    // Restarting every node keeps every event.
    for n in &mut c.nodes {
        n.kill();
    }
    for n in &mut c.nodes {
        n.start(&bin);
    }
    c.wait_converged().await;
    assert_eq!(
        partition_logs(&c.nodes[0], partitions).await,
        logs[0],
        "after a full restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscription_continues_from_its_acknowledged_position_and_bad_events_are_refused() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let bin = esf_bin();
    let eps = c.endpoints();
    let client = c.client();
    let mut a_ids = std::collections::BTreeSet::new();
    for i in 0..6 {
        let r = client
            .append(&format!("acct-{i}"), vec![event("A", i)], None)
            .await
            .expect("append A");
        a_ids.insert(r.ids[0].clone());
        client
            .append(&format!("acct-{i}"), vec![event("B", i)], None)
            .await
            .expect("append B");
    }

    // Bad input: a clear error naming the field, nothing written.
    let big = pb::EventData {
        data: format!("\"{}\"", "x".repeat(1 << 20)).into_bytes(),
        ..event("A", 0)
    };
    let err = client.append("acct-0", vec![big], None).await.expect_err("oversized");
    assert!(err.to_string().contains("append.events[0].data: the event is"), "{err}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["events", "append", "acct-0", "--type", "A", "--data", "{\"n\":"],
            "append.events[0].data: is not valid JSON",
        ),
        (
            vec!["events", "append", "acct-0", "--type", "A", "--id", "1234"],
            "append.events[0].id: \"1234\" is not a UUID",
        ),
        (
            vec!["events", "append", "acct-0", "--type", "A", "--expected-version", "1"],
            "stream \"acct-0\": expected version 1, actual 2",
        ),
        (
            vec![
                "events",
                "append",
                "acct-0",
                "--type",
                "A",
                "--expected-version",
                "no_stream",
            ],
            "expected version no_stream, actual 2",
        ),
        (
            vec!["events", "append", "", "--type", "A"],
            "append.stream: is required",
        ),
        (
            vec!["subscription", "consume", "nope"],
            "subscription \"nope\" does not exist",
        ),
        (vec!["subscription", "create", "a/b"], "name: '/' is not allowed"),
    ];
    for (args, want) in cases {
        let mut all = vec!["--endpoints", eps.as_str()];
        all.extend(args.iter());
        let (code, _, err) = cli(&bin, &all);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(err.contains(want), "{args:?}: stderr {err:?} should contain {want:?}");
    }
    let acct0 = client
        .read_stream(pb::ReadStreamRequest {
            stream: "acct-0".into(),
            ..Default::default()
        })
        .await
        .expect("read");
    assert_eq!(acct0.stream_version, 2, "nothing was written by the refused appends");

    // A durable subscription of type A, consumed in two runs of the CLI:
    // the second continues where the first acknowledged.
    let (code, _, err) = cli(
        &bin,
        &["--endpoints", &eps, "subscription", "create", "billing", "--type", "A"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "subscription", "create", "billing"]);
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    let ids_of = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                assert_eq!(v["type"], "A", "the filter applies: {v}");
                v["id"].as_str().expect("id").to_string()
            })
            .collect()
    };
    let consume = |n: &str| {
        cli(
            &bin,
            &[
                "--endpoints",
                &eps,
                "-o",
                "json",
                "subscription",
                "consume",
                "billing",
                "--count",
                n,
            ],
        )
    };
    let (code, out, err) = consume("4");
    assert_eq!(code, 0, "{err}");
    let first = ids_of(&out);
    let (code, out, err) = consume("2");
    assert_eq!(code, 0, "{err}");
    let second = ids_of(&out);
    assert_eq!(first.len(), 4);
    assert_eq!(second.len(), 2);
    let all: std::collections::BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(all, a_ids, "every A event once across the consumer restart");
    let (code, out, _) = cli(
        &bin,
        &["--endpoints", &eps, "-o", "json", "subscription", "info", "billing"],
    );
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(out.trim()).expect("info json");
    assert_eq!(info["type"], "A");

    // Two consumers of one name share the partitions.
    client
        .create_subscription("audit", "", "", false)
        .await
        .expect("create");
    let mut seen = Vec::new();
    let mut parts = Vec::new();
    for member in 0..2 {
        let mut sub = client.consume("audit", member, 2).await.expect("consume");
        let mut mine = std::collections::BTreeSet::new();
        loop {
            let r = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, sub.next())
                .await
                .expect("progress")
                .expect("next");
            for e in &r.events {
                mine.insert(e.partition);
                seen.push(e.id.clone());
            }
            if r.caught_up {
                break;
            }
        }
        parts.push(mine);
    }
    assert!(parts[0].is_disjoint(&parts[1]), "{parts:?}");
    assert_eq!(seen.len(), 12, "every event once over both consumers");
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "subscription", "delete", "audit"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(&bin, &["--endpoints", &eps, "subscription", "list"]);
    assert!(out.starts_with("billing ") && !out.contains("audit"), "{out}");
}

/// What the consumers of a group test saw: per consumer, its latest
/// share and the (partition, event id) pairs it received.
#[derive(Default)]
struct GroupSeen {
    assigned: BTreeMap<String, Vec<u32>>,
    events: Vec<(String, u32, String)>,
}

/// Runs group consumer `g` until aborted: records its share and events and
/// acknowledges each response.
fn drive(
    client: esf_client::Client,
    mut g: esf_client::GroupConsumer,
    seen: std::sync::Arc<std::sync::Mutex<GroupSeen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = g.consumer_id().to_string();
        loop {
            let r = g.next().await.expect("group consumer");
            {
                let mut s = seen.lock().expect("seen lock");
                s.assigned.insert(me.clone(), g.assigned().to_vec());
                for e in &r.events {
                    s.events.push((me.clone(), e.partition, e.id.clone()));
                }
            }
            let done: BTreeMap<u32, u64> = r.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
            if !done.is_empty() {
                client.ack("orders", &done).await.expect("ack");
            }
        }
    })
}

/// Polls `cond` on what the consumers saw until it holds.
async fn wait_seen(seen: &std::sync::Mutex<GroupSeen>, what: &str, cond: impl Fn(&GroupSeen) -> bool) {
    let deadline = tokio::time::Instant::now() + esf_cluster_tests::READY_DEADLINE;
    while !cond(&seen.lock().expect("seen lock")) {
        let s = seen.lock().expect("seen lock");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: shares {:?}, {} events",
            s.assigned,
            s.events.len()
        );
        drop(s);
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_shares_partitions_and_rebalances_when_a_member_dies() {
    let bin = esf_bin();
    let c = Cluster::start(&bin, 3);
    c.wait_converged().await;
    let client = c.client();
    client
        .create_subscription("orders", "", "", false)
        .await
        .expect("create");
    // Bad input names the field.
    let lease = client.lease_grant(5, 0).await.expect("lease").id;
    for (name, id, lease, want) in [
        ("orders", "a", 0, "lease_id: is required"),
        ("orders", "a", 987_654, "lease_id: lease 987654 does not exist"),
        ("orders", "a/b", lease, "consumer_id: '/' is not allowed"),
        ("nope", "a", lease, "subscription \"nope\" does not exist"),
    ] {
        let err = client.join_consumers(name, id, lease).await.expect_err(want);
        assert!(err.to_string().contains(want), "{err} should contain {want}");
    }
    assert!(
        client
            .consumers("orders")
            .await
            .expect("consumers")
            .consumer_ids
            .is_empty()
    );
    let err = client
        .ack("orders", &BTreeMap::from([(1, 999)]))
        .await
        .expect_err("an ack past the end");
    assert!(
        err.to_string()
            .contains("next_offsets[1]: 999 is beyond the end of partition 1 (0)"),
        "{err}"
    );

    let seen = std::sync::Arc::new(std::sync::Mutex::new(GroupSeen::default()));
    let a = client.consume_group("orders", "a", 2).await.expect("join a");
    let b = client.consume_group("orders", "b", 2).await.expect("join b");
    let task_a = drive(client.clone(), a, seen.clone());
    let task_b = drive(client.clone(), b, seen.clone());
    let all: Vec<u32> = (1..=8).collect();
    let split = |s: &GroupSeen| {
        let (Some(a), Some(b)) = (s.assigned.get("a"), s.assigned.get("b")) else {
            return false;
        };
        let mut both: Vec<u32> = a.iter().chain(b).copied().collect();
        both.sort_unstable();
        !a.is_empty() && !b.is_empty() && both == (1..=8).collect::<Vec<u32>>()
    };
    wait_seen(&seen, "a and b split the partitions", split).await;
    let (code, out, err) = cli(
        &bin,
        &["--endpoints", &c.endpoints(), "subscription", "consumers", "orders"],
    );
    assert_eq!((code, out.as_str()), (0, "a\nb\n"), "{err}");
    let mut ids = Vec::new();
    for i in 0..24 {
        let r = client
            .append(&format!("order-{i}"), vec![event("Order", i)], None)
            .await
            .expect("append");
        ids.push(r.ids[0].clone());
    }
    wait_seen(&seen, "every event delivered once", |s| s.events.len() >= 24).await;
    {
        let s = seen.lock().expect("seen lock");
        assert_eq!(s.events.len(), 24, "no duplicates while the group is stable");
        for (who, p, _) in &s.events {
            assert!(
                s.assigned[who].contains(p),
                "{who} got an event of partition {p} it does not own"
            );
        }
        assert!(s.events.iter().any(|e| e.0 == "a") && s.events.iter().any(|e| e.0 == "b"));
    }

    // Consumer a dies without leaving: when its lease expires, b takes
    // every partition from the acknowledged positions.
    task_a.abort();
    let _ = task_a.await;
    wait_seen(&seen, "b takes over", |s| s.assigned.get("b") == Some(&all)).await;
    for i in 24..40 {
        let r = client
            .append(&format!("order-{i}"), vec![event("Order", i)], None)
            .await
            .expect("append");
        ids.push(r.ids[0].clone());
    }
    let want: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    wait_seen(&seen, "b delivers the rest", |s| {
        let got: std::collections::BTreeSet<String> = s.events.iter().map(|e| e.2.clone()).collect();
        got == want
    })
    .await;
    assert_eq!(
        client.consumers("orders").await.expect("consumers").consumer_ids,
        vec!["b".to_string()]
    );
    task_b.abort();
    // Every acknowledged position is at the partition's end.
    let info = client
        .get_subscription("orders")
        .await
        .expect("get")
        .subscription
        .expect("info");
    // (The audit trail keeps appending to its partition after each ack, so
    // "the end" is the offset after the test's last event there.)
    let mut test_events = 0;
    for (p, position) in &info.positions {
        let events = esf_cluster_tests::read_whole_partition(&client, *p)
            .await
            .expect("read partition");
        let mine: Vec<u64> = events
            .iter()
            .filter(|e| !e.stream.starts_with('$'))
            .map(|e| e.offset)
            .collect();
        test_events += mine.len();
        let end = mine.last().map_or(0, |o| o + 1);
        assert!(
            *position >= end,
            "partition {p}: acknowledged up to {position}, events up to {end}: {info:?}"
        );
    }
    assert_eq!(test_events, 40, "{info:?}");
}

/// A stream name that lives in partition `p` of `count`.
fn stream_in(p: u32, count: u32) -> String {
    (0..)
        .map(|i| format!("placed-{i}"))
        .find(|s| esf_client::partition_of(s, count) == p)
        .expect("some stream lands in every partition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_keep_three_replicas_and_forward_to_them() {
    let bin = esf_bin();
    let mut c = Cluster::start(&bin, 5);
    c.wait_converged().await;
    // Placement: 8 partitions x 3 replicas over 5 nodes: 4 or 5 each, and
    // every node sees the same plan.
    let mut statuses = BTreeMap::new();
    for n in 1..=5u64 {
        let s = c.node(n).client().status_all().await;
        statuses.insert(n, s[0].1.as_ref().expect("status").clone());
    }
    for (n, s) in &statuses {
        let held = s.groups.iter().skip(1).filter(|g| g.held).count();
        assert!((4..=5).contains(&held), "node {n} holds {held} partitions: {s:?}");
        for g in s.groups.iter().skip(1) {
            assert_eq!(g.planned.len(), 3, "{g:?}");
            assert_eq!(
                g.held,
                g.planned.contains(n),
                "node {n} holds exactly what is planned: {g:?}"
            );
        }
    }
    // The CLI shows every partition across the cluster from one endpoint.
    let (code, out, err) = cli(
        &bin,
        &["--endpoints", &c.node(2).grpc, "-o", "json", "endpoint", "partitions"],
    );
    assert_eq!(code, 0, "endpoint partitions: {err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).expect("partitions json");
    assert_eq!(rows.len(), 8, "{out}");
    for r in &rows {
        let mut planned: Vec<u64> = serde_json::from_value(r["planned"].clone()).expect("planned");
        let voters: Vec<u64> = serde_json::from_value(r["voters"].clone()).expect("voters");
        planned.sort_unstable();
        assert_eq!(planned, voters, "{r}");
        assert!(voters.contains(&r["leader_id"].as_u64().expect("leader")), "{r}");
        let lag = r["lag"].as_object().expect("lag");
        assert_eq!(lag.len(), 3, "{r}");
        assert!(
            lag.values().all(|l| l.as_u64().is_some()),
            "every replica answered: {r}"
        );
    }
    let (code, out, err) = cli(&bin, &["--endpoints", &c.node(2).grpc, "endpoint", "partitions"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("PARTITION") && out.lines().count() == 9, "{out}");
    let eps: Vec<&str> = c.nodes.iter().map(|n| n.grpc.as_str()).collect();
    let (code, out, err) = cli(&bin, &["--endpoints", &eps.join(","), "endpoint", "health"]);
    assert_eq!(code, 0, "every node is healthy: {out} {err}");
    // A partition and a node without a replica of it.
    let (p, outsider) = (1..=8u32)
        .find_map(|p| {
            statuses
                .iter()
                .find(|(_, s)| !s.groups[p as usize].held)
                .map(|(n, _)| (p, *n))
        })
        .expect("with 5 nodes and 3 replicas some node lacks some partition");
    let planned = statuses[&outsider].groups[p as usize].planned.clone();
    let stream = stream_in(p, 8);
    // Everything through the outsider alone (a raw gRPC client: no client
    // routing), so the node forwards.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.node(outsider).grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the outsider");
    let mut raw = pb::events_client::EventsClient::new(channel);
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = raw
            .append(pb::AppendRequest {
                stream: stream.clone(),
                events: vec![event("Placed", i)],
                expected: None,
            })
            .await
            .expect("append through a node without a replica")
            .into_inner();
        assert_eq!((r.partition, r.first_offset, r.first_version), (p, i, i + 1));
        ids.push(r.ids[0].clone());
    }
    // A retry through it is a duplicate at the same position.
    let again = raw
        .append(pb::AppendRequest {
            stream: stream.clone(),
            events: vec![pb::EventData {
                id: ids[3].clone(),
                ..event("Placed", 3)
            }],
            expected: None,
        })
        .await
        .expect("retried append")
        .into_inner();
    assert!(again.duplicate && again.first_offset == 3, "{again:?}");
    for serializable in [false, true] {
        let r = raw
            .read_stream(pb::ReadStreamRequest {
                stream: stream.clone(),
                serializable,
                ..Default::default()
            })
            .await
            .expect("read through the outsider")
            .into_inner();
        assert_eq!(r.events.len(), 20, "serializable {serializable}");
        assert_eq!(r.stream_version, 20);
    }
    let got = raw
        .get(pb::GetEventRequest {
            id: ids[7].clone(),
            ..Default::default()
        })
        .await
        .expect("get by id through the outsider")
        .into_inner();
    assert_eq!(got.event.expect("event").offset, 7);
    // A query through the outsider: its partitions without a replica there
    // are asked of a replica elsewhere, pages of 3 follow the cursor, and
    // both orders return the 20 events exactly once.
    for descending in [false, true] {
        let (mut offsets, mut cursor) = (Vec::new(), String::new());
        loop {
            let r = raw
                .query(pb::QueryEventsRequest {
                    r#type: "Placed".into(),
                    partitions: vec![p],
                    limit: 3,
                    descending,
                    cursor: cursor.clone(),
                    explain: true,
                    ..Default::default()
                })
                .await
                .expect("query through the outsider")
                .into_inner();
            assert_eq!(r.explain.expect("explain").index, "type");
            offsets.extend(r.events.iter().map(|e| e.offset));
            cursor = r.cursor;
            if cursor.is_empty() {
                break;
            }
        }
        let mut want: Vec<u64> = (0..20).collect();
        if descending {
            want.reverse();
        }
        assert_eq!(offsets, want, "descending {descending}");
    }
    // Bad input is still refused with the field named.
    let bad = raw
        .append(pb::AppendRequest {
            stream: stream.clone(),
            events: vec![pb::EventData {
                data: b"{nope".to_vec(),
                ..event("Placed", 0)
            }],
            expected: None,
        })
        .await
        .expect_err("malformed JSON");
    assert!(bad.message().contains("append.events[0].data"), "{bad:?}");

    // A subscription through the outsider follows a replica elsewhere; when
    // that replica's node dies it continues on another, without a gap.
    let mut sub = raw
        .subscribe(pb::SubscribeRequest {
            partitions: vec![p],
            ..Default::default()
        })
        .await
        .expect("subscribe through the outsider")
        .into_inner();
    let mut seen: Vec<u64> = Vec::new();
    let mut caught_up = false;
    while !caught_up || seen.len() < 20 {
        let m = sub.message().await.expect("subscription").expect("open");
        assert!(!m.canceled, "{m:?}");
        caught_up |= m.caught_up;
        seen.extend(m.events.iter().map(|e| e.offset));
    }
    let leader = c.group_leader(planned[0], p).await;
    assert!(planned.contains(&leader), "the leader of {p} is a planned replica");
    c.node_mut(leader).kill();
    let client = c.client();
    for i in 20..30 {
        client
            .append(&stream, vec![event("Placed", i)], None)
            .await
            .expect("append after the replica's node died");
    }
    while seen.len() < 30 {
        let m = sub.message().await.expect("subscription").expect("open");
        assert!(!m.canceled, "{m:?}");
        seen.extend(m.events.iter().map(|e| e.offset));
    }
    assert_eq!(seen, (0..30).collect::<Vec<u64>>(), "every event once, in order");
    assert!(
        c.node(outsider)
            .log()
            .contains("subscription followed on another replica"),
        "the outsider's subscription moved to another replica"
    );

    // A snapshot served by the meta leader holds every partition, also the
    // ones it has no replica of (fetched from a node that has).
    c.node_mut(leader).start(&bin);
    c.wait_converged().await;
    let logs = partition_logs(c.node(outsider), 8).await;
    for n in 1..=5 {
        assert_eq!(partition_logs(c.node(n), 8).await, logs, "node {n} answers the same");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("placed.snap").display().to_string();
    let (code, _, err) = cli(&bin, &["--endpoints", &c.node(1).grpc, "snapshot", "save", &file]);
    assert_eq!(code, 0, "save: {err}");
    let (code, out, err) = cli(&bin, &["-o", "json", "snapshot", "inspect", &file]);
    assert_eq!(code, 0, "inspect: {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("inspect json");
    let per_partition: Vec<u64> = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .skip(1)
        .map(|g| g["summary"]["events"].as_u64().expect("events"))
        .collect();
    assert_eq!(
        per_partition,
        logs.iter().map(|l| l.len() as u64).collect::<Vec<_>>(),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_and_is_replaced() {
    let Some(net) = esf_cluster_tests::netns::Net::create_or_skip(3) else {
        return;
    };
    let bin = esf_bin();
    let c = Cluster::start_in(&bin, 3, net);
    let leader = c.wait_ready().await;
    c.client().put("before", "1").await.expect("put before the partition");
    let net = c.net.as_ref().expect("netns cluster");
    for other in (1..=3).filter(|n| *n != leader) {
        net.cut_both(leader, other).expect("cut");
    }
    // A client that only reaches the old leader: no write is acknowledged,
    // no linearizable read answered.
    let lonely = esf_client::Client::new(
        &[c.node(leader).grpc.as_str()],
        esf_client::ClientOptions::new().with_retry_deadline(std::time::Duration::from_secs(4)),
    )
    .expect("client");
    let w = lonely.put("during", "lost?").await;
    assert!(w.is_err(), "an isolated leader acknowledged a write: {w:?}");
    let r = lonely.get("before").await;
    assert!(r.is_err(), "an isolated leader answered a linearizable read: {r:?}");
    // The others elect a new leader and take writes.
    let others: Vec<&str> = c
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.grpc.as_str())
        .collect();
    let majority = esf_client::Client::new(&others, Default::default()).expect("client");
    majority.put("during", "2").await.expect("the majority takes writes");
    let new_leader = c.group_leader(others_id(leader), 0).await;
    assert!(new_leader != 0 && new_leader != leader, "a new leader: {new_leader}");
    // Healed: the old leader follows and has every acknowledged write.
    c.net.as_ref().expect("netns cluster").heal().expect("heal");
    c.wait_converged().await;
    let (_, kv) = c
        .node(leader)
        .client()
        .get("during")
        .await
        .expect("read through the old leader");
    assert_eq!(kv.expect("the write made during the partition").value, b"2");
}

/// Some node other than `leader` (of 3).
fn others_id(leader: u64) -> u64 {
    if leader == 1 { 2 } else { 1 }
}

/// The add-on scenario of testing.md: a node whose WAL is damaged while it
/// is down refuses to start (RocksDB's default recovery would have opened
/// without every write after the damaged record), the cluster goes on, and
/// the node is rebuilt from its peers with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_damaged_wal_refuses_to_start_and_is_rebuilt_from_its_peers() {
    let mut c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let victim = c.other_than(leader);
    for i in 0..300 {
        c.client().put(format!("k{i:03}"), i.to_string()).await.expect("put");
    }
    c.wait_converged().await;
    let n = c.node_mut(victim);
    n.kill();
    let db = n.dir.join("db");
    let mut wal: Vec<_> = std::fs::read_dir(&db)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    wal.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    let file = wal.first().expect("a WAL file").clone();
    let mut bytes = std::fs::read(&file).expect("read WAL");
    assert!(bytes.len() > 4096, "the writes are in the WAL: {} bytes", bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).expect("damage WAL");
    // The other two go on.
    for i in 300..320 {
        c.client()
            .put(format!("k{i:03}"), i.to_string())
            .await
            .expect("put without the victim");
    }
    let bin = c.bin.clone();
    let n = c.node_mut(victim);
    n.start(&bin);
    let status = n.wait_exit();
    assert!(!status.success(), "a node with a damaged WAL must not start");
    let log = n.log();
    assert!(
        log.contains("Corruption") && log.contains("is damaged") && log.contains("esf member remove"),
        "{log}"
    );
    // Rebuild from the peers: remove, empty the data dir, add it again.
    let eps = c
        .nodes
        .iter()
        .filter(|n| n.id != victim)
        .map(|n| n.grpc.clone())
        .collect::<Vec<_>>()
        .join(",");
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "member", "remove", &victim.to_string()]);
    assert_eq!(code, 0, "member remove: {err}");
    let n = c.node_mut(victim);
    std::fs::remove_dir_all(&n.dir).expect("empty the data dir");
    n.add_args(&["--auto-join=false"]);
    n.start(&bin);
    c.node(victim).wait_log("waiting to be added").await;
    let addr = c.node(victim).grpc.clone();
    let (code, _, err) = cli(
        &bin,
        &["--endpoints", &eps, "member", "add", &victim.to_string(), &addr],
    );
    assert_eq!(code, 0, "member add: {err}");
    let (code, _, err) = cli(&bin, &["--endpoints", &eps, "member", "promote", &victim.to_string()]);
    assert_eq!(code, 0, "member promote: {err}");
    c.wait_converged().await;
    let kvs = c
        .node(victim)
        .client()
        .range(pb::RangeRequest {
            range: Some(esf_client::key_range_prefix(b"k".to_vec())),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("range on the rebuilt node's own replica")
        .kvs;
    assert_eq!(kvs.len(), 320, "the rebuilt node holds every write");
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(
            kv.value,
            i.to_string().into_bytes(),
            "{:?}",
            String::from_utf8_lossy(&kv.key)
        );
    }
}

/// `esf -o json events query ARGS` against `eps`, as JSON.
fn query_json(eps: &str, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--endpoints", eps, "-o", "json", "events", "query"];
    full.extend_from_slice(args);
    let (code, out, err) = cli(&esf_bin(), &full);
    assert_eq!(code, 0, "events query {args:?}: {err}");
    serde_json::from_str(&out).expect("json")
}

/// `esf events query` pages through every matching event across the
/// partitions, through the index its filter calls for, and names the field
/// of bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_query_pages_across_partitions_through_indexes() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let client = c.client();
    for i in 0..240u64 {
        let e = pb::EventData {
            r#type: format!("T{}", i % 3),
            correlation_id: format!("order-{}", i % 12),
            data: format!(
                "{{\"amount\":{i},\"tier\":\"{}\"}}",
                if i % 2 == 0 { "gold" } else { "silver" }
            )
            .into_bytes(),
            ..Default::default()
        };
        client
            .append(&format!("q-{}", i % 24), vec![e], None)
            .await
            .expect("append");
    }
    let mut all = Vec::new();
    for p in 1..=8 {
        all.extend(esf_cluster_tests::read_whole_partition(&client, p).await.expect("read"));
    }
    assert_eq!(all.len(), 240);
    let amount = |e: &pb::RecordedEvent| -> u64 {
        serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()["amount"]
            .as_u64()
            .unwrap()
    };
    let eps = c.endpoints();
    // Pages of 7 through the CLI, following the printed cursor.
    let page_through = |args: &[&str]| -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let (mut events, mut explains, mut cursor) = (Vec::new(), Vec::new(), String::new());
        loop {
            let mut full = vec!["--limit", "7", "--explain"];
            full.extend_from_slice(args);
            if !cursor.is_empty() {
                full.extend(["--cursor", cursor.as_str()]);
            }
            let v = query_json(&eps, &full);
            events.extend(v["events"].as_array().unwrap().iter().cloned());
            explains.push(v["explain"].clone());
            cursor = v["cursor"].as_str().unwrap().to_string();
            if cursor.is_empty() {
                return (events, explains);
            }
        }
    };
    let ids = |events: &[serde_json::Value]| -> Vec<String> {
        events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    let expect = |pred: &dyn Fn(&pb::RecordedEvent) -> bool, desc: bool| -> Vec<String> {
        let mut want: Vec<&pb::RecordedEvent> = all.iter().filter(|e| pred(e)).collect();
        want.sort_by_key(|e| (e.timestamp_ms, e.partition, e.offset));
        if desc {
            want.reverse();
        }
        want.iter().map(|e| e.id.clone()).collect()
    };
    // By type, oldest first: the type index, reading only that type.
    let (got, explains) = page_through(&["--type", "T1"]);
    assert_eq!(ids(&got), expect(&|e| e.r#type == "T1", false));
    assert!(explains.iter().all(|x| x["index"] == "type"), "{explains:?}");
    // A page reads at most limit + 1 rows per partition, all of the type.
    for x in &explains {
        assert!(x["rows_examined"].as_u64().unwrap() <= 8 * 8, "{x}");
    }
    // In one page, the type index reads exactly the 80 rows of its type.
    let v = query_json(&eps, &["--type", "T1", "--limit", "1000", "--explain"]);
    assert_eq!(v["events"].as_array().unwrap().len(), 80);
    assert_eq!(v["explain"]["rows_examined"], 80, "{v}");
    assert_eq!(v["cursor"], "");
    // By correlation id with a predicate, newest first.
    let (got, explains) = page_through(&["--correlation-id", "order-5", "--where", "amount >= 100", "--desc"]);
    assert_eq!(
        ids(&got),
        expect(&|e| e.correlation_id == "order-5" && amount(e) >= 100, true)
    );
    assert!(explains.iter().all(|x| x["index"] == "correlation"), "{explains:?}");
    // A time window (the middle third of the timestamps) with `in`.
    let mut ts: Vec<u64> = all.iter().map(|e| e.timestamp_ms).collect();
    ts.sort_unstable();
    let (from, to) = (ts[80], ts[160]);
    let (f, t) = (from.to_string(), to.to_string());
    let (got, explains) = page_through(&["--from", &f, "--to", &t, "--where", "tier in [\"gold\"]"]);
    assert_eq!(
        ids(&got),
        expect(
            &|e| e.timestamp_ms >= from && e.timestamp_ms < to && amount(e) % 2 == 0,
            false
        )
    );
    assert!(explains.iter().all(|x| x["index"] == "time"), "{explains:?}");
    // Bad input names the field; a cursor only continues its own query.
    let (code, _, err) = cli(
        &esf_bin(),
        &["--endpoints", &eps, "events", "query", "--where", "amount like 3"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("query.predicates[0].op") && err.contains("like"), "{err}");
    let (code, _, err) = cli(
        &esf_bin(),
        &["--endpoints", &eps, "events", "query", "--where", "amount > {"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("query.predicates[0].value"), "{err}");
    let cursor = query_json(&eps, &["--type", "T0", "--limit", "3"])["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!cursor.is_empty());
    let (code, _, err) = cli(
        &esf_bin(),
        &[
            "--endpoints",
            &eps,
            "events",
            "query",
            "--type",
            "T2",
            "--cursor",
            &cursor,
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("query.cursor") && err.contains("another query"), "{err}");
}
