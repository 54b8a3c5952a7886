//! The watch checker: puts of unique values to keys under one prefix,
//! watched from the first revision by several watchers (each resumed on
//! another node when its node dies), and read back once more after healing
//! by a reference watch from the first revision.
//!
//! What must hold:
//!
//! - the reference holds every acknowledged put, at the revision it was
//!   acknowledged with, with its value (`lost`, `moved`); no failed put
//!   (`failed put visible`) and nothing nobody wrote (`unexpected event`);
//!   revisions increase (`out of order`);
//! - every watcher sees each revision once, in increasing order
//!   (`duplicate`, `out of order`), as the reference has it (`wrong
//!   event`), without skipping one between the first it saw and the last
//!   (`gap`).
//!
//! A put that ended `info` may or may not be there.

use std::collections::{BTreeMap, BTreeSet};

/// One change a watch delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Revision of the change.
    pub revision: u64,
    /// Key.
    pub key: String,
    /// Value put (`None`: a delete).
    pub value: Option<String>,
}

/// How a put ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Acknowledged at this revision.
    Ok(u64),
    /// Refused: certainly not applied.
    Fail,
    /// Unknown.
    Info,
}

/// One put of a unique value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// Key.
    pub key: String,
    /// The unique value.
    pub value: String,
    /// How it ended.
    pub outcome: PutOutcome,
}

/// What one watcher saw, in delivery order: runs of changes, a new run
/// after each snapshot response (a resume below the compaction revision
/// gets the state at some revision, then the changes after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Who watched.
    pub name: String,
    /// Runs of changes, in delivery order.
    pub runs: Vec<Vec<Change>>,
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    /// Kind (`lost`, `gap`, ...).
    pub kind: &'static str,
    /// What was seen.
    pub detail: String,
}

fn anomaly(kind: &'static str, detail: String) -> Anomaly {
    Anomaly { kind, detail }
}

