//! Named bounds on what a client may ask, and the checks that enforce them.
//!
//! The same checks run before a command is proposed (so bad input never
//! reaches the log) and again in apply (so a command that slipped through
//! is rejected deterministically on every replica, never half-applied).

use serde::{Deserialize, Serialize};

use crate::command::{KeyRange, Op, PutRequest, Rejection, TxnOp};

/// Default largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Default largest value, in bytes (etcd's request limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Default most ops in one txn branch, and most compares (etcd: 128).
pub const MAX_TXN_OPS: usize = 128;
/// Default number of revisions of history kept by auto-compaction.
pub const DEFAULT_HISTORY_REVISIONS: u64 = 10_000;
/// Largest lease TTL accepted (ten days): a lease is a liveness signal, and
/// longer TTLs mostly hide mistakes.
pub const MAX_LEASE_TTL_SECS: u64 = 10 * 24 * 3600;
/// Responses a session keeps for retries before the oldest is dropped.
pub const MAX_SESSION_RESPONSES: usize = 256;
/// Sessions kept; the least recently used is evicted beyond this.
pub const MAX_SESSIONS: usize = 10_000;

/// Limits in force; part of the replicated state so every replica judges
/// the same entry the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest key.
    pub max_key_bytes: usize,
    /// Largest value.
    pub max_value_bytes: usize,
    /// Most ops per txn branch and most compares.
    pub max_txn_ops: usize,
    /// Revisions of history kept by auto-compaction (at least 1).
    pub history_revisions: u64,
    /// Largest lease TTL in seconds.
    pub max_lease_ttl_secs: u64,
    /// Responses kept per session.
    pub max_session_responses: usize,
    /// Sessions kept.
    pub max_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: MAX_KEY_BYTES,
            max_value_bytes: MAX_VALUE_BYTES,
            max_txn_ops: MAX_TXN_OPS,
            history_revisions: DEFAULT_HISTORY_REVISIONS,
            max_lease_ttl_secs: MAX_LEASE_TTL_SECS,
            max_session_responses: MAX_SESSION_RESPONSES,
            max_sessions: MAX_SESSIONS,
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Limits {
    /// Checks a key.
    pub fn check_key(&self, field: &str, key: &[u8]) -> Result<(), Rejection> {
        if key.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(invalid(
                field,
                format!(
                    "is {} bytes, over the limit of {} (max_key_bytes)",
                    key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Checks a key range.
    pub fn check_range(&self, field: &str, range: &KeyRange) -> Result<(), Rejection> {
        match range {
            KeyRange::Key(k) => self.check_key(&format!("{field}.key"), k),
            KeyRange::Prefix(p) => {
                if p.len() > self.max_key_bytes {
                    return Err(invalid(
                        format!("{field}.prefix"),
                        format!(
                            "is {} bytes, over the limit of {} (max_key_bytes)",
                            p.len(),
                            self.max_key_bytes
                        ),
                    ));
                }
                Ok(())
            }
            KeyRange::Between { start, end } => {
                self.check_key(&format!("{field}.start"), start)?;
                if end.len() > self.max_key_bytes {
                    return Err(invalid(
                        format!("{field}.end"),
                        format!(
                            "is {} bytes, over the limit of {} (max_key_bytes)",
                            end.len(),
                            self.max_key_bytes
                        ),
                    ));
                }
                if end <= start {
                    return Err(invalid(format!("{field}.end"), "must be greater than start"));
                }
                Ok(())
            }
        }
    }

    fn check_put(&self, field: &str, p: &PutRequest) -> Result<(), Rejection> {
        self.check_key(&format!("{field}.key"), &p.key)?;
        if p.value.len() > self.max_value_bytes {
            return Err(invalid(
                format!("{field}.value"),
                format!(
                    "is {} bytes, over the limit of {} (max_value_bytes)",
                    p.value.len(),
                    self.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_branch(&self, field: &str, ops: &[TxnOp]) -> Result<(), Rejection> {
        if ops.len() > self.max_txn_ops {
            return Err(invalid(
                field,
                format!(
                    "has {} ops, over the limit of {} (max_txn_ops)",
                    ops.len(),
                    self.max_txn_ops
                ),
            ));
        }
        for (i, op) in ops.iter().enumerate() {
            let f = format!("{field}[{i}]");
            match op {
                TxnOp::Put(p) => self.check_put(&f, p)?,
                TxnOp::Delete(d) => self.check_range(&f, &d.range)?,
                TxnOp::Range(r) => self.check_range(&f, &r.range)?,
            }
        }
        Ok(())
    }

    /// Checks a whole operation.
    pub fn check_op(&self, op: &Op) -> Result<(), Rejection> {
        match op {
            Op::Put(p) => self.check_put("put", p),
            Op::Delete(d) => self.check_range("delete.range", &d.range),
            Op::Txn(t) => {
                if t.compares.len() > self.max_txn_ops {
                    return Err(invalid(
                        "txn.compares",
                        format!(
                            "has {} compares, over the limit of {} (max_txn_ops)",
                            t.compares.len(),
                            self.max_txn_ops
                        ),
                    ));
                }
                for (i, c) in t.compares.iter().enumerate() {
                    self.check_key(&format!("txn.compares[{i}].key"), &c.key)?;
                }
                self.check_branch("txn.success", &t.success)?;
                self.check_branch("txn.failure", &t.failure)
            }
            Op::Compact { revision } => {
                if *revision == 0 {
                    return Err(invalid("compact.revision", "must be at least 1"));
                }
                Ok(())
            }
            Op::LeaseGrant { ttl_secs, .. } => {
                if *ttl_secs == 0 {
                    return Err(invalid("lease.ttl_secs", "must be at least 1"));
                }
                if *ttl_secs > self.max_lease_ttl_secs {
                    return Err(invalid(
                        "lease.ttl_secs",
                        format!(
                            "{ttl_secs} is over the limit of {} (max_lease_ttl_secs)",
                            self.max_lease_ttl_secs
                        ),
                    ));
                }
                Ok(())
            }
            Op::SetLimits(l) => {
                if l.history_revisions == 0 {
                    return Err(invalid("limits.history_revisions", "must be at least 1"));
                }
                if l.max_txn_ops == 0 || l.max_key_bytes == 0 || l.max_session_responses == 0 || l.max_sessions == 0 {
                    return Err(invalid(
                        "limits",
                        "max_txn_ops, max_key_bytes, max_session_responses and max_sessions must be at least 1",
                    ));
                }
                Ok(())
            }
            Op::LeaseRevoke { id, .. } => {
                if *id == 0 {
                    return Err(invalid("lease.id", "must not be 0"));
                }
                Ok(())
            }
            Op::MemberReplicated { node_id } => {
                if *node_id == 0 {
                    return Err(invalid("node_id", "must not be 0"));
                }
                Ok(())
            }
            Op::Append(a) => crate::events::check_append(a),
            Op::DeleteStream { stream, .. } => crate::events::check_stream_id("stream", stream),
            Op::IndexField { field, .. } => {
                crate::events::query::check_field(field).map_err(|r| invalid("index.field", r))?;
                Ok(())
            }
            Op::RemoveEvents { offsets } => {
                if offsets.len() > crate::events::MAX_REMOVE_EVENTS {
                    return Err(invalid(
                        "remove.offsets",
                        &format!(
                            "has {} offsets, over the limit of {}",
                            offsets.len(),
                            crate::events::MAX_REMOVE_EVENTS
                        ),
                    ));
                }
                Ok(())
            }
            Op::AuditCursor { .. } => Ok(()),
            Op::Auth(_) => Ok(()),
            Op::AsUser { user, op } => {
                crate::meta::auth::check_name("user", user)?;
                self.check_op(op)
            }
            // A batch is made by the leader of commands each checked alone.
            Op::Batch(cmds) => cmds.iter().try_for_each(|c| self.check_op(&c.op)),
            Op::RecordPartitions { count } => {
                if *count == 0 {
                    return Err(invalid("partitions", "must be at least 1"));
                }
                Ok(())
            }
            Op::PlacePartitions { plan, exclude, include } => {
                if exclude.contains(&0) || include.contains(&0) {
                    return Err(invalid("exclude", "node ids must not be 0"));
                }
                for (i, (p, replicas)) in plan.iter().enumerate() {
                    if *p == 0 {
                        return Err(invalid(&format!("plan[{i}].partition"), "must be at least 1"));
                    }
                    if replicas.is_empty() || replicas.contains(&0) {
                        return Err(invalid(
                            &format!("plan[{i}].replicas"),
                            "must be non-zero node ids, at least one",
                        ));
                    }
                    let distinct: std::collections::BTreeSet<&u64> = replicas.iter().collect();
                    if distinct.len() != replicas.len() {
                        return Err(invalid(&format!("plan[{i}].replicas"), "a node is named twice"));
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{DeleteRequest, TxnRequest};

    fn put(key: &[u8], value_len: usize) -> Op {
        Op::Put(PutRequest {
            key: key.to_vec(),
            value: vec![7; value_len],
            lease: 0,
            prev_kv: false,
        })
    }

    #[test]
    fn limits_table() {
        let l = Limits::default();
        let big_txn = Op::Txn(TxnRequest {
            compares: vec![],
            success: vec![
                TxnOp::Delete(DeleteRequest {
                    range: KeyRange::Key(b"k".to_vec()),
                    prev_kv: false
                });
                MAX_TXN_OPS + 1
            ],
            failure: vec![],
        });
        let cases: Vec<(Op, Option<&str>)> = vec![
            (put(b"k", 10), None),
            (put(b"", 10), Some("put.key: must not be empty")),
            (
                put(&vec![b'k'; MAX_KEY_BYTES + 1], 1),
                Some("put.key: is 4097 bytes, over the limit of 4096 (max_key_bytes)"),
            ),
            (put(b"k", MAX_VALUE_BYTES + 1), Some("put.value: is 1048577 bytes")),
            (
                big_txn,
                Some("txn.success: has 129 ops, over the limit of 128 (max_txn_ops)"),
            ),
            (
                Op::LeaseGrant { id: 0, ttl_secs: 0 },
                Some("lease.ttl_secs: must be at least 1"),
            ),
            (
                Op::LeaseGrant {
                    id: 0,
                    ttl_secs: u64::MAX,
                },
                Some("lease.ttl_secs: 18446744073709551615 is over the limit"),
            ),
            (
                Op::Delete(DeleteRequest {
                    range: KeyRange::Between {
                        start: b"b".to_vec(),
                        end: b"a".to_vec(),
                    },
                    prev_kv: false,
                }),
                Some("delete.range.end: must be greater than start"),
            ),
            (
                Op::Compact { revision: 0 },
                Some("compact.revision: must be at least 1"),
            ),
        ];
        for (op, want) in cases {
            let got = l.check_op(&op);
            match want {
                None => assert!(got.is_ok(), "{op:?}: {got:?}"),
                Some(w) => {
                    let msg = got.expect_err("must be rejected").to_string();
                    assert!(msg.contains(w), "{msg:?} should contain {w:?}");
                }
            }
        }
    }
}
