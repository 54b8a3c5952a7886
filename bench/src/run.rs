//! Runs one workload against one target and summarises it.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use futures::StreamExt;
use hdrhistogram::Histogram;

use crate::stats::{self, CpuTimes, Percentiles, histogram};
use crate::target::{self, Conn, KEY_PREFIX, Target, WATCH_PREFIX};

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Put a random key of `--keys`.
    KvPut,
    /// Linearizable get of a random (preloaded) key.
    KvGet,
    /// Serializable (local) get of a random (preloaded) key.
    KvGetSerializable,
    /// A transaction: compare a preloaded key's value, put it again.
    KvTxn,
    /// Watch fan-out: `--clients` watchers of one prefix, `--writers`
    /// putting under it; latency is put sent -> change received.
    Watch,
    /// Append one event and await its acknowledgement.
    EventsAppend,
    /// Append `--batch` events per call and await the acknowledgement.
    EventsAppendBatched,
    /// `--clients` subscribers follow what `--writers` append; latency is
    /// append sent -> event received.
    EventsSubscribe,
}

impl Workload {
    /// The workload's command-line name.
    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("every workload has a name")
            .get_name()
            .to_string()
    }

    fn fan_out(self) -> bool {
        matches!(self, Workload::Watch | Workload::EventsSubscribe)
    }

    fn events(self) -> bool {
        matches!(
            self,
            Workload::EventsAppend | Workload::EventsAppendBatched | Workload::EventsSubscribe
        )
    }

    fn needs_keys(self) -> bool {
        matches!(self, Workload::KvGet | Workload::KvGetSerializable | Workload::KvTxn)
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The system driven.
    pub target: Target,
    /// Name of this configuration in results (e.g. `nats-always`).
    pub label: String,
    /// Client endpoints, host:port.
    pub endpoints: Vec<String>,
    /// What the clients do.
    pub workload: Workload,
    /// Concurrent clients (watchers / subscribers for fan-out).
    pub clients: usize,
    /// Connections the clients share (client i uses connection i mod n).
    pub connections: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Value / event payload size, bytes.
    pub value_size: usize,
    /// Events per append of `events-append-batched`.
    pub batch: usize,
    /// Writers of the fan-out workloads.
    pub writers: usize,
    /// Measured length (unless `ops` is given).
    pub duration: Duration,
    /// Total operations instead of a duration.
    pub ops: Option<u64>,
    /// Open loop: operations per second over all clients (writers for
    /// fan-out), each started at its scheduled time whether or not the
    /// one before finished; latency counts from the scheduled time.
    pub rate: Option<f64>,
    /// Deadline of one operation (a late one counts as an error).
    pub op_timeout: Duration,
    /// Replicas of the JetStream stream.
    pub nats_replicas: usize,
    /// Processes whose resident memory is reported after the run.
    pub pids: Vec<u32>,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// Smallest payload of the workloads that carry a send time.
pub const MIN_TIMED_PAYLOAD: usize = 64;

impl RunConfig {
    /// Refuses settings that cannot run, naming the option and why.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 {
            bail!("clients: must be at least 1");
        }
        if self.connections == 0 || self.connections > self.clients {
            bail!("connections: must be between 1 and clients ({})", self.clients);
        }
        if self.keys == 0 {
            bail!("keys: must be at least 1");
        }
        if self.ops == Some(0) {
            bail!("ops: must be at least 1");
        }
        if self.ops.is_none() && self.duration.is_zero() {
            bail!("duration-secs: must be at least 1 (or give --ops)");
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                bail!("rate: must be a positive number of operations per second, got {r}");
            }
        }
        if self.batch == 0 || self.batch > 1000 {
            bail!("batch: must be between 1 and 1000 (an append's event limit)");
        }
        if self.writers == 0 {
            bail!("writers: must be at least 1");
        }
        if (self.workload.events() || self.workload.fan_out()) && self.value_size < MIN_TIMED_PAYLOAD {
            bail!(
                "value-size: must be at least {MIN_TIMED_PAYLOAD} bytes for {} (the payload carries its send time)",
                self.workload.name()
            );
        }
        let kv = !self.workload.events();
        match (self.target, kv) {
            (Target::Nats, true) => bail!("workload: {} runs against esf or etcd, not nats", self.workload.name()),
            (Target::Etcd, false) => bail!("workload: {} runs against esf or nats, not etcd", self.workload.name()),
            _ => Ok(()),
        }
    }
}

