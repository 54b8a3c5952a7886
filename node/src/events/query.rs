//! Event queries across partitions: the request checked into a
//! [`Filter`], each partition's page, and the merge into one page in
//! (timestamp, partition, offset) order with a cursor.
//!
//! A cursor is `q1.<fingerprint>.<ts>.<partition>.<offset>`: the position
//! of the last event returned, and a fingerprint of the filters and order,
//! so a cursor from another query is refused (naming `cursor`). Each
//! partition returns up to `limit` events after the cursor; the merge cuts
//! the result where a partition that has more stopped (no event of it
//! beyond that point is known yet), then at `limit`.

use esf_proto::v1 as pb;
use esf_raft::events::query::{Bound, Filter, Predicate};

use crate::error::Error;

/// Events per page when the request does not say.
pub const DEFAULT_QUERY_LIMIT: usize = 100;
/// Most events per page.
pub const MAX_QUERY_LIMIT: usize = 1000;

/// A checked query.
#[derive(Debug, Clone)]
pub struct Query {
    /// The filters.
    pub filter: Filter,
    /// Newest first.
    pub descending: bool,
    /// Page size.
    pub limit: usize,
    /// Position of the last event of the previous page: (ts, partition,
    /// offset).
    pub after: Option<(u64, u32, u64)>,
    /// Of the filters and order (cursors carry it).
    pub fingerprint: u64,
}

/// Checks a request; errors name the field.
pub fn parse(r: &pb::QueryEventsRequest) -> Result<Query, Error> {
    let limit = match r.limit as usize {
        0 => DEFAULT_QUERY_LIMIT,
        n if n > MAX_QUERY_LIMIT => {
            return Err(Error::invalid(
                "query.limit",
                format!("{n} is more than {MAX_QUERY_LIMIT}"),
            ));
        }
        n => n,
    };
    if r.from_time_ms != 0 && r.to_time_ms != 0 && r.from_time_ms >= r.to_time_ms {
        return Err(Error::invalid(
            "query.to_time_ms",
            format!("{} is not after from_time_ms {}", r.to_time_ms, r.from_time_ms),
        ));
    }
    let mut predicates = Vec::new();
    for (i, p) in r.predicates.iter().enumerate() {
        let parsed = Predicate::parse(&p.field, &p.op, &p.value)
            .map_err(|(part, reason)| Error::invalid(&format!("query.predicates[{i}].{part}"), reason))?;
        predicates.push(parsed);
    }
    let filter = Filter {
        event_type: r.r#type.clone(),
        correlation_id: r.correlation_id.clone(),
        from_ms: (r.from_time_ms != 0).then_some(r.from_time_ms),
        to_ms: (r.to_time_ms != 0).then_some(r.to_time_ms),
        predicates,
    };
    let fingerprint = fingerprint(r);
    let after = if r.cursor.is_empty() {
        None
    } else {
        Some(decode_cursor(&r.cursor, fingerprint)?)
    };
    Ok(Query {
        filter,
        descending: r.descending,
        limit,
        after,
        fingerprint,
    })
}

/// FNV-1a of everything that selects and orders the events.
fn fingerprint(r: &pb::QueryEventsRequest) -> u64 {
    let mut text = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        r.r#type, r.correlation_id, r.from_time_ms, r.to_time_ms, r.descending
    );
    for p in &r.predicates {
        text += &format!("\u{0}{}\u{1}{}\u{1}{}", p.field, p.op, p.value);
    }
    let mut partitions = r.partitions.clone();
    partitions.sort_unstable();
    text += &format!("\u{0}{partitions:?}");
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cursor after `(ts, partition, offset)`.
pub fn encode_cursor(fingerprint: u64, (ts, p, off): (u64, u32, u64)) -> String {
    format!("q1.{fingerprint:016x}.{ts}.{p}.{off}")
}

/// The position a cursor continues after, whatever query it belongs to
/// (`None`: "" or not a cursor).
pub fn cursor_position(c: &str) -> Option<(u64, u32, u64)> {
    let parts: Vec<&str> = c.split('.').collect();
    let [_, fp, ..] = parts[..] else { return None };
    decode_cursor(c, u64::from_str_radix(fp, 16).ok()?).ok()
}

