//! KV benchmark on a local 3-node cluster of real `esf` processes: put and
//! linearizable get through esf-client with 1 and 64 concurrent clients,
//! each client with its own connection; throughput, p50, p99, and idle RSS
//! per node. The 1-client figures are the baseline of the 64-client ratio.
//!
//! Run: `cargo build --workspace --all-targets && cargo run -p esf-cluster-tests --example kv_bench`

use std::time::{Duration, Instant};

use esf_client::{Client, ClientOptions};
use esf_cluster_tests::{Cluster, esf_bin};

/// Default length of each measurement (`KV_BENCH_SECS` overrides it).
const RUN: Duration = Duration::from_secs(5);

fn run_length() -> Duration {
    std::env::var("KV_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(RUN, Duration::from_secs)
}

#[derive(Clone, Copy)]
enum Workload {
    Put,
    Get,
}

async fn measure(c: &Cluster, w: Workload, clients: usize) -> (f64, Duration, Duration) {
    let eps: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let run = run_length();
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let client = Client::new(&eps, ClientOptions::default()).expect("client");
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0u64;
                while start.elapsed() < run {
                    let key = format!("bench/{i}/{}", n % 100);
                    let t = Instant::now();
                    match w {
                        Workload::Put => {
                            client.put(key, vec![b'v'; 256]).await.expect("put");
                        }
                        Workload::Get => {
                            client.get(key).await.expect("get");
                        }
                    }
                    lat.push(t.elapsed());
                    n += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

fn rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_ready().await;
    let idle: Vec<String> = c
        .nodes
        .iter()
        .map(|n| {
            format!(
                "node {}: {} MiB",
                n.id,
                rss_mib(n.child.as_ref().expect("running").id())
            )
        })
        .collect();
    println!("| workload | clients | ops/s | p50 | p99 | ratio to 1 client |");
    println!("|---|---|---|---|---|---|");
    // `KV_BENCH_ONLY=put` or `=get` runs one workload (for profiling).
    let only = std::env::var("KV_BENCH_ONLY").unwrap_or_default();
    for (name, w) in [("put", Workload::Put), ("linearizable get", Workload::Get)] {
        if !only.is_empty() && !name.contains(only.as_str()) {
            continue;
        }
        let (base, p50, p99) = measure(&c, w, 1).await;
        println!(
            "| {name} | 1 | {base:.0} | {:.2} ms | {:.2} ms | 1.0 |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        let (ops, p50, p99) = measure(&c, w, 64).await;
        println!(
            "| {name} | 64 | {ops:.0} | {:.2} ms | {:.2} ms | {:.1}x |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            ops / base
        );
    }
    println!("\nidle RSS before the run: {}", idle.join(", "));
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
}
