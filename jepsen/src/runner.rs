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
//! Nodes run as real `esf` processes (the cluster-tests harness), on
//! loopback or each in its own network namespace. Workloads: `register`
//! (per-key read, write of unique values, compare-and-set, checked for
//! linearizability), `events` (unique appends re-sent after unknown
//! outcomes, a resumed subscription, a final read of every partition on
//! every node; the queue checker), `watch` (puts watched from the first
//! revision by a watcher per node; the watch checker) and `registry`
//! (instances under leases kept alive, lookups, deregistrations; the
//! registry checker). Nemeses ([`Nemesis`]) take turns every
//! [`KILL_INTERVAL`]; after the run everything is healed, every group must
//! converge, and every node's state fingerprints and leader log are
//! compared.

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
/// Without `sch_netem`: each node's link is a token bucket of this rate
/// ...
pub const DEGRADE_RATE_KBIT: u64 = 512;
/// ... that queues packets up to this long (then drops them) ...
pub const DEGRADE_LATENCY_MS: u64 = 400;
/// ... and nftables drops this share of what each node sends.
pub const DEGRADE_LOSS_PERCENT: u64 = 10;
/// Least round trip of a status call that shows netem took effect.
pub const NETEM_MIN_RTT: Duration = Duration::from_millis(100);
/// How long a killed node may take to be replaced as leader.
pub const NEW_LEADER_DEADLINE: Duration = Duration::from_secs(15);
/// TTL of the registry workload's leases (kept alive every third of it).
pub const REGISTRY_TTL_SECS: u64 = 4;
/// Instances a registry process keeps registered at most.
pub const REGISTRY_LIVE_PER_PROCESS: usize = 3;
/// The service the registry workload registers instances of.
pub const REGISTRY_SERVICE: &str = "jepsen-svc";
/// libfaketime (Debian's `faketime` package), preloaded into every node
/// under the clock nemesis.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// The wall-clock offsets (seconds) the clock nemesis gives the leader, in
/// turn: jumps forward and back, held for [`PARTITION_HOLD`], then a jump
/// back to the true time.
pub const CLOCK_OFFSETS: [i64; 4] = [600, -3600, 86_400, -90];
/// Under the snapshot nemesis the nodes snapshot every this many entries
/// (`--snapshot-logs`) ...
pub const SNAPSHOT_LOGS: u64 = 200;
/// ... and keep this many behind a snapshot (`--snapshot-keep-logs`).
pub const SNAPSHOT_KEEP_LOGS: u64 = 50;
/// Writes the snapshot nemesis adds per poll while it waits for the
/// leader's purge (to [`SNAPSHOT_FILLER_KEY`], which no checker reads).
pub const SNAPSHOT_FILLER_WRITES: u64 = 20;
/// The key of those writes.
pub const SNAPSHOT_FILLER_KEY: &str = "jepsen-filler";
/// How long a membership change (with its retries) may take.
pub const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(60);
/// Autopilot under the failover nemesis: 3 voters, a node dead after 5 s
/// unheard, its least (its defaults: 30 s, 10 s of stabilization, a look a
/// second).
pub const FAILOVER_ARGS: [&str; 8] = [
    "--autopilot-voters",
    "3",
    "--autopilot-dead-after-secs",
    "5",
    "--autopilot-stabilization-secs",
    "1",
    "--autopilot-interval-ms",
    "200",
];
/// How long autopilot may take to remove a killed voter (dead time,
/// stabilization, a promotion and a removal) and a wiped node to rejoin.
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(45);

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Per-key registers.
    Register,
    /// Event appends, reads and a subscription.
    Events,
    /// Puts watched from the first revision by a watcher per node.
    Watch,
    /// Instances registered under leases kept alive, looked up,
    /// deregistered.
    Registry,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "register" => Ok(Workload::Register),
            "events" => Ok(Workload::Events),
            "watch" => Ok(Workload::Watch),
            "registry" => Ok(Workload::Registry),
            other => Err(format!(
                "workload: {other:?} is not one of: register, events, watch, registry"
            )),
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
    /// Jump the meta leader's wall clock (libfaketime) by the next of
    /// [`CLOCK_OFFSETS`] for [`PARTITION_HOLD`], then back. Evidence: its
    /// status reports the skewed time; a node that exits is an anomaly.
    Clock,
    /// Remove a follower from the cluster while the leader is killed, then
    /// wipe it and add it back (learner, then voter) while the leader is
    /// killed again (each restarted after 0-1 s: with two voters left
    /// nobody can lead while it is down). Evidence: the follower left and
    /// came back, and each kill was followed by a leader in a later term.
    Member,
    /// SIGSTOP a follower until the leader's log is purged past it, SIGCONT
    /// it, SIGKILL it again during the snapshot it then receives, restart
    /// it. Evidence: the leader purged past it, it installed a snapshot and
    /// caught up.
    Snapshot,
    /// Five or more nodes: one follower is a bridge between two halves
    /// that cannot reach each other, for [`PARTITION_HOLD`]. Evidence: the
    /// leader kept committing.
    Bridge,
    /// Four or more nodes under autopilot ([`FAILOVER_ARGS`]: 3 voters, the
    /// rest spares): SIGKILL the meta leader and keep it down until
    /// autopilot, with no operator, has removed it (promoting a caught-up
    /// spare first when the voters would fall below 3), then wipe it and
    /// restart it with its `--join`: it joins by itself as a spare.
    /// Evidence: it was removed, 3 voters remained, and it came back as a
    /// learner.
    Failover,
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
            Nemesis::Clock => "clock",
            Nemesis::Member => "member",
            Nemesis::Snapshot => "snapshot",
            Nemesis::Bridge => "bridge",
            Nemesis::Failover => "failover",
        }
    }

    /// Whether it needs network namespaces.
    pub fn needs_netns(self) -> bool {
        !matches!(
            self,
            Nemesis::Kill
                | Nemesis::Pause
                | Nemesis::KillAll
                | Nemesis::Clock
                | Nemesis::Member
                | Nemesis::Snapshot
                | Nemesis::Failover
        )
    }

    const ALL: [Nemesis; 13] = [
        Nemesis::KillAll,
        Nemesis::Kill,
        Nemesis::Partition,
        Nemesis::PartitionFollower,
        Nemesis::OneWay,
        Nemesis::Flap,
        Nemesis::Pause,
        Nemesis::Netem,
        Nemesis::Clock,
        Nemesis::Member,
        Nemesis::Snapshot,
        Nemesis::Bridge,
        Nemesis::Failover,
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
    /// Nodes in the cluster (3; the bridge needs 5).
    pub nodes: u64,
    /// How long the workload runs.
    pub time: Duration,
    /// Keys of the register workload.
    pub keys: usize,
    /// Concurrent logical processes.
    pub concurrency: usize,
    /// Where the history, the nemesis log and the summary go.
    pub out: PathBuf,
    /// Nodes serve TLS and dial each other over it; clients trust the
    /// cluster's CA and present a client certificate.
    pub tls: bool,
    /// Test-only faults switched on in every node (`ESF_FAILPOINTS`); the
    /// binary must be built with the `failpoints` feature. The checkers
    /// must then find the anomalies they cause.
    pub failpoints: Vec<String>,
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

/// The nodes' addresses, in the order a client tries them, and the client
/// settings that reach them (the CA and a client certificate with
/// `--tls`).
#[derive(Clone)]
struct Endpoints {
    addrs: Vec<String>,
    opts: ClientOptions,
}

impl std::ops::Deref for Endpoints {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.addrs
    }
}

