//! A subscriber that does not read for a while is not canceled: its feeds
//! wait while its buffer (16 responses) is full, and when it reads again
//! it gets every event, in order, without a gap. (The transport's own
//! buffers absorb much of the unread data, so this checks delivery, not
//! the node's memory bound; docs/benchmarks.md shows the latter.)

use esf_client::pb;
use esf_cluster_tests::{Cluster, esf_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_not_canceled_and_misses_nothing() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let client = c.client();
    // One partition's streams only, so its feed must queue one response
    // per append while nobody reads.
    let partition = 1;
    let mut sub = client
        .subscribe(pb::SubscribeRequest {
            partitions: vec![partition],
            stream_prefix: "held-".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe");
    // The first response fixes the start offsets.
    let first = sub.message().await.expect("first response").expect("open");
    assert!(first.events.is_empty() && !first.canceled);
    // 60 appends (far more than the 16 queued responses) of 10 events of
    // 8 KiB (4.8 MiB) to
    // streams of that partition, while the subscriber reads nothing.
    let streams: Vec<String> = (0..)
        .map(|i| format!("held-{i}"))
        .filter(|s| esf_client::partition_of(s, 8) == partition)
        .take(3)
        .collect();
    let mut appended = Vec::new();
    for i in 0..60u32 {
        let stream = &streams[i as usize % streams.len()];
        let events = (0..10)
            .map(|j| pb::EventData {
                r#type: "Held".into(),
                data: format!("{{\"n\":{},\"pad\":\"{}\"}}", i * 10 + j, "x".repeat(8 << 10)).into_bytes(),
                ..Default::default()
            })
            .collect();
        client.append(stream, events, None).await.expect("append");
        appended.extend((0..10).map(|j| i * 10 + j));
    }
    // Now it reads: every event, in append order, and no cancel.
    let mut seen = Vec::new();
    while seen.len() < appended.len() {
        let resp = tokio::time::timeout(esf_cluster_tests::READY_DEADLINE, sub.message())
            .await
            .expect("the subscription keeps delivering")
            .expect("stream")
            .expect("not ended");
        assert!(!resp.canceled, "canceled: {}", resp.cancel_reason);
        for e in resp.events {
            let v: serde_json::Value = serde_json::from_slice(&e.data).expect("json");
            seen.push(v["n"].as_u64().expect("n") as u32);
        }
    }
    assert_eq!(seen, appended);
}
