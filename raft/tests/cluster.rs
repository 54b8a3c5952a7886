//! In-process 3-node clusters over a network that can be cut, on real
//! RocksDB stores whose crashes drop unsynced writes.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use esf_raft::Error;
use esf_raft::command::{Command, KeyRange, Op, PutRequest, RangeRequest};
use esf_raft::group::Consistency;
use esf_raft::openraft::async_runtime::WatchReceiver;
use support::{CONVERGE, TestCluster, test_config};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_replication_and_reads_everywhere() {
    let c = TestCluster::start(3, test_config(None)).await;
    let leader = c.wait_leader(None).await;
    let mut last = 0;
    for i in 0..30 {
        last = c.put(leader, &format!("k{i:02}"), &format!("v{i}")).await.expect("put");
    }
    assert_eq!(last, 30, "one revision per put");
    // A follower refuses writes and names the leader.
    let follower = *c.ids.iter().find(|&&i| i != leader).expect("a follower");
    match c.put(follower, "x", "y").await {
        Err(Error::NotLeader { leader: Some(l), .. }) => assert_eq!(l, leader),
        other => panic!("follower write must be NotLeader, got {other:?}"),
    }
    // Linearizable reads on the leader see every write; headers are consistent.
    let req = RangeRequest::prefix("k");
    let (h, r) = c
        .group(leader)
        .range(&req, Consistency::Linearizable)
        .await
        .expect("range");
    assert_eq!(r.count, 30);
    assert_eq!(h.revision, 30);
    assert_eq!(h.cluster_id, "test-cluster");
    assert_eq!(h.node_id, leader);
    // Followers serve the same data once applied.
    c.assert_converged().await;
    for &id in &c.ids {
        assert_eq!(c.local_get(id, "k07").await.as_deref(), Some(&b"v7"[..]), "node {id}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_loses_no_acknowledged_write() {
    let c = Arc::new(Mutex::new(TestCluster::start(3, test_config(None)).await));
    let acked: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);

    let writer = {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        let count_tx = count_tx;
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("w{i:05}");
                let res = {
                    let guard = c.lock().await;
                    let leader = guard
                        .nodes
                        .keys()
                        .copied()
                        .find(|&id| guard.group(id).raft().is_leader());
                    match leader {
                        Some(l) => {
                            let g = guard.group(l).clone();
                            drop(guard);
                            let cmd = Command::new(Op::Put(PutRequest {
                                key: key.clone().into(),
                                value: key.clone().into(),
                                lease: 0,
                                prev_kv: false,
                            }));
                            Some(g.write(cmd).await)
                        }
                        None => None,
                    }
                };
                match res {
                    Some(Ok(_)) => {
                        acked.lock().unwrap().insert(key.clone(), key);
                        count_tx.send_modify(|n| *n += 1);
                        i += 1;
                    }
                    // Unknown outcome or no leader: try a fresh key.
                    Some(Err(_)) | None => {
                        i += 1;
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
    };

    // Waits until `more` further writes are acknowledged.
    let wait_acks = |more: usize| {
        let mut rx = count_rx.clone();
        async move {
            let target = *rx.borrow() + more;
            tokio::time::timeout(CONVERGE, rx.wait_for(|n| *n >= target))
                .await
                .unwrap_or_else(|_| panic!("writes stalled below {target}"))
                .expect("writer alive");
        }
    };
    wait_acks(50).await;
    let old = c.lock().await.wait_leader(None).await;
    let copy = c.lock().await.crash(old).await;
    let new_leader = c.lock().await.wait_leader(Some(old)).await;
    assert_ne!(new_leader, old);
    wait_acks(50).await;
    c.lock().await.start_node(old, copy).await;
    wait_acks(20).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.expect("writer");

    let c = c.lock().await;
    c.assert_converged().await;
    let acked = acked.lock().unwrap().clone();
    for &id in &c.ids {
        let (_, r) = c
            .group(id)
            .range(&RangeRequest::prefix("w"), Consistency::Serializable)
            .await
            .expect("range");
        let have: BTreeMap<String, String> = r
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8(kv.key).unwrap(), String::from_utf8(kv.value).unwrap()))
            .collect();
        for (k, v) in &acked {
            assert_eq!(have.get(k), Some(v), "node {id} lost acknowledged write {k}");
        }
    }
}

/// Snapshot pacing: with steps of 1 byte, a group's next policy snapshot
/// waits (its size in bytes) x the interval, so after the first one none
/// comes within 200 entries; with pacing off one comes every 20. Both
/// clusters converge with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larger_snapshots_wait_longer() {
    for step_bytes in [0, 1] {
        let c = TestCluster::start_paced(3, test_config(Some(20)), step_bytes).await;
        let leader = c.wait_leader(None).await;
        for i in 0..200 {
            c.put(leader, &format!("p{i:03}"), "v").await.expect("put");
        }
        c.assert_converged().await;
        let snap = |id| {
            c.group(id)
                .raft()
                .metrics()
                .borrow_watched()
                .snapshot
                .as_ref()
                .map_or(0, |l| l.index)
        };
        if step_bytes == 0 {
            c.group(leader)
                .raft()
                .wait(Some(CONVERGE))
                .metrics(
                    |m| m.snapshot.as_ref().map_or(0, |l| l.index) >= 180,
                    "a recent snapshot",
                )
                .await
                .expect("snapshots every 20 entries without pacing");
        } else {
            let first = snap(leader);
            assert!(
                (1..=60).contains(&first),
                "only the first snapshot (none before it: due at once), got {first}"
            );
        }
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot_after_purge() {
    let c = TestCluster::start(3, test_config(Some(20))).await;
    let leader = c.wait_leader(None).await;
    let lagger = *c.ids.iter().find(|&&i| i != leader).expect("follower");
    c.router.isolate(lagger, &c.ids);
    for i in 0..120 {
        c.put(leader, &format!("s{i:03}"), "v")
            .await
            .expect("put while one follower is cut off");
    }
    // The leader has purged logs the lagger never received.
    let lag_last = c
        .group(lagger)
        .raft()
        .metrics()
        .borrow_watched()
        .last_log_index
        .unwrap_or(0);
    c.group(leader)
        .raft()
        .wait(Some(CONVERGE))
        .metrics(
            |m| m.purged.as_ref().map_or(0, |p| p.index) > lag_last,
            "leader purged past the lagger",
        )
        .await
        .expect("leader purges");
    c.router.heal();
    c.assert_converged().await;
    let m = c.group(lagger).raft().metrics().borrow_watched().clone();
    assert!(m.snapshot.is_some(), "lagger installed a snapshot: {m:?}");
    assert_eq!(c.local_get(lagger, "s119").await.as_deref(), Some(&b"v"[..]));
    let (_, r) = c
        .group(lagger)
        .range(&RangeRequest::prefix("s"), Consistency::Serializable)
        .await
        .expect("range");
    assert_eq!(r.count, 120);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_or_serve_linearizable_reads() {
    let c = TestCluster::start(3, test_config(None)).await;
    let old = c.wait_leader(None).await;
    c.put(old, "before", "1").await.expect("put");
    c.router.isolate(old, &c.ids);
    // The minority side's write must not be acknowledged.
    let r = c.put(old, "minority", "x").await;
    assert!(r.is_err(), "isolated leader acknowledged a write: {r:?}");
    let read = c
        .group(old)
        .range(&RangeRequest::key("before"), Consistency::Linearizable)
        .await;
    assert!(read.is_err(), "isolated leader served a linearizable read");
    // The majority elects a new leader and commits.
    let others: Vec<u64> = c.ids.iter().copied().filter(|&i| i != old).collect();
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let new = loop {
        if let Some(&l) = others.iter().find(|&&i| c.group(i).raft().is_leader()) {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "majority elected no leader");
        let mut rx = c.group(others[0]).raft().metrics();
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    };
    c.put(new, "majority", "y").await.expect("majority commits");
    c.router.heal();
    c.assert_converged().await;
    for &id in &c.ids {
        assert_eq!(
            c.local_get(id, "minority").await,
            None,
            "unacknowledged minority write surfaced on node {id}"
        );
        assert_eq!(c.local_get(id, "majority").await.as_deref(), Some(&b"y"[..]));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expires_without_keepalives_and_survives_with_them_across_leader_change() {
    let mut c = TestCluster::start(3, test_config(None)).await;
    let leader = c.wait_leader(None).await;
    let grant = |id: u64| Command::new(Op::LeaseGrant { id, ttl_secs: 2 });
    c.group(leader).write(grant(100)).await.expect("grant kept lease");
    c.group(leader).write(grant(200)).await.expect("grant dropped lease");
    for (key, lease) in [("kept", 100), ("dropped", 200)] {
        let cmd = Command::new(Op::Put(PutRequest {
            key: key.into(),
            value: b"1".to_vec(),
            lease,
            prev_kv: false,
        }));
        c.group(leader).write(cmd).await.expect("put with lease");
    }
    // Keep lease 100 alive across a leader crash; let 200 lapse.
    let start = tokio::time::Instant::now();
    let mut current = leader;
    let mut crashed = false;
    while start.elapsed() < Duration::from_secs(6) {
        if !crashed && start.elapsed() > Duration::from_secs(1) {
            c.crash_and_restart(current).await;
            current = c.wait_leader(None).await;
            crashed = true;
        }
        match c.group(current).lease_keepalive(100).await {
            Ok(_) => {}
            Err(Error::NotLeader { .. }) => current = c.wait_leader(None).await,
            Err(e) => panic!("keepalive failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(crashed);
    c.assert_converged().await;
    let leader = c.wait_leader(None).await;
    let get = |k: &'static str| RangeRequest {
        range: KeyRange::Key(k.into()),
        revision: 0,
        limit: 0,
        count_only: false,
        keys_only: false,
    };
    let (_, kept) = c
        .group(leader)
        .range(&get("kept"), Consistency::Linearizable)
        .await
        .expect("read");
    assert_eq!(kept.count, 1, "key of a kept-alive lease must stay");
    let (_, dropped) = c
        .group(leader)
        .range(&get("dropped"), Consistency::Linearizable)
        .await
        .expect("read");
    assert_eq!(dropped.count, 0, "key of a lapsed lease must be deleted");
    assert!(c.group(leader).store().lease(200).expect("lease read").is_none());
    c.shutdown().await;
}

/// Concurrent writes to the leader are coalesced into fewer Raft entries
/// than writes, and each keeps its own answer: its own revision, its own
/// previous value, its own txn outcome (only one of the racing
/// create-if-absent txns wins, even when they share an entry), and its own
/// session (a retry of an applied write is answered, not applied again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_keep_their_own_answers() {
    use esf_raft::command::{Compare, CompareOp, CompareTarget, OpResult, SessionRef, TxnOp, TxnRequest};
    let c = TestCluster::start(3, test_config(None)).await;
    let leader = c.wait_leader(None).await;
    let group = c.group(leader).clone();
    let before = c.applied(leader);
    let rev0 = group.store().state().revision;
    const PUTS: u64 = 40;
    const RACERS: u64 = 24;
    let mut tasks = Vec::new();
    for i in 0..PUTS {
        let g = group.clone();
        tasks.push(tokio::spawn(async move {
            let cmd = Command {
                session: Some(SessionRef {
                    client_id: 1000 + i,
                    seq: 1,
                    acked_below: 1,
                }),
                op: Op::Put(PutRequest {
                    key: format!("k{}", i % 8).into_bytes(),
                    value: format!("v{i}").into_bytes(),
                    lease: 0,
                    prev_kv: true,
                }),
            };
            let first = g.write(cmd.clone()).await.expect("put");
            let retry = g.write(cmd).await.expect("retried put");
            (first, retry)
        }));
    }
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let g = group.clone();
        racers.push(tokio::spawn(async move {
            let txn = Op::Txn(TxnRequest {
                compares: vec![Compare {
                    key: b"winner".to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Version(0),
                }],
                success: vec![TxnOp::Put(PutRequest {
                    key: b"winner".to_vec(),
                    value: format!("racer {i}").into_bytes(),
                    lease: 0,
                    prev_kv: false,
                })],
                failure: vec![],
            });
            g.write(Command::new(txn)).await.expect("txn")
        }));
    }
    let mut revisions = std::collections::BTreeSet::new();
    for t in tasks {
        let ((h, first), (h2, retry)) = t.await.expect("put task");
        assert!(matches!(first.result, OpResult::Put { .. }), "{first:?}");
        assert_eq!(first, retry, "a retry gets the first answer");
        assert_eq!(h.revision, h2.revision);
        assert!(
            revisions.insert(first.revision),
            "revision {} given twice",
            first.revision
        );
    }
    let mut won = 0;
    for t in racers {
        let (_, r) = t.await.expect("racer task");
        match r.result {
            OpResult::Txn { succeeded: true, .. } => {
                won += 1;
                assert!(revisions.insert(r.revision), "revision {} given twice", r.revision);
            }
            OpResult::Txn { succeeded: false, .. } => {}
            other => panic!("txn answered {other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one create-if-absent txn wins");
    let rev1 = group.store().state().revision;
    assert_eq!(
        rev1 - rev0,
        PUTS + 1,
        "one revision per applied put and the winning txn"
    );
    assert_eq!(revisions.len() as u64, PUTS + 1);
    assert_eq!(
        (*revisions.first().unwrap(), *revisions.last().unwrap()),
        (rev0 + 1, rev1)
    );
    // 2 x 40 puts and 24 txns: coalesced, they took fewer entries.
    let entries = c.applied(leader) - before;
    let writes = 2 * PUTS + RACERS;
    assert!(
        entries < writes,
        "{writes} writes took {entries} entries: none were coalesced"
    );
    c.assert_converged().await;
    c.shutdown().await;
}
