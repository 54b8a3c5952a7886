//! Short Jepsen-style runs against real `esf` processes (CI runs each for
//! a few seconds; longer runs by hand with scripts/jepsen.sh).

use std::time::Duration;

use esf_jepsen::history::{Kind, Record};
use esf_jepsen::runner::{Hosts, Nemesis, RunConfig, Verdict, Workload, judge, run};

fn config(nemeses: Vec<Nemesis>, secs: u64, out: &std::path::Path) -> RunConfig {
    RunConfig {
        esf_bin: esf_cluster_tests::esf_bin(),
        workload: Workload::Register,
        nemeses,
        hosts: Hosts::Loopback,
        nodes: 3,
        time: Duration::from_secs(secs),
        keys: 3,
        concurrency: 6,
        out: out.to_path_buf(),
        tls: false,
        failpoints: Vec::new(),
    }
}

/// The `esf` binary built with the test-only `failpoints` feature, beside
/// the normal one (scripts/test.sh builds it as `esf-failpoints`).
fn failpoints_bin() -> std::path::PathBuf {
    let bin = esf_cluster_tests::esf_bin().with_file_name("esf-failpoints");
    assert!(
        bin.exists(),
        "{} not found: scripts/test.sh builds it (cargo build -p esf-node --features failpoints, copied as esf-failpoints)",
        bin.display()
    );
    bin
}

/// The checkers catch what the failpoints break: linearizable reads that
/// skip the read index, under leader partitions, are not linearizable;
/// appends that skip deduplication, under leader kills, store a retried
/// event twice. Both runs must come out INVALID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_builds_are_caught_as_invalid() {
    let bin = failpoints_bin();
    if !netns_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(vec![Nemesis::Partition], 20, &dir.path().join("local-reads"));
    cfg.esf_bin = bin.clone();
    cfg.hosts = Hosts::Netns;
    cfg.failpoints = vec!["local-reads".into()];
    let report = run(&cfg).await.expect("run");
    assert_eq!(report.verdict, Verdict::Invalid, "local-reads: {}", report.summary());

    let mut cfg = config(vec![Nemesis::Kill], 12, &dir.path().join("no-dedup"));
    cfg.esf_bin = bin;
    cfg.workload = Workload::Events;
    cfg.failpoints = vec!["no-dedup".into()];
    let report = run(&cfg).await.expect("run");
    assert_eq!(report.verdict, Verdict::Invalid, "no-dedup: {}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_stay_linearizable_while_leaders_are_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(vec![Nemesis::Kill], 14, dir.path());
    let report = run(&cfg).await.expect("run");
    assert_eq!(report.verdict, Verdict::Valid, "{}", report.summary());
    assert!(report.faults.iter().any(|f| f.contains("kill")), "{}", report.summary());
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).expect("history");
    assert!(history.lines().count() > 1000, "a real history was written");
    let summary = std::fs::read_to_string(dir.path().join("summary.txt")).expect("summary");
    assert!(summary.trim_end().ends_with("verdict: VALID"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_stays_once_in_place_while_leaders_and_the_whole_cluster_are_killed() {
    // kill-all found the same-term leader restore bug (see
    // node/src/server.rs, `enable_leader_restore`): it must stay VALID.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(vec![Nemesis::Kill, Nemesis::KillAll], 14, dir.path());
    cfg.workload = Workload::Events;
    let report = run(&cfg).await.expect("run");
    assert_eq!(report.verdict, Verdict::Valid, "{}", report.summary());
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).expect("history");
    assert!(history.contains("\"deliver\""), "the subscription delivered events");
    let finals = std::fs::read_to_string(dir.path().join("final-reads.jsonl")).expect("final reads");
    assert_eq!(finals.lines().count(), 3 * 8, "every partition read on every node");
}

/// Scenarios 1 and 6: the leader cut off from its peers (clients still
/// reach it), and paused past the election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_stay_linearizable_through_leader_partitions_and_pauses() {
    scenario(Workload::Register, vec![Nemesis::Partition, Nemesis::Pause], 3, 16).await;
}

/// Whether network namespaces can be made here; if not, says SKIPPED
/// (a failure under CI, where they must work).
fn netns_or_skip() -> bool {
    let Some(why) = esf_cluster_tests::netns::unavailable() else {
        return true;
    };
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "SKIPPED under CI counts as a failure: {why}"
    );
    eprintln!("SKIPPED: {why}");
    false
}

