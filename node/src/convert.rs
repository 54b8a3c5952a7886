//! Conversions between the gRPC types (esf-proto) and esf-raft's domain
//! types. Bad input is refused here with [`Error::Invalid`] naming the
//! field; errors become gRPC statuses in one place only
//! ([`crate::error`]).

use esf_proto::v1 as pb;
use esf_raft::command as cmd;
use esf_raft::group::ResponseHeader;

use crate::error::Error;
use crate::keyspace::RESERVED_KEY_BYTE;

/// A current read of every key in `range` (no limit), values or keys only.
pub(crate) fn read_all(range: cmd::KeyRange, keys_only: bool) -> cmd::RangeRequest {
    cmd::RangeRequest {
        range,
        revision: 0,
        limit: 0,
        count_only: false,
        keys_only,
    }
}

/// The read consistency a request's `serializable` flag asks for.
pub(crate) fn consistency(serializable: bool) -> esf_raft::group::Consistency {
    if serializable {
        esf_raft::group::Consistency::Serializable
    } else {
        esf_raft::group::Consistency::Linearizable
    }
}

/// Header to proto.
pub fn header(h: ResponseHeader) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: h.cluster_id,
        node_id: h.node_id,
        revision: h.revision,
        raft_term: h.raft_term,
    }
}

/// A watch event to proto.
pub fn event(e: &esf_raft::meta::WatchEvent) -> pb::Event {
    pb::Event {
        r#type: if e.deleted {
            pb::event::EventType::Delete as i32
        } else {
            pb::event::EventType::Put as i32
        },
        kv: Some(kv(e.kv.clone())),
        prev_kv: e.prev_kv.clone().map(kv),
    }
}

/// Key-value to proto.
pub fn kv(k: cmd::KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: k.key,
        value: k.value,
        create_revision: k.create_revision,
        mod_revision: k.mod_revision,
        version: k.version,
        lease: k.lease,
    }
}

/// Session from proto.
pub fn session(s: Option<pb::Session>) -> Option<cmd::SessionRef> {
    s.filter(|s| s.client_id != 0).map(|s| cmd::SessionRef {
        client_id: s.client_id,
        seq: s.seq,
        acked_below: s.acked_below,
    })
}

/// Refuses a key of the reserved keyspace.
pub fn user_key(field: &str, key: &[u8]) -> Result<(), Error> {
    if key.first() == Some(&RESERVED_KEY_BYTE) {
        return Err(Error::invalid(
            field,
            "keys starting with byte 0xff are reserved for ESF (the service registry)",
        ));
    }
    Ok(())
}

/// Key range from proto, limited to user keys: an empty prefix (every key)
/// and a range reaching into the reserved keyspace stop before it.
pub fn range(field: &str, r: Option<pb::KeyRange>) -> Result<cmd::KeyRange, Error> {
    use pb::key_range::Kind;
    let reserved = [RESERVED_KEY_BYTE];
    match r.and_then(|r| r.kind) {
        None => Err(Error::invalid(field, "is required (key, prefix or between)")),
        Some(Kind::Key(k)) => {
            user_key(&format!("{field}.key"), &k)?;
            Ok(cmd::KeyRange::Key(k))
        }
        // Keys are never empty, so every user key lies in [0x00, 0xff).
        Some(Kind::Prefix(p)) if p.is_empty() => Ok(cmd::KeyRange::Between {
            start: vec![0],
            end: reserved.to_vec(),
        }),
        Some(Kind::Prefix(p)) => {
            user_key(&format!("{field}.prefix"), &p)?;
            Ok(cmd::KeyRange::Prefix(p))
        }
        Some(Kind::Between(b)) => {
            user_key(&format!("{field}.start"), &b.start)?;
            let end = if b.end.as_slice() > reserved.as_slice() {
                reserved.to_vec()
            } else {
                b.end
            };
            Ok(cmd::KeyRange::Between { start: b.start, end })
        }
    }
}

/// Put from proto.
pub fn put(field: &str, p: pb::PutRequest) -> Result<cmd::PutRequest, Error> {
    user_key(&format!("{field}.key"), &p.key)?;
    Ok(cmd::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
    })
}

