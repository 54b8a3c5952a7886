//! The event-queue checker: appends to partitioned logs, read back by
//! several readers (partition reads after the faults are healed, live
//! subscriptions during them).
//!
//! What must hold, per partition:
//!
//! - every acknowledged append is read exactly once, at the offset it was
//!   acknowledged with, by every final reader (`lost`, `moved`, `duplicate`);
//! - one offset holds one event for every reader (`inconsistent offset`),
//!   and one event sits at one offset (`duplicate`);
//! - each reader sees offsets in increasing order without skipping one
//!   (`out of order`, `gap`);
//! - an append that failed is read by nobody (`failed append visible`), and
//!   no reader sees an event nobody appended (`unexpected event`).
//!
//! An append that ended `info` may or may not be there; if it is, it obeys
//! the same rules.

use std::collections::{BTreeMap, BTreeSet};

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at `(partition, offset)`.
    Ok {
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
    },
    /// Refused: certainly not applied.
    Fail,
    /// Unknown.
    Info,
}

/// One append of one event (a batch is one per event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The event's unique id.
    pub id: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// What one reader saw of one partition, in the order it saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Who read (a node's final read, a subscription).
    pub reader: String,
    /// Partition.
    pub partition: u32,
    /// Offset the reader started at (later offsets must follow without a
    /// gap).
    pub from: u64,
    /// (offset, event id) in delivery order.
    pub events: Vec<(u64, String)>,
    /// A final read after healing: it must hold every acknowledged event.
    pub complete: bool,
}

/// One anomaly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Anomaly {
    /// Kind (`lost`, `duplicate`, ...).
    pub kind: &'static str,
    /// Partition.
    pub partition: u32,
    /// What exactly.
    pub detail: String,
}

