//! Log append benchmark: entries/s of the RocksDB log store next to the raw
//! fdatasync rate of the same disk, measured in the same run.
//!
//! Run: `cargo run -p esf-storage --example log_append_bench -- [DIR] [--million]`
//!
//! Prints a markdown table: single-group appends with batch sizes 1, 32, 128,
//! eight groups appending batch-1 entries concurrently, and the ratios the
//! durable-core issue sets as targets. With `--million` it also appends 1M
//! entries and reports the process RSS against the memory budget.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use esf_storage::test_types::TestConfig;
use esf_storage::{DEFAULT_MEMORY_BUDGET_BYTES, Db, LogStore, StorageConfig};
use openraft::entry::RaftEntry;
use openraft::vote::RaftLeaderId;

type Entry = openraft::alias::EntryOf<TestConfig>;
type LeaderId = openraft::alias::LeaderIdOf<TestConfig>;

/// Payload bytes per entry.
const ENTRY_BYTES: usize = 256;
/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(3);

fn payload_entry(i: u64) -> Entry {
    Entry::new_normal(
        openraft::LogId::new(LeaderId::new(1, 1).to_committed(), i),
        esf_storage::test_types::Payload(vec![0x5a; ENTRY_BYTES]),
    )
}

fn fdatasync_rate(dir: &std::path::Path) -> f64 {
    let path = dir.join("fdatasync-probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("probe file");
    let buf = [7u8; ENTRY_BYTES];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        f.write_at(&buf, n * ENTRY_BYTES as u64).expect("probe write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    rate
}

async fn single_group(db: Arc<Db>, group: u32, batch: u64) -> f64 {
    let mut store = LogStore::<TestConfig>::new(db, group);
    let start = Instant::now();
    let mut next = 1u64;
    while start.elapsed() < RUN {
        let entries: Vec<Entry> = (next..next + batch).map(payload_entry).collect();
        store.append_flushed(entries).await.expect("append");
        next += batch;
    }
    (next - 1) as f64 / start.elapsed().as_secs_f64()
}

async fn concurrent_groups(db: Arc<Db>, groups: u32, first_group: u32) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..groups)
        .map(|g| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut store = LogStore::<TestConfig>::new(db, first_group + g);
                let mut next = 1u64;
                while start.elapsed() < RUN {
                    store.append_flushed([payload_entry(next)]).await.expect("append");
                    next += 1;
                }
                next - 1
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let million = args.iter().any(|a| a == "--million");
    let base = args.iter().find(|a| !a.starts_with("--")).map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir_in(base.unwrap_or_else(std::env::temp_dir)).expect("bench dir");
    let db = Db::open(&StorageConfig::new(tmp.path().join("db"))).expect("open db");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let raw = fdatasync_rate(tmp.path());
    let b1 = single_group(db.clone(), 1, 1).await;
    let b32 = single_group(db.clone(), 2, 32).await;
    let b128 = single_group(db.clone(), 3, 128).await;
    let fsyncs_before = db.durability_stats().fsyncs;
    let g8 = concurrent_groups(db.clone(), 8, 10).await;
    let fsyncs_8 = db.durability_stats().fsyncs - fsyncs_before;

    let mut out = std::io::stdout().lock();
    writeln!(out, "| measurement | entries/s | ratio | target |").unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    writeln!(
        out,
        "| raw fdatasync ({ENTRY_BYTES} B write + fdatasync) | {raw:.0} | 1.00 (baseline) | |"
    )
    .unwrap();
    writeln!(
        out,
        "| 1 group, batch 1 | {b1:.0} | {:.2} of raw fdatasync | >= 0.67 |",
        b1 / raw
    )
    .unwrap();
    writeln!(out, "| 1 group, batch 32 | {b32:.0} | {:.1}x batch 1 | |", b32 / b1).unwrap();
    writeln!(out, "| 1 group, batch 128 | {b128:.0} | {:.1}x batch 1 | |", b128 / b1).unwrap();
    writeln!(
        out,
        "| 8 groups, batch 1, concurrent | {g8:.0} | {:.1}x 1 group ({:.1} entries per fsync) | >= 4x |",
        g8 / b1,
        (g8 * RUN.as_secs_f64()) / fsyncs_8.max(1) as f64
    )
    .unwrap();
    if million {
        let mut store = LogStore::<TestConfig>::new(db.clone(), 99);
        let mut next = 1u64;
        while next <= 1_000_000 {
            let entries: Vec<Entry> = (next..next + 128).map(payload_entry).collect();
            store.append_flushed(entries).await.expect("append");
            next += 128;
        }
        let rss = rss_bytes();
        let budget = DEFAULT_MEMORY_BUDGET_BYTES as u64;
        writeln!(
            out,
            "| RSS after 1M entries | {} MiB | budget {} MiB + {} MiB | <= budget + 100 MiB |",
            rss >> 20,
            budget >> 20,
            (rss.saturating_sub(budget)) >> 20
        )
        .unwrap();
    }
    writeln!(out, "\nload average at start: {}", load.trim()).unwrap();
}