/// A run's result: one JSON line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// Always "result".
    pub kind: String,
    /// esf, etcd or nats.
    pub target: String,
    /// The configuration's name (defaults to the target).
    pub label: String,
    /// The workload's name.
    pub workload: String,
    /// Clients (watchers / subscribers for fan-out).
    pub clients: usize,
    /// Connections they shared.
    pub connections: usize,
    /// Writers (fan-out workloads).
    pub writers: usize,
    /// Events per append.
    pub batch: usize,
    /// Payload size, bytes.
    pub value_size: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Open-loop rate, if any.
    pub rate: Option<f64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Operations acknowledged (writes, for fan-out).
    pub ops: u64,
    /// Operations that failed or missed their deadline (for fan-out
    /// also every change a watcher never received).
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// The headline rate: operations, events or deliveries per second.
    pub throughput: f64,
    /// What `throughput` counts: "ops/s", "events/s" or "deliveries/s".
    pub unit: String,
    /// Latency percentiles (fan-out: send -> receipt).
    #[serde(flatten)]
    pub latency: Percentiles,
    /// Share of all cores busy during the run, percent.
    pub cpu_busy_pct: f64,
    /// 1-minute load average at the end.
    pub load1: f64,
    /// Largest resident memory of `--pids` after the run, MiB.
    pub rss_mib: Option<f64>,
    /// CPU time the `--pids` (the servers) used during the run per
    /// acknowledged unit of `throughput` (operation, event or delivery),
    /// microseconds; `None` without `--pids`.
    #[serde(default)]
    pub server_cpu_us_per_op: Option<f64>,
    /// CPU time this load generator used per unit of `throughput`,
    /// microseconds.
    #[serde(default)]
    pub client_cpu_us_per_op: Option<f64>,
}

/// Nanoseconds since the process's first call: the send time written
/// into timed payloads (readers are in the same process).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// This process's mark in its payloads: a receiver counts only changes
/// sent by this run (a subscription or watch may also deliver older ones,
/// e.g. "from now" at a replica that had not yet applied them).
fn run_mark() -> &'static str {
    static MARK: OnceLock<String> = OnceLock::new();
    MARK.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("{:016x}", nanos ^ (u64::from(std::process::id()) << 40))
    })
}

/// A JSON payload of exactly `size` bytes carrying the send time (as a
/// fixed-width string: JSON numbers cannot have leading zeros) and this
/// run's mark.
pub fn timed_payload(size: usize) -> Vec<u8> {
    let head = format!("{{\"t\":\"{:020}\",\"r\":\"{}\",\"p\":\"", now_ns(), run_mark());
    let pad = size.saturating_sub(head.len() + 2);
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(head.as_bytes());
    v.resize(head.len() + pad, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// The send time of a [`timed_payload`] of this run (`None` for any other
/// payload).
pub fn sent_ns(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"{\"t\":\"")?;
    let mark = rest.get(20..)?.strip_prefix(b"\",\"r\":\"")?.get(..16)?;
    if mark != run_mark().as_bytes() {
        return None;
    }
    std::str::from_utf8(rest.get(..20)?).ok()?.parse().ok()
}

/// A small, fast, seeded generator (xorshift64*): keys differ per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("{KEY_PREFIX}{i:08}").into_bytes()
}

/// When each client's operations start.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    deadline: Instant,
    /// Operations per client (from `--ops`), else run until the deadline.
    quota: Option<u64>,
    /// Open loop: time between one client's operations.
    interval: Option<Duration>,
}

impl Schedule {
    fn new(cfg: &RunConfig, clients: usize, client: usize) -> (Schedule, Duration) {
        let start = Instant::now();
        let quota = cfg
            .ops
            .map(|n| n / clients as u64 + u64::from((client as u64) < n % clients as u64));
        let interval = cfg.rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        // Open-loop clients are spread over one interval.
        let offset = interval
            .map(|i| i.mul_f64(client as f64 / clients as f64))
            .unwrap_or_default();
        let deadline = if cfg.ops.is_some() {
            start + Duration::from_secs(86_400)
        } else {
            start + cfg.duration
        };
        (
            Schedule {
                start,
                deadline,
                quota,
                interval,
            },
            offset,
        )
    }

    /// The scheduled start of operation `k` (`None`: the client is done).
    async fn next(&self, k: u64, offset: Duration) -> Option<Instant> {
        if self.quota.is_some_and(|q| k >= q) {
            return None;
        }
        match self.interval {
            Some(i) => {
                let at = self.start + offset + i.mul_f64(k as f64);
                if self.quota.is_none() && at >= self.deadline {
                    return None;
                }
                tokio::time::sleep_until(at.into()).await;
                Some(at)
            }
            None => {
                let now = Instant::now();
                (self.quota.is_some() || now < self.deadline).then_some(now)
            }
        }
    }
}