impl std::ops::DerefMut for Endpoints {
    fn deref_mut(&mut self) -> &mut Vec<String> {
        &mut self.addrs
    }
}

fn client(endpoints: &Endpoints) -> anyhow::Result<Client> {
    let eps: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    Ok(Client::new(
        &eps,
        endpoints
            .opts
            .clone()
            .with_retry_deadline(OP_DEADLINE)
            // A process stays bound to its node (clients on both sides of
            // a partition), as Jepsen binds them.
            .with_follow_leader(false),
    )?)
}

/// A new logical process: its id and its own client (and so its own
/// session). A process whose operation ended `info` is retired for one.
fn session(rec: &Recorder, endpoints: &Endpoints) -> Option<(u64, Client)> {
    let c = client(endpoints).ok()?;
    Some((rec.next_process.fetch_add(1, Ordering::SeqCst), c))
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
        | E::AlreadyExists(_)
        | E::FailedPrecondition(_)
        | E::PermissionDenied(_)
        | E::Unauthenticated(_)
        | E::ResourceExhausted(_) => Kind::Fail,
        // A not-leader answer surfaces only once retries ran out: like
        // Unavailable, the outcome of the last attempt is unknown.
        E::NotLeader { .. } | E::Unavailable(_) | E::Internal(_) => Kind::Info,
        // A kind added later: claim nothing about the outcome.
        _ => Kind::Info,
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
    endpoints: Endpoints,
    keys: usize,
    until: Instant,
    seed: u64,
    values: Arc<AtomicU64>,
) {
    let mut rng = Rng(seed | 1);
    let Some((mut process, mut c)) = session(&rec, &endpoints) else {
        return;
    };
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
            let Some(next) = session(&rec, &endpoints) else {
                return;
            };
            (process, c) = next;
        }
    }
}

/// One logical process after another appending unique events until
/// `until`. After an `info`, the next process appends the same event once
/// more, and one append in [`REAPPEND_ONE_IN`] re-sends the process's last
/// acknowledged event (as an application whose acknowledgement got lost
/// would): neither may be stored twice.
async fn events_worker(rec: Arc<Recorder>, endpoints: Endpoints, until: Instant, seed: u64) {
    let mut rng = Rng(seed | 1);
    let Some((mut process, mut c)) = session(&rec, &endpoints) else {
        return;
    };
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
            let Some(next) = session(&rec, &endpoints) else {
                return;
            };
            (process, c) = next;
        }
    }
}

fn new_id() -> String {
    esf_client::uuid::format(&esf_client::uuid::new_v4())
}

