//! Linearizability of per-key registers (read, write, compare-and-set).
//!
//! Operations on different keys are independent, so each key's history is
//! checked on its own (Porcupine's partitioning). One key is checked with
//! the Wing-Gong search with Lowe's memoization: walk the history in time
//! order, tentatively linearize any pending call the model accepts (skipping
//! states already explored: the set of linearized operations plus the
//! register's value), and backtrack when a return is reached whose call is
//! not yet linearized. An operation that ended `info` has no return: it may
//! be linearized anywhere after its call, or never (placing it after every
//! other operation is the same as not applying it). A `fail`ed operation
//! certainly did not apply and is dropped before checking.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Completed, HistoryError, Kind};

/// A register value (`None`: the key does not exist).
pub type Value = Option<i64>;

/// What an operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// Read the value.
    Read,
    /// Set the value.
    Write(i64),
    /// Set `to` if the value is `from`.
    Cas(i64, i64),
}

/// What it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// The value read.
    Read(Value),
    /// The write was acknowledged.
    Write,
    /// Whether the CAS applied.
    Cas(bool),
    /// Unknown (the operation ended `info`).
    Unknown,
}

/// One operation on one register, as an interval of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Logical process.
    pub process: u64,
    /// Call.
    pub call: Call,
    /// Result.
    pub ret: Ret,
    /// Invocation time.
    pub start: u64,
    /// Completion time; `u64::MAX` for an unknown outcome.
    pub end: u64,
}

