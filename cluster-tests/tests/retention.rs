//! Retention on real `esf` processes, through the CLI: a prefix rule
//! removes its streams' old events on every replica and from every read;
//! other streams stay; bad rules name the field.

use esf_client::pb;
use esf_cluster_tests::{Cluster, POLL_INTERVAL, READY_DEADLINE, cli, esf_bin, read_whole_partition};

fn event(t: &str, n: u64) -> pb::EventData {
    pb::EventData {
        r#type: t.into(),
        data: format!("{{\"n\":{n}}}").into_bytes(),
        correlation_id: format!("c{n}"),
        ..Default::default()
    }
}

/// `esf events retention ARGS` against the cluster: (exit code, stdout,
/// stderr).
fn retention(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let eps = c.endpoints();
    let mut all = vec!["--endpoints", eps.as_str(), "events", "retention"];
    all.extend_from_slice(args);
    cli(&c.bin, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_rule_removes_old_events_everywhere_and_leaves_the_rest() {
    let c = Cluster::start_with(&esf_bin(), 3, &["--retention-interval-ms", "200"]);
    c.wait_converged().await;
    let client = c.client();
    let eps = c.endpoints();
    for n in 0..30 {
        client
            .append(&format!("tmp-{}", n % 3), vec![event("Scratch", n)], None)
            .await
            .expect("append tmp");
        client
            .append(&format!("keep-{}", n % 3), vec![event("Kept", n)], None)
            .await
            .expect("append keep");
    }
    // Bad rules are refused, naming the field.
    let (code, _, err) = retention(&c, &["set", "--max-age", "10"]);
    assert_ne!(code, 0);
    assert!(err.contains("max_age") && err.contains("unit"), "{err}");
    let (code, _, err) = retention(&c, &["set", "--prefix", "tmp-", "--max-bytes", "1MiB"]);
    assert_ne!(code, 0);
    assert!(err.contains("retention.max_bytes"), "{err}");
    let (code, _, err) = retention(&c, &["set", "--max-age", "5ms"]);
    assert_ne!(code, 0);
    assert!(err.contains("retention.max_age_ms") && err.contains("minimum"), "{err}");

    let (code, out, err) = retention(&c, &["set", "--prefix", "tmp-", "--max-age", "1s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tmp- max_age_ms=1000"), "{out}");
    let (code, out, _) = cli(
        &c.bin,
        &["--endpoints", &eps, "-o", "json", "events", "retention", "list"],
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        r#"{"max_age_ms":1000,"max_bytes":0,"stream_prefix":"tmp-"}"#
    );

    // Within a few passes after the events are a second old, every tmp-
    // event is gone from every replica.
    let partitions = c.client().status_all().await[0]
        .1
        .as_ref()
        .expect("status")
        .groups
        .len() as u32
        - 1;
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let mut left = 0;
        for n in &c.nodes {
            for p in 1..=partitions {
                left += read_whole_partition(&n.client(), p)
                    .await
                    .expect("read partition")
                    .iter()
                    .filter(|e| e.stream.starts_with("tmp-"))
                    .count();
            }
        }
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} tmp- events left on the replicas"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Every other event is there, on every replica.
    for n in &c.nodes {
        let mut kept = 0;
        for p in 1..=partitions {
            kept += read_whole_partition(&n.client(), p)
                .await
                .expect("read partition")
                .iter()
                .filter(|e| e.stream.starts_with("keep-"))
                .count();
        }
        assert_eq!(kept, 30, "node {}", n.id);
    }
    // Reads say where the stream now starts; queries and gets never return
    // a removed event.
    let (code, out, err) = cli(&c.bin, &["--endpoints", &eps, "events", "read", "tmp-0"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "");
    assert!(err.contains("removed by retention"), "{err}");
    let r = client
        .read_stream(pb::ReadStreamRequest {
            stream: "tmp-0".into(),
            ..Default::default()
        })
        .await
        .expect("read tmp-0");
    assert_eq!((r.stream_version, r.first_version), (10, 11), "all 10 removed");
    let (code, out, err) = cli(
        &c.bin,
        &[
            "--endpoints",
            &eps,
            "-o",
            "json",
            "events",
            "query",
            "--type",
            "Scratch",
            "--explain",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().expect("a line")).expect("json");
    assert_eq!(v["events"].as_array().map(Vec::len), Some(0), "{out}");
    assert_eq!(v["explain"]["rows_examined"], 0, "the type index rows went too: {out}");
    let (code, out, _) = cli(
        &c.bin,
        &["--endpoints", &eps, "-o", "json", "events", "query", "--type", "Kept"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().expect("a line")).expect("json");
    assert_eq!(v["events"].as_array().map(Vec::len), Some(30), "{out}");
    // The rule change is in the audit trail; clearing it works.
    let (code, out, _) = cli(&c.bin, &["--endpoints", &eps, "audit", "tail", "--limit", "50"]);
    assert_eq!(code, 0);
    assert!(out.contains("esf.retention.changed retention/tmp-="), "{out}");
    let (code, _, err) = retention(&c, &["clear", "--prefix", "tmp-"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = retention(&c, &["list"]);
    assert_eq!(out, "");
}