/// Follows every partition from the start through a subscription that
/// esf-client resumes on another node when its node dies; records each
/// delivery (f `deliver`, value `{partition, offset, id}`) until `until`.
async fn subscriber(rec: Arc<Recorder>, endpoints: Endpoints, until: Instant) {
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

/// How many revisions back the reference watch starts: within the
/// history the nodes keep (esf's default is 10,000 revisions).
pub const REFERENCE_HISTORY: u64 = 9_000;

/// The prefix the watch workload writes under.
pub const WATCH_PREFIX: &str = "jepsen/w";

/// One logical process after another putting unique values to
/// [`WATCH_PREFIX`] keys until `until` (the acknowledgement's revision is
/// recorded).
async fn watch_writer(
    rec: Arc<Recorder>,
    endpoints: Endpoints,
    keys: usize,
    until: Instant,
    seed: u64,
    values: Arc<AtomicU64>,
) {
    let mut rng = Rng(seed | 1);
    let Some((mut process, mut c)) = session(&rec, &endpoints) else {
        return;
    };
    while Instant::now() < until {
        let key = format!("{WATCH_PREFIX}{}", rng.below(keys as u64));
        let v = values.fetch_add(1, Ordering::SeqCst);
        rec.push(process, Kind::Invoke, "put", &key, json!({"value": v}), String::new());
        let (kind, value, error) = match c.put(key.clone(), v.to_string()).await {
            Ok(r) => (
                Kind::Ok,
                json!({"value": v, "revision": r.header.map_or(0, |h| h.revision)}),
                String::new(),
            ),
            Err(e) => (classify(&e), json!({"value": v}), e.to_string()),
        };
        rec.push(process, kind, "put", &key, value, error);
        if kind == Kind::Info {
            let Some(next) = session(&rec, &endpoints) else {
                return;
            };
            (process, c) = next;
        }
    }
}

/// The watch request of the watch workload: every change under
/// [`WATCH_PREFIX`] from the first revision.
fn watch_request() -> pb::WatchRequest {
    pb::WatchRequest {
        range: Some(esf_client::key_range_prefix(WATCH_PREFIX.as_bytes().to_vec())),
        start_revision: 1,
        ..Default::default()
    }
}

/// One change of a watch response as a history value.
fn change_value(watcher: &str, e: &pb::Event) -> (String, serde_json::Value) {
    let kv = e.kv.clone().unwrap_or_default();
    let value = (e.r#type == pb::event::EventType::Put as i32).then(|| String::from_utf8_lossy(&kv.value).into_owned());
    (
        String::from_utf8_lossy(&kv.key).into_owned(),
        json!({"watcher": watcher, "revision": kv.mod_revision, "value": value}),
    )
}

/// A watcher (its client tries `endpoints` in order, so each prefers
/// another node) recording every change it is delivered (f `watch`) until
/// `until`; esf-client resumes it on another node when its node dies.
async fn watcher(rec: Arc<Recorder>, endpoints: Endpoints, until: Instant, name: String) {
    let Ok(c) = client(&endpoints) else { return };
    let process = rec.next_process.fetch_add(1, Ordering::SeqCst);
    let mut w = loop {
        match c.watch_resumable(watch_request()).await {
            Ok(w) => break w,
            Err(_) if Instant::now() < until => tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await,
            Err(_) => return,
        }
    };
    while Instant::now() < until {
        let Ok(Ok(r)) = tokio::time::timeout(OP_DEADLINE, w.next()).await else {
            continue;
        };
        if r.snapshot {
            // A resume below the compaction revision: the state at that
            // revision, then the changes after it (a new run).
            let revision = r.header.map_or(0, |h| h.revision);
            rec.push(
                process,
                Kind::Ok,
                "watch-snapshot",
                WATCH_PREFIX,
                json!({"watcher": name, "revision": revision}),
                String::new(),
            );
            continue;
        }
        for e in &r.events {
            let (key, value) = change_value(&name, e);
            rec.push(process, Kind::Ok, "watch", &key, value, String::new());
        }
    }
}

/// After healing: every change under [`WATCH_PREFIX`] from the first
/// revision still in the history, through a new watch, up to the last
/// revision a linearizable range reports there. Returns the changes and
/// the first revision they cover (1, or the one after the snapshot the
/// watch starts with when history was compacted).
async fn reference_watch(endpoints: &Endpoints) -> anyhow::Result<(Vec<crate::watch::Change>, u64)> {
    let c = client(endpoints)?;
    let now = c
        .range(pb::RangeRequest {
            range: Some(esf_client::key_range_prefix(WATCH_PREFIX.as_bytes().to_vec())),
            ..Default::default()
        })
        .await?;
    let last = now.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
    // As far back as the nodes keep history.
    let mut from = now
        .header
        .map_or(0, |h| h.revision)
        .saturating_sub(REFERENCE_HISTORY)
        .max(1);
    let mut out = Vec::new();
    let deadline = Instant::now() + REPLICAS_SETTLE;
    let mut w = c
        .watch_resumable(pb::WatchRequest {
            start_revision: from,
            ..watch_request()
        })
        .await?;
    while out.last().is_none_or(|c: &crate::watch::Change| c.revision < last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, w.next()).await.map_err(|_| {
            anyhow::anyhow!(
                "reference watch: revision {last} not reached within {REPLICAS_SETTLE:?} (got {} changes, up to {:?})",
                out.len(),
                out.last()
            )
        })??;
        if r.snapshot {
            from = r.header.map_or(0, |h| h.revision) + 1;
            if from > last {
                break;
            }
            continue;
        }
        for e in &r.events {
            let (key, v) = change_value("reference", e);
            out.push(crate::watch::Change {
                revision: v["revision"].as_u64().unwrap_or(0),
                key,
                value: v["value"].as_str().map(String::from),
            });
        }
    }
    Ok((out, from))
}

/// One logical process after another registering instances of
/// [`REGISTRY_SERVICE`] under leases of [`REGISTRY_TTL_SECS`] that it keeps
/// alive, looking the service up and deregistering instances, until
/// `until`. Records `grant`, `register`, `keepalive`, `lookup` (value: the
/// ids seen) and `deregister`, each keyed by instance id.
async fn registry_worker(rec: Arc<Recorder>, endpoints: Endpoints, until: Instant, seed: u64, ids: Arc<AtomicU64>) {
    let mut rng = Rng(seed | 1);
    let Some((mut process, mut c)) = session(&rec, &endpoints) else {
        return;
    };
    // (instance id, lease, last acknowledged refresh).
    let mut live: Vec<(String, u64, Instant)> = Vec::new();
    let ttl = Duration::from_secs(REGISTRY_TTL_SECS);
    while Instant::now() < until {
        let mut ended = Vec::new();
        // Keep the leases alive.
        for (id, lease, refreshed) in live.iter_mut() {
            if refreshed.elapsed() < ttl / 3 || ended.iter().any(|k| *k == Kind::Info) {
                continue;
            }
            rec.push(
                process,
                Kind::Invoke,
                "keepalive",
                id,
                json!({"lease": lease}),
                String::new(),
            );
            let (kind, error) = match c.lease_keepalive(*lease).await {
                Ok(_) => (Kind::Ok, String::new()),
                Err(e) => (classify(&e), e.to_string()),
            };
            rec.push(process, kind, "keepalive", id, json!({"lease": lease}), error);
            if kind == Kind::Ok {
                *refreshed = Instant::now();
            }
            ended.push(kind);
        }
        if !ended.contains(&Kind::Info) {
            let pick = rng.below(10);
            if pick < 3 && live.len() < REGISTRY_LIVE_PER_PROCESS {
                let id = format!("i{}", ids.fetch_add(1, Ordering::SeqCst));
                let ttl_ms = ttl.as_millis() as u64;
                rec.push(
                    process,
                    Kind::Invoke,
                    "grant",
                    &id,
                    json!({"ttl_ms": ttl_ms}),
                    String::new(),
                );
                let granted = c.lease_grant(REGISTRY_TTL_SECS, 0).await;
                let (kind, lease, error) = match &granted {
                    Ok(r) => (Kind::Ok, r.id, String::new()),
                    Err(e) => (classify(e), 0, e.to_string()),
                };
                let at = Instant::now();
                rec.push(
                    process,
                    kind,
                    "grant",
                    &id,
                    json!({"ttl_ms": ttl_ms, "lease": lease}),
                    error,
                );
                ended.push(kind);
                if kind == Kind::Ok {
                    rec.push(
                        process,
                        Kind::Invoke,
                        "register",
                        &id,
                        json!({"lease": lease}),
                        String::new(),
                    );
                    let instance = pb::Instance {
                        service: REGISTRY_SERVICE.into(),
                        id: id.clone(),
                        address: "10.77.255.1:1".into(),
                        lease,
                        ..Default::default()
                    };
                    let (kind, error) = match c.register(instance).await {
                        Ok(_) => (Kind::Ok, String::new()),
                        Err(e) => (classify(&e), e.to_string()),
                    };
                    rec.push(process, kind, "register", &id, json!({"lease": lease}), error);
                    if kind == Kind::Ok {
                        live.push((id, lease, at));
                    }
                    ended.push(kind);
                }
            } else if pick < 5 && !live.is_empty() {
                let (id, _, _) = live.remove(rng.below(live.len() as u64) as usize);
                rec.push(
                    process,
                    Kind::Invoke,
                    "deregister",
                    &id,
                    serde_json::Value::Null,
                    String::new(),
                );
                let (kind, error) = match c.deregister(REGISTRY_SERVICE, &id).await {
                    Ok(_) => (Kind::Ok, String::new()),
                    Err(e) => (classify(&e), e.to_string()),
                };
                rec.push(process, kind, "deregister", &id, serde_json::Value::Null, error);
                ended.push(kind);
            } else {
                rec.push(
                    process,
                    Kind::Invoke,
                    "lookup",
                    REGISTRY_SERVICE,
                    serde_json::Value::Null,
                    String::new(),
                );
                let (kind, value, error) = match c.lookup(REGISTRY_SERVICE, &[]).await {
                    Ok(r) => (
                        Kind::Ok,
                        json!(r.instances.iter().map(|i| i.id.clone()).collect::<Vec<_>>()),
                        String::new(),
                    ),
                    // A lookup that failed says nothing: it changes nothing.
                    Err(e) => (Kind::Fail, serde_json::Value::Null, e.to_string()),
                };
                rec.push(process, kind, "lookup", REGISTRY_SERVICE, value, error);
            }
        }
        if ended.contains(&Kind::Info) {
            let Some(next) = session(&rec, &endpoints) else {
                return;
            };
            (process, c) = next;
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
    if cfg.nemeses.contains(&Nemesis::Bridge) && cfg.nodes < 5 {
        anyhow::bail!("nemesis: bridge needs --nodes 5 or more, not {}", cfg.nodes);
    }
    if cfg.nemeses.contains(&Nemesis::Snapshot) && cfg.workload == Workload::Events {
        // It watches the meta group's snapshots, which event appends do
        // not advance.
        anyhow::bail!("nemesis: snapshot needs a workload that writes the meta group (register, watch, registry)");
    }
    if cfg.nodes < 3 {
        anyhow::bail!("nodes: must be at least 3, not {}", cfg.nodes);
    }
    let failover = cfg.nemeses.contains(&Nemesis::Failover);
    if failover && cfg.nodes < 4 {
        anyhow::bail!(
            "nemesis: failover needs --nodes 4 or more (3 voters and a spare), not {}",
            cfg.nodes
        );
    }
    if failover && cfg.nemeses.contains(&Nemesis::Member) {
        anyhow::bail!(
            "nemesis: failover and member both change membership (autopilot and an operator); run them apart"
        );
    }
    let clock = cfg.nemeses.contains(&Nemesis::Clock);
    if clock && !std::path::Path::new(LIBFAKETIME).exists() {
        anyhow::bail!("nemesis: clock needs {LIBFAKETIME} (Debian's faketime package; scripts/setup.sh installs it)");
    }
    let net = match cfg.hosts {
        Hosts::Loopback => None,
        Hosts::Netns => {
            Some(esf_cluster_tests::netns::Net::create(cfg.nodes).map_err(|e| anyhow::anyhow!("hosts: {e}"))?)
        }
    };
    let snapshot_args = [
        "--snapshot-logs".to_string(),
        SNAPSHOT_LOGS.to_string(),
        "--snapshot-keep-logs".to_string(),
        SNAPSHOT_KEEP_LOGS.to_string(),
    ];
    let mut extra: Vec<&str> = if cfg.nemeses.contains(&Nemesis::Snapshot) {
        snapshot_args.iter().map(String::as_str).collect()
    } else {
        Vec::new()
    };
    if cfg.tls {
        // Every connection, the nodes' own too, with a client certificate.
        extra.push("--client-cert-auth");
    }
    if failover {
        extra.extend(FAILOVER_ARGS);
    }
    let prepare = |n: &mut esf_cluster_tests::Node| {
        if clock {
            // Only the wall clock is faked: elections, leases and deadlines
            // run on the monotonic clock, as on a real host whose clock
            // NTP steps.
            let file = clock_file(n);
            std::fs::write(&file, "+0").expect("write the faketime file");
            n.env = vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
                ("FAKETIME_CACHE_DURATION".into(), "1".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ];
        }
        if !cfg.failpoints.is_empty() {
            n.env.push(("ESF_FAILPOINTS".into(), cfg.failpoints.join(",")));
        }
    };
    let cluster = if cfg.tls {
        Cluster::create_tls(&cfg.esf_bin, cfg.nodes, net, &extra, &prepare)
    } else {
        Cluster::create(&cfg.esf_bin, cfg.nodes, net, &extra, &prepare)
    };
    cluster.wait_converged().await;
    let endpoints = Endpoints {
        addrs: cluster.nodes.iter().map(|n| n.grpc.clone()).collect(),
        opts: cluster.client_options(),
    };
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        records: Mutex::new(Vec::new()),
        next_process: AtomicU64::new(1),
    });
    let nemesis_log: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let until = Instant::now() + cfg.time;
    let values = Arc::new(AtomicU64::new(1));
    let mut workers: Vec<_> = (0..cfg.concurrency)
        .map(|i| {
            let (rec, eps, values) = (rec.clone(), endpoints.clone(), values.clone());
            let keys = cfg.keys;
            let seed = 0x51ed + i as u64 * 7919;
            match cfg.workload {
                // Each register process is bound to one node (as Jepsen
                // binds them), so a node cut off still gets requests.
                Workload::Register => {
                    let pinned = Endpoints {
                        addrs: vec![eps[i % eps.len()].clone()],
                        opts: eps.opts.clone(),
                    };
                    tokio::spawn(register_worker(rec, pinned, keys, until, seed, values))
                }
                Workload::Events => tokio::spawn(events_worker(rec, eps, until, seed)),
                Workload::Watch => tokio::spawn(watch_writer(rec, eps, keys, until, seed, values)),
                Workload::Registry => tokio::spawn(registry_worker(rec, eps, until, seed, values)),
            }
        })
        .collect();
    if cfg.workload == Workload::Watch {
        // A watcher per node, each trying its node first.
        for i in 0..endpoints.len() {
            let mut eps = endpoints.clone();
            eps.rotate_left(i);
            let name = format!("watcher {}", i + 1);
            workers.push(tokio::spawn(watcher(rec.clone(), eps, until, name)));
        }
    }
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
            if clock {
                std::fs::write(clock_file(n), "+0")?;
            }
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
    let reference = if cfg.workload == Workload::Watch {
        reference_watch(&endpoints).await?
    } else {
        (Vec::new(), 1)
    };
    let replicas = replica_views(&cluster).await;
    let audit = audit_trail(&cluster).await;
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
    let report = match cfg.workload {
        Workload::Events => judge_events(&records, &final_reads, &faults, cfg)?,
        Workload::Register => judge(&records, &faults, cfg)?,
        Workload::Watch => judge_watch(&records, &reference.0, reference.1, &faults, cfg)?,
        Workload::Registry => judge_registry(&records, &faults, cfg)?,
    };
    let mut report = report;
    let (anomalies, missing) = check_replicas(&replicas);
    report.anomalies.extend(anomalies);
    report.missing_evidence.extend(missing);
    match audit {
        Ok((revision, revisions)) => {
            let anomalies = check_audit(&revisions, revision);
            if anomalies.is_empty() {
                report.checked.push(format!(
                    "audit trail: each of the {revision} revisions has one event in $audit, in revision order"
                ));
            }
            report.anomalies.extend(anomalies);
        }
        Err(e) => report.missing_evidence.push(format!("audit trail: {e}")),
    }
    if cfg.tls {
        report.checked.push(
            "tls: every client and node connection ran TLS with a client certificate (--client-cert-auth)".into(),
        );
    }
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
    let plotted: Vec<Record> = records
        .iter()
        .filter(|r| r.f != "deliver" && !r.f.starts_with("watch"))
        .cloned()
        .collect();
    std::fs::write(
        cfg.out.join("latency.svg"),
        crate::plot::latency_svg(&pair(&plotted)?, &faults),
    )?;
    drop(cluster);
    Ok(report)
}

/// The libfaketime offset file of node `n` (beside its data dir).
fn clock_file(n: &esf_cluster_tests::Node) -> PathBuf {
    n.dir.with_extension("faketime")
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

/// A node's status (its first answer).
async fn node_status(cluster: &Cluster, node: u64) -> Option<pb::StatusResponse> {
    let (_, s) = cluster.node(node).client().status_all().await.into_iter().next()?;
    s.ok()
}

/// Node `id`'s current meta term (0 if it does not answer).
async fn meta_term(c: &Cluster, id: u64) -> u64 {
    node_status(c, id)
        .await
        .and_then(|s| s.groups.first().map(|g| g.term))
        .unwrap_or(0)
}

/// A meta leader in a term after `term` as some running node sees it,
/// within [`NEW_LEADER_DEADLINE`] (0: none).
async fn leader_after(c: &Cluster, term: u64) -> u64 {
    let deadline = Instant::now() + NEW_LEADER_DEADLINE;
    while Instant::now() < deadline {
        for n in c.nodes.iter().filter(|n| n.child.is_some()) {
            if let Some(g) = node_status(c, n.id).await.and_then(|s| s.groups.into_iter().next()) {
                if g.leader_id != 0 && g.term > term {
                    return g.leader_id;
                }
            }
        }
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
    0
}

/// A node's view of the meta group: (leader, commit index, applied index).
async fn meta_view(cluster: &Cluster, node: u64) -> Option<(u64, u64, u64)> {
    let g = node_status(cluster, node).await?.groups.into_iter().next()?;
    Some((g.leader_id, g.commit_index, g.applied_index))
}

/// Waits (up to 5 s: the node reads its faketime file every second) until
/// node `id` reports a wall clock `offset` seconds off the true time, to
/// within 2 s; returns the offset it reported last (seconds).
async fn skew_seen(c: &Cluster, id: u64, offset: i64) -> (bool, i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    loop {
        if let Some(s) = node_status(c, id).await {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            seen = (s.time_unix_ms as i64 - now) / 1000;
            if (seen - offset).abs() <= 2 {
                return (true, seen);
            }
        }
        if Instant::now() >= deadline {
            return (false, seen);
        }
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    }
}

/// A membership change the member nemesis makes.
#[derive(Debug, Clone)]
enum MemberChange {
    /// Remove the node.
    Remove(u64),
    /// Add the node at this address as a learner, then promote it.
    Add(u64, String),
}

/// Drives `change` to its end through `admin`, one idempotent step at a
/// time from the current membership (a step whose outcome is unknown, e.g.
/// because the leader died, is simply looked at again), within
/// [`MEMBERSHIP_DEADLINE`].
async fn change_membership(admin: Client, change: MemberChange) -> Result<(), String> {
    let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let step = match admin.members().await {
            Err(e) => Err(e),
            Ok(m) => {
                let me = |id: u64| m.members.iter().find(|x| x.id == id).cloned();
                match &change {
                    MemberChange::Remove(id) => match me(*id) {
                        None => return Ok(()),
                        Some(_) => admin.remove(*id).await.map(drop),
                    },
                    MemberChange::Add(id, addr) => match me(*id) {
                        Some(x) if x.voter => return Ok(()),
                        Some(_) => admin.promote(*id).await.map(drop),
                        None => admin.add_learner(*id, addr).await.map(drop),
                    },
                }
            }
        };
        if let Err(e) = step {
            last = e.to_string();
            tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
        }
    }
    Err(format!("{change:?} not done within {MEMBERSHIP_DEADLINE:?}: {last}"))
}

/// Voters as the cluster reports them (sorted), through `admin`.
/// A client of every node but `id`.
fn client_without(c: &Cluster, id: u64) -> anyhow::Result<Client> {
    client(&Endpoints {
        addrs: c.nodes.iter().filter(|n| n.id != id).map(|n| n.grpc.clone()).collect(),
        opts: c.client_options(),
    })
}

async fn voters(admin: &Client) -> Vec<u64> {
    let mut v: Vec<u64> = admin
        .members()
        .await
        .map(|m| m.members.iter().filter(|x| x.voter).map(|x| x.id).collect())
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Meta snapshots node `n` installed from a leader so far (its log).
fn snapshot_installs(n: &esf_cluster_tests::Node) -> usize {
    n.log().matches("snapshot installed group=0").count()
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
    // The clock nemesis cycles its own offsets: taken from the global turn,
    // `pause,clock` only ever used the odd ones (both backwards).
    let mut clock_turn = 0;
    let mut offset = 0;
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
        let mut degraded = false;
        // Strike.
        match kind {
            Nemesis::Kill | Nemesis::Failover => c.node_mut(leader).kill(),
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
                    match net.netem(n, NETEM_SPEC) {
                        Ok(()) => {}
                        // A kernel without sch_netem: a token bucket and
                        // nftables instead.
                        Err(e) if e.contains("qdisc kind is unknown") => {
                            degraded = true;
                            errors.extend(
                                net.degrade(n, DEGRADE_RATE_KBIT, DEGRADE_LATENCY_MS, DEGRADE_LOSS_PERCENT)
                                    .err(),
                            );
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            Nemesis::Bridge => {
                // A follower bridges two halves of the others that cannot
                // reach each other.
                target = others[rng.below(others.len() as u64) as usize];
                let rest: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|n| *n != target).collect();
                let (a, b) = rest.split_at(rest.len() / 2);
                let net = c.net.as_ref().expect("network faults run on netns hosts");
                for x in a {
                    for y in b {
                        errors.extend(net.cut_both(*x, *y).err());
                    }
                }
            }
            Nemesis::Clock => {
                offset = CLOCK_OFFSETS[clock_turn % CLOCK_OFFSETS.len()];
                clock_turn += 1;
                errors.extend(
                    std::fs::write(clock_file(c.node(leader)), format!("{offset:+}"))
                        .err()
                        .map(|e| format!("faketime file: {e}")),
                );
            }
            Nemesis::Member | Nemesis::Snapshot => {
                target = others[rng.below(others.len() as u64) as usize];
            }
        }
        let mut crashed = false;
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
            Nemesis::Bridge => {
                let before = meta_view(&c, leader).await.map_or(0, |v| v.1);
                drop(c);
                tokio::time::sleep(PARTITION_HOLD).await;
                c = cluster.lock().await;
                let now = meta_leader(&c).await;
                let after = meta_view(&c, now).await.map_or(0, |v| v.1);
                let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).filter(|n| *n != target).collect();
                let (a, b) = ids.split_at(ids.len() / 2);
                (
                    after > before,
                    format!(
                        "node {target} bridges {a:?} and {b:?}; meta commit index {before} -> {after} (node {now} leads)"
                    ),
                )
            }
            Nemesis::Clock => {
                let (took, seen) = skew_seen(&c, leader, offset).await;
                drop(c);
                tokio::time::sleep(PARTITION_HOLD).await;
                c = cluster.lock().await;
                errors.extend(
                    std::fs::write(clock_file(c.node(leader)), "+0")
                        .err()
                        .map(|e| format!("faketime file: {e}")),
                );
                let n = c.node_mut(leader);
                if let Some(status) = n.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                    crashed = true;
                    n.child = None;
                    errors.push(format!(
                        "node {leader} exited ({status}) with its clock {offset:+} s off"
                    ));
                }
                (took, format!("wall clock {offset:+} s; its status read {seen:+} s off"))
            }
            Nemesis::Failover => {
                let by = new_leader(&c, leader).await;
                let admin = match client_without(&c, leader) {
                    Ok(a) => a,
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                };
                drop(c);
                // Autopilot, alone, removes it.
                let killed = Instant::now();
                let deadline = killed + FAILOVER_DEADLINE;
                let member = |m: &pb::MembersResponse, id: u64| m.members.iter().find(|x| x.id == id).cloned();
                let mut removed_after = None;
                while Instant::now() < deadline {
                    if let Ok(m) = admin.members().await {
                        if member(&m, leader).is_none() {
                            removed_after = Some(killed.elapsed());
                            break;
                        }
                    }
                    tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
                }
                let after = voters(&admin).await;
                c = cluster.lock().await;
                if removed_after.is_none() {
                    errors.push(format!(
                        "autopilot did not remove node {leader} within {FAILOVER_DEADLINE:?}"
                    ));
                }
                // Wiped, it joins by itself (auto-join) as a spare.
                let n = c.node_mut(leader);
                errors.extend(std::fs::remove_dir_all(&n.dir).err().map(|e| format!("wipe: {e}")));
                n.start(&bin);
                let deadline = Instant::now() + FAILOVER_DEADLINE;
                let mut rejoined = false;
                while removed_after.is_some() && Instant::now() < deadline {
                    if let Ok(m) = admin.members().await {
                        if member(&m, leader).is_some_and(|x| !x.voter) {
                            rejoined = true;
                            break;
                        }
                    }
                    tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
                }
                if removed_after.is_some() && !rejoined {
                    errors.push(format!(
                        "node {leader} did not rejoin as a learner within {FAILOVER_DEADLINE:?}"
                    ));
                }
                (
                    by != 0 && removed_after.is_some() && after.len() == 3 && rejoined,
                    format!(
                        "node {by} led after the kill; autopilot removed node {leader} after {:.1}s, voters {after:?}; wiped, it rejoined as a learner: {rejoined}",
                        removed_after.unwrap_or_default().as_secs_f64()
                    ),
                )
            }
            Nemesis::Member => {
                let admin = match client_without(&c, target) {
                    Ok(a) => a,
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                };
                let all: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
                // Remove the follower while the leader is killed.
                let removing = tokio::spawn(change_membership(admin.clone(), MemberChange::Remove(target)));
                tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
                let term1 = meta_term(&c, leader).await;
                c.node_mut(leader).kill();
                // With two voters left (the removal done first) nobody can
                // lead while it is down: restart it after 0-1 s, then some
                // node must lead.
                tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
                c.node_mut(leader).start(&bin);
                let by1 = leader_after(&c, term1).await;
                let removed = removing.await.map_err(|e| e.to_string()).and_then(|r| r);
                let without = voters(&admin).await;
                errors.extend(removed.err());
                // Wipe it and add it back while the leader is killed again.
                let waiting = |c: &Cluster| c.node(target).log().matches("waiting to be added").count();
                let waited = waiting(&c);
                let n = c.node_mut(target);
                n.kill();
                errors.extend(std::fs::remove_dir_all(&n.dir).err().map(|e| format!("wipe: {e}")));
                // Added back by hand below (the operator's way).
                if !n.has_arg("--auto-join=false") {
                    n.add_args(&["--auto-join=false"]);
                }
                n.start(&bin);
                let deadline = Instant::now() + NEW_LEADER_DEADLINE;
                while waiting(&c) == waited {
                    if Instant::now() >= deadline {
                        errors.push(format!("node {target} never waited to be added"));
                        break;
                    }
                    tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
                }
                let addr = c.node(target).grpc.clone();
                let adding = tokio::spawn(change_membership(admin.clone(), MemberChange::Add(target, addr)));
                tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
                let leader2 = leader_other_than(&c, target).await;
                let mut by2 = 0;
                if leader2 != 0 {
                    let term2 = meta_term(&c, leader2).await;
                    c.node_mut(leader2).kill();
                    tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
                    c.node_mut(leader2).start(&bin);
                    by2 = leader_after(&c, term2).await;
                }
                let added = adding.await.map_err(|e| e.to_string()).and_then(|r| r);
                errors.extend(added.err());
                let with = voters(&admin).await;
                (
                    !without.contains(&target) && with == all && by1 != 0 && by2 != 0,
                    format!(
                        "voters {without:?} after removing node {target} while node {leader} was killed (and restarted; node {by1} led after); {with:?} after adding it back while node {leader2} was killed (and restarted; node {by2} led after)"
                    ),
                )
            }
            Nemesis::Snapshot => {
                let applied = meta_view(&c, target).await.map_or(0, |v| v.2);
                // What its log holds (entries may arrive beyond what it
                // applied, and a few more before the pause lands: hence the
                // margin below).
                let last_log = node_status(&c, target)
                    .await
                    .and_then(|s| s.groups.first().map(|g| g.last_log_index))
                    .unwrap_or(0)
                    .max(applied);
                c.node(target).pause(true);
                // The leader snapshots and purges its log past what the
                // paused follower has (openraft may purge later than it
                // snapshots, e.g. while a replication to the paused node
                // is in flight: wait for the purge itself).
                let deadline = Instant::now() + NEW_LEADER_DEADLINE;
                let (mut snap, mut purged_to) = (0, 0);
                while Instant::now() < deadline {
                    let now = leader_other_than(&c, target).await;
                    (snap, purged_to) = node_status(&c, now)
                        .await
                        .and_then(|s| s.groups.first().map(|g| (g.snapshot_index, g.purged_index)))
                        .unwrap_or((0, 0));
                    if purged_to > last_log + SNAPSHOT_KEEP_LOGS {
                        break;
                    }
                    // The log grows by itself only as fast as the workload
                    // writes, which on a loaded machine may not reach a
                    // snapshot before the run ends: the nemesis writes
                    // too, outside the checked keys.
                    if now != 0 {
                        let filler = c.node(now).client();
                        for i in 0..SNAPSHOT_FILLER_WRITES {
                            let _ = filler.put(SNAPSHOT_FILLER_KEY, i.to_string()).await;
                        }
                    }
                    tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
                }
                let purged = purged_to > last_log + SNAPSHOT_KEEP_LOGS;
                let before = snapshot_installs(c.node(target));
                c.node(target).pause(false);
                // Killed again while it receives or installs the snapshot.
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                let during = snapshot_installs(c.node(target)) > before;
                c.node_mut(target).kill();
                c.node_mut(target).start(&bin);
                let deadline = Instant::now() + REPLICAS_SETTLE;
                let mut caught = 0;
                while Instant::now() < deadline {
                    caught = meta_view(&c, target).await.map_or(0, |v| v.2);
                    if caught >= snap && snapshot_installs(c.node(target)) > before {
                        break;
                    }
                    tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
                }
                let installs = snapshot_installs(c.node(target)) - before;
                (
                    purged && installs > 0 && caught >= snap,
                    format!(
                        "node {target} paused at applied {applied} (log to {last_log}), leader snapshot at {snap}, log purged to {purged_to}; killed {} its install; {installs} snapshot(s) installed; applied {caught} after restart",
                        if during { "after" } else { "before the end of" }
                    ),
                )
            }
            Nemesis::Netem if degraded => {
                drop(c);
                tokio::time::sleep(PARTITION_HOLD).await;
                c = cluster.lock().await;
                let net = c.net.as_ref().expect("netns");
                let seen: Vec<(u64, u64, u64)> = c
                    .nodes
                    .iter()
                    .map(|n| {
                        let (dropped, held) = net.degraded(n.id);
                        (n.id, dropped, held)
                    })
                    .collect();
                (
                    seen.iter().all(|(_, dropped, _)| *dropped > 0) && seen.iter().any(|(_, _, held)| *held > 0),
                    format!(
                        "no sch_netem: tbf {DEGRADE_RATE_KBIT} kbit queueing up to {DEGRADE_LATENCY_MS} ms and {DEGRADE_LOSS_PERCENT}% random loss (no reordering); (node, packets dropped, packets held back): {seen:?}"
                    ),
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
            "crashed": crashed,
        }));
    }
}

