//! Where event partitions live: the planner the meta leader runs to choose
//! every partition's replicas and preferred leader.
//!
//! The plan is stored in meta ([`Op::PlacePartitions`]) and applied by the
//! partition reconciler. It is a pure function of the previous plan and the
//! meta voters, deterministic, and moves as little as it can:
//!
//! 1. keep each partition's replicas that are still voters (at most
//!    `replicas` of them);
//! 2. fill short partitions with the least-loaded voters;
//! 3. while one voter holds two replicas more than another, move one
//!    replica from the most to the least loaded;
//! 4. while one voter is the preferred leader of two partitions more than
//!    another replica could be, make that replica the preferred leader.
//!
//! A plan that is already balanced is returned unchanged, so the planner
//! can run on every reconciler pass.
//!
//! [`Op::PlacePartitions`]: esf_raft::command::Op::PlacePartitions

use std::collections::{BTreeMap, BTreeSet};

/// Default number of replicas of each event partition.
pub const DEFAULT_PARTITION_REPLICAS: u32 = 3;

/// Most replicas of one event partition.
pub const MAX_PARTITION_REPLICAS: u32 = 7;

/// Partition -> replicas, the preferred leader first.
pub type Plan = BTreeMap<u32, Vec<u64>>;

fn load(plan: &Plan, voters: &BTreeSet<u64>, f: impl Fn(&[u64]) -> Vec<u64>) -> BTreeMap<u64, usize> {
    let mut l: BTreeMap<u64, usize> = voters.iter().map(|v| (*v, 0)).collect();
    for r in plan.values() {
        for n in f(r) {
            *l.entry(n).or_default() += 1;
        }
    }
    l
}

