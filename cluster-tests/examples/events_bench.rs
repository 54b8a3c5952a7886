//! Event append benchmark on a local 3-node cluster of real `esf`
//! processes (8 partitions): 256-byte events appended through esf-client
//! by 1, 16 and 64 concurrent producers (each awaiting its ack, each with
//! its own connection), and in batches of 100; then RSS of each node after
//! filling the store to 1M events. The 1-producer figure is the baseline of
//! the ratios.
//!
//! Run: `cargo build --workspace --all-targets && cargo run -p esf-cluster-tests --example events_bench`
//! (`EVENTS_BENCH_SECS` sets each run's length, `EVENTS_BENCH_FILL` the
//! event count of the RSS measurement.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use esf_client::{Client, ClientOptions, pb};
use esf_cluster_tests::{Cluster, esf_bin};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A 256-byte event (type, data and id together).
fn event() -> pb::EventData {
    pb::EventData {
        r#type: "Bench".into(),
        // 16 (id) + 5 (type) + 235 (data) = 256 bytes.
        data: format!("{{\"p\":\"{}\"}}", "x".repeat(227)).into_bytes(),
        ..Default::default()
    }
}

/// Events per second, p50 and p99 of each append (a batch counts its events).
async fn measure(c: &Cluster, producers: usize, batch: usize, run: Duration) -> (f64, Duration, Duration) {
    let eps: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|i| {
            let client = Client::new(&eps, ClientOptions::default()).expect("client");
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0u64;
                while start.elapsed() < run {
                    let stream = format!("bench-{i}-{}", n % 32);
                    let t = Instant::now();
                    client
                        .append(&stream, vec![event(); batch], None)
                        .await
                        .expect("append");
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
    let events = all.len() * batch;
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (events as f64 / secs, pct(0.50), pct(0.99))
}

fn rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn rss_all(c: &Cluster) -> String {
    c.nodes
        .iter()
        .map(|n| {
            format!(
                "node {}: {} MiB",
                n.id,
                rss_mib(n.child.as_ref().expect("running").id())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let run = Duration::from_secs(env_or("EVENTS_BENCH_SECS", 5));
    let fill = env_or("EVENTS_BENCH_FILL", 1_000_000);
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    println!("idle RSS: {}", rss_all(&c));
    println!("| workload | producers | events/s | p50 | p99 | ratio to 1 producer |");
    println!("|---|---|---|---|---|---|");
    let mut base = 0.0;
    for (producers, batch) in [(1, 1), (16, 1), (64, 1), (1, 100), (16, 100)] {
        let (rate, p50, p99) = measure(&c, producers, batch, run).await;
        if producers == 1 && batch == 1 {
            base = rate;
        }
        println!(
            "| append{} | {producers} | {rate:.0} | {:.2} ms | {:.2} ms | {:.1}x |",
            if batch > 1 {
                format!(" (batches of {batch})")
            } else {
                String::new()
            },
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            rate / base
        );
    }
    // Fill to `fill` events in batches of 100 from 16 producers.
    let eps: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = Client::new(&eps, ClientOptions::default()).expect("client");
            let done = done.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while done.fetch_add(100, Ordering::SeqCst) < fill {
                    client
                        .append(&format!("fill-{i}-{}", n % 64), vec![event(); 100], None)
                        .await
                        .expect("fill append");
                    n += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("fill task");
    }
    println!(
        "\nfilled {fill} more events in {:.1} s; RSS after: {}",
        started.elapsed().as_secs_f64(),
        rss_all(&c)
    );
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
}