/// The register model: the state after `op` from `state`, or `None` if
/// `op` could not have returned what it did.
pub fn step(state: Value, call: Call, ret: Ret) -> Option<Value> {
    match (call, ret) {
        (Call::Read, Ret::Read(v)) => (v == state).then_some(state),
        (Call::Read, Ret::Unknown) => Some(state),
        (Call::Write(v), Ret::Write | Ret::Unknown) => Some(Some(v)),
        (Call::Cas(from, to), Ret::Cas(true)) => (state == Some(from)).then_some(Some(to)),
        (Call::Cas(from, _), Ret::Cas(false)) => (state != Some(from)).then_some(state),
        (Call::Cas(from, to), Ret::Unknown) => Some(if state == Some(from) { Some(to) } else { state }),
        _ => None,
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Some linearization exists.
    Linearizable,
    /// None exists; `witness` is the shortest prefix of the history (cut
    /// at the completion of an operation, later completions unknown) that
    /// already has none.
    NotLinearizable {
        /// The failing prefix, sorted by start time.
        witness: Vec<Op>,
    },
    /// The search gave up after `budget` steps.
    Unknown,
}

/// Most search steps per key before a verdict of [`KeyVerdict::Unknown`].
pub const DEFAULT_STEP_BUDGET: u64 = 10_000_000;

/// Wing-Gong-Lowe search over one key's operations (`fail`ed ones already
/// removed), starting from `init`. `Some(true)`: linearizable; `None`: the
/// budget ran out.
pub fn wgl(ops: &[Op], init: Value, budget: u64) -> Option<bool> {
    let n = ops.len();
    if n == 0 {
        return Some(true);
    }
    // Entries: a call per op, a return per op that has one. Sorted by
    // time, calls before returns at equal times (the ops overlap).
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        entries.push((op.start, true, i));
        if op.end != u64::MAX {
            entries.push((op.end, false, i));
        }
    }
    entries.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
    // A doubly linked list over the entries; node `len` is the head.
    let len = entries.len();
    let head = len;
    let nil = usize::MAX;
    let mut next: Vec<usize> = (0..=len).map(|i| if i + 1 < len { i + 1 } else { nil }).collect();
    let mut prev: Vec<usize> = (0..=len).map(|i| if i == 0 { head } else { i - 1 }).collect();
    next[head] = if len > 0 { 0 } else { nil };
    prev[head] = nil;
    let mut ret_of = vec![nil; n];
    let mut call_of = vec![nil; n];
    for (idx, (_, is_call, i)) in entries.iter().enumerate() {
        if *is_call {
            call_of[*i] = idx;
        } else {
            ret_of[*i] = idx;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        if nx != nil {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        if nx != nil {
            prev[nx] = x;
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state = init;
    let mut e = next[head];
    let mut steps = 0u64;
    while e != nil {
        steps += 1;
        if steps > budget {
            return None;
        }
        let (_, is_call, i) = entries[e];
        if is_call {
            if let Some(s2) = step(state, ops[i].call, ops[i].ret) {
                let mut lin2 = linearized.clone();
                lin2[i / 64] |= 1 << (i % 64);
                if seen.insert((lin2.clone(), s2)) {
                    stack.push((i, state));
                    state = s2;
                    linearized = lin2;
                    // Lift the call and its return out of the list.
                    unlink(&mut next, &mut prev, call_of[i]);
                    if ret_of[i] != nil {
                        unlink(&mut next, &mut prev, ret_of[i]);
                    }
                    e = next[head];
                    continue;
                }
            }
            e = next[e];
        } else {
            // A return whose call is not linearized: undo the last choice.
            let Some((j, s)) = stack.pop() else {
                return Some(false);
            };
            state = s;
            linearized[j / 64] &= !(1 << (j % 64));
            if ret_of[j] != nil {
                relink(&mut next, &mut prev, ret_of[j]);
            }
            relink(&mut next, &mut prev, call_of[j]);
            e = next[call_of[j]];
        }
    }
    // Past the last entry without meeting a return: every operation with a
    // known outcome is linearized (the rest may never have applied).
    Some(true)
}

/// Exhaustive search (every subset of the unknown-outcome operations, every
/// order that respects real time) for validating [`wgl`] on small
/// histories.
pub fn brute_force(ops: &[Op], init: Value) -> bool {
    let n = ops.len();
    assert!(n <= 10, "brute force is for small histories");
    let unknown: Vec<usize> = (0..n).filter(|i| ops[*i].end == u64::MAX).collect();
    for mask in 0..(1u32 << unknown.len()) {
        let chosen: Vec<usize> = (0..n)
            .filter(|i| match unknown.iter().position(|u| u == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        let mut order = Vec::new();
        let mut used = vec![false; n];
        if permute(ops, &chosen, &mut order, &mut used, init) {
            return true;
        }
    }
    false
}

fn permute(ops: &[Op], chosen: &[usize], order: &mut Vec<usize>, used: &mut [bool], state: Value) -> bool {
    if order.len() == chosen.len() {
        return true;
    }
    for &i in chosen {
        if used[i] {
            continue;
        }
        // Not before an op that returned before this one was called.
        let blocked = chosen.iter().any(|&j| !used[j] && j != i && ops[j].end < ops[i].start);
        if blocked {
            continue;
        }
        if let Some(s2) = step(state, ops[i].call, ops[i].ret) {
            used[i] = true;
            order.push(i);
            if permute(ops, chosen, order, used, s2) {
                return true;
            }
            order.pop();
            used[i] = false;
        }
    }
    false
}

/// Checks one key: linearizable, or the shortest failing prefix.
pub fn check_key(ops: &[Op], budget: u64) -> KeyVerdict {
    check_key_with(ops, &mut |prefix| wgl(prefix, None, budget))
}

/// [`check_key`] with the search given (tests count its calls).
///
/// The shortest failing prefix is found by bisection over the completion
/// times: a prefix with no linearization keeps none when it grows (every
/// linearization of the longer one would order the shorter one's
/// operations the same way), so "fails at cut" is monotone and takes
/// log2(completions) searches, not one per completion. A search that runs
/// out of budget counts as not failing (the cut moves later).
fn check_key_with(ops: &[Op], search: &mut dyn FnMut(&[Op]) -> Option<bool>) -> KeyVerdict {
    match search(ops) {
        Some(true) => KeyVerdict::Linearizable,
        None => KeyVerdict::Unknown,
        Some(false) => {
            let mut ends: Vec<u64> = ops.iter().map(|o| o.end).filter(|e| *e != u64::MAX).collect();
            ends.sort_unstable();
            ends.dedup();
            // Invariant: the prefix at ends[hi] fails (hi == len: the whole
            // history, which does); every cut below lo does not.
            let (mut lo, mut hi) = (0, ends.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if search(&prefix_at(ops, ends[mid])) == Some(false) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            KeyVerdict::NotLinearizable {
                witness: prefix_at(ops, ends.get(hi).copied().unwrap_or(u64::MAX)),
            }
        }
    }
}

/// The history as it was at time `cut`: operations invoked by then, those
/// completing later with an unknown outcome.
fn prefix_at(ops: &[Op], cut: u64) -> Vec<Op> {
    let mut out: Vec<Op> = ops
        .iter()
        .filter(|o| o.start <= cut)
        .map(|o| {
            if o.end > cut {
                Op {
                    ret: Ret::Unknown,
                    end: u64::MAX,
                    ..o.clone()
                }
            } else {
                o.clone()
            }
        })
        // An unknown read says nothing.
        .filter(|o| !(o.call == Call::Read && o.ret == Ret::Unknown))
        .collect();
    out.sort_by_key(|o| o.start);
    out
}

/// Register operations per key from a paired history: `read` (value: the
/// value read, or null), `write` (value: n), `cas` (value: `[from, to]`;
/// ok means applied, fail with `error` "precondition" means it did not
/// match). Failed operations are dropped, except a CAS that failed its
/// precondition (it returned false).
pub fn ops_by_key(history: &[Completed]) -> Result<BTreeMap<String, Vec<Op>>, HistoryError> {
    let mut out: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for (n, c) in history.iter().enumerate() {
        let bad = |reason: String| HistoryError { line: n + 1, reason };
        let inv = &c.invoke;
        let kind = c.kind();
        let call = match inv.f.as_str() {
            "read" => Call::Read,
            "write" => Call::Write(
                inv.value
                    .as_i64()
                    .ok_or_else(|| bad(format!("write value {} is not an integer", inv.value)))?,
            ),
            "cas" => {
                let pair = inv
                    .value
                    .as_array()
                    .filter(|a| a.len() == 2)
                    .and_then(|a| Some((a[0].as_i64()?, a[1].as_i64()?)))
                    .ok_or_else(|| bad(format!("cas value {} is not [from, to]", inv.value)))?;
                Call::Cas(pair.0, pair.1)
            }
            other => return Err(bad(format!("{other:?} is not a register operation"))),
        };
        let precondition = c.complete.as_ref().is_some_and(|r| r.error == "precondition");
        let ret = match (call, kind) {
            (_, Kind::Info | Kind::Invoke) => Ret::Unknown,
            (Call::Cas(..), Kind::Fail) if precondition => Ret::Cas(false),
            (_, Kind::Fail) => continue,
            (Call::Read, Kind::Ok) => {
                let v = &c.complete.as_ref().expect("ok has a completion").value;
                Ret::Read(if v.is_null() {
                    None
                } else {
                    Some(
                        v.as_i64()
                            .ok_or_else(|| bad(format!("read value {v} is not an integer")))?,
                    )
                })
            }
            (Call::Write(_), Kind::Ok) => Ret::Write,
            (Call::Cas(..), Kind::Ok) => Ret::Cas(true),
        };
        if call == Call::Read && ret == Ret::Unknown {
            continue;
        }
        let end = if matches!(ret, Ret::Unknown) { u64::MAX } else { c.end() };
        out.entry(inv.key.clone()).or_default().push(Op {
            process: inv.process,
            call,
            ret,
            start: c.start(),
            end,
        });
    }
    Ok(out)
}

/// Checks every key; the verdict per key.
pub fn check(history: &[Completed], budget: u64) -> Result<BTreeMap<String, KeyVerdict>, HistoryError> {
    Ok(ops_by_key(history)?
        .into_iter()
        .map(|(k, ops)| {
            let v = check_key(&ops, budget);
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, ret: Ret, start: u64, end: u64) -> Op {
        Op {
            process: start,
            call,
            ret,
            start,
            end,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(Call::Write(1), Ret::Write, 0, 1),
            op(Call::Read, Ret::Read(Some(1)), 2, 3),
            op(Call::Cas(1, 2), Ret::Cas(true), 4, 5),
            op(Call::Cas(1, 3), Ret::Cas(false), 6, 7),
            op(Call::Read, Ret::Read(Some(2)), 8, 9),
        ];
        assert_eq!(check_key(&h, DEFAULT_STEP_BUDGET), KeyVerdict::Linearizable);
    }

    #[test]
    fn a_stale_read_is_caught_with_a_short_witness() {
        // w1 completes, then w2 completes, then a read returns 1: stale.
        let h = vec![
            op(Call::Write(1), Ret::Write, 0, 1),
            op(Call::Write(2), Ret::Write, 2, 3),
            op(Call::Read, Ret::Read(Some(1)), 4, 5),
            op(Call::Write(3), Ret::Write, 6, 7),
            op(Call::Read, Ret::Read(Some(3)), 8, 9),
        ];
        match check_key(&h, DEFAULT_STEP_BUDGET) {
            KeyVerdict::NotLinearizable { witness } => {
                assert_eq!(witness.len(), 3, "{witness:?}");
                assert_eq!(witness[2].ret, Ret::Read(Some(1)));
            }
            v => panic!("stale read accepted: {v:?}"),
        }
    }

    #[test]
    fn a_long_history_failing_near_its_end_is_cut_by_bisection() {
        // 10,000 completions, then a stale read near the end: the witness
        // ends at that read, found with about log2(10,000) searches (one
        // search per completion took minutes on such histories).
        let mut h = Vec::new();
        for i in 0..5_000u64 {
            h.push(op(Call::Write(i as i64), Ret::Write, 4 * i, 4 * i + 3));
            h.push(op(Call::Read, Ret::Read(Some(i as i64)), 4 * i + 3, 4 * i + 4));
        }
        let bad_end = 4 * 4_990 + 2;
        h.push(op(Call::Read, Ret::Read(Some(5)), 4 * 4_990 + 1, bad_end));
        h.sort_by_key(|o| o.start);
        let mut searches = 0;
        let v = check_key_with(&h, &mut |p| {
            searches += 1;
            wgl(p, None, DEFAULT_STEP_BUDGET)
        });
        match v {
            KeyVerdict::NotLinearizable { witness } => {
                let last_end = witness.iter().map(|o| o.end).filter(|e| *e != u64::MAX).max();
                assert_eq!(last_end, Some(bad_end), "the witness stops at the stale read");
                // The cut just before it is linearizable.
                let before = prefix_at(&h, bad_end - 1);
                assert_eq!(wgl(&before, None, DEFAULT_STEP_BUDGET), Some(true));
            }
            v => panic!("stale read accepted: {v:?}"),
        }
        assert!(searches <= 16, "{searches} searches for 10,001 completions");
    }

    #[test]
    fn a_lost_write_is_caught() {
        // An acknowledged write that a later read does not see.
        let h = vec![
            op(Call::Write(1), Ret::Write, 0, 1),
            op(Call::Read, Ret::Read(None), 2, 3),
        ];
        assert!(matches!(
            check_key(&h, DEFAULT_STEP_BUDGET),
            KeyVerdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn concurrent_ops_may_take_either_order() {
        let h = vec![
            op(Call::Write(1), Ret::Write, 0, 10),
            op(Call::Read, Ret::Read(None), 1, 2),
            op(Call::Read, Ret::Read(Some(1)), 3, 4),
        ];
        assert_eq!(check_key(&h, DEFAULT_STEP_BUDGET), KeyVerdict::Linearizable);
        // But once seen, a value cannot be unseen.
        let h = vec![
            op(Call::Write(1), Ret::Write, 0, 10),
            op(Call::Read, Ret::Read(Some(1)), 1, 2),
            op(Call::Read, Ret::Read(None), 3, 4),
        ];
        assert!(matches!(
            check_key(&h, DEFAULT_STEP_BUDGET),
            KeyVerdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_unknown_write_may_or_may_not_apply() {
        let applied = vec![
            op(Call::Write(1), Ret::Unknown, 0, u64::MAX),
            op(Call::Read, Ret::Read(Some(1)), 5, 6),
        ];
        let not_applied = vec![
            op(Call::Write(1), Ret::Unknown, 0, u64::MAX),
            op(Call::Read, Ret::Read(None), 5, 6),
        ];
        assert_eq!(check_key(&applied, DEFAULT_STEP_BUDGET), KeyVerdict::Linearizable);
        assert_eq!(check_key(&not_applied, DEFAULT_STEP_BUDGET), KeyVerdict::Linearizable);
        // ... but not both ways around: seen, then unseen.
        let flicker = vec![
            op(Call::Write(1), Ret::Unknown, 0, u64::MAX),
            op(Call::Read, Ret::Read(Some(1)), 5, 6),
            op(Call::Read, Ret::Read(None), 7, 8),
        ];
        assert!(matches!(
            check_key(&flicker, DEFAULT_STEP_BUDGET),
            KeyVerdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_cas_that_claims_success_on_the_wrong_value_is_caught() {
        let h = vec![
            op(Call::Write(1), Ret::Write, 0, 1),
            op(Call::Cas(2, 3), Ret::Cas(true), 2, 3),
        ];
        assert!(matches!(
            check_key(&h, DEFAULT_STEP_BUDGET),
            KeyVerdict::NotLinearizable { .. }
        ));
    }

    /// Small random histories: [`wgl`] agrees with [`brute_force`].
    fn arb_history() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        use proptest::prelude::*;
        let one = (0u64..20, 1u64..8, 0u8..4, 0i64..3, 0i64..3, 0u8..5).prop_map(|(start, len, f, a, b, r)| {
            let unknown = r == 0;
            let end = if unknown { u64::MAX } else { start + len };
            let (call, ret) = match f {
                // Reads always complete (an unknown read is dropped).
                0 => (Call::Read, Ret::Read(if a == 0 { None } else { Some(a) })),
                1 | 2 => (Call::Write(a), if unknown { Ret::Unknown } else { Ret::Write }),
                _ => (
                    Call::Cas(a, b),
                    if unknown { Ret::Unknown } else { Ret::Cas(r % 2 == 0) },
                ),
            };
            let end = if call == Call::Read { start + len } else { end };
            Op {
                process: 0,
                call,
                ret,
                start,
                end,
            }
        });
        proptest::collection::vec(one, 0..8)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn wgl_agrees_with_brute_force(h in arb_history()) {
            let fast = wgl(&h, None, DEFAULT_STEP_BUDGET);
            proptest::prop_assert_eq!(fast, Some(brute_force(&h, None)), "{:?}", h);
        }
    }

    #[test]
    fn the_random_histories_include_both_verdicts() {
        // Guards the agreement test against only ever seeing one answer.
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut yes, mut no) = (0, 0);
        for _ in 0..500 {
            let h = arb_history().new_tree(&mut runner).unwrap().current();
            if brute_force(&h, None) {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 50 && no > 50, "linearizable {yes}, not {no}");
    }

    #[test]
    fn history_records_become_ops_per_key() {
        use crate::history::{Record, pair};
        let rec =
            |process: u64, kind: Kind, f: &str, key: &str, value: serde_json::Value, t: u64, error: &str| Record {
                process,
                kind,
                f: f.into(),
                key: key.into(),
                value,
                time_ns: t,
                node: String::new(),
                error: error.into(),
            };
        let h = vec![
            rec(1, Kind::Invoke, "write", "a", 1.into(), 0, ""),
            rec(1, Kind::Ok, "write", "a", 1.into(), 1, ""),
            rec(2, Kind::Invoke, "cas", "a", serde_json::json!([5, 6]), 2, ""),
            rec(2, Kind::Fail, "cas", "a", serde_json::json!([5, 6]), 3, "precondition"),
            rec(3, Kind::Invoke, "write", "b", 7.into(), 4, ""),
            rec(3, Kind::Fail, "write", "b", 7.into(), 5, "not leader"),
            rec(4, Kind::Invoke, "read", "b", serde_json::Value::Null, 6, ""),
            rec(4, Kind::Ok, "read", "b", serde_json::Value::Null, 7, ""),
            rec(5, Kind::Invoke, "read", "a", serde_json::Value::Null, 8, ""),
            rec(5, Kind::Ok, "read", "a", 1.into(), 9, ""),
        ];
        let verdicts = check(&pair(&h).unwrap(), DEFAULT_STEP_BUDGET).unwrap();
        assert_eq!(verdicts["a"], KeyVerdict::Linearizable);
        assert_eq!(
            verdicts["b"],
            KeyVerdict::Linearizable,
            "the failed write never applied"
        );
        let by_key = ops_by_key(&pair(&h).unwrap()).unwrap();
        assert_eq!(by_key["a"][1].ret, Ret::Cas(false));
        assert_eq!(by_key["b"].len(), 1);
        let bad = vec![rec(1, Kind::Invoke, "write", "a", "x".into(), 0, "")];
        assert!(
            ops_by_key(&pair(&bad).unwrap())
                .unwrap_err()
                .reason
                .contains("not an integer")
        );
    }
}
