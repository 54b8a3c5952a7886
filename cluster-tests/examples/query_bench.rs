//! Event query benchmark on a local 3-node cluster of real `esf` processes
//! (8 partitions): the store is filled with 1M events (100 types, 10k
//! correlation ids, a JSON field `amount`), then each query kind runs from
//! 1 and 16 concurrent clients for a while: by type (limit 100), by
//! correlation id, by a 1-second time window (limit 100), and by a JSON
//! predicate alone (no index serves it: the time index is scanned; from
//! 1 client only) and
//! with a type (the type index narrows it); then it declares an index on
//! `amount` (`esf events index create amount`), waits until every replica
//! built it (reporting how long), and runs the predicate alone again (the
//! field index serves it). Reports queries/s, p50 and
//! p99 latency, and rows examined per query (from `explain`). The ratio
//! column compares each query's p99 with the by-type query's p99 in the
//! same run.
//!
//! Run: `cargo build --workspace --all-targets && cargo run -p esf-cluster-tests --example query_bench`
//! (`QUERY_BENCH_EVENTS` sets the event count, `QUERY_BENCH_SECS` each
//! run's length.)

use std::time::{Duration, Instant};

use esf_client::{Client, ClientOptions, pb};
use esf_cluster_tests::{Cluster, esf_bin};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

const TYPES: u64 = 100;
const CORRELATIONS: u64 = 10_000;

fn event(i: u64) -> pb::EventData {
    pb::EventData {
        r#type: format!("Type{}", i % TYPES),
        correlation_id: format!("corr-{}", (i / 7) % CORRELATIONS),
        data: format!("{{\"amount\":{},\"note\":\"{}\"}}", i % 10_000, "x".repeat(160)).into_bytes(),
        ..Default::default()
    }
}

/// Fills the store with `n` events in batches of 100 from 8 producers.
async fn fill(eps: &[String], n: u64) {
    const BATCH: u64 = 100;
    let producers = 8u64;
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let client = Client::new(eps, ClientOptions::default()).expect("client");
            tokio::spawn(async move {
                let mut i = p * BATCH;
                while i < n {
                    let events = (i..(i + BATCH).min(n)).map(event).collect();
                    client
                        .append(&format!("fill-{}", (i / BATCH) % 64), events, None)
                        .await
                        .expect("append");
                    i += producers * BATCH;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("fill task");
    }
}

/// Queries/s, p50, p99 and mean rows examined of `make(i)` from `clients`
/// concurrent clients for `run`.
async fn measure(
    eps: &[String],
    clients: usize,
    run: Duration,
    make: fn(u64) -> pb::QueryEventsRequest,
) -> (f64, Duration, Duration, u64) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = Client::new(eps, ClientOptions::default()).expect("client");
            tokio::spawn(async move {
                let (mut lat, mut rows) = (Vec::new(), 0u64);
                let mut i = c as u64 * 7919;
                while start.elapsed() < run {
                    let t = Instant::now();
                    let r = client.query_events(make(i)).await.expect("query");
                    lat.push(t.elapsed());
                    rows += r.explain.map_or(0, |e| e.rows_examined);
                    i += 1;
                }
                (lat, rows)
            })
        })
        .collect();
    let (mut all, mut rows) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, r) = t.await.expect("task");
        all.extend(l);
        rows += r;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.50), pct(0.99), rows / all.len() as u64)
}

fn by_type(i: u64) -> pb::QueryEventsRequest {
    pb::QueryEventsRequest {
        r#type: format!("Type{}", i % TYPES),
        limit: 100,
        explain: true,
        ..Default::default()
    }
}

fn by_correlation(i: u64) -> pb::QueryEventsRequest {
    pb::QueryEventsRequest {
        correlation_id: format!("corr-{}", i % CORRELATIONS),
        limit: 100,
        explain: true,
        ..Default::default()
    }
}

fn predicate(field_value: u64) -> pb::Predicate {
    pb::Predicate {
        field: "amount".into(),
        op: "eq".into(),
        value: (field_value % 10_000).to_string(),
    }
}

