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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_node_with_empty_data_dir_is_refused() {
    let mut c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let victim = c.nodes.iter().map(|n| n.id).max().unwrap();
    let n = c.node_mut(victim);
    n.kill();
    std::fs::remove_dir_all(&n.dir).expect("wipe data dir");
    let bin = c.bin.clone();
    let n = c.node_mut(victim);
    n.start(&bin);
    let status = n.child.as_mut().unwrap().wait().expect("node exits");
    n.child = None;
    assert!(!status.success(), "a wiped known node must refuse to start");
    assert!(
        n.log().contains("already a member of cluster") && n.log().contains("esf member remove"),
        "{}",
        n.log()
    );
}
