//! A Jepsen-style run against a real cluster: concurrent logical processes
//! drive a workload through esf-client while a nemesis injects faults; the
//! history and the nemesis log are written as JSON lines and checked, and
//! the run ends with a verdict that needs evidence:
//!
//! - `INVALID`: a checker found an anomaly;
//! - `INCONCLUSIVE`: no anomaly, but too little evidence (a fault that did
//!   not take effect, too few acknowledged operations per key, too many
//!   operations with an unknown outcome);
//! - `VALID`: no anomaly, with that evidence.
//!
//! Nodes run as real `esf` processes on loopback (the cluster-tests
//! harness). Workloads: `register` (per-key read, write of unique values,
//! compare-and-set, checked for linearizability) and `events` (appends of
//! unique events to streams over every partition, re-appended once by the
//! next process after an unknown outcome; a subscription resumed across
//! node loss; a final read of every partition on every node; checked by
//! the queue checker). Nemesis: `kill` (SIGKILL the meta leader, restart it
//! after 0-3 s, in a loop) or `none`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use esf_client::{Client, ClientOptions, pb};
use esf_cluster_tests::Cluster;
use serde_json::json;

use crate::history::{Kind, Record, pair, write_jsonl};
use crate::register::{self, KeyVerdict};

/// Fewest acknowledged operations per key (register) or partition
/// (events) for a verdict.
pub const MIN_OK_PER_KEY: usize = 20;
/// Streams the events workload appends to (spread over the partitions).
pub const EVENT_STREAMS: usize = 32;
/// One append in this many re-sends an acknowledged event.
pub const REAPPEND_ONE_IN: u64 = 20;
/// Largest share of operations with an unknown outcome for a verdict.
pub const MAX_INFO_SHARE: f64 = 0.25;
/// Deadline of one client operation (attempts and retries included).
pub const OP_DEADLINE: Duration = Duration::from_secs(3);
/// Pause between two faults.
pub const KILL_INTERVAL: Duration = Duration::from_secs(4);
/// How long a partition lasts once the majority has a new leader (and a
/// follower partition or netem in all).
pub const PARTITION_HOLD: Duration = Duration::from_secs(3);
/// Cut/heal cycles of the flapping partition.
pub const FLAP_CYCLES: usize = 5;
/// Half a cycle of the flapping partition.
pub const FLAP_PERIOD: Duration = Duration::from_millis(300);
/// The degraded network of the netem nemesis (every node's link).
pub const NETEM_SPEC: &str = "delay 100ms 50ms loss 10% reorder 25% 50%";
/// Least round trip of a status call that shows netem took effect.
pub const NETEM_MIN_RTT: Duration = Duration::from_millis(100);
/// How long a killed node may take to be replaced as leader.
pub const NEW_LEADER_DEADLINE: Duration = Duration::from_secs(15);

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Per-key registers.
    Register,
    /// Event appends, reads and a subscription.
    Events,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "register" => Ok(Workload::Register),
            "events" => Ok(Workload::Events),
            other => Err(format!("workload: {other:?} is not one of: register, events")),
        }
    }
}

/// What goes wrong (several take turns). Network faults need netns hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// SIGKILL the meta leader, restart it after 0-3 s. Evidence: another
    /// node leads.
    Kill,
    /// Cut the meta leader off from the other nodes (clients still reach
    /// it) until another leads, then [`PARTITION_HOLD`] more. Evidence:
    /// another node leads.
    Partition,
    /// Cut a follower off (a minority of one) for [`PARTITION_HOLD`].
    /// Evidence: the leader commits past what the follower applied.
    PartitionFollower,
    /// The meta leader can receive but not send to the other nodes.
    /// Evidence: another node leads.
    OneWay,
    /// Cut the leader off and heal, [`FLAP_CYCLES`] times every
    /// [`FLAP_PERIOD`]. Evidence: every cut and heal applied.
    Flap,
    /// SIGSTOP the meta leader until another node leads, then SIGCONT.
    /// Evidence: another node leads.
    Pause,
    /// Every link delayed, lossy and reordered ([`NETEM_SPEC`]) for
    /// [`PARTITION_HOLD`]. Evidence: a status call takes at least
    /// [`NETEM_MIN_RTT`].
    Netem,
    /// SIGKILL every node at once, restart them all after 0-3 s.
    /// Evidence: no node answered while down, and a leader is elected
    /// after the restart.
    KillAll,
}

impl Nemesis {
    /// Its name on the command line and in the nemesis log.
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Partition => "partition",
            Nemesis::PartitionFollower => "partition-follower",
            Nemesis::OneWay => "one-way",
            Nemesis::Flap => "flap",
            Nemesis::Pause => "pause",
            Nemesis::Netem => "netem",
            Nemesis::KillAll => "kill-all",
        }
    }

    /// Whether it needs network namespaces.
    pub fn needs_netns(self) -> bool {
        !matches!(self, Nemesis::Kill | Nemesis::Pause | Nemesis::KillAll)
    }

    const ALL: [Nemesis; 8] = [
        Nemesis::KillAll,
        Nemesis::Kill,
        Nemesis::Partition,
        Nemesis::PartitionFollower,
        Nemesis::OneWay,
        Nemesis::Flap,
        Nemesis::Pause,
        Nemesis::Netem,
    ];
}

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosts {
    /// Loopback ports of this host (no network faults).
    Loopback,
    /// A network namespace and address per node (needs root).
    Netns,
}