/// Range request from proto.
pub fn range_request(field: &str, r: pb::RangeRequest) -> Result<cmd::RangeRequest, Error> {
    Ok(cmd::RangeRequest {
        range: range(&format!("{field}.range"), r.range)?,
        revision: r.revision,
        limit: r.limit,
        count_only: r.count_only,
        keys_only: r.keys_only,
    })
}

/// Range result to proto.
pub fn range_result(h: Option<pb::ResponseHeader>, r: cmd::RangeResult) -> pb::RangeResponse {
    pb::RangeResponse {
        header: h,
        kvs: r.kvs.into_iter().map(kv).collect(),
        count: r.count,
        more: r.more,
    }
}

/// Delete from proto.
pub fn delete(field: &str, d: pb::DeleteRequest) -> Result<cmd::DeleteRequest, Error> {
    Ok(cmd::DeleteRequest {
        range: range(&format!("{field}.range"), d.range)?,
        prev_kv: d.prev_kv,
    })
}

fn txn_ops(field: &str, ops: Vec<pb::TxnOp>) -> Result<Vec<cmd::TxnOp>, Error> {
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| {
            let f = format!("{field}[{i}]");
            match op.op {
                None => Err(Error::invalid(&f, "op is required (put, delete or range)")),
                Some(pb::txn_op::Op::Put(p)) => Ok(cmd::TxnOp::Put(put(&format!("{f}.put"), p)?)),
                Some(pb::txn_op::Op::Delete(d)) => Ok(cmd::TxnOp::Delete(delete(&format!("{f}.delete"), d)?)),
                Some(pb::txn_op::Op::Range(r)) => Ok(cmd::TxnOp::Range(range_request(&format!("{f}.range"), r)?)),
            }
        })
        .collect()
}

/// Txn from proto.
pub fn txn(t: pb::TxnRequest) -> Result<cmd::TxnRequest, Error> {
    let mut compares = Vec::with_capacity(t.compares.len());
    for (i, c) in t.compares.into_iter().enumerate() {
        let op = match pb::compare::Op::try_from(c.op) {
            Ok(pb::compare::Op::Equal) => cmd::CompareOp::Equal,
            Ok(pb::compare::Op::NotEqual) => cmd::CompareOp::NotEqual,
            Ok(pb::compare::Op::Greater) => cmd::CompareOp::Greater,
            Ok(pb::compare::Op::Less) => cmd::CompareOp::Less,
            Err(_) => {
                return Err(Error::invalid(
                    &format!("txn.compares[{i}].op"),
                    &format!("unknown operator {}", c.op),
                ));
            }
        };
        use pb::compare::Target;
        let target = match c.target {
            None => return Err(Error::invalid(&format!("txn.compares[{i}].target"), "is required")),
            Some(Target::Value(v)) => cmd::CompareTarget::Value(v),
            Some(Target::Version(v)) => cmd::CompareTarget::Version(v),
            Some(Target::CreateRevision(v)) => cmd::CompareTarget::CreateRevision(v),
            Some(Target::ModRevision(v)) => cmd::CompareTarget::ModRevision(v),
            Some(Target::Lease(v)) => cmd::CompareTarget::Lease(v),
        };
        user_key(&format!("txn.compares[{i}].key"), &c.key)?;
        compares.push(cmd::Compare { key: c.key, op, target });
    }
    Ok(cmd::TxnRequest {
        compares,
        success: txn_ops("txn.success", t.success)?,
        failure: txn_ops("txn.failure", t.failure)?,
    })
}

/// Txn result to proto.
pub fn txn_result(h: pb::ResponseHeader, succeeded: bool, results: Vec<cmd::TxnOpResult>) -> pb::TxnResponse {
    use pb::txn_op_result::Result as R;
    let results = results
        .into_iter()
        .map(|r| pb::TxnOpResult {
            result: Some(match r {
                cmd::TxnOpResult::Put { prev_kv } => R::Put(pb::PutResponse {
                    header: None,
                    prev_kv: prev_kv.map(kv),
                }),
                cmd::TxnOpResult::Delete { deleted, prev_kvs } => R::Delete(pb::DeleteResponse {
                    header: None,
                    deleted,
                    prev_kvs: prev_kvs.into_iter().map(kv).collect(),
                }),
                cmd::TxnOpResult::Range(rr) => R::Range(range_result(None, rr)),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(h),
        succeeded,
        results,
    }
}
