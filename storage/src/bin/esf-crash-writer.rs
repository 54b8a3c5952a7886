//! Crash-test writer: appends to the log store of several groups at once and
//! prints one line per acknowledged operation, until it is killed.
//!
//! Used by `tests/crash.rs`, which SIGKILLs it mid-stream and then checks
//! that every acknowledged entry, the vote and the purge point survived. The
//! DB runs with `manual_wal_flush`, so anything not covered by an fsync is
//! lost by the kill: a missing fsync before an ack fails the test.
//!
//! Usage: `esf-crash-writer DATA_DIR GROUPS`
//! Output lines: `vote G TERM`, `ack G INDEX`, `purged G INDEX`.

use std::io::Write;
use std::sync::Arc;

use esf_storage::test_types::TestConfig;
use esf_storage::{Db, LogStore, StorageConfig};
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft::vote::RaftLeaderId;

type Entry = openraft::alias::EntryOf<TestConfig>;
type LeaderId = openraft::alias::LeaderIdOf<TestConfig>;
type Vote = openraft::alias::VoteOf<TestConfig>;

/// Entries written per append call.
const BATCH: u64 = 3;
/// Purge up to this index once it is acknowledged.
const PURGE_AT: u64 = 30;

fn line(out: &std::sync::Mutex<std::io::Stdout>, s: String) {
    let mut o = out.lock().expect("stdout lock");
    writeln!(o, "{s}").expect("stdout write");
    o.flush().expect("stdout flush");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: esf-crash-writer DATA_DIR GROUPS")?;
    let groups: u32 = args.next().ok_or("usage: esf-crash-writer DATA_DIR GROUPS")?.parse()?;
    let db = Db::open(&StorageConfig::new(dir))?;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for g in 1..=groups {
        let db = db.clone();
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let mut store = LogStore::<TestConfig>::new(db, g);
            let term = u64::from(g) + 1;
            let vote = Vote::new_committed(term, 1);
            store.save_vote(&vote).await.expect("save vote");
            line(&out, format!("vote {g} {term}"));
            let mut next = 1u64;
            loop {
                let entries: Vec<Entry> = (next..next + BATCH)
                    .map(|i| Entry::new_blank(openraft::LogId::new(LeaderId::new(term, 1).to_committed(), i)))
                    .collect();
                store.append_flushed(entries).await.expect("append");
                next += BATCH;
                line(&out, format!("ack {g} {}", next - 1));
                if next - 1 >= PURGE_AT && next - 1 < PURGE_AT + BATCH {
                    let id = openraft::LogId::new(LeaderId::new(term, 1).to_committed(), PURGE_AT);
                    store.purge(id).await.expect("purge");
                    line(&out, format!("purged {g} {PURGE_AT}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