fn decode_cursor(c: &str, fingerprint: u64) -> Result<(u64, u32, u64), Error> {
    let bad = || Error::invalid("query.cursor", format!("{c:?} is not a cursor of an events query"));
    let parts: Vec<&str> = c.split('.').collect();
    let [version, fp, ts, p, off] = parts[..] else {
        return Err(bad());
    };
    if version != "q1" {
        return Err(bad());
    }
    let fp = u64::from_str_radix(fp, 16).map_err(|_| bad())?;
    if fp != fingerprint {
        return Err(Error::invalid(
            "query.cursor",
            "comes from another query (other filters, order or partitions): a cursor continues only the query that returned it",
        ));
    }
    Ok((
        ts.parse().map_err(|_| bad())?,
        p.parse().map_err(|_| bad())?,
        off.parse().map_err(|_| bad())?,
    ))
}

/// Where partition `p`'s page starts (inclusive) after the cursor: the
/// events of `p` that come after `(ts, cp, off)` in the merge order.
pub fn bound(q: &Query, p: u32) -> Bound {
    let Some((ts, cp, off)) = q.after else {
        return Some(if q.descending { (u64::MAX, u64::MAX) } else { (0, 0) });
    };
    use std::cmp::Ordering::*;
    if q.descending {
        match p.cmp(&cp) {
            Less => Some((ts, u64::MAX)),
            Equal => match off.checked_sub(1) {
                Some(o) => Some((ts, o)),
                None => ts.checked_sub(1).map(|t| (t, u64::MAX)),
            },
            Greater => ts.checked_sub(1).map(|t| (t, u64::MAX)),
        }
    } else {
        match p.cmp(&cp) {
            Greater => Some((ts, 0)),
            Equal => Some((ts, off.checked_add(1)?)),
            Less => Some((ts.checked_add(1)?, 0)),
        }
    }
}

/// One partition's page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Its events, in the query's order.
    pub events: Vec<pb::RecordedEvent>,
    /// It may have more after `last`.
    pub more: bool,
    /// Where its scan stopped: (timestamp, partition, offset) of the last
    /// row read (with `more`; its events may end earlier, or be none).
    pub last: Option<(u64, u32, u64)>,
}

/// A match known by its position only (the index decided it; see
/// [`is_unloaded`]).
pub fn unloaded(partition: u32, ts: u64, offset: u64) -> pb::RecordedEvent {
    pb::RecordedEvent {
        timestamp_ms: ts,
        partition,
        offset,
        ..Default::default()
    }
}

/// Whether `e` is a position from [`unloaded`] (every stored event has an
/// id).
pub fn is_unloaded(e: &pb::RecordedEvent) -> bool {
    e.id.is_empty()
}

fn position(e: &pb::RecordedEvent) -> (u64, u32, u64) {
    (e.timestamp_ms, e.partition, e.offset)
}