/// Runs one scenario briefly and asserts it is VALID with every nemesis
/// taking effect; `None` (SKIPPED, which fails under CI) when it needs
/// network namespaces this machine cannot make.
async fn scenario(
    workload: Workload,
    nemeses: Vec<Nemesis>,
    nodes: u64,
    secs: u64,
) -> Option<(esf_jepsen::runner::Report, tempfile::TempDir)> {
    let netns = nemeses.iter().any(|n| n.needs_netns());
    if netns && !netns_or_skip() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(nemeses.clone(), secs, dir.path());
    cfg.workload = workload;
    cfg.nodes = nodes;
    if netns {
        cfg.hosts = Hosts::Netns;
    }
    let report = run(&cfg).await.expect("run");
    assert_eq!(report.verdict, Verdict::Valid, "{}", report.summary());
    for n in nemeses {
        assert!(
            report.faults.iter().any(|f| f.contains(&format!(" {} node", n.name()))),
            "{} took effect: {}",
            n.name(),
            report.summary()
        );
    }
    Some((report, dir))
}

/// Scenarios 2 and 3: a follower cut off (a minority of one, clients on
/// both sides), a one-way partition of the leader, a flapping partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_stay_linearizable_through_minority_one_way_and_flapping_partitions() {
    let nemeses = vec![Nemesis::PartitionFollower, Nemesis::OneWay, Nemesis::Flap];
    scenario(Workload::Register, nemeses, 3, 22).await;
}

/// Scenario 2: five nodes, a follower bridging two halves that cannot
/// reach each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_stay_linearizable_through_a_bridge_partition_of_five_nodes() {
    scenario(Workload::Register, vec![Nemesis::Bridge], 5, 12).await;
}

/// Scenario 7: a follower the leader's log was purged past catches up by
/// snapshot, and is killed again during the install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_while_installing_a_snapshot_catches_up_with_the_same_state() {
    let (report, _dir) = scenario(Workload::Register, vec![Nemesis::Snapshot], 3, 12)
        .await
        .expect("loopback");
    assert!(
        report.faults.iter().any(|f| f.contains("snapshot(s) installed")),
        "{}",
        report.summary()
    );
}

/// Scenario 8: a voter removed, wiped and added back, each change while
/// the leader is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_while_the_leader_is_killed_keep_registers_linearizable() {
    scenario(Workload::Register, vec![Nemesis::Member], 3, 8).await;
}

/// Autopilot on (3 voters, a spare): killed leaders stay down until
/// autopilot removes them (promoting the spare), then rejoin wiped as the
/// next spare, with no operator; registers stay linearizable throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_replaces_killed_voters_while_registers_stay_linearizable() {
    let Some((report, _dir)) = scenario(Workload::Register, vec![Nemesis::Failover], 4, 40).await else {
        return;
    };
    // The second failover, at least, replaced a voter by the spare.
    let failovers = report.faults.iter().filter(|f| f.contains(" failover node")).count();
    assert!(failovers >= 2, "{}", report.summary());
}

/// Scenario 9: every link slow and lossy (netem, or on a kernel without
/// it a token bucket and random loss): no event lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_degraded_network_once_in_place() {
    scenario(Workload::Events, vec![Nemesis::Netem], 3, 12).await;
}

/// Scenario 10: the leader's wall clock jumps forward and back (and
/// leaders are killed): no early lease expiry (a registered instance stays
/// visible while its lease certainly runs), no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_instances_stay_visible_under_lease_while_the_leader_clock_jumps() {
    scenario(Workload::Registry, vec![Nemesis::Clock, Nemesis::Kill], 3, 16).await;
}

/// Watches connected to nodes that are killed and paused: every revision
/// once, in order, on every watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_revision_once_in_order_while_their_nodes_are_killed() {
    scenario(Workload::Watch, vec![Nemesis::Kill, Nemesis::Pause], 3, 14).await;
}

fn rec(process: u64, kind: Kind, f: &str, value: serde_json::Value, t: u64) -> Record {
    Record {
        process,
        kind,
        f: f.into(),
        key: "jepsen/r0".into(),
        value,
        time_ns: t,
        node: String::new(),
        error: String::new(),
    }
}

