//! No client can pass as a node (issue 18, node-to-node trust): a request
//! marked `esf-forwarded` and every Raft RPC need the cluster's peer
//! secret, so a plain client that sets the internal headers is refused,
//! and the audit trail it tried to forge stays intact.

use std::time::Duration;

use esf_client::pb;
use esf_cluster_tests::{Cluster, POLL_INTERVAL, READY_DEADLINE, esf_bin};
use tonic::codegen::tokio_stream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

/// A raw gRPC channel to `addr`, as any process that reaches the port has.
async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect")
}

/// `msg` with the internal headers a node sets, as an attacker would set
/// them: `esf-forwarded`, and a guessed `esf-peer-auth` when `auth` is
/// given.
fn as_node<T>(msg: T, auth: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("esf-forwarded", "1".parse().expect("value"));
    if let Some(a) = auth {
        r.metadata_mut().insert("esf-peer-auth", a.parse().expect("value"));
    }
    r
}

fn refused_as_unauthenticated<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Err(s) => assert_eq!(s.code(), Code::Unauthenticated, "{what}: {s:?}"),
        Ok(v) => panic!("{what}: accepted from a plain client: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_pass_as_a_node() {
    let c = Cluster::start(&esf_bin(), 3);
    let leader = c.wait_ready().await;
    let client = c.client();
    client.put("cfg/a", "1").await.expect("put");
    // A write through a follower still works: nodes forward with the secret.
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    c.node(follower)
        .client()
        .put("cfg/b", "2")
        .await
        .expect("put through a follower");
    let cluster_id = client.cluster_id().expect("the client learned the cluster id");

    // Wait until the audit trail holds both writes.
    let audit = |client: esf_client::Client| async move {
        client
            .read_stream(pb::ReadStreamRequest {
                stream: "$audit".into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("read $audit")
    };
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    let before = loop {
        let r = audit(client.clone()).await;
        if r.events.len() >= 2 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "audit trail has {:?}", r.events);
        tokio::time::sleep(POLL_INTERVAL).await;
    };

    for node in [leader, follower] {
        let ch = channel(&c.node(node).grpc).await;
        let mut events = pb::events_client::EventsClient::new(ch.clone());
        let forged = pb::AppendRequest {
            stream: "$audit".into(),
            events: vec![pb::EventData {
                r#type: "esf.config.put".into(),
                data: br#"{"revision":18446744073709551615}"#.to_vec(),
                metadata: [("revision".to_string(), u64::MAX.to_string())].into_iter().collect(),
                ..Default::default()
            }],
            expected: None,
        };
        // Without the header, the `$`-stream guard answers.
        let plain = events.append(Request::new(forged.clone())).await;
        assert_eq!(
            plain.expect_err("a client may not write $audit").code(),
            Code::InvalidArgument,
            "node {node}"
        );
        // With it, and with a guessed secret, the node refuses to trust it.
        for auth in [None, Some("not-the-cluster-secret-at-all")] {
            refused_as_unauthenticated(
                &format!("node {node}: forged append to $audit ({auth:?})"),
                events.append(as_node(forged.clone(), auth)).await,
            );
            refused_as_unauthenticated(
                &format!("node {node}: delete of $audit ({auth:?})"),
                events
                    .delete_stream(as_node(
                        pb::DeleteStreamRequest {
                            stream: "$audit".into(),
                            expected: None,
                        },
                        auth,
                    ))
                    .await,
            );
        }
        let mut config = pb::config_client::ConfigClient::new(ch.clone());
        refused_as_unauthenticated(
            &format!("node {node}: forwarded put"),
            config.put(as_node(pb::PutRequest::new("cfg/forged", "x"), None)).await,
        );

        // Every Raft RPC, from a process that knows the cluster id (every
        // response carries it) but not the peer secret.
        let mut raft = pb::raft_transport_client::RaftTransportClient::new(ch);
        let msg = || pb::RaftMessage {
            group: 0,
            cluster_id: cluster_id.clone(),
            payload: Vec::new(),
        };
        refused_as_unauthenticated("append_entries", raft.append_entries(msg()).await);
        refused_as_unauthenticated("vote", raft.vote(msg()).await);
        refused_as_unauthenticated("pre_vote", raft.pre_vote(msg()).await);
        refused_as_unauthenticated("transfer_leader", raft.transfer_leader(msg()).await);
        refused_as_unauthenticated(
            "stream_append",
            raft.stream_append(tokio_stream::iter(vec![msg()])).await,
        );
        refused_as_unauthenticated(
            "install_snapshot",
            raft.install_snapshot(tokio_stream::iter(vec![pb::SnapshotChunk {
                group: 0,
                cluster_id: cluster_id.clone(),
                done: true,
                ..Default::default()
            }]))
            .await,
        );
    }

    // The trail is what the relay wrote, and the relay goes on: a later
    // change is audited after the earlier ones.
    let after = audit(client.clone()).await;
    assert_eq!(after.events[..before.events.len()], before.events[..], "$audit changed");
    assert!(
        after.events.iter().all(|e| e.r#type.starts_with("esf.")),
        "{:?}",
        after.events
    );
    client.put("cfg/c", "3").await.expect("put");
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let r = audit(client.clone()).await;
        if r.events.iter().any(|e| e.correlation_id == "cfg/c") {
            assert!(
                r.events
                    .iter()
                    .all(|e| e.metadata.get("revision").is_some_and(|v| v.len() < 10)),
                "a forged revision reached the trail: {:?}",
                r.events
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay stopped auditing: {:?}",
            r.events
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