/// What one client task measured.
struct ClientOutcome {
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ClientOutcome {
    fn new() -> Self {
        ClientOutcome {
            hist: histogram(),
            ops: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn failed(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, o: ClientOutcome) {
        self.hist.add(o.hist).expect("same histogram bounds");
        self.ops += o.ops;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// One operation of a request/response workload by client `client`.
async fn one_op(cfg: &RunConfig, conn: &Conn, client: usize, rng: &mut Rng, value: &[u8]) -> anyhow::Result<()> {
    match cfg.workload {
        Workload::KvPut => conn.put(key(rng.below(cfg.keys)), value.to_vec()).await,
        Workload::KvGet => conn.get(key(rng.below(cfg.keys)), false).await,
        Workload::KvGetSerializable => conn.get(key(rng.below(cfg.keys)), true).await,
        Workload::KvTxn => conn.txn(key(rng.below(cfg.keys)), value.to_vec()).await,
        Workload::EventsAppend => {
            conn.append(&format!("bench-{client}"), vec![timed_payload(cfg.value_size)])
                .await
        }
        Workload::EventsAppendBatched => {
            let events = (0..cfg.batch).map(|_| timed_payload(cfg.value_size)).collect();
            conn.append(&format!("bench-{client}"), events).await
        }
        // Writers of the fan-out workloads.
        Workload::Watch => {
            conn.put(
                format!("{WATCH_PREFIX}{:08}", rng.below(cfg.keys)).into_bytes(),
                timed_payload(cfg.value_size),
            )
            .await
        }
        Workload::EventsSubscribe => {
            conn.append(&format!("bench-sub-{client}"), vec![timed_payload(cfg.value_size)])
                .await
        }
    }
}

/// Client `client` issuing operations on its schedule.
async fn op_client(
    cfg: Arc<RunConfig>,
    conn: Conn,
    client: usize,
    clients: usize,
    done_ops: Arc<AtomicU64>,
) -> ClientOutcome {
    let (schedule, offset) = Schedule::new(&cfg, clients, client);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1));
    let value = vec![b'v'; cfg.value_size];
    let mut out = ClientOutcome::new();
    let mut k = 0u64;
    while let Some(at) = schedule.next(k, offset).await {
        k += 1;
        match tokio::time::timeout(cfg.op_timeout, one_op(&cfg, &conn, client, &mut rng, &value)).await {
            Ok(Ok(())) => {
                out.hist.saturating_record(at.elapsed().as_micros().max(1) as u64);
                out.ops += 1;
                if !cfg.workload.fan_out() {
                    done_ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => out.failed(format!("{e:#}")),
            Err(_) => out.failed(format!("deadline of {:?} passed", cfg.op_timeout)),
        }
    }
    out
}

/// A watcher / subscriber: records send -> receipt of every change until
/// it has `expected` of them (known once the writers finish) or the drain
/// time after that passes.
async fn receiver(
    mut changes: target::ChangeStream,
    mut expected: tokio::sync::watch::Receiver<Option<u64>>,
    delivered: Arc<AtomicU64>,
    drain: Duration,
) -> ClientOutcome {
    let mut out = ClientOutcome::new();
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if let Some(want) = *expected.borrow() {
            if out.ops >= want {
                break;
            }
            drain_until.get_or_insert_with(|| tokio::time::Instant::now() + drain);
        }
        let next = async {
            match drain_until {
                Some(d) => tokio::time::timeout_at(d, changes.next()).await.ok(),
                None => Some(changes.next().await),
            }
        };
        tokio::select! {
            r = next => match r {
                None => break, // drained without the rest
                Some(None) => { out.failed("the change stream ended".to_string()); break; }
                Some(Some(Err(e))) => { out.failed(format!("{e:#}")); break; }
                Some(Some(Ok(payloads))) => {
                    let now = now_ns();
                    for p in payloads {
                        if let Some(t) = sent_ns(&p) {
                            out.hist.saturating_record((now.saturating_sub(t) / 1000).max(1));
                            out.ops += 1;
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
            _ = expected.changed(), if drain_until.is_none() => {}
        }
    }
    if let Some(want) = *expected.borrow() {
        if out.ops < want {
            out.errors += want - out.ops;
            out.first_error
                .get_or_insert(format!("received {} of {want} changes", out.ops));
        }
    }
    out
}

/// Draws `[#####-----] 3.0/10 s  1,234 ops  412/s` on stderr twice a second.
fn spawn_progress(
    cfg: &RunConfig,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg.progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let (duration, ops) = (cfg.duration, cfg.ops);
    let what = format!("{} {} x{}", cfg.label, cfg.workload.name(), cfg.clients);
    Some(tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let n = counter.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            let done = match ops {
                Some(total) => n as f64 / total as f64,
                None => secs / duration.as_secs_f64(),
            }
            .clamp(0.0, 1.0);
            let filled = (done * 30.0) as usize;
            eprint!(
                "\r{what} [{}{}] {secs:5.1} s {n:>9} {:>8.0}/s ",
                "#".repeat(filled),
                "-".repeat(30 - filled),
                n as f64 / secs.max(1e-3)
            );
        }
        eprint!("\r{}\r", " ".repeat(what.len() + 70));
    }))
}

/// Fills every key of the workloads that read or compare them.
async fn preload(cfg: &RunConfig, conn: &Conn) -> anyhow::Result<()> {
    let value = vec![b'v'; cfg.value_size];
    futures::stream::iter(0..cfg.keys)
        .map(|i| {
            let value = value.clone();
            async move {
                conn.put(key(i), value)
                    .await
                    .with_context(|| format!("preload key {i}"))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// Runs `cfg` once.
pub async fn run(cfg: RunConfig) -> anyhow::Result<RunResult> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let mut conns = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        conns.push(Conn::open(cfg.target, &cfg.endpoints, i, cfg.op_timeout).await?);
    }
    if cfg.target == Target::Nats {
        target::prepare_nats(&conns[0], cfg.nats_replicas).await?;
    }
    if cfg.workload.needs_keys() {
        preload(&cfg, &conns[0]).await?;
    }
    // Fan-out: the receivers are in place before anything is written.
    let fan_out = cfg.workload.fan_out();
    let (expected_tx, expected_rx) = tokio::sync::watch::channel(None);
    let delivered = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    if fan_out {
        for i in 0..cfg.clients {
            let conn = &conns[i % cfg.connections];
            let mut changes = if cfg.workload == Workload::Watch {
                conn.watch_prefix().await?
            } else {
                conn.subscribe().await?
            };
            if cfg.target == Target::Esf && cfg.workload == Workload::EventsSubscribe {
                // The first message carries the start offsets: subscribed.
                changes.next().await.context("subscription ended before it started")??;
            }
            receivers.push(tokio::spawn(receiver(
                changes,
                expected_rx.clone(),
                delivered.clone(),
                cfg.op_timeout,
            )));
        }
    }
    let senders = if fan_out { cfg.writers } else { cfg.clients };
    let done_ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(
        &cfg,
        if fan_out { delivered.clone() } else { done_ops.clone() },
        stop.clone(),
    );
    let cpu0 = CpuTimes::now();
    let server_cpu0 = stats::processes_cpu_secs(&cfg.pids);
    let client_cpu0 = stats::process_cpu_secs(0);
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|i| {
            let conn = conns[i % cfg.connections].clone();
            tokio::spawn(op_client(cfg.clone(), conn, i, senders, done_ops.clone()))
        })
        .collect();
    let mut sent = ClientOutcome::new();
    for t in tasks {
        sent.merge(t.await.context("client task")?);
    }
    let mut result = ClientOutcome::new();
    let mut deliveries = 0;
    if fan_out {
        let _ = expected_tx.send(Some(sent.ops));
        for r in receivers {
            let o = r.await.context("receiver task")?;
            deliveries += o.ops;
            result.merge(o);
        }
        result.errors += sent.errors;
        if result.first_error.is_none() {
            result.first_error = sent.first_error;
        }
        result.ops = sent.ops;
    } else {
        result = sent;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu0.busy_percent_until(&CpuTimes::now());
    let server_cpu = stats::processes_cpu_secs(&cfg.pids) - server_cpu0;
    let client_cpu = stats::process_cpu_secs(0).zip(client_cpu0).map(|(b, a)| b - a);
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let (throughput, unit) = if fan_out {
        (deliveries as f64 / secs, "deliveries/s")
    } else if cfg.workload == Workload::EventsAppendBatched {
        ((result.ops * cfg.batch as u64) as f64 / secs, "events/s")
    } else if cfg.workload.events() {
        (result.ops as f64 / secs, "events/s")
    } else {
        (result.ops as f64 / secs, "ops/s")
    };
    let rss = cfg.pids.iter().filter_map(|p| stats::rss_mib(*p)).reduce(f64::max);
    let units = throughput * secs;
    let per_unit = |cpu_secs: f64| (units > 0.0).then(|| cpu_secs * 1e6 / units);
    Ok(RunResult {
        kind: "result".to_string(),
        target: format!("{:?}", cfg.target).to_lowercase(),
        label: cfg.label.clone(),
        workload: cfg.workload.name(),
        clients: cfg.clients,
        connections: cfg.connections,
        writers: if fan_out { cfg.writers } else { 0 },
        batch: if cfg.workload == Workload::EventsAppendBatched {
            cfg.batch
        } else {
            1
        },
        value_size: cfg.value_size,
        keys: cfg.keys,
        rate: cfg.rate,
        seconds: secs,
        ops: result.ops,
        errors: result.errors,
        first_error: result.first_error,
        throughput,
        unit: unit.to_string(),
        latency: Percentiles::of(&result.hist),
        cpu_busy_pct: cpu,
        load1: stats::load1(),
        rss_mib: rss,
        server_cpu_us_per_op: if cfg.pids.is_empty() {
            None
        } else {
            per_unit(server_cpu)
        },
        client_cpu_us_per_op: client_cpu.and_then(per_unit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_payloads_have_the_size_asked_are_json_and_carry_their_send_time() {
        for size in [MIN_TIMED_PAYLOAD, 64, 256, 4096] {
            let before = now_ns();
            let p = timed_payload(size);
            assert_eq!(p.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
            assert!(v["p"].is_string() && v["t"].is_string(), "{v}");
            let t = sent_ns(&p).expect("send time");
            assert!(t >= before && t <= now_ns());
        }
        assert_eq!(sent_ns(b"{\"x\":1}"), None);
        // Another run's payload (another mark) is not this run's.
        let mut other = timed_payload(100);
        other[33] = if other[33] == b'0' { b'1' } else { b'0' };
        assert_eq!(sent_ns(&other), None);
    }

    fn cfg(workload: Workload, target: Target) -> RunConfig {
        RunConfig {
            target,
            label: "x".into(),
            endpoints: vec!["127.0.0.1:1".into()],
            workload,
            clients: 4,
            connections: 4,
            keys: 10,
            value_size: 256,
            batch: 100,
            writers: 1,
            duration: Duration::from_secs(1),
            ops: None,
            rate: None,
            op_timeout: Duration::from_secs(1),
            nats_replicas: 3,
            pids: vec![],
            progress: false,
        }
    }

    #[test]
    fn bad_settings_name_the_option_and_the_reason() {
        let bad = |f: &dyn Fn(&mut RunConfig), needle: &str| {
            let mut c = cfg(Workload::KvPut, Target::Esf);
            f(&mut c);
            let e = c.validate().expect_err(needle).to_string();
            assert!(e.starts_with(needle), "{e}");
        };
        bad(&|c| c.clients = 0, "clients:");
        bad(&|c| c.connections = 5, "connections:");
        bad(&|c| c.keys = 0, "keys:");
        bad(&|c| c.ops = Some(0), "ops:");
        bad(&|c| c.rate = Some(0.0), "rate:");
        bad(&|c| c.batch = 1001, "batch:");
        bad(&|c| c.target = Target::Nats, "workload:");
        bad(
            &|c| {
                c.workload = Workload::EventsAppend;
                c.value_size = 10
            },
            "value-size:",
        );
        cfg(Workload::KvPut, Target::Etcd).validate().expect("kv on etcd");
        cfg(Workload::EventsSubscribe, Target::Nats)
            .validate()
            .expect("events on nats");
        assert!(cfg(Workload::EventsAppend, Target::Etcd).validate().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_schedule_starts_ops_at_their_time_and_splits_the_quota() {
        let mut c = cfg(Workload::KvPut, Target::Esf);
        c.rate = Some(400.0); // 4 clients: one op per client every 10 ms
        c.ops = Some(10);
        let (s, offset) = Schedule::new(&c, 4, 1);
        assert_eq!(s.quota, Some(3)); // 10 ops over 4 clients: 3, 3, 2, 2
        assert_eq!(Schedule::new(&c, 4, 3).0.quota, Some(2));
        assert_eq!(offset, Duration::from_micros(2500));
        let mut at = Vec::new();
        for k in 0.. {
            match s.next(k, offset).await {
                Some(t) => at.push(t - s.start),
                None => break,
            }
        }
        let ms = |x: u64| Duration::from_micros(x);
        assert_eq!(at, vec![ms(2500), ms(12_500), ms(22_500)]);
    }
}