/// Most time the replicas get to reach the same applied index per group
/// after healing.
pub const REPLICAS_SETTLE: Duration = Duration::from_secs(20);

/// Every node's fingerprints and leader log, once every group's replicas
/// report the same applied index (or [`REPLICAS_SETTLE`] passed).
/// How long the audit relay may take to catch up once the faults healed.
pub const AUDIT_CATCH_UP: Duration = Duration::from_secs(60);

/// Once the meta leader reports every revision relayed: (its revision, the
/// revision of each event of `$audit` in stream order).
async fn audit_trail(cluster: &tokio::sync::Mutex<Cluster>) -> Result<(u64, Vec<u64>), String> {
    let c = cluster.lock().await;
    let client = c.client();
    let deadline = Instant::now() + AUDIT_CATCH_UP;
    let revision = loop {
        let mut caught_up = None;
        let mut seen = String::from("no meta leader answered");
        for (_, s) in client.status_all().await {
            let Ok(s) = s else { continue };
            if s.groups.first().is_some_and(|g| g.leader_id == s.node_id) {
                let rev = s.header.as_ref().map_or(0, |h| h.revision);
                seen = format!("revision {rev}, relayed {}", s.audit_relayed_revision);
                if s.audit_lag == 0 && s.audit_relayed_revision == rev {
                    caught_up = Some(rev);
                }
            }
        }
        if let Some(r) = caught_up {
            break r;
        }
        if Instant::now() >= deadline {
            return Err(format!("the relay did not catch up within {AUDIT_CATCH_UP:?} ({seen})"));
        }
        tokio::time::sleep(esf_cluster_tests::POLL_INTERVAL).await;
    };
    let mut revisions = Vec::new();
    loop {
        let r = client
            .read_stream(pb::ReadStreamRequest {
                stream: "$audit".into(),
                from_version: revisions.len() as u64 + 1,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("read $audit: {e}"))?;
        if r.events.is_empty() {
            return Ok((revision, revisions));
        }
        for e in &r.events {
            revisions.push(
                e.metadata
                    .get("revision")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("$audit event {} names no revision", e.id))?,
            );
        }
    }
}

