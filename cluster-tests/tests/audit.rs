//! The audit trail on real `esf` processes: one event per revision, never
//! lost or doubled, through a SIGKILL of the meta leader.

use std::collections::BTreeMap;

use esf_client::pb;
use esf_cluster_tests::{Cluster, POLL_INTERVAL, READY_DEADLINE, cli, esf_bin};

/// Every event of the `$audit` stream, oldest first.
async fn audit_events(client: &esf_client::Client) -> Vec<pb::RecordedEvent> {
    let mut out: Vec<pb::RecordedEvent> = Vec::new();
    loop {
        let r = client
            .read_stream(pb::ReadStreamRequest {
                stream: "$audit".into(),
                from_version: out.len() as u64 + 1,
                ..Default::default()
            })
            .await
            .expect("read $audit");
        if r.events.is_empty() {
            return out;
        }
        out.extend(r.events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revision_has_one_audit_event_after_the_meta_leader_is_killed_mid_burst() {
    let mut c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let client = c.client();
    // Eight writers, 60 puts each; the meta leader is killed once 150
    // revisions exist, while they keep writing.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..60 {
                    let key = format!("audit/{w}/{i}");
                    if let Ok(r) = client.put(key.clone(), format!("v{i}")).await {
                        acked.push((r.header.expect("header").revision, key, format!("v{i}")));
                    }
                }
                acked
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let (h, _) = client.get("audit/0/0").await.unwrap_or_default();
        if h.revision >= 150 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst did not reach revision 150"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    c.node_mut(leader).kill();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(acked.len() >= 400, "only {} of 480 puts acknowledged", acked.len());
    let bin = c.bin.clone();
    c.node_mut(leader).start(&bin);
    c.wait_converged().await;
    let revision = c.wait_audit_caught_up().await;

    let events = audit_events(&client).await;
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e.metadata["revision"].parse().expect("revision metadata"))
        .collect();
    assert_eq!(
        revisions,
        (1..=revision).collect::<Vec<_>>(),
        "one audit event per revision 1..={revision}, in order"
    );
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "distinct ids");
    // Each acknowledged put is its revision's event, with its key and the
    // size of its value (never the value: see node/src/audit.rs).
    let by_revision: BTreeMap<u64, &pb::RecordedEvent> = revisions.iter().copied().zip(&events).collect();
    for (rev, key, value) in &acked {
        let e = by_revision[rev];
        assert_eq!(e.r#type, "esf.config.put", "revision {rev}");
        assert_eq!(&e.correlation_id, key, "revision {rev}");
        let data: serde_json::Value = serde_json::from_slice(&e.data).expect("audit data is JSON");
        assert_eq!(data["revision"], *rev);
        assert_eq!(data["changes"][0]["key"], key.as_str());
        assert_eq!(data["changes"][0]["value_bytes"], value.len());
        assert!(
            data["changes"][0].get("value").is_none(),
            "revision {rev} copies a config value"
        );
    }

    // The CLI: the last three, and from a revision on.
    let (code, out, err) = cli(
        &c.bin,
        &["--endpoints", &c.endpoints(), "audit", "tail", "--limit", "3"],
    );
    assert_eq!(code, 0, "{err}");
    let firsts: Vec<&str> = out.lines().filter_map(|l| l.split(' ').next()).collect();
    let want: Vec<String> = (revision - 2..=revision).map(|r| r.to_string()).collect();
    assert_eq!(firsts, want, "{out}");
    let from = (revision - 9).to_string();
    let (code, out, err) = cli(
        &c.bin,
        &[
            "--endpoints",
            &c.endpoints(),
            "-o",
            "json",
            "audit",
            "tail",
            "--from-revision",
            &from,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let got: Vec<u64> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["data"]["revision"].as_u64().expect("revision")
        })
        .collect();
    assert_eq!(got, (revision - 9..=revision).collect::<Vec<_>>());

    // Clients cannot write ESF's streams.
    let err = client
        .append(
            "$audit",
            vec![pb::EventData {
                r#type: "forged".into(),
                data: b"{}".to_vec(),
                ..Default::default()
            }],
            None,
        )
        .await
        .expect_err("a client append to $audit");
    assert!(err.to_string().contains("append.stream"), "{err}");
    // A key's changes are found by correlation id.
    let (code, out, err) = cli(
        &c.bin,
        &[
            "--endpoints",
            &c.endpoints(),
            "-o",
            "json",
            "events",
            "query",
            "--correlation-id",
            "audit/3/7",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // (A put whose answer was lost may still have committed.)
    let found = out.lines().count();
    if acked.iter().any(|(_, k, _)| k == "audit/3/7") {
        assert_eq!(found, 1, "{out}");
    } else {
        assert!(found <= 1, "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_never_passes_the_audit_relay_and_registry_changes_are_audited() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let client = c.client();
    for i in 0..20 {
        client.put(format!("k{i}"), "v").await.expect("put");
    }
    let revision = c.wait_audit_caught_up().await;
    // Up to the relayed revision compaction works; above, the relay has not
    // been (there is nothing above: a compaction to the current revision is
    // allowed, one past it is in the future).
    let (code, _, err) = cli(
        &c.bin,
        &["--endpoints", &c.endpoints(), "kv", "compact", &revision.to_string()],
    );
    assert_eq!(code, 0, "{err}");
    let lease = client.lease_grant(60, 0).await.expect("lease").id;
    client
        .register(pb::Instance {
            service: "api".into(),
            id: "i1".into(),
            address: "10.0.0.1:80".into(),
            lease,
            ..Default::default()
        })
        .await
        .expect("register");
    client.lease_revoke(lease).await.expect("revoke");
    let last = c.wait_audit_caught_up().await;
    let events = audit_events(&client).await;
    let tail: Vec<(&str, serde_json::Value)> = events
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(|e| (e.r#type.as_str(), serde_json::from_slice(&e.data).expect("json")))
        .collect();
    assert_eq!(last, revision + 2);
    assert_eq!(tail[0].0, "esf.registry.changed");
    assert_eq!(tail[0].1["changes"][0]["service"], "api");
    assert_eq!(tail[0].1["changes"][0]["address"], "10.0.0.1:80");
    assert_eq!(tail[0].1["changes"][0]["op"], "put");
    assert_eq!(tail[1].0, "esf.registry.changed");
    assert_eq!(tail[1].1["changes"][0]["op"], "delete");
    assert_eq!(tail[1].1["changes"][0]["key"], "registry/api/i1");
}