/// Every anomaly of the appends and reads (none: the queue behaved).
pub fn check(appends: &[Append], reads: &[Read]) -> Vec<Anomaly> {
    let mut out = BTreeSet::new();
    let mut add = |kind: &'static str, partition: u32, detail: String| {
        out.insert(Anomaly {
            kind,
            partition,
            detail,
        });
    };
    let by_id: BTreeMap<&str, &Append> = appends.iter().map(|a| (a.id.as_str(), a)).collect();
    // Where every reader saw each event, and what each offset held.
    let mut seen_at: BTreeMap<(u32, &str), BTreeSet<u64>> = BTreeMap::new();
    let mut held: BTreeMap<(u32, u64), BTreeSet<&str>> = BTreeMap::new();
    for r in reads {
        let p = r.partition;
        let mut expect = r.from;
        let mut mine: BTreeMap<&str, u64> = BTreeMap::new();
        for (offset, id) in &r.events {
            if *offset < expect {
                add(
                    "out of order",
                    p,
                    format!(
                        "{} saw offset {offset} after offset {}",
                        r.reader,
                        expect.saturating_sub(1)
                    ),
                );
            } else if *offset > expect {
                add("gap", p, format!("{} skipped offsets {expect}..{offset}", r.reader));
            }
            expect = expect.max(offset + 1);
            if let Some(first) = mine.insert(id, *offset) {
                add(
                    "duplicate",
                    p,
                    format!("{} saw {id} twice (offsets {first} and {offset})", r.reader),
                );
            }
            seen_at.entry((p, id)).or_default().insert(*offset);
            held.entry((p, *offset)).or_default().insert(id);
            match by_id.get(id.as_str()) {
                None => add(
                    "unexpected event",
                    p,
                    format!("{} saw {id}, which nobody appended", r.reader),
                ),
                Some(a) if a.outcome == Outcome::Fail => {
                    add("failed append visible", p, format!("{} saw {id} at {offset}", r.reader))
                }
                Some(a) => {
                    if let Outcome::Ok {
                        partition,
                        offset: acked,
                    } = a.outcome
                    {
                        if partition != p || acked != *offset {
                            add(
                                "moved",
                                p,
                                format!(
                                    "{id} acknowledged at {partition}/{acked}, {} saw it at {p}/{offset}",
                                    r.reader
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    for ((p, offset), ids) in &held {
        if ids.len() > 1 {
            add(
                "inconsistent offset",
                *p,
                format!("offset {offset} holds {ids:?} for different readers"),
            );
        }
    }
    for ((p, id), offsets) in &seen_at {
        if offsets.len() > 1 {
            add("duplicate", *p, format!("{id} at offsets {offsets:?}"));
        }
    }
    // Two acknowledgements of one position.
    let mut acked_at: BTreeMap<(u32, u64), &str> = BTreeMap::new();
    for a in appends {
        if let Outcome::Ok { partition, offset } = a.outcome {
            if let Some(other) = acked_at.insert((partition, offset), &a.id) {
                add(
                    "inconsistent offset",
                    partition,
                    format!("{other} and {} both acknowledged at offset {offset}", a.id),
                );
            }
        }
    }
    // Every final reader holds every acknowledged event.
    for r in reads.iter().filter(|r| r.complete) {
        let have: BTreeSet<&str> = r.events.iter().map(|(_, id)| id.as_str()).collect();
        for a in appends {
            if let Outcome::Ok { partition, offset } = a.outcome {
                if partition == r.partition && offset >= r.from && !have.contains(a.id.as_str()) {
                    add(
                        "lost",
                        partition,
                        format!("{} acknowledged at offset {offset}, missing from {}", a.id, r.reader),
                    );
                }
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: &str, offset: u64) -> Append {
        Append {
            id: id.into(),
            outcome: Outcome::Ok { partition: 1, offset },
        }
    }

    fn read(reader: &str, events: &[(u64, &str)], complete: bool) -> Read {
        Read {
            reader: reader.into(),
            partition: 1,
            from: 0,
            events: events.iter().map(|(o, id)| (*o, id.to_string())).collect(),
            complete,
        }
    }

    fn kinds(a: &[Anomaly]) -> Vec<&'static str> {
        a.iter().map(|x| x.kind).collect()
    }

    #[test]
    fn a_clean_run_has_no_anomaly() {
        let appends = vec![
            ok("a", 0),
            ok("b", 1),
            Append {
                id: "c".into(),
                outcome: Outcome::Info,
            },
            Append {
                id: "d".into(),
                outcome: Outcome::Fail,
            },
        ];
        let reads = vec![
            read("n1", &[(0, "a"), (1, "b"), (2, "c")], true),
            read("n2", &[(0, "a"), (1, "b"), (2, "c")], true),
            read("sub", &[(0, "a"), (1, "b")], false),
        ];
        assert_eq!(check(&appends, &reads), vec![]);
    }

    #[test]
    fn a_lost_write_is_caught() {
        let a = check(&[ok("a", 0), ok("b", 1)], &[read("n1", &[(0, "a")], true)]);
        assert_eq!(kinds(&a), vec!["lost"], "{a:?}");
    }

    #[test]
    fn a_duplicate_is_caught() {
        // The same event at two offsets (a retried append written twice).
        let a = check(
            &[ok("a", 0), ok("b", 2)],
            &[read("n1", &[(0, "a"), (1, "a"), (2, "b")], true)],
        );
        assert!(kinds(&a).contains(&"duplicate"), "{a:?}");
    }

    #[test]
    fn out_of_order_delivery_and_gaps_are_caught() {
        let appends = vec![ok("a", 0), ok("b", 1), ok("c", 2)];
        let a = check(&appends, &[read("sub", &[(0, "a"), (2, "c"), (1, "b")], false)]);
        assert!(kinds(&a).contains(&"out of order"), "{a:?}");
        assert!(kinds(&a).contains(&"gap"), "{a:?}");
    }

    #[test]
    fn readers_that_disagree_are_caught() {
        let appends = vec![ok("a", 0), ok("b", 1)];
        let a = check(
            &appends,
            &[
                read("n1", &[(0, "a"), (1, "b")], true),
                read("n2", &[(0, "b"), (1, "a")], false),
            ],
        );
        assert!(kinds(&a).contains(&"inconsistent offset"), "{a:?}");
        assert!(kinds(&a).contains(&"moved"), "{a:?}");
    }

    #[test]
    fn a_failed_append_that_shows_up_is_caught() {
        let appends = vec![
            ok("a", 0),
            Append {
                id: "x".into(),
                outcome: Outcome::Fail,
            },
        ];
        let a = check(&appends, &[read("n1", &[(0, "a"), (1, "x"), (2, "ghost")], true)]);
        assert_eq!(kinds(&a), vec!["failed append visible", "unexpected event"], "{a:?}");
    }
}