/// Anomalies of an audit trail: `revisions` (in stream order) must be
/// exactly 1..=`current`, each once.
pub fn check_audit(revisions: &[u64], current: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for r in revisions {
        *count.entry(*r).or_default() += 1;
    }
    let doubled: Vec<u64> = count.iter().filter(|(_, n)| **n > 1).map(|(r, _)| *r).collect();
    if !doubled.is_empty() {
        out.push(format!(
            "audit trail: revisions with several events: {:?}",
            &doubled[..doubled.len().min(10)]
        ));
    }
    let missing: Vec<u64> = (1..=current).filter(|r| !count.contains_key(r)).collect();
    if !missing.is_empty() {
        out.push(format!(
            "audit trail: {} revisions without an event, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    let unknown: Vec<u64> = count.keys().copied().filter(|r| *r == 0 || *r > current).collect();
    if !unknown.is_empty() {
        out.push(format!(
            "audit trail: events of revisions that do not exist: {unknown:?}"
        ));
    }
    if let Some(w) = revisions.windows(2).find(|w| w[1] <= w[0]) {
        out.push(format!("audit trail: revision {} after {} in the stream", w[1], w[0]));
    }
    out
}

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
                // ESF's own streams (the audit trail) are not the workload's.
                .filter(|e| !e.stream.starts_with('$'))
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

/// Tallies the outcomes of `ops`: (ok, fail, info).
fn tally(ops: &[crate::history::Completed]) -> (usize, usize, usize) {
    ops.iter().fold((0, 0, 0), |(ok, fail, info), o| match o.kind() {
        Kind::Ok => (ok + 1, fail, info),
        Kind::Fail => (ok, fail + 1, info),
        _ => (ok, fail, info + 1),
    })
}

/// Checks a watch history (puts, deliveries) against the reference watch,
/// and weighs the evidence.
pub fn judge_watch(
    records: &[Record],
    reference: &[crate::watch::Change],
    reference_from: u64,
    faults: &[serde_json::Value],
    cfg: &RunConfig,
) -> anyhow::Result<Report> {
    use crate::watch::{Change, Put, PutOutcome, Watcher};
    let puts_only: Vec<Record> = records.iter().filter(|r| r.f == "put").cloned().collect();
    let ops = pair(&puts_only)?;
    let (ok, fail, info) = tally(&ops);
    let mut ok_per_key: BTreeMap<String, usize> = BTreeMap::new();
    let puts: Vec<Put> = ops
        .iter()
        .map(|o| {
            let outcome = match (o.kind(), &o.complete) {
                (Kind::Ok, Some(c)) => {
                    *ok_per_key.entry(o.invoke.key.clone()).or_default() += 1;
                    PutOutcome::Ok(c.value["revision"].as_u64().unwrap_or(0))
                }
                (Kind::Fail, _) => PutOutcome::Fail,
                _ => PutOutcome::Info,
            };
            Put {
                key: o.invoke.key.clone(),
                value: o.invoke.value["value"].to_string(),
                outcome,
            }
        })
        .collect();
    let mut watchers: BTreeMap<String, Vec<Vec<Change>>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.f.starts_with("watch")) {
        let runs = watchers
            .entry(r.value["watcher"].as_str().unwrap_or_default().to_string())
            .or_insert_with(|| vec![Vec::new()]);
        if r.f == "watch-snapshot" {
            runs.push(Vec::new());
            continue;
        }
        runs.last_mut().expect("one run at least").push(Change {
            revision: r.value["revision"].as_u64().unwrap_or(0),
            key: r.key.clone(),
            value: r.value["value"].as_str().map(String::from),
        });
    }
    let watchers: Vec<Watcher> = watchers
        .into_iter()
        .map(|(name, runs)| Watcher { name, runs })
        .collect();
    let anomalies = crate::watch::check(&puts, reference, reference_from, &watchers)
        .into_iter()
        .map(|a| format!("{}: {}", a.kind, a.detail))
        .collect();
    let mut missing = Vec::new();
    for k in 0..cfg.keys {
        let key = format!("{WATCH_PREFIX}{k}");
        let n = ok_per_key.get(&key).copied().unwrap_or(0);
        if n < MIN_OK_PER_KEY {
            missing.push(format!("{key}: {n} acknowledged puts, fewer than {MIN_OK_PER_KEY}"));
        }
    }
    let expected = cfg.nodes as usize;
    if watchers.len() < expected {
        missing.push(format!("{} of {expected} watchers delivered anything", watchers.len()));
    }
    for w in &watchers {
        let n: usize = w.runs.iter().map(Vec::len).sum();
        if n < MIN_OK_PER_KEY {
            missing.push(format!(
                "{}: {n} changes delivered, fewer than {MIN_OK_PER_KEY}",
                w.name
            ));
        }
    }
    let mut report = weigh(ok, fail, info, anomalies, missing, faults, cfg);
    report.checked.push(format!(
        "{} watchers against a reference watch of {} changes from revision {reference_from}",
        watchers.len(),
        reference.len()
    ));
    Ok(report)
}

/// Checks a registry history (grants, registrations, keep-alives, lookups,
/// deregistrations) and weighs the evidence.
pub fn judge_registry(records: &[Record], faults: &[serde_json::Value], cfg: &RunConfig) -> anyhow::Result<Report> {
    use crate::registry::{Instance, Lookup};
    let ops = pair(records)?;
    let (ok, fail, info) = tally(&ops);
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    let mut lookups = Vec::new();
    let mut registered = 0;
    for o in &ops {
        let (start, kind) = (o.start(), o.kind());
        let end = o.complete.as_ref().map_or(u64::MAX, |c| c.time_ns);
        if o.invoke.f == "lookup" {
            if let (Kind::Ok, Some(c)) = (kind, &o.complete) {
                let seen = c.value.as_array().into_iter().flatten();
                lookups.push(Lookup {
                    called: start,
                    answered: end,
                    seen: seen.filter_map(|v| v.as_str().map(String::from)).collect(),
                });
            }
            continue;
        }
        let i = instances.entry(o.invoke.key.clone()).or_default();
        match (o.invoke.f.as_str(), kind) {
            ("grant", k) => {
                i.ttl_ns = o.invoke.value["ttl_ms"].as_u64().unwrap_or(0) * 1_000_000;
                if k == Kind::Ok {
                    i.refreshed.push((start, end));
                }
            }
            ("keepalive", Kind::Ok) => i.refreshed.push((start, end)),
            ("register", Kind::Ok) => {
                registered += 1;
                i.registered = Some((start, end));
            }
            ("register", Kind::Fail) => i.register_failed = true,
            ("deregister", k) => {
                i.deregister_called = Some(i.deregister_called.map_or(start, |d| d.min(start)));
                if k == Kind::Ok {
                    i.deregistered = Some(i.deregistered.map_or(end, |d| d.min(end)));
                }
            }
            _ => {}
        }
    }
    let anomalies = crate::registry::check(&instances, &lookups)
        .into_iter()
        .map(|a| format!("{}: {}", a.kind, a.detail))
        .collect();
    let mut missing = Vec::new();
    if lookups.len() < MIN_OK_PER_KEY {
        missing.push(format!(
            "{} acknowledged lookups, fewer than {MIN_OK_PER_KEY}",
            lookups.len()
        ));
    }
    if registered < MIN_OK_PER_KEY {
        missing.push(format!(
            "{registered} acknowledged registrations, fewer than {MIN_OK_PER_KEY}"
        ));
    }
    let mut report = weigh(ok, fail, info, anomalies, missing, faults, cfg);
    report.checked.push(format!(
        "{} lookups against {} instances ({registered} registered)",
        lookups.len(),
        instances.len()
    ));
    Ok(report)
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
    mut anomalies: Vec<String>,
    mut missing: Vec<String>,
    faults: &[serde_json::Value],
    cfg: &RunConfig,
) -> Report {
    for f in faults.iter().filter(|f| f["crashed"] == true) {
        anomalies.push(format!("{} made node {} exit: {}", f["fault"], f["node"], f["errors"]));
    }
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
