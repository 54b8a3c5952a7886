//! Declared field indexes on real `esf` processes, through the CLI: built
//! for events appended before the declaration, used by `eq` queries (as
//! `explain` shows), gone after a drop; bad fields name the field.

use esf_client::pb;
use esf_cluster_tests::{Cluster, POLL_INTERVAL, READY_DEADLINE, cli, esf_bin};

fn order(n: u64) -> pb::EventData {
    pb::EventData {
        r#type: "OrderPlaced".into(),
        data: format!("{{\"sku\":\"sku-{}\",\"amount\":{}}}", n % 10, n).into_bytes(),
        ..Default::default()
    }
}

/// `esf -o json events query ARGS --explain`: (event data, explain).
fn query(c: &Cluster, args: &[&str]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let eps = c.endpoints();
    let mut all = vec![
        "--endpoints",
        eps.as_str(),
        "-o",
        "json",
        "events",
        "query",
        "--explain",
        "--limit",
        "1000",
    ];
    all.extend_from_slice(args);
    let (code, out, err) = cli(&c.bin, &all);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().expect("a line")).expect("json");
    let data = v["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    (data, v["explain"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_field_index_serves_eq_queries_for_old_and_new_events() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let client = c.client();
    let eps = c.endpoints();
    for n in 0..200 {
        client
            .append(&format!("orders-{}", n % 16), vec![order(n)], None)
            .await
            .expect("append before the index");
    }
    // Before: the time index, every row examined.
    let (before, explain) = query(&c, &["--where", "sku eq \"sku-3\""]);
    assert_eq!(before.len(), 20);
    assert_eq!(explain["index"], "time");
    assert_eq!(explain["rows_examined"], 200 + audit_rows(&c).await);

    for bad in ["", "a..b"] {
        let (code, _, err) = cli(&c.bin, &["--endpoints", &eps, "events", "index", "create", bad]);
        assert_ne!(code, 0);
        assert!(err.contains("index.field"), "{err}");
    }
    let (code, _, err) = cli(&c.bin, &["--endpoints", &eps, "events", "index", "create", "sku"]);
    assert_eq!(code, 0, "{err}");
    // Every partition of every node builds it (backfill of the 200).
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let mut ready = true;
        for n in &c.nodes {
            let (code, out, _) = cli(
                &c.bin,
                &["--endpoints", &n.grpc, "-o", "json", "events", "index", "list"],
            );
            assert_eq!(code, 0);
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one index");
            assert_eq!(v["field"], "sku");
            ready &= v["partitions_building"] == 0 && v["partitions_pending"] == 0;
        }
        if ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the index was not built everywhere"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    for n in 200..240 {
        client
            .append(&format!("orders-{}", n % 16), vec![order(n)], None)
            .await
            .expect("append after the index");
    }
    // After: the field index, only the matching rows.
    let (after, explain) = query(&c, &["--where", "sku eq \"sku-3\""]);
    assert_eq!(after.len(), 24, "20 backfilled and 4 appended since");
    assert!(after.iter().all(|d| d["sku"] == "sku-3"));
    assert_eq!(explain["index"], "field:sku");
    assert_eq!(explain["rows_examined"], 24);
    // With another predicate the index narrows and the rest filters.
    let (both, explain) = query(&c, &["--where", "sku eq \"sku-3\"", "--where", "amount ge 100"]);
    assert_eq!(both.len(), 14);
    assert_eq!(explain["index"], "field:sku");
    // A range predicate is not served by it.
    let (_, explain) = query(&c, &["--type", "OrderPlaced", "--where", "amount lt 10"]);
    assert_eq!(explain["index"], "type");

    let (code, _, err) = cli(&c.bin, &["--endpoints", &eps, "events", "index", "drop", "sku"]);
    assert_eq!(code, 0, "{err}");
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let (rows, explain) = query(&c, &["--where", "sku eq \"sku-3\""]);
        if explain["index"] == "time" {
            assert_eq!(rows.len(), 24);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the index was not dropped: {explain}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let (_, out, _) = cli(&c.bin, &["--endpoints", &eps, "events", "index", "list"]);
    assert_eq!(out, "");
}

/// Events of the audit trail (every partition's time index has them too).
async fn audit_rows(c: &Cluster) -> u64 {
    c.wait_audit_caught_up().await;
    let r = c
        .client()
        .read_stream(pb::ReadStreamRequest {
            stream: "$audit".into(),
            backward: true,
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("read $audit");
    r.stream_version
}

/// A linearizable query through a node that does not lead the partition
/// is answered from that node's replica once it applied the leader's read
/// index: an event acknowledged just before is always found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_through_a_follower_sees_every_event_acknowledged_before_it() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let writer = c.nodes[0].client();
    for i in 0..40 {
        let id = format!("fr-{i}");
        writer
            .append(
                &format!("follow-{i}"),
                vec![pb::EventData {
                    r#type: "Followed".into(),
                    correlation_id: id.clone(),
                    data: b"{}".to_vec(),
                    ..Default::default()
                }],
                None,
            )
            .await
            .expect("append");
        for n in &c.nodes[1..] {
            let r = n
                .client()
                .query_events(pb::QueryEventsRequest {
                    correlation_id: id.clone(),
                    explain: true,
                    ..Default::default()
                })
                .await
                .expect("query");
            assert_eq!(r.events.len(), 1, "node {} missed {id}", n.id);
            assert_eq!(r.explain.expect("explain").index, "correlation");
        }
    }
}