/// Merges the partitions' pages into the query's page and its cursor ("":
/// no more).
pub fn merge(q: &Query, pages: Vec<Page>) -> (Vec<pb::RecordedEvent>, String) {
    // Beyond where a partition that has more stopped, its next events are
    // unknown: cut at the earliest such point (every partition has been
    // read up to it).
    let cut = pages
        .iter()
        .filter(|p| p.more)
        .filter_map(|p| p.last.or_else(|| p.events.last().map(position)))
        .reduce(|a, b| if q.descending { a.max(b) } else { a.min(b) });
    let mut all: Vec<pb::RecordedEvent> = pages.into_iter().flat_map(|p| p.events).collect();
    all.sort_by_key(position);
    if q.descending {
        all.reverse();
    }
    if let Some(cut) = cut {
        all.retain(|e| {
            if q.descending {
                position(e) >= cut
            } else {
                position(e) <= cut
            }
        });
    }
    // Continue after the last event kept if the limit cut the page, else
    // after the cut (which may lie past the last event kept: a page may
    // hold none).
    let next = if all.len() > q.limit {
        all.truncate(q.limit);
        all.last().map(position)
    } else {
        cut
    };
    let cursor = next.map_or_else(String::new, |at| encode_cursor(q.fingerprint, at));
    (all, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, partition: u32, offset: u64) -> pb::RecordedEvent {
        pb::RecordedEvent {
            timestamp_ms: ts,
            partition,
            offset,
            ..Default::default()
        }
    }

    fn query(limit: u32, descending: bool) -> Query {
        parse(&pb::QueryEventsRequest {
            limit,
            descending,
            ..Default::default()
        })
        .expect("valid")
    }

    #[test]
    fn merging_pages_cuts_where_a_partition_may_have_more() {
        let q = query(3, false);
        let pages = vec![
            Page {
                events: vec![ev(1, 1, 0), ev(5, 1, 1)],
                more: true,
                last: None,
            },
            Page {
                events: vec![ev(2, 2, 0), ev(3, 2, 1), ev(9, 2, 2)],
                more: false,
                last: None,
            },
        ];
        let (events, cursor) = merge(&q, pages);
        let got: Vec<_> = events.iter().map(position).collect();
        assert_eq!(got, vec![(1, 1, 0), (2, 2, 0), (3, 2, 1)]);
        let next = parse(&pb::QueryEventsRequest {
            limit: 3,
            cursor,
            ..Default::default()
        })
        .expect("its own cursor");
        assert_eq!(next.after, Some((3, 2, 1)));
        assert_eq!(bound(&next, 1), Some((4, 0)));
        assert_eq!(bound(&next, 2), Some((3, 2)));
        assert_eq!(bound(&next, 3), Some((3, 0)));
        // Nothing more anywhere: no cursor.
        let (_, cursor) = merge(
            &q,
            vec![Page {
                events: vec![ev(1, 1, 0)],
                more: false,
                last: None,
            }],
        );
        assert_eq!(cursor, "");
    }

    #[test]
    fn a_partition_that_stopped_without_events_still_bounds_the_page() {
        // Partition 1 read up to (4, 1, 9) and kept nothing (its rows were
        // filtered out or deleted) but has more: nothing after that point
        // may be returned yet, and the cursor continues from it.
        let q = query(10, false);
        let pages = vec![
            Page {
                events: vec![],
                more: true,
                last: Some((4, 1, 9)),
            },
            Page {
                events: vec![ev(2, 2, 0), ev(5, 2, 1)],
                more: false,
                last: Some((5, 2, 1)),
            },
        ];
        let (events, cursor) = merge(&q, pages);
        assert_eq!(events.iter().map(position).collect::<Vec<_>>(), vec![(2, 2, 0)]);
        assert_eq!(cursor_position(&cursor), Some((4, 1, 9)));
    }

    #[test]
    fn descending_bounds_continue_below_the_cursor() {
        let mut q = query(2, true);
        q.after = Some((10, 2, 5));
        assert_eq!(bound(&q, 1), Some((10, u64::MAX)));
        assert_eq!(bound(&q, 2), Some((10, 4)));
        assert_eq!(bound(&q, 3), Some((9, u64::MAX)));
        q.after = Some((0, 2, 0));
        assert_eq!(bound(&q, 2), None);
        assert_eq!(bound(&q, 3), None);
    }

    #[test]
    fn bad_queries_name_the_field() {
        let err = |r: pb::QueryEventsRequest| parse(&r).expect_err("must fail").to_string();
        let op = pb::Predicate {
            field: "amount".into(),
            op: "like".into(),
            value: "1".into(),
        };
        let m = err(pb::QueryEventsRequest {
            predicates: vec![op],
            ..Default::default()
        });
        assert!(m.starts_with("query.predicates[0].op:"), "{m}");
        let m = err(pb::QueryEventsRequest {
            limit: 5000,
            ..Default::default()
        });
        assert!(m.starts_with("query.limit:"), "{m}");
        let m = err(pb::QueryEventsRequest {
            from_time_ms: 9,
            to_time_ms: 3,
            ..Default::default()
        });
        assert!(m.starts_with("query.to_time_ms:"), "{m}");
        let m = err(pb::QueryEventsRequest {
            cursor: "garbage".into(),
            ..Default::default()
        });
        assert!(m.starts_with("query.cursor:"), "{m}");
        // A cursor of a query by type, given to a query by another type.
        let (_, cursor) = merge(
            &parse(&pb::QueryEventsRequest {
                r#type: "A".into(),
                limit: 1,
                ..Default::default()
            })
            .expect("valid"),
            vec![Page {
                events: vec![ev(1, 1, 0), ev(2, 1, 1)],
                more: false,
                last: None,
            }],
        );
        let m = err(pb::QueryEventsRequest {
            r#type: "B".into(),
            cursor,
            ..Default::default()
        });
        assert!(m.contains("query.cursor") && m.contains("another query"), "{m}");
    }
}