impl std::str::FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Nemesis::ALL.into_iter().find(|n| n.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Nemesis::ALL.iter().map(|n| n.name()).collect();
            format!("nemesis: {s:?} is not one of: {}, none", names.join(", "))
        })
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `esf` binary.
    pub esf_bin: PathBuf,
    /// Workload.
    pub workload: Workload,
    /// Faults (empty: none), taking turns.
    pub nemeses: Vec<Nemesis>,
    /// Where the nodes run.
    pub hosts: Hosts,
    /// How long the workload runs.
    pub time: Duration,
    /// Keys of the register workload.
    pub keys: usize,
    /// Concurrent logical processes.
    pub concurrency: usize,
    /// Where the history, the nemesis log and the summary go.
    pub out: PathBuf,
}

/// The verdict of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No anomaly, enough evidence.
    Valid,
    /// An anomaly.
    Invalid,
    /// No anomaly, too little evidence.
    Inconclusive,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Valid => "VALID",
            Verdict::Invalid => "INVALID",
            Verdict::Inconclusive => "INCONCLUSIVE",
        })
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Verdict.
    pub verdict: Verdict,
    /// Operations by outcome.
    pub ok: usize,
    /// Refused operations.
    pub fail: usize,
    /// Operations with an unknown outcome.
    pub info: usize,
    /// Anomalies, each with its shortest failing sub-history.
    pub anomalies: Vec<String>,
    /// Why the evidence is short (for INCONCLUSIVE).
    pub missing_evidence: Vec<String>,
    /// Faults with their times (seconds since the start).
    pub faults: Vec<String>,
    /// What was checked beyond the history (replicas, leaders).
    pub checked: Vec<String>,
}

impl Report {
    /// The summary, ending with the `verdict:` line.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "operations: {} (ok {}, fail {}, info {})\n",
            self.ok + self.fail + self.info,
            self.ok,
            self.fail,
            self.info
        );
        for f in &self.faults {
            s += &format!("fault: {f}\n");
        }
        for c in &self.checked {
            s += &format!("checked: {c}\n");
        }
        for a in &self.anomalies {
            s += &format!("anomaly: {a}\n");
        }
        for m in &self.missing_evidence {
            s += &format!("insufficient evidence: {m}\n");
        }
        s += &format!("verdict: {}\n", self.verdict);
        s
    }
}

