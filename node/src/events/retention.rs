//! Event retention: the rules live in meta (one reserved key per stream
//! prefix, `0xff "retention/" prefix`, JSON value), so they are replicated,
//! audited and watchable like any config; each partition's leader applies
//! them every `retention_interval_ms` by proposing `Op::RemoveEvents`
//! through the partition's log (see `esf_raft::events::retention`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use esf_proto::v1 as pb;
use esf_raft::command::{Command, KeyRange, Op, OpResult};
use esf_raft::events::retention::{RetentionRule, RetentionRules};
use esf_raft::group::MetaGroup;
use esf_raft::openraft::async_runtime::WatchReceiver;
use tracing::{info, warn};

use crate::context::{Ctx, Origin};
use crate::convert::{self, consistency};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::keyspace::Area;

/// Deadline of one removal proposal.
pub const REMOVE_DEADLINE: Duration = Duration::from_secs(10);

/// The meta key of the rule for `stream_prefix`.
pub fn rule_key(stream_prefix: &str) -> Vec<u8> {
    Area::Retention.key(stream_prefix.as_bytes())
}

/// The range of every rule key.
pub fn rules_range() -> KeyRange {
    Area::Retention.range()
}

/// A stored rule from its key and JSON value (`None`: not a rule).
pub fn decode_rule(key: &[u8], value: &[u8]) -> Option<RetentionRule> {
    let prefix = Area::Retention.name_of(key)?;
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    Some(RetentionRule {
        stream_prefix: String::from_utf8(prefix.to_vec()).ok()?,
        max_age_ms: v["max_age_ms"].as_u64().unwrap_or(0),
        max_bytes: v["max_bytes"].as_u64().unwrap_or(0),
    })
}

/// A rule's stored value.
pub fn encode_rule(r: &RetentionRule) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"max_age_ms": r.max_age_ms, "max_bytes": r.max_bytes}))
        .expect("a JSON value always serializes")
}

/// A rule as the API carries it.
pub fn to_pb(r: &RetentionRule) -> pb::RetentionRule {
    pb::RetentionRule {
        stream_prefix: r.stream_prefix.clone(),
        max_age_ms: r.max_age_ms,
        max_bytes: r.max_bytes,
    }
}

impl Events<'_> {
    /// The retention rules in force (read through the meta leader unless
    /// `msg.serializable`).
    pub async fn list_retention(
        &self,
        msg: pb::ListRetentionRequest,
        origin: Origin,
    ) -> Result<pb::ListRetentionResponse> {
        let r = convert::read_all(rules_range(), false);
        match self.0.meta.range(&r, consistency(msg.serializable)).await {
            Ok((h, res)) => Ok(pb::ListRetentionResponse {
                header: Some(convert::header(h)),
                rules: res
                    .kvs
                    .iter()
                    .filter_map(|kv| decode_rule(&kv.key, &kv.value))
                    .map(|r| to_pb(&r))
                    .collect(),
            }),
            Err(e) => {
                self.forward(origin, e, msg, |mut c, r| async move { c.list_retention(r).await })
                    .await
            }
        }
    }
}

/// The rules as this node's meta replica has them.
pub fn local_rules(meta: &MetaGroup) -> Result<RetentionRules> {
    let req = crate::convert::read_all(rules_range(), false);
    let (res, _) = meta.store().range(&req).map_err(esf_raft::Error::from)?;
    Ok(RetentionRules(
        res.kvs
            .iter()
            .filter_map(|kv| decode_rule(&kv.key, &kv.value))
            .collect(),
    ))
}

/// Events removed by this node's partition leaders.
#[derive(Debug, Default)]
pub struct RetentionStats {
    /// Events removed since the node started.
    pub removed: AtomicU64,
}

/// The rules in force, read linearizably (through the meta leader): a rule
/// cleared and acknowledged is never applied afterwards by a node whose
/// meta replica lags.
async fn current_rules(ctx: &Ctx) -> Result<RetentionRules> {
    let req = pb::ListRetentionRequest { serializable: false };
    let r = tokio::time::timeout(REMOVE_DEADLINE, Events(ctx).list_retention(req, Origin::Client))
        .await
        .map_err(|_| Error::unavailable(format!("no answer within {REMOVE_DEADLINE:?}")))??;
    Ok(RetentionRules(
        r.rules
            .into_iter()
            .map(|r| RetentionRule {
                stream_prefix: r.stream_prefix,
                max_age_ms: r.max_age_ms,
                max_bytes: r.max_bytes,
            })
            .collect(),
    ))
}

/// Applies the rules every `interval` to the partitions this node leads,
/// until `stop`.
pub async fn run(
    ctx: Ctx,
    interval: Duration,
    stats: Arc<RetentionStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let partitions = ctx.partitions.clone();
    // Per partition: where its sweep stands (see `RetentionSweep`).
    let mut sweeps: std::collections::HashMap<u32, esf_raft::events::store::RetentionSweep> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        // Cheap first look at the local replica; then the linearizable read.
        if !local_rules(&ctx.meta).is_ok_and(|r| !r.is_empty()) {
            continue;
        }
        let rules = match current_rules(&ctx).await {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "retention: cannot read the rules");
                continue;
            }
        };
        for p in partitions.iter() {
            let m = p.raft().metrics().borrow_watched().clone();
            if m.current_leader != Some(m.id) {
                continue;
            }
            // A full batch means more may be due: go on at once.
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let store = p.store().clone();
                let rules = rules.clone();
                let max = esf_raft::events::MAX_REMOVE_EVENTS;
                let mut sweep = sweeps.remove(&p.group()).unwrap_or_default();
                let scan = tokio::task::spawn_blocking(move || {
                    let r = store.expired(&rules, now, max, &mut sweep);
                    (r, sweep)
                })
                .await;
                let offsets = match scan {
                    Ok((Ok(o), sweep)) => {
                        sweeps.insert(p.group(), sweep);
                        o
                    }
                    Ok((Err(e), _)) => {
                        warn!(group = p.group(), error = %e, "retention: cannot scan the partition");
                        break;
                    }
                    Err(e) => {
                        warn!(group = p.group(), error = %e, "retention: scan task failed");
                        break;
                    }
                };
                if offsets.is_empty() {
                    break;
                }
                let full = offsets.len() >= max;
                let cmd = Command::new(Op::RemoveEvents { offsets });
                match tokio::time::timeout(REMOVE_DEADLINE, p.write(cmd)).await {
                    Ok(Ok(r)) => {
                        if let OpResult::Removed { events } = r.result {
                            stats.removed.fetch_add(events, Ordering::Relaxed);
                            info!(group = p.group(), events, "retention removed events");
                        }
                    }
                    Ok(Err(e)) => {
                        warn!(group = p.group(), error = %e, "retention: removal not applied (retried next pass)");
                        break;
                    }
                    Err(_) => {
                        warn!(
                            group = p.group(),
                            "retention: removal not applied within {REMOVE_DEADLINE:?} (retried next pass)"
                        );
                        break;
                    }
                }
                if !full {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_through_their_keys() {
        let r = RetentionRule {
            stream_prefix: "tmp-".into(),
            max_age_ms: 60_000,
            max_bytes: 0,
        };
        assert_eq!(decode_rule(&rule_key("tmp-"), &encode_rule(&r)), Some(r));
        assert_eq!(decode_rule(b"retention/x", b"{}"), None, "not a reserved key");
        assert_eq!(decode_rule(&rule_key("x"), b"not json"), None);
    }
}
