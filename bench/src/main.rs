//! `esf-bench`: drives the same closed-loop workload, with the same
//! clients, keys and value sizes, against ESF or etcd (its v3 gRPC API),
//! and prints throughput and HDR latency percentiles as a table row and as
//! JSON. `scripts/bench.sh` runs it against both, one after the other, on
//! the same machine.
//!
//! Workloads: `kv-put` (a put of a random key of `--keys`),
//! `kv-get` (a linearizable get of a written key), `kv-get-serializable`.
//! Each client is one task with its own connection (ESF: its own
//! `esf_client::Client`; etcd: its own channel), starting at a different
//! endpoint; an op's deadline is `--op-timeout-ms`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Esf,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    KvPut,
    KvGet,
    KvGetSerializable,
}

#[derive(Debug, Parser)]
#[command(about = "Closed-loop load against ESF or etcd")]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// Comma-separated host:port of the target's client endpoints.
    #[arg(long)]
    endpoints: String,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Length of the measured run, seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Value size, bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Deadline of one operation, ms (a late op counts as an error).
    #[arg(long, default_value_t = 5000)]
    op_timeout_ms: u64,
}

/// One connection to the target.
enum Conn {
    Esf(esf_client::Client),
    Etcd(etcdserverpb::kv_client::KvClient<tonic::transport::Channel>),
}

impl Conn {
    async fn open(target: Target, endpoints: &[String], first: usize) -> anyhow::Result<Conn> {
        // Each client starts at another endpoint, as a fleet of clients would.
        let mut eps: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let n = eps.len();
        eps.rotate_left(first % n);
        Ok(match target {
            Target::Esf => Conn::Esf(
                esf_client::Client::new(&eps, esf_client::ClientOptions::default())
                    .map_err(|e| anyhow::anyhow!("esf client: {e}"))?,
            ),
            Target::Etcd => {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", eps[0]))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connect to etcd at {}", eps[0]))?;
                Conn::Etcd(etcdserverpb::kv_client::KvClient::new(ch))
            }
        })
    }

    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Conn::Esf(c) => c.put(key, value).await.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}")),
            Conn::Etcd(c) => c
                .put(etcdserverpb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| anyhow::anyhow!("{s}")),
        }
    }

    async fn get(&mut self, key: Vec<u8>, serializable: bool) -> anyhow::Result<()> {
        match self {
            Conn::Esf(c) => c
                .range(esf_client::pb::RangeRequest {
                    range: Some(esf_client::key_range_key(key)),
                    serializable,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}")),
            Conn::Etcd(c) => c
                .range(etcdserverpb::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| anyhow::anyhow!("{s}")),
        }
    }
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
    format!("bench/{i:08}").into_bytes()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.clients == 0 || a.keys == 0 || a.duration_secs == 0 {
        bail!("clients, keys and duration_secs must be at least 1");
    }
    let endpoints: Vec<String> = a.endpoints.split(',').map(|s| s.trim().to_string()).collect();
    let value = vec![b'x'; a.value_size];
    // Reads need the keys to exist.
    if matches!(a.workload, Workload::KvGet | Workload::KvGetSerializable) {
        let mut c = Conn::open(a.target, &endpoints, 0).await?;
        for i in 0..a.keys {
            c.put(key(i), value.clone()).await.context("preload")?;
        }
    }
    let mut conns = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        conns.push(Conn::open(a.target, &endpoints, i).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(a.duration_secs);
    let op_timeout = Duration::from_millis(a.op_timeout_ms);
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let value = value.clone();
            let (workload, keys) = (a.workload, a.keys);
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let k = key(rng.below(keys));
                    let t = Instant::now();
                    let op = async {
                        match workload {
                            Workload::KvPut => conn.put(k, value.clone()).await,
                            Workload::KvGet => conn.get(k, false).await,
                            Workload::KvGetSerializable => conn.get(k, true).await,
                        }
                    };
                    match tokio::time::timeout(op_timeout, op).await {
                        Ok(Ok(())) => {
                            hist.saturating_record(t.elapsed().as_micros() as u64);
                        }
                        _ => errors += 1,
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        all.add(h).expect("same bounds");
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = all.len();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    let target = format!("{:?}", a.target).to_lowercase();
    let workload = a.workload.to_possible_value().expect("a value").get_name().to_string();
    println!(
        "{}",
        serde_json::json!({
            "target": target,
            "workload": workload,
            "clients": a.clients,
            "value_size": a.value_size,
            "keys": a.keys,
            "seconds": secs,
            "ops": ops,
            "errors": errors,
            "ops_per_sec": ops as f64 / secs,
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": all.max() as f64 / 1000.0,
        })
    );
    Ok(())
}