#[test]
fn the_verdict_needs_evidence_and_fails_on_a_stale_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(vec![], 1, dir.path());
    cfg.keys = 1;
    // Enough acknowledged writes, then a read of an old value: INVALID.
    let mut h = Vec::new();
    let mut t = 0;
    for v in 1..=25 {
        h.push(rec(v, Kind::Invoke, "write", v.into(), t));
        h.push(rec(v, Kind::Ok, "write", v.into(), t + 1));
        t += 2;
    }
    h.push(rec(100, Kind::Invoke, "read", serde_json::Value::Null, t));
    h.push(rec(100, Kind::Ok, "read", 3.into(), t + 1));
    let r = judge(&h, &[], &cfg).expect("judge");
    assert_eq!(r.verdict, Verdict::Invalid, "{}", r.summary());
    assert!(r.anomalies[0].contains("not linearizable"), "{}", r.summary());
    // The same history without the stale read: VALID.
    let r = judge(&h[..h.len() - 2], &[], &cfg).expect("judge");
    assert_eq!(r.verdict, Verdict::Valid, "{}", r.summary());
    // Too few operations: INCONCLUSIVE, whatever the checker says.
    let r = judge(&h[..10], &[], &cfg).expect("judge");
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.summary());
    // A kill nemesis whose kill was not followed by a new leader: no
    // evidence that the fault took effect.
    cfg.nemeses = vec![Nemesis::Kill];
    let faults = vec![
        serde_json::json!({"fault": "kill", "node": 1, "time_ns": 5, "end_time_ns": 9, "evidence": false, "detail": "node 0 leads", "errors": []}),
    ];
    let r = judge(&h[..h.len() - 2], &faults, &cfg).expect("judge");
    assert_eq!(r.verdict, Verdict::Inconclusive, "{}", r.summary());
    assert!(
        r.summary().contains("kill of node 1 shows no effect"),
        "{}",
        r.summary()
    );
}

#[test]
fn diverged_replicas_and_two_leaders_in_a_term_are_anomalies() {
    use esf_client::pb;
    use esf_jepsen::runner::check_replicas;
    let view = |node: u64, hash: u64, applied: u64, leaders: &[(u64, u64)]| pb::ConsistencyResponse {
        node_id: node,
        hashes: vec![pb::GroupHash {
            group: 0,
            applied_index: applied,
            hash,
        }],
        leaders: leaders
            .iter()
            .map(|(term, leader_id)| pb::TermLeader {
                group: 0,
                term: *term,
                leader_id: *leader_id,
            })
            .collect(),
        ..Default::default()
    };
    let same = [view(1, 7, 10, &[(1, 1)]), view(2, 7, 10, &[(1, 1), (2, 2)])];
    assert_eq!(check_replicas(&same), (vec![], vec![]));
    let diverged = [view(1, 7, 10, &[]), view(2, 8, 10, &[])];
    assert!(check_replicas(&diverged).0[0].contains("replicas differ at applied index 10"));
    let two_leaders = [view(1, 7, 10, &[(3, 1)]), view(2, 7, 10, &[(3, 2)])];
    assert!(check_replicas(&two_leaders).0[0].contains("term 3 had leaders [1, 2]"));
    let behind = [view(1, 7, 10, &[]), view(2, 9, 12, &[])];
    let (anomalies, missing) = check_replicas(&behind);
    assert!(anomalies.is_empty(), "different indexes are not compared");
    assert!(missing[0].contains("did not reach one applied index"), "{missing:?}");
}

#[test]
fn a_lost_doubled_or_reordered_audit_event_is_an_anomaly() {
    use esf_jepsen::runner::check_audit;
    assert!(check_audit(&[1, 2, 3, 4], 4).is_empty());
    assert!(check_audit(&[], 0).is_empty());
    let lost = check_audit(&[1, 2, 4], 4);
    assert!(
        lost.iter().any(|a| a.contains("without an event") && a.contains("[3]")),
        "{lost:?}"
    );
    let doubled = check_audit(&[1, 2, 2, 3], 3);
    assert!(doubled.iter().any(|a| a.contains("several events: [2]")), "{doubled:?}");
    let reordered = check_audit(&[1, 3, 2], 3);
    assert!(
        reordered.iter().any(|a| a.contains("revision 2 after 3")),
        "{reordered:?}"
    );
    let invented = check_audit(&[1, 2, 3], 2);
    assert!(invented.iter().any(|a| a.contains("do not exist: [3]")), "{invented:?}");
}