fn by_predicate(i: u64) -> pb::QueryEventsRequest {
    pb::QueryEventsRequest {
        predicates: vec![predicate(i)],
        limit: 100,
        explain: true,
        ..Default::default()
    }
}

fn by_type_and_predicate(i: u64) -> pb::QueryEventsRequest {
    // `amount` i % 10,000 with type i % 100: the same events.
    pb::QueryEventsRequest {
        r#type: format!("Type{}", i % TYPES),
        predicates: vec![predicate(i)],
        limit: 100,
        explain: true,
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_or("QUERY_BENCH_EVENTS", 1_000_000);
    let run = Duration::from_secs(env_or("QUERY_BENCH_SECS", 8));
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let eps: Vec<String> = c.nodes.iter().map(|n| n.grpc.clone()).collect();
    let t = Instant::now();
    fill(&eps, events).await;
    println!("filled {events} events in {:.0} s", t.elapsed().as_secs_f64());
    // The time window: one second in the middle of the fill.
    let probe = Client::new(&eps, ClientOptions::default()).expect("client");
    let first = probe
        .query_events(pb::QueryEventsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("first event")
        .events[0]
        .timestamp_ms;
    let last = probe
        .query_events(pb::QueryEventsRequest {
            limit: 1,
            descending: true,
            ..Default::default()
        })
        .await
        .expect("last event")
        .events[0]
        .timestamp_ms;
    let mid = first + (last - first) / 2;
    WINDOW.store(mid, std::sync::atomic::Ordering::SeqCst);
    println!("| query | clients | queries/s | p50 | p99 | rows examined per query | p99 vs by type |");
    println!("|---|---|---|---|---|---|---|");
    let kinds: [(&str, fn(u64) -> pb::QueryEventsRequest); 5] = [
        ("by type, limit 100", by_type),
        ("by correlation id", by_correlation),
        ("1 s time window, limit 100", by_window),
        ("amount = N, no index (time scan)", by_predicate),
        ("type + amount = N (type index)", by_type_and_predicate),
    ];
    let mut bases = std::collections::BTreeMap::new();
    for clients in [1usize, 16] {
        let base = bases.entry(clients).or_insert(None);
        for (name, make) in kinds {
            if clients > 1 && name.contains("no index") {
                // Scans of every event, 16 at once, outlast the client's
                // deadline on 2 cores: measured from one client only.
                continue;
            }
            let (qps, p50, p99, rows) = measure(&eps, clients, run, make).await;
            let b = *base.get_or_insert(p99);
            println!(
                "| {name} | {clients} | {qps:.0} | {:.2} ms | {:.2} ms | {rows} | {:.2}x |",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                p99.as_secs_f64() / b.as_secs_f64()
            );
        }
    }
    // The same predicate once `amount` has a declared index.
    let t = Instant::now();
    probe.create_index("amount").await.expect("create index");
    loop {
        let mut ready = true;
        for ep in &eps {
            let one = Client::new(&[ep.as_str()], ClientOptions::default()).expect("client");
            let l = one.list_indexes().await.expect("list indexes");
            ready &= l
                .indexes
                .iter()
                .all(|i| i.partitions_building == 0 && i.partitions_pending == 0 && i.partitions_ready > 0);
        }
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "(index on amount declared and built on every replica in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    for clients in [1usize, 16] {
        let (qps, p50, p99, rows) = measure(&eps, clients, run, by_predicate).await;
        let b = bases[&clients].expect("a by-type run");
        println!(
            "| amount = N, declared index | {clients} | {qps:.0} | {:.2} ms | {:.2} ms | {rows} | {:.2}x |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            p99.as_secs_f64() / b.as_secs_f64()
        );
    }
}

static WINDOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn by_window(i: u64) -> pb::QueryEventsRequest {
    let mid = WINDOW.load(std::sync::atomic::Ordering::SeqCst);
    let from = mid + (i % 5) * 100;
    pb::QueryEventsRequest {
        from_time_ms: from,
        to_time_ms: from + 1000,
        limit: 100,
        explain: true,
        ..Default::default()
    }
}