/// The history being recorded.
struct Recorder {
    start: Instant,
    records: Mutex<Vec<Record>>,
    next_process: AtomicU64,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn push(&self, process: u64, kind: Kind, f: &str, key: &str, value: serde_json::Value, error: String) {
        let r = Record {
            process,
            kind,
            f: f.into(),
            key: key.into(),
            value,
            time_ns: self.now(),
            node: String::new(),
            error,
        };
        self.records.lock().expect("history lock").push(r);
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn client(endpoints: &[String]) -> anyhow::Result<Client> {
    let eps: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    Ok(Client::new(
        &eps,
        ClientOptions {
            retry_deadline: OP_DEADLINE,
            ..Default::default()
        },
    )?)
}

/// How a client error ends an operation: `Fail` when the cluster certainly
/// did not apply it, else `Info`.
fn classify(e: &esf_client::Error) -> Kind {
    use esf_client::Error as E;
    match e {
        E::InvalidArgument(_)
        | E::InvalidEndpoint { .. }
        | E::OutOfRange(_)
        | E::NotFound(_)
        | E::FailedPrecondition(_)
        | E::ResourceExhausted(_) => Kind::Fail,
        E::Unavailable(_) | E::Internal(_) => Kind::Info,
    }
}

fn parse_value(kv: Option<pb::KeyValue>) -> serde_json::Value {
    kv.and_then(|kv| String::from_utf8(kv.value).ok())
        .and_then(|s| s.parse::<i64>().ok())
        .map_or(serde_json::Value::Null, |v| json!(v))
}

/// One logical process after another (a new one after each `info`) doing
/// register operations until `until`.
async fn register_worker(
    rec: Arc<Recorder>,
    endpoints: Vec<String>,
    keys: usize,
    until: Instant,
    seed: u64,
    values: Arc<AtomicU64>,
) {
    let mut rng = Rng(seed | 1);
    let mut process = rec.next_process.fetch_add(1, Ordering::SeqCst);
    let Ok(mut c) = client(&endpoints) else { return };
    while Instant::now() < until {
        let key = format!("jepsen/r{}", rng.below(keys as u64));
        let pick = rng.below(10);
        let (kind, f, value, error) = if pick < 4 {
            rec.push(
                process,
                Kind::Invoke,
                "read",
                &key,
                serde_json::Value::Null,
                String::new(),
            );
            match c.get(key.clone()).await {
                Ok((_, kv)) => (Kind::Ok, "read", parse_value(kv), String::new()),
                // A read that failed says nothing: reads have no effect.
                Err(e) => (Kind::Fail, "read", serde_json::Value::Null, e.to_string()),
            }
        } else if pick < 8 {
            let v = values.fetch_add(1, Ordering::SeqCst) as i64;
            rec.push(process, Kind::Invoke, "write", &key, json!(v), String::new());
            match c.put(key.clone(), v.to_string()).await {
                Ok(_) => (Kind::Ok, "write", json!(v), String::new()),
                Err(e) => (classify(&e), "write", json!(v), e.to_string()),
            }
        } else {
            // CAS from a recently written value (the counter's last few) to
            // a new one.
            let last = values.load(Ordering::SeqCst) as i64;
            let from = (last - 1 - rng.below(3) as i64).max(0);
            let to = values.fetch_add(1, Ordering::SeqCst) as i64;
            rec.push(process, Kind::Invoke, "cas", &key, json!([from, to]), String::new());
            let req = pb::TxnRequest {
                compares: vec![pb::Compare {
                    key: key.clone().into_bytes(),
                    op: pb::compare::Op::Equal as i32,
                    target: Some(pb::compare::Target::Value(from.to_string().into_bytes())),
                }],
                success: vec![pb::TxnOp {
                    op: Some(pb::txn_op::Op::Put(pb::PutRequest {
                        key: key.clone().into_bytes(),
                        value: to.to_string().into_bytes(),
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            };
            match c.txn(req).await {
                Ok(r) if r.succeeded => (Kind::Ok, "cas", json!([from, to]), String::new()),
                Ok(_) => (Kind::Fail, "cas", json!([from, to]), "precondition".to_string()),
                Err(e) => (classify(&e), "cas", json!([from, to]), e.to_string()),
            }
        };
        rec.push(process, kind, f, &key, value, error);
        if kind == Kind::Info {
            // The process may still have that op in flight: retire it, and
            // its session.
            process = rec.next_process.fetch_add(1, Ordering::SeqCst);
            match client(&endpoints) {
                Ok(n) => c = n,
                Err(_) => return,
            }
        }
    }
}

/// One logical process after another appending unique events until
/// `until`. After an `info`, the next process appends the same event once
/// more, and one append in [`REAPPEND_ONE_IN`] re-sends the process's last
/// acknowledged event (as an application whose acknowledgement got lost
/// would): neither may be stored twice.
async fn events_worker(rec: Arc<Recorder>, endpoints: Vec<String>, until: Instant, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut process = rec.next_process.fetch_add(1, Ordering::SeqCst);
    let Ok(mut c) = client(&endpoints) else { return };
    let mut retry: Option<(String, String)> = None;
    let mut last_acked: Option<(String, String)> = None;
    while Instant::now() < until {
        if rng.below(REAPPEND_ONE_IN) == 0 {
            retry = retry.or_else(|| last_acked.clone());
        }
        let (stream, id) = retry
            .take()
            .unwrap_or_else(|| (format!("jepsen-s{}", rng.below(EVENT_STREAMS as u64)), new_id()));
        rec.push(
            process,
            Kind::Invoke,
            "append",
            &stream,
            json!({"id": id}),
            String::new(),
        );
        let event = pb::EventData {
            id: id.clone(),
            r#type: "Jepsen".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        };
        let (kind, value, error) = match c.append(&stream, vec![event], None).await {
            Ok(r) => (
                Kind::Ok,
                json!({"id": id, "partition": r.partition, "offset": r.first_offset, "duplicate": r.duplicate}),
                String::new(),
            ),
            Err(e) => (classify(&e), json!({"id": id}), e.to_string()),
        };
        rec.push(process, kind, "append", &stream, value, error);
        if kind == Kind::Ok {
            last_acked = Some((stream.clone(), id.clone()));
        }
        if kind == Kind::Info {
            retry = Some((stream, id));
            process = rec.next_process.fetch_add(1, Ordering::SeqCst);
            match client(&endpoints) {
                Ok(n) => c = n,
                Err(_) => return,
            }
        }
    }
}

fn new_id() -> String {
    esf_client::uuid::format(&esf_client::uuid::new_v4())
}

/// Follows every partition from the start through a subscription that
/// esf-client resumes on another node when its node dies; records each
/// delivery (f `deliver`, value `{partition, offset, id}`) until `until`.
async fn subscriber(rec: Arc<Recorder>, endpoints: Vec<String>, until: Instant) {
    let Ok(c) = client(&endpoints) else { return };
    let mut sub = c.subscribe_resumable(pb::SubscribeRequest::default());
    let process = rec.next_process.fetch_add(1, Ordering::SeqCst);
    while Instant::now() < until {
        let Ok(Ok(r)) = tokio::time::timeout(OP_DEADLINE, sub.next()).await else {
            continue;
        };
        for e in r.events {
            rec.push(
                process,
                Kind::Ok,
                "deliver",
                &e.stream,
                json!({"partition": e.partition, "offset": e.offset, "id": e.id}),
                String::new(),
            );
        }
    }
}

/// The meta leader as the running nodes see it (0: none agreed).
async fn meta_leader(cluster: &Cluster) -> u64 {
    leader_other_than(cluster, 0).await
}

/// The meta leader as the first running node other than `old` sees it, if
/// it is not `old` (0: none).
async fn leader_other_than(cluster: &Cluster, old: u64) -> u64 {
    for n in cluster.nodes.iter().filter(|n| n.id != old && n.child.is_some()) {
        if let Some((leader, _, _)) = meta_view(cluster, n.id).await {
            if leader != 0 && leader != old {
                return leader;
            }
        }
    }
    0
}

/// Runs one test and writes `history.jsonl`, `nemesis.jsonl` and
/// `summary.txt` into `cfg.out`.
pub async fn run(cfg: &RunConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.out)?;
    if let Some(n) = cfg.nemeses.iter().find(|n| n.needs_netns()) {
        if cfg.hosts != Hosts::Netns {
            anyhow::bail!("nemesis: {} needs --hosts netns", n.name());
        }
    }
    let cluster = match cfg.hosts {
        Hosts::Loopback => Cluster::start(&cfg.esf_bin, 3),
        Hosts::Netns => {
            let net = esf_cluster_tests::netns::Net::create(3).map_err(|e| anyhow::anyhow!("hosts: {e}"))?;
            Cluster::start_in(&cfg.esf_bin, 3, net)
        }
    };
    cluster.wait_converged().await;
    let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.grpc.clone()).collect();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        records: Mutex::new(Vec::new()),
        next_process: AtomicU64::new(1),
    });
    let nemesis_log: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let until = Instant::now() + cfg.time;
    let values = Arc::new(AtomicU64::new(1));
    let workers: Vec<_> = (0..cfg.concurrency)
        .map(|i| {
            let (rec, eps, values) = (rec.clone(), endpoints.clone(), values.clone());
            let keys = cfg.keys;
            let seed = 0x51ed + i as u64 * 7919;
            match cfg.workload {
                // Each register process is bound to one node (as Jepsen
                // binds them), so a node cut off still gets requests.
                Workload::Register => {
                    let pinned = vec![eps[i % eps.len()].clone()];
                    tokio::spawn(register_worker(rec, pinned, keys, until, seed, values))
                }
                Workload::Events => tokio::spawn(events_worker(rec, eps, until, seed)),
            }
        })
        .collect();
    let sub =
        (cfg.workload == Workload::Events).then(|| tokio::spawn(subscriber(rec.clone(), endpoints.clone(), until)));
    let nemesis = (!cfg.nemeses.is_empty()).then(|| {
        tokio::spawn(nemesis(
            cluster.clone(),
            rec.clone(),
            until,
            nemesis_log.clone(),
            cfg.esf_bin.clone(),
            cfg.nemeses.clone(),
        ))
    });
    for w in workers {
        w.await?;
    }
    if let Some(s) = sub {
        s.await?;
    }
    if let Some(n) = nemesis {
        n.await?;
    }
    // Heal: every node up, every group converged; then one final read of
    // every key.
    {
        let mut c = cluster.lock().await;
        if let Some(net) = &c.net {
            net.heal().map_err(|e| anyhow::anyhow!("heal: {e}"))?;
        }
        for n in c.nodes.iter_mut() {
            n.pause(false);
            if n.child.is_none() {
                n.start(&cfg.esf_bin);
            }
        }
        nemesis_log
            .lock()
            .expect("nemesis log")
            .push(json!({"fault": "heal", "time_ns": rec.now()}));
        c.wait_converged().await;
    }
    let final_client = client(&endpoints)?;
    let final_keys = if cfg.workload == Workload::Register {
        cfg.keys
    } else {
        0
    };
    for k in 0..final_keys {
        let key = format!("jepsen/r{k}");
        let process = rec.next_process.fetch_add(1, Ordering::SeqCst);
        rec.push(
            process,
            Kind::Invoke,
            "read",
            &key,
            serde_json::Value::Null,
            String::new(),
        );
        match final_client.get(key.clone()).await {
            Ok((_, kv)) => rec.push(process, Kind::Ok, "read", &key, parse_value(kv), String::new()),
            Err(e) => rec.push(
                process,
                Kind::Fail,
                "read",
                &key,
                serde_json::Value::Null,
                e.to_string(),
            ),
        }
    }
    let final_reads = if cfg.workload == Workload::Events {
        read_every_partition(&cluster).await?
    } else {
        Vec::new()
    };
    let replicas = replica_views(&cluster).await;
    // The nodes' logs go with the history (the cluster's directory goes
    // when it stops).
    for n in &cluster.lock().await.nodes {
        std::fs::write(cfg.out.join(format!("node-{}.log", n.id)), n.log())?;
    }
    let records = rec.records.lock().expect("history lock").clone();
    let faults = nemesis_log.lock().expect("nemesis log").clone();
    write_jsonl(&mut std::fs::File::create(cfg.out.join("history.jsonl"))?, &records)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(cfg.out.join("nemesis.jsonl"))?;
        for v in &faults {
            writeln!(f, "{v}")?;
        }
    }
    if !final_reads.is_empty() {
        use std::io::Write;
        let mut f = std::fs::File::create(cfg.out.join("final-reads.jsonl"))?;
        for r in &final_reads {
            writeln!(
                f,
                "{}",
                json!({"reader": r.reader, "partition": r.partition, "events": r.events})
            )?;
        }
    }
    let report = if cfg.workload == Workload::Events {
        judge_events(&records, &final_reads, &faults, cfg)?
    } else {
        judge(&records, &faults, cfg)?
    };
    let mut report = report;
    let (anomalies, missing) = check_replicas(&replicas);
    report.anomalies.extend(anomalies);
    report.missing_evidence.extend(missing);
    let groups = replicas.first().map_or(0, |v| v.hashes.len());
    let terms: usize = replicas.iter().map(|v| v.leaders.len()).sum();
    report.checked.push(format!(
        "{groups} groups compared on {} nodes (state fingerprint at one applied index); {terms} (group, term, leader) observations, one leader per term",
        replicas.len()
    ));
    report.verdict = if !report.anomalies.is_empty() {
        Verdict::Invalid
    } else if !report.missing_evidence.is_empty() {
        Verdict::Inconclusive
    } else {
        Verdict::Valid
    };
    std::fs::write(cfg.out.join("summary.txt"), report.summary())?;
    let plotted: Vec<Record> = records.iter().filter(|r| r.f != "deliver").cloned().collect();
    std::fs::write(
        cfg.out.join("latency.svg"),
        crate::plot::latency_svg(&pair(&plotted)?, &faults),
    )?;
    drop(cluster);
    Ok(report)
}

/// A leader other than `old` as the nodes other than `old` see it,
/// within [`NEW_LEADER_DEADLINE`] (0: none).
async fn new_leader(cluster: &Cluster, old: u64) -> u64 {
    let deadline = Instant::now() + NEW_LEADER_DEADLINE;
    while Instant::now() < deadline {
        let l = leader_other_than(cluster, old).await;
        if l != 0 {
            return l;
        }
        // Polled: the leader shows in each node's status; bounded above.
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    0
}

/// A node's view of the meta group: (leader, commit index, applied index).
async fn meta_view(cluster: &Cluster, node: u64) -> Option<(u64, u64, u64)> {
    let (_, s) = cluster.node(node).client().status_all().await.into_iter().next()?;
    let g = s.ok()?.groups.into_iter().next()?;
    Some((g.leader_id, g.commit_index, g.applied_index))
}

/// Every [`KILL_INTERVAL`] until `until`, the next of `kinds` strikes and is
/// undone. Each fault is logged with its evidence (`evidence`: whether it
/// took effect, `detail`: how that shows).
async fn nemesis(
    cluster: Arc<tokio::sync::Mutex<Cluster>>,
    rec: Arc<Recorder>,
    until: Instant,
    log: Arc<Mutex<Vec<serde_json::Value>>>,
    bin: PathBuf,
    kinds: Vec<Nemesis>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut turn = 0;
    let push = |v: serde_json::Value| log.lock().expect("nemesis log").push(v);
    while Instant::now() + KILL_INTERVAL < until {
        tokio::time::sleep(KILL_INTERVAL).await;
        let kind = kinds[turn % kinds.len()];
        turn += 1;
        let mut c = cluster.lock().await;
        let leader = meta_leader(&c).await;
        if leader == 0 {
            continue;
        }
        let others: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|n| *n != leader).collect();
        let at = rec.now();
        let name = kind.name();
        let mut errors = Vec::new();
        let mut target = leader;
        // Strike.
        match kind {
            Nemesis::Kill => c.node_mut(leader).kill(),
            Nemesis::KillAll => {
                for n in c.nodes.iter_mut() {
                    n.kill();
                }
            }
            Nemesis::Pause => c.node(leader).pause(true),
            Nemesis::Partition | Nemesis::OneWay | Nemesis::Flap => {
                let net = c.net.as_ref().expect("network faults run on netns hosts");
                for o in &others {
                    let r = if kind == Nemesis::OneWay {
                        net.cut(leader, *o)
                    } else {
                        net.cut_both(leader, *o)
                    };
                    errors.extend(r.err());
                }
            }
            Nemesis::PartitionFollower => {
                target = others[rng.below(others.len() as u64) as usize];
                let net = c.net.as_ref().expect("network faults run on netns hosts");
                for o in c.nodes.iter().map(|n| n.id).filter(|n| *n != target) {
                    errors.extend(net.cut_both(target, o).err());
                }
            }
            Nemesis::Netem => {
                let net = c.net.as_ref().expect("network faults run on netns hosts");
                for n in c.nodes.iter().map(|n| n.id) {
                    errors.extend(net.netem(n, NETEM_SPEC).err());
                }
            }
        }
        // Evidence, and undo.
        let (evidence, detail) = match kind {
            Nemesis::Kill | Nemesis::Pause | Nemesis::Partition | Nemesis::OneWay => {
                let by = new_leader(&c, leader).await;
                let detail = format!("node {by} leads from {:.1}s", rec.now() as f64 / 1e9);
                match kind {
                    Nemesis::Kill => {
                        drop(c);
                        tokio::time::sleep(Duration::from_millis(rng.below(3000))).await;
                        c = cluster.lock().await;
                        c.node_mut(leader).start(&bin);
                    }
                    Nemesis::Pause => c.node(leader).pause(false),
                    _ => {
                        drop(c);
                        tokio::time::sleep(PARTITION_HOLD).await;
                        c = cluster.lock().await;
                    }
                }
                (by != 0, detail)
            }
            Nemesis::KillAll => {
                let mut answered = 0;
                for n in &c.nodes {
                    answered += usize::from(meta_view(&c, n.id).await.is_some());
                }
                drop(c);
                tokio::time::sleep(Duration::from_millis(rng.below(3000))).await;
                c = cluster.lock().await;
                for n in c.nodes.iter_mut() {
                    n.start(&bin);
                }
                let by = new_leader(&c, 0).await;
                (
                    answered == 0 && by != 0,
                    format!("{answered} nodes answered while down; node {by} leads after the restart"),
                )
            }
            Nemesis::PartitionFollower => {
                // The others go on committing without it.
                drop(c);
                tokio::time::sleep(PARTITION_HOLD).await;
                c = cluster.lock().await;
                let cut_off = meta_view(&c, target).await.map_or(0, |v| v.2);
                let ahead = meta_view(&c, leader).await.map_or(0, |v| v.1);
                (
                    ahead > cut_off,
                    format!("leader committed {ahead}, node {target} applied {cut_off}"),
                )
            }
            Nemesis::Flap => {
                let mut cycles = 0;
                for _ in 0..FLAP_CYCLES {
                    drop(c);
                    tokio::time::sleep(FLAP_PERIOD).await;
                    c = cluster.lock().await;
                    let net = c.net.as_ref().expect("netns");
                    let healed = net.heal();
                    drop(c);
                    tokio::time::sleep(FLAP_PERIOD).await;
                    c = cluster.lock().await;
                    let net = c.net.as_ref().expect("netns");
                    let cut = others.iter().try_for_each(|o| net.cut_both(leader, *o));
                    match healed.and(cut) {
                        Ok(()) => cycles += 1,
                        Err(e) => errors.push(e),
                    }
                }
                (
                    cycles == FLAP_CYCLES,
                    format!("{cycles} cut/heal cycles of {FLAP_PERIOD:?}"),
                )
            }
            Nemesis::Netem => {
                // A status call crosses two degraded links.
                let t = Instant::now();
                let answered = meta_view(&c, leader).await.is_some();
                let rtt = t.elapsed();
                drop(c);
                tokio::time::sleep(PARTITION_HOLD).await;
                c = cluster.lock().await;
                (
                    answered && rtt >= NETEM_MIN_RTT,
                    format!("a status call took {} ms", rtt.as_millis()),
                )
            }
        };
        if let Some(net) = &c.net {
            errors.extend(net.heal().err());
        }
        push(json!({
            "fault": name, "node": target, "time_ns": at, "end_time_ns": rec.now(),
            "evidence": evidence && errors.is_empty(), "detail": detail, "errors": errors,
        }));
    }
}

/// Most time the replicas get to reach the same applied index per group
/// after healing.
pub const REPLICAS_SETTLE: Duration = Duration::from_secs(20);

/// Every node's fingerprints and leader log, once every group's replicas
/// report the same applied index (or [`REPLICAS_SETTLE`] passed).
async fn replica_views(cluster: &tokio::sync::Mutex<Cluster>) -> Vec<pb::ConsistencyResponse> {
    let c = cluster.lock().await;
    let deadline = Instant::now() + REPLICAS_SETTLE;
    loop {
        let mut views = Vec::new();
        for n in &c.nodes {
            if let Ok(v) = n.client().consistency().await {
                views.push(v);
            }
        }
        let settled = views.len() == c.nodes.len() && {
            let mut applied: BTreeMap<u32, std::collections::BTreeSet<u64>> = BTreeMap::new();
            for v in &views {
                for h in &v.hashes {
                    applied.entry(h.group).or_default().insert(h.applied_index);
                }
            }
            applied.values().all(|a| a.len() == 1)
        };
        if settled || Instant::now() >= deadline {
            return views;
        }
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
}

/// "Same state on every replica" and "at most one leader per term", from
/// every node's view: anomalies, and what could not be checked.
pub fn check_replicas(views: &[pb::ConsistencyResponse]) -> (Vec<String>, Vec<String>) {
    let (mut anomalies, mut missing) = (Vec::new(), Vec::new());
    if views.is_empty() {
        missing.push("no node reported its replicas' state".into());
    }
    // (group, applied index) -> hash -> nodes.
    let mut states: BTreeMap<(u32, u64), BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    let mut applied: BTreeMap<u32, std::collections::BTreeSet<u64>> = BTreeMap::new();
    // (group, term) -> leader -> the nodes that saw it lead.
    let mut leaders: BTreeMap<(u32, u64), BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    for v in views {
        for h in &v.hashes {
            states
                .entry((h.group, h.applied_index))
                .or_default()
                .entry(h.hash)
                .or_default()
                .push(v.node_id);
            applied.entry(h.group).or_default().insert(h.applied_index);
        }
        for l in &v.leaders {
            leaders
                .entry((l.group, l.term))
                .or_default()
                .entry(l.leader_id)
                .or_default()
                .push(v.node_id);
        }
    }
    for ((group, index), by_hash) in &states {
        if by_hash.len() > 1 {
            anomalies.push(format!(
                "group {group}: replicas differ at applied index {index}: {by_hash:x?} (hash -> nodes)"
            ));
        }
    }
    for (group, indexes) in &applied {
        if indexes.len() > 1 {
            missing.push(format!(
                "group {group}: replicas did not reach one applied index within {REPLICAS_SETTLE:?}: {indexes:?}"
            ));
        }
    }
    for ((group, term), who) in &leaders {
        if who.len() > 1 {
            anomalies.push(format!(
                "group {group}: term {term} had leaders {:?} (leader -> nodes that saw it: {who:?})",
                who.keys().collect::<Vec<_>>()
            ));
        }
    }
    (anomalies, missing)
}

/// After healing: every partition read in full from every node's own
/// replica (serializable reads, each node asked alone).
async fn read_every_partition(cluster: &tokio::sync::Mutex<Cluster>) -> anyhow::Result<Vec<crate::queue::Read>> {
    let c = cluster.lock().await;
    let mut out = Vec::new();
    for n in &c.nodes {
        let client = n.client();
        let status = client.status_all().await;
        let partitions = status
            .first()
            .and_then(|(_, s)| s.as_ref().ok())
            .map_or(0, |s| s.groups.len().saturating_sub(1) as u32);
        for p in 1..=partitions {
            let events = esf_cluster_tests::read_whole_partition(&client, p)
                .await?
                .into_iter()
                .map(|e| (e.offset, e.id))
                .collect();
            out.push(crate::queue::Read {
                reader: format!("node {} final read", n.id),
                partition: p,
                from: 0,
                events,
                complete: true,
            });
        }
    }
    Ok(out)
}

/// Checks an events history (appends, deliveries) and the final reads,
/// and weighs the evidence.
pub fn judge_events(
    records: &[Record],
    final_reads: &[crate::queue::Read],
    faults: &[serde_json::Value],
    cfg: &RunConfig,
) -> anyhow::Result<Report> {
    use crate::queue::{Append, Outcome};
    let appends_only: Vec<Record> = records.iter().filter(|r| r.f == "append").cloned().collect();
    let ops = pair(&appends_only)?;
    let (mut ok, mut fail, mut info) = (0, 0, 0);
    let mut ok_per_partition: BTreeMap<u32, usize> = BTreeMap::new();
    // One outcome per event id: acknowledged if any attempt was (every
    // acknowledgement must name the same position), failed only if every
    // attempt failed.
    let mut by_id: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    let mut anomalies = Vec::new();
    for o in &ops {
        let id = o.invoke.value["id"].as_str().unwrap_or_default().to_string();
        let outcome = match o.kind() {
            Kind::Ok => {
                ok += 1;
                let v = &o.complete.as_ref().expect("ok has a completion").value;
                let partition = v["partition"].as_u64().unwrap_or(0) as u32;
                *ok_per_partition.entry(partition).or_default() += 1;
                Outcome::Ok {
                    partition,
                    offset: v["offset"].as_u64().unwrap_or(u64::MAX),
                }
            }
            Kind::Fail => {
                fail += 1;
                Outcome::Fail
            }
            _ => {
                info += 1;
                Outcome::Info
            }
        };
        by_id.entry(id).or_default().push(outcome);
    }
    let mut appends = Vec::new();
    for (id, outcomes) in by_id {
        let acks: std::collections::BTreeSet<(u32, u64)> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Ok { partition, offset } => Some((*partition, *offset)),
                _ => None,
            })
            .collect();
        if acks.len() > 1 {
            anomalies.push(format!("{id}: acknowledged at several positions {acks:?}"));
        }
        let outcome = match acks.iter().next() {
            Some((partition, offset)) => Outcome::Ok {
                partition: *partition,
                offset: *offset,
            },
            None if outcomes.iter().all(|o| *o == Outcome::Fail) => Outcome::Fail,
            None => Outcome::Info,
        };
        appends.push(Append { id, outcome });
    }
    // The subscription's deliveries, per partition in delivery order.
    let mut delivered: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    for d in records.iter().filter(|r| r.f == "deliver") {
        let p = d.value["partition"].as_u64().unwrap_or(0) as u32;
        delivered.entry(p).or_default().push((
            d.value["offset"].as_u64().unwrap_or(u64::MAX),
            d.value["id"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let mut reads: Vec<crate::queue::Read> = final_reads.to_vec();
    reads.extend(delivered.into_iter().map(|(p, events)| crate::queue::Read {
        reader: "subscription".into(),
        partition: p,
        from: 0,
        events,
        complete: false,
    }));
    for a in crate::queue::check(&appends, &reads) {
        anomalies.push(format!("partition {}: {}: {}", a.partition, a.kind, a.detail));
    }
    let mut missing = Vec::new();
    let partitions = final_reads.iter().map(|r| r.partition).max().unwrap_or(0);
    if partitions == 0 {
        missing.push("no final read of any partition".into());
    }
    for p in 1..=partitions {
        let n = ok_per_partition.get(&p).copied().unwrap_or(0);
        if n < MIN_OK_PER_KEY {
            missing.push(format!(
                "partition {p}: {n} acknowledged appends, fewer than {MIN_OK_PER_KEY}"
            ));
        }
    }
    Ok(weigh(ok, fail, info, anomalies, missing, faults, cfg))
}

/// Checks the history and weighs the evidence.
pub fn judge(records: &[Record], faults: &[serde_json::Value], cfg: &RunConfig) -> anyhow::Result<Report> {
    let ops = pair(records)?;
    let (mut ok, mut fail, mut info) = (0, 0, 0);
    let mut ok_per_key: BTreeMap<String, usize> = BTreeMap::new();
    for o in &ops {
        match o.kind() {
            Kind::Ok => {
                ok += 1;
                *ok_per_key.entry(o.invoke.key.clone()).or_default() += 1;
            }
            Kind::Fail => fail += 1,
            _ => info += 1,
        }
    }
    let mut anomalies = Vec::new();
    for (key, v) in register::check(&ops, register::DEFAULT_STEP_BUDGET)? {
        match v {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Unknown => anomalies.push(format!("{key}: the search ran out of steps (no verdict)")),
            KeyVerdict::NotLinearizable { witness } => anomalies.push(format!(
                "{key}: not linearizable; shortest failing sub-history: {witness:?}"
            )),
        }
    }
    let mut missing = Vec::new();
    for k in 0..cfg.keys {
        let key = format!("jepsen/r{k}");
        let n = ok_per_key.get(&key).copied().unwrap_or(0);
        if n < MIN_OK_PER_KEY {
            missing.push(format!(
                "{key}: {n} acknowledged operations, fewer than {MIN_OK_PER_KEY}"
            ));
        }
    }
    Ok(weigh(ok, fail, info, anomalies, missing, faults, cfg))
}

/// The verdict from the anomalies and the evidence: the share of unknown
/// outcomes, and proof that every fault took effect.
fn weigh(
    ok: usize,
    fail: usize,
    info: usize,
    anomalies: Vec<String>,
    mut missing: Vec<String>,
    faults: &[serde_json::Value],
    cfg: &RunConfig,
) -> Report {
    let total = ok + fail + info;
    if total > 0 && info as f64 / total as f64 > MAX_INFO_SHARE {
        missing.push(format!(
            "{info} of {total} operations have an unknown outcome, over {:.0}%",
            MAX_INFO_SHARE * 100.0
        ));
    }
    for kind in &cfg.nemeses {
        let name = kind.name();
        let struck: Vec<&serde_json::Value> = faults.iter().filter(|f| f["fault"] == name).collect();
        if struck.is_empty() {
            missing.push(format!("the {name} nemesis never struck"));
        }
        for f in struck {
            if f["evidence"] != true {
                missing.push(format!(
                    "{name} of node {} shows no effect: {} {}",
                    f["node"], f["detail"], f["errors"]
                ));
            }
        }
    }
    let secs = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / 1e9;
    let fault_lines = faults
        .iter()
        .map(|f| match f["fault"].as_str() {
            Some(kind) if f.get("evidence").is_some() => format!(
                "{:.1}s-{:.1}s {kind} node {}: {}",
                secs(&f["time_ns"]),
                secs(&f["end_time_ns"]),
                f["node"],
                f["detail"].as_str().unwrap_or_default()
            ),
            Some(other) => format!(
                "{:.1}s {other} {}",
                secs(&f["time_ns"]),
                f.get("node").cloned().unwrap_or_default()
            ),
            None => f.to_string(),
        })
        .collect();
    let verdict = if !anomalies.is_empty() {
        Verdict::Invalid
    } else if !missing.is_empty() {
        Verdict::Inconclusive
    } else {
        Verdict::Valid
    };
    Report {
        verdict,
        ok,
        fail,
        info,
        anomalies,
        missing_evidence: missing,
        faults: fault_lines,
        checked: Vec::new(),
    }
}