/// The plan for `partitions` partitions of `replicas` replicas each (fewer
/// if there are fewer voters) over `voters`, starting from `current`.
pub fn plan(current: &Plan, voters: &BTreeSet<u64>, partitions: u32, replicas: u32) -> Plan {
    let rf = (replicas as usize).min(voters.len());
    let mut out: Plan = (1..=partitions)
        .map(|p| {
            let mut kept: Vec<u64> = Vec::new();
            for n in current.get(&p).into_iter().flatten() {
                if voters.contains(n) && !kept.contains(n) && kept.len() < rf {
                    kept.push(*n);
                }
            }
            (p, kept)
        })
        .collect();
    if rf == 0 {
        return out;
    }
    // Fill.
    let mut replica_load = load(&out, voters, |r| r.to_vec());
    for p in 1..=partitions {
        let r = out.get_mut(&p).expect("every partition planned");
        while r.len() < rf {
            let (&n, _) = replica_load
                .iter()
                .filter(|(n, _)| !r.contains(n))
                .min_by_key(|(n, l)| (**l, **n))
                .expect("fewer replicas than voters");
            r.push(n);
            *replica_load.get_mut(&n).expect("voter") += 1;
        }
    }
    // Even out replicas: each move lowers the spread, so this ends.
    loop {
        let (&hi, &hi_load) = replica_load
            .iter()
            .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
            .expect("voters");
        let (&lo, &lo_load) = replica_load.iter().min_by_key(|(n, l)| (**l, **n)).expect("voters");
        if hi_load <= lo_load + 1 {
            break;
        }
        let Some(r) = out.values_mut().rev().find(|r| r.contains(&hi) && !r.contains(&lo)) else {
            break;
        };
        let i = r.iter().position(|n| *n == hi).expect("contains");
        r[i] = lo;
        *replica_load.get_mut(&hi).expect("voter") -= 1;
        *replica_load.get_mut(&lo).expect("voter") += 1;
    }
    // Even out preferred leaders among each partition's replicas.
    // Each swap lowers the sum of squared leader counts, so this ends.
    loop {
        let leaders = load(&out, voters, |r| r[..1].to_vec());
        let mut moved = false;
        let mut by_load: Vec<(u64, usize)> = leaders.iter().map(|(n, l)| (*n, *l)).collect();
        by_load.sort_by_key(|(n, l)| (std::cmp::Reverse(*l), *n));
        'outer: for (hi, hi_load) in &by_load {
            for r in out.values_mut().rev().filter(|r| r[0] == *hi) {
                let best = r[1..]
                    .iter()
                    .copied()
                    .filter(|n| leaders[n] + 1 < *hi_load)
                    .min_by_key(|n| (leaders[n], *n));
                if let Some(to) = best {
                    let i = r.iter().position(|n| *n == to).expect("replica");
                    r.swap(0, i);
                    moved = true;
                    break 'outer;
                }
            }
        }
        if !moved {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn check(plan: &Plan, voters: &BTreeSet<u64>, partitions: u32, rf: usize) {
        assert_eq!(plan.len(), partitions as usize);
        for r in plan.values() {
            assert_eq!(r.len(), rf.min(voters.len()), "{plan:?}");
            assert!(r.iter().all(|n| voters.contains(n)), "{plan:?}");
            let d: BTreeSet<_> = r.iter().collect();
            assert_eq!(d.len(), r.len(), "distinct replicas: {plan:?}");
        }
        let l = load(plan, voters, |r| r.to_vec());
        let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
        assert!(max - min <= 1, "replicas spread evenly: {l:?}");
        // No partition's preferred leader leads two more partitions than
        // another of its replicas.
        let leaders = load(plan, voters, |r| r[..1].to_vec());
        for r in plan.values() {
            assert!(
                r[1..].iter().all(|n| leaders[n] + 1 >= leaders[&r[0]]),
                "preferred leaders spread: {leaders:?} in {plan:?}"
            );
        }
    }

    fn leaders_even(plan: &Plan, voters: &BTreeSet<u64>) {
        let leaders = load(plan, voters, |r| r[..1].to_vec());
        let (min, max) = (leaders.values().min().unwrap(), leaders.values().max().unwrap());
        assert!(
            max - min <= 1,
            "preferred leaders spread evenly: {leaders:?} in {plan:?}"
        );
    }

    #[test]
    fn three_nodes_hold_everything_with_leaders_spread() {
        let v = voters(&[1, 2, 3]);
        let p = plan(&Plan::new(), &v, 8, 3);
        check(&p, &v, 8, 3);
        leaders_even(&p, &v);
    }

    #[test]
    fn a_balanced_plan_is_left_as_it_is() {
        for n in 1..=7u64 {
            let v: BTreeSet<u64> = (1..=n).collect();
            let p = plan(&Plan::new(), &v, 8, 3);
            check(&p, &v, 8, 3);
            assert_eq!(plan(&p, &v, 8, 3), p, "{n} voters");
        }
    }

    #[test]
    fn a_fourth_node_takes_its_share_and_little_else_moves() {
        let three = voters(&[1, 2, 3]);
        let before = plan(&Plan::new(), &three, 8, 3);
        let four = voters(&[1, 2, 3, 4]);
        let after = plan(&before, &four, 8, 3);
        check(&after, &four, 8, 3);
        leaders_even(&after, &four);
        // 24 replicas over 4 nodes: node 4 gets 6, each one replacing one
        // replica of a partition; nothing else moves.
        let moved: usize = (1..=8)
            .map(|p| {
                let b: BTreeSet<_> = before[&p].iter().collect();
                after[&p].iter().filter(|n| !b.contains(n)).count()
            })
            .sum();
        assert_eq!(moved, 6, "{before:?} -> {after:?}");
    }

    #[test]
    fn a_removed_node_is_replaced_everywhere() {
        let four = voters(&[1, 2, 3, 4]);
        let before = plan(&Plan::new(), &four, 8, 3);
        let three = voters(&[1, 2, 4]);
        let after = plan(&before, &three, 8, 3);
        check(&after, &three, 8, 3);
        assert!(after.values().all(|r| !r.contains(&3)));
    }

    #[test]
    fn fewer_voters_than_replicas_and_odd_shapes() {
        let one = voters(&[7]);
        let p = plan(&Plan::new(), &one, 4, 3);
        check(&p, &one, 4, 3);
        assert!(p.values().all(|r| r == &vec![7]));
        let five = voters(&[1, 2, 3, 4, 5]);
        let p = plan(&p, &five, 4, 3);
        check(&p, &five, 4, 3);
        let none = plan(&p, &BTreeSet::new(), 4, 3);
        assert!(none.values().all(|r| r.is_empty()));
    }

    #[test]
    fn random_membership_changes_keep_the_plan_valid() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut current = Plan::new();
        for _ in 0..200 {
            let n = 1 + next() % 7;
            let v: BTreeSet<u64> = (0..n).map(|_| 1 + next() % 9).collect();
            let parts = 1 + (next() % 16) as u32;
            let rf = 1 + (next() % 4) as u32;
            current = plan(&current, &v, parts, rf);
            check(&current, &v, parts, rf as usize);
            assert_eq!(plan(&current, &v, parts, rf), current);
        }
    }
}