/// Checks the puts, the reference (every change from `reference_from`,
/// watched after healing; earlier revisions were compacted away) and the
/// watchers. Below `reference_from` the watchers are checked against each
/// other and against the acknowledged puts.
pub fn check(puts: &[Put], reference: &[Change], reference_from: u64, watchers: &[Watcher]) -> Vec<Anomaly> {
    let mut out = Vec::new();
    // (revision, key) -> value, from the reference, then the watchers.
    let mut known: BTreeMap<(u64, String), Option<String>> = BTreeMap::new();
    let mut last: Option<(u64, &str)> = None;
    for c in reference {
        let id = (c.revision, c.key.as_str());
        if last.is_some_and(|l| l >= id) {
            out.push(anomaly(
                "out of order",
                format!("reference: revision {} of {} after {last:?}", c.revision, c.key),
            ));
        }
        last = Some(id);
        known.insert((c.revision, c.key.clone()), c.value.clone());
    }
    for w in watchers {
        let mut seen: BTreeSet<(u64, &str)> = BTreeSet::new();
        let mut prev: Option<(u64, &str)> = None;
        for c in w.runs.iter().flatten() {
            let id = (c.revision, c.key.as_str());
            if !seen.insert(id) {
                out.push(anomaly(
                    "duplicate",
                    format!("{}: revision {} of {} delivered twice", w.name, c.revision, c.key),
                ));
            } else if prev.is_some_and(|p| p > id) {
                out.push(anomaly(
                    "out of order",
                    format!("{}: revision {} of {} after {prev:?}", w.name, c.revision, c.key),
                ));
            }
            prev = Some(id);
            match known.get(&(c.revision, c.key.clone())) {
                Some(v) if *v == c.value => {}
                Some(v) => out.push(anomaly(
                    "wrong event",
                    format!(
                        "{}: revision {} of {} is {:?}, others saw {v:?}",
                        w.name, c.revision, c.key, c.value
                    ),
                )),
                None if c.revision >= reference_from => out.push(anomaly(
                    "wrong event",
                    format!(
                        "{}: revision {} of {} is not in the reference",
                        w.name, c.revision, c.key
                    ),
                )),
                None => {
                    known.insert((c.revision, c.key.clone()), c.value.clone());
                }
            }
        }
    }
    let mut where_value: BTreeMap<&str, u64> = BTreeMap::new();
    for ((rev, _), v) in &known {
        if let Some(v) = v {
            where_value.insert(v, *rev);
        }
    }
    let written: BTreeSet<&str> = puts.iter().map(|p| p.value.as_str()).collect();
    for p in puts {
        match p.outcome {
            PutOutcome::Ok(rev) => {
                let here = known
                    .get(&(rev, p.key.clone()))
                    .is_some_and(|v| v.as_deref() == Some(&p.value));
                if !here && (rev >= reference_from || where_value.contains_key(p.value.as_str())) {
                    out.push(match where_value.get(p.value.as_str()) {
                        Some(other) => anomaly(
                            "moved",
                            format!("{}={} acknowledged at revision {rev}, found at {other}", p.key, p.value),
                        ),
                        None => anomaly(
                            "lost",
                            format!("{}={} acknowledged at revision {rev}, never delivered", p.key, p.value),
                        ),
                    });
                    continue;
                }
                if rev >= reference_from {
                    continue;
                }
                // Below the reference: every watcher run that spans it.
                for w in watchers {
                    for run in &w.runs {
                        let (Some(first), Some(end)) = (run.first(), run.last()) else {
                            continue;
                        };
                        let spans = first.revision <= rev && rev <= end.revision;
                        if spans
                            && !run
                                .iter()
                                .any(|c| c.revision == rev && c.value.as_deref() == Some(&p.value))
                        {
                            out.push(anomaly(
                                "lost",
                                format!(
                                    "{}: {}={} acknowledged at revision {rev}, skipped between {} and {}",
                                    w.name, p.key, p.value, first.revision, end.revision
                                ),
                            ));
                        }
                    }
                }
            }
            PutOutcome::Fail => {
                if let Some(rev) = where_value.get(p.value.as_str()) {
                    out.push(anomaly(
                        "failed put visible",
                        format!("{}={} failed, delivered at revision {rev}", p.key, p.value),
                    ));
                }
            }
            PutOutcome::Info => {}
        }
    }
    for ((rev, key), v) in &known {
        if let Some(v) = v {
            if !written.contains(v.as_str()) {
                out.push(anomaly(
                    "unexpected event",
                    format!("{key}={v} at revision {rev}: nobody put it"),
                ));
            }
        }
    }
    for w in watchers {
        for run in &w.runs {
            let (Some(first), Some(end)) = (run.first(), run.last()) else {
                continue;
            };
            let delivered: BTreeSet<(u64, &str)> = run.iter().map(|c| (c.revision, c.key.as_str())).collect();
            let missing: Vec<u64> = known
                .keys()
                .filter(|(rev, _)| first.revision < *rev && *rev < end.revision)
                .filter(|(rev, key)| !delivered.contains(&(*rev, key.as_str())))
                .map(|(rev, _)| *rev)
                .collect();
            if !missing.is_empty() {
                out.push(anomaly(
                    "gap",
                    format!(
                        "{}: revisions {missing:?} skipped between {} and {}",
                        w.name, first.revision, end.revision
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, key: &str, value: &str) -> Change {
        Change {
            revision,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    fn put(key: &str, value: &str, outcome: PutOutcome) -> Put {
        Put {
            key: key.into(),
            value: value.into(),
            outcome,
        }
    }

    fn kinds(a: &[Anomaly]) -> Vec<&'static str> {
        a.iter().map(|a| a.kind).collect()
    }

    fn good() -> (Vec<Put>, Vec<Change>) {
        let puts = vec![
            put("a", "1", PutOutcome::Ok(5)),
            put("b", "2", PutOutcome::Ok(6)),
            put("a", "3", PutOutcome::Info),
            put("b", "4", PutOutcome::Fail),
            put("a", "5", PutOutcome::Ok(8)),
        ];
        let reference = vec![
            change(5, "a", "1"),
            change(6, "b", "2"),
            change(7, "a", "3"),
            change(8, "a", "5"),
        ];
        (puts, reference)
    }

    fn watcher(changes: Vec<Change>) -> Watcher {
        Watcher {
            name: "w".into(),
            runs: vec![changes],
        }
    }

    #[test]
    fn a_clean_history_passes_and_a_late_watcher_may_start_anywhere() {
        let (puts, reference) = good();
        let all = watcher(reference.clone());
        let late = watcher(reference[2..].to_vec());
        assert_eq!(check(&puts, &reference, 1, &[all, late]), vec![]);
    }

    #[test]
    fn lost_moved_failed_and_unknown_puts_are_caught() {
        let (puts, mut reference) = good();
        reference.remove(0);
        assert_eq!(kinds(&check(&puts, &reference, 1, &[])), vec!["lost"]);
        let (puts, _) = good();
        let moved = vec![
            change(5, "a", "1"),
            change(7, "a", "3"),
            change(8, "a", "5"),
            change(9, "b", "2"),
        ];
        assert_eq!(kinds(&check(&puts, &moved, 1, &[])), vec!["moved"]);
        let (puts, mut reference) = good();
        reference.push(change(9, "b", "4"));
        assert_eq!(kinds(&check(&puts, &reference, 1, &[])), vec!["failed put visible"]);
        let (puts, mut reference) = good();
        reference.push(change(9, "b", "99"));
        assert_eq!(kinds(&check(&puts, &reference, 1, &[])), vec!["unexpected event"]);
    }

    #[test]
    fn duplicate_reordered_skipped_and_wrong_deliveries_are_caught() {
        let (puts, reference) = good();
        let mut dup = reference.clone();
        dup.insert(2, reference[1].clone());
        assert_eq!(kinds(&check(&puts, &reference, 1, &[watcher(dup)])), vec!["duplicate"]);
        let mut swapped = reference.clone();
        swapped.swap(1, 2);
        assert_eq!(
            kinds(&check(&puts, &reference, 1, &[watcher(swapped)])),
            vec!["out of order"]
        );
        let mut skipped = reference.clone();
        skipped.remove(2);
        assert_eq!(kinds(&check(&puts, &reference, 1, &[watcher(skipped)])), vec!["gap"]);
        let mut wrong = reference.clone();
        wrong[1].value = Some("4".into());
        assert_eq!(
            kinds(&check(&puts, &reference, 1, &[watcher(wrong)])),
            vec!["wrong event"]
        );
    }

    #[test]
    fn below_a_compacted_reference_the_watchers_answer_for_the_puts() {
        let (puts, reference) = good();
        // The reference starts after a snapshot at revision 6.
        let tail = reference[2..].to_vec();
        assert_eq!(check(&puts, &tail, 7, &[watcher(reference.clone())]), vec![]);
        // A watcher that skipped revision 6 (an acknowledged put) is caught.
        let mut skipped = reference.clone();
        skipped.remove(1);
        let k = kinds(&check(&puts, &tail, 7, &[watcher(skipped)]));
        assert_eq!(k, vec!["lost"]);
        // Two watchers that disagree below the reference.
        let mut other = reference.clone();
        other[0].value = Some("3".into());
        let k = kinds(&check(&puts, &tail, 7, &[watcher(reference.clone()), watcher(other)]));
        assert!(k.contains(&"wrong event"), "{k:?}");
        // A run after a snapshot may start anywhere: no gap across runs.
        let split = Watcher {
            name: "w".into(),
            runs: vec![reference[..1].to_vec(), reference[3..].to_vec()],
        };
        assert_eq!(check(&puts, &tail, 7, &[split]), vec![]);
    }
}
