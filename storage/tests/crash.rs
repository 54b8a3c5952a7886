//! SIGKILL a process that is appending to several groups at once, then
//! reopen its DB: every acknowledged entry, the vote and the purge point must
//! be there. The DB runs with `manual_wal_flush`, so an ack given before the
//! covering fsync would show up here as a lost entry.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use esf_storage::test_types::TestConfig;
use esf_storage::{Db, LogStore, StorageConfig};
use openraft::entry::RaftEntry;

/// Acks to see before killing the writer.
const ACKS_BEFORE_KILL: usize = 600;
/// Groups appending concurrently.
const GROUPS: u32 = 4;
/// Deadline for the writer to produce its acks.
const WRITER_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Default, Debug)]
struct Seen {
    vote_term: Option<u64>,
    max_ack: u64,
    purged: Option<u64>,
}

fn run_and_kill(dir: &std::path::Path) -> HashMap<u32, Seen> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_esf-crash-writer"))
        .arg(dir)
        .arg(GROUPS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seen: HashMap<u32, Seen> = HashMap::new();
    let mut acks = 0;
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read writer output");
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (g, n): (u32, u64) = (parts[1].parse().expect("group"), parts[2].parse().expect("number"));
        let s = seen.entry(g).or_default();
        match parts[0] {
            "vote" => s.vote_term = Some(n),
            "ack" => {
                s.max_ack = s.max_ack.max(n);
                acks += 1;
            }
            "purged" => s.purged = Some(n),
            other => panic!("unexpected writer line {other:?}"),
        }
        if acks >= ACKS_BEFORE_KILL {
            break;
        }
        assert!(
            started.elapsed() < WRITER_DEADLINE,
            "writer too slow: {acks} acks in {WRITER_DEADLINE:?}"
        );
    }
    // SIGKILL mid-stream: the writer is still appending.
    child.kill().expect("SIGKILL writer");
    child.wait().expect("reap writer");
    assert!(acks >= ACKS_BEFORE_KILL, "writer exited early after {acks} acks");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_entry_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = run_and_kill(dir.path());
    assert_eq!(seen.len(), GROUPS as usize, "every group wrote: {seen:?}");

    let db = Db::open(&StorageConfig::new(dir.path())).expect("reopen after crash");
    for (g, s) in &seen {
        let store = LogStore::<TestConfig>::new(db.clone(), *g);
        let vote = store.vote().expect("read vote").expect("vote survived");
        assert_eq!(
            vote.leader_id().term,
            s.vote_term.expect("vote acked"),
            "group {g} vote"
        );
        let state = store.log_state().expect("log state");
        let last = state.last_log_id.expect("log not empty").index();
        assert!(
            last >= s.max_ack,
            "group {g}: acked up to {} but log ends at {last}",
            s.max_ack
        );
        let first = match (s.purged, &state.last_purged_log_id) {
            (Some(p), Some(on_disk)) => {
                assert!(on_disk.index() >= p, "group {g}: purge point went back");
                on_disk.index() + 1
            }
            (Some(p), None) => panic!("group {g}: purge to {p} was acknowledged but is lost"),
            (None, _) => 1,
        };
        let entries = store.read_range(first, s.max_ack + 1).expect("read log");
        assert_eq!(
            entries.len() as u64,
            s.max_ack + 1 - first,
            "group {g}: missing acknowledged entries"
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index(), first + i as u64);
        }
        if s.purged.is_some() {
            assert!(
                store.read_range(1, first).expect("read purged range").is_empty(),
                "group {g}: purged entries came back"
            );
        }
    }
}
