//! `esf kv`: put, get, delete, txn, history, compact, watch.

use super::*;
use serde::Deserialize;

#[derive(Debug, Subcommand)]
pub(super) enum KvCmd {
    /// Print changes of a key (or prefix) as they happen.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Include the previous version of each key.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after this many events (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Set a key. Without VALUE (and without --from-file) the value is
    /// read from stdin, byte for byte (`esf kv put k < file`).
    Put {
        key: String,
        value: Option<String>,
        /// Take the value from this file, byte for byte.
        #[arg(long, conflicts_with = "value")]
        from_file: Option<PathBuf>,
        /// Attach to this lease.
        #[arg(long, default_value_t = 0)]
        lease: u64,
    },
    /// Read a key or, with --prefix, every key starting with it.
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Read at this revision.
        #[arg(long, default_value_t = 0)]
        rev: u64,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Local read of the answering node (may be stale).
        #[arg(long)]
        serializable: bool,
        #[arg(long)]
        keys_only: bool,
        #[arg(long)]
        count_only: bool,
    },
    /// Delete a key or, with --prefix, every key starting with it.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Transaction from JSON (argument or stdin), e.g.
    /// {"compare":[{"key":"k","target":"value","op":"=","value":"v"}],"success":[{"put":{"key":"k","value":"w"}}],"failure":[{"get":{"key":"k"}}]}
    Txn { spec: Option<String> },
    /// Every version of a key between two revisions.
    History {
        key: String,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// Drop history below a revision.
    Compact { revision: u64 },
}

pub(super) async fn kv(c: Client, out: Output, cmd: KvCmd) -> anyhow::Result<()> {
    match cmd {
        KvCmd::Watch {
            key,
            prefix,
            rev,
            prev_kv,
            count,
        } => {
            let range = if prefix {
                esf_client::key_range_prefix(key.into_bytes())
            } else {
                esf_client::key_range_key(key.into_bytes())
            };
            let req = pb::WatchRequest {
                range: Some(range),
                start_revision: rev,
                prev_kv,
                progress_notify_ms: 0,
            };
            let mut stream = c.watch(req).await?;
            let mut seen = 0u64;
            while let Some(resp) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("watch: {}", s.message()))?
            {
                if resp.canceled {
                    anyhow::bail!("watch canceled: {}", resp.cancel_reason);
                }
                for e in &resp.events {
                    let kind = if resp.snapshot {
                        "SNAPSHOT"
                    } else if e.r#type == pb::event::EventType::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    let kv = e.kv.clone().unwrap_or_default();
                    let v = json!({"type": kind, "key": text(&kv.key), "value": text(&kv.value), "mod_revision": kv.mod_revision, "prev_value": e.prev_kv.as_ref().map(|p| text(&p.value))});
                    print(out, &v, || {
                        format!(
                            "{kind} {} {} (revision {})\n",
                            text(&kv.key),
                            text(&kv.value),
                            kv.mod_revision
                        )
                    });
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
            anyhow::bail!("watch: the node closed the stream");
        }
        KvCmd::Put {
            key,
            value,
            from_file,
            lease,
        } => {
            let value = match (value, from_file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(f)) => std::fs::read(&f).with_context(|| format!("--from-file: read {}", f.display()))?,
                (None, None) => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).context("value: read stdin")?;
                    v
                }
            };
            let r = c.put_with(pb::PutRequest::new(key, value).with_lease(lease)).await?;
            print(out, &json!({"header": header_json(&r.header)}), || "OK\n".into());
        }
        KvCmd::Get {
            key,
            prefix,
            rev,
            limit,
            serializable,
            keys_only,
            count_only,
        } => {
            let range = if prefix {
                key_range_prefix(key.into())
            } else {
                key_range_key(key.into())
            };
            let r = c
                .range(pb::RangeRequest {
                    range: Some(range),
                    revision: rev,
                    limit,
                    count_only,
                    keys_only,
                    serializable,
                })
                .await?;
            let v = json!({"header": header_json(&r.header), "count": r.count, "more": r.more, "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>()});
            print(out, &v, || {
                if count_only {
                    return format!("{}\n", r.count);
                }
                r.kvs
                    .iter()
                    .map(|kv| {
                        if keys_only {
                            format!("{}\n", text(&kv.key))
                        } else {
                            format!("{}\n{}\n", text(&kv.key), text(&kv.value))
                        }
                    })
                    .collect()
            });
        }
        KvCmd::Del { key, prefix } => {
            let range = if prefix {
                key_range_prefix(key.into())
            } else {
                key_range_key(key.into())
            };
            let r = c.delete(pb::DeleteRequest::of(range)).await?;
            print(
                out,
                &json!({"header": header_json(&r.header), "deleted": r.deleted}),
                || format!("{}\n", r.deleted),
            );
        }
        KvCmd::Txn { spec } => {
            let spec = match spec {
                Some(s) => s,
                None => {
                    std::io::read_to_string(std::io::stdin()).map_err(|e| anyhow::anyhow!("txn: read stdin: {e}"))?
                }
            };
            let req = parse_txn(&spec)?;
            let r = c.txn(req).await?;
            let (results, lines) = txn_results(&r.results, r.header.as_ref().map_or(0, |h| h.revision));
            let v = json!({"header": header_json(&r.header), "succeeded": r.succeeded, "results": results});
            print(out, &v, || {
                format!("{}\n{lines}", if r.succeeded { "SUCCESS" } else { "FAILURE" })
            });
        }
        KvCmd::History { key, from, to } => {
            let r = c
                .history(pb::HistoryRequest {
                    key: key.into(),
                    from_revision: from,
                    to_revision: to,
                    serializable: false,
                })
                .await?;
            let v = json!({"header": header_json(&r.header), "versions": r.versions.iter().map(kv_json).collect::<Vec<_>>()});
            print(out, &v, || {
                r.versions
                    .iter()
                    .map(|kv| {
                        if kv.version == 0 {
                            format!("rev {:<6} (deleted)\n", kv.mod_revision)
                        } else {
                            format!(
                                "rev {:<6} version {:<4} {}\n",
                                kv.mod_revision,
                                kv.version,
                                text(&kv.value)
                            )
                        }
                    })
                    .collect()
            });
        }
        KvCmd::Compact { revision } => {
            let r = c.compact(revision).await?;
            print(out, &json!({"compact_revision": r.compact_revision}), || {
                format!("compacted below revision {}\n", r.compact_revision)
            });
        }
    }
    Ok(())
}

/// The JSON spec of `esf kv txn`. Unknown fields are refused (a
/// misspelled `sucess` must not run an empty txn that reports SUCCESS).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnSpec {
    #[serde(default)]
    compare: Vec<CompareSpec>,
    #[serde(default)]
    success: Vec<OpSpec>,
    #[serde(default)]
    failure: Vec<OpSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareSpec {
    key: String,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    create: Option<u64>,
    #[serde(default, rename = "mod")]
    mod_revision: Option<u64>,
    #[serde(default)]
    lease: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum OpSpec {
    Put {
        key: String,
        value: String,
        #[serde(default)]
        lease: u64,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

/// Parses the JSON txn spec of `esf kv txn`.
pub(super) fn parse_txn(spec: &str) -> anyhow::Result<pb::TxnRequest> {
    let spec: TxnSpec = serde_json::from_str(spec).map_err(|e| anyhow::anyhow!("txn: {e}"))?;
    let mut req = pb::TxnRequest::default();
    for (i, c) in spec.compare.into_iter().enumerate() {
        let op = match c.op.as_deref().unwrap_or("=") {
            "=" | "==" => pb::compare::Op::Equal,
            "!=" => pb::compare::Op::NotEqual,
            ">" => pb::compare::Op::Greater,
            "<" => pb::compare::Op::Less,
            other => anyhow::bail!("txn: compare[{i}].op: unknown operator {other:?} (use =, !=, >, <)"),
        };
        use pb::compare::Target;
        let target_name = c.target.as_deref().unwrap_or("value");
        let given = [
            ("value", c.value.is_some()),
            ("version", c.version.is_some()),
            ("create", c.create.is_some()),
            ("mod", c.mod_revision.is_some()),
            ("lease", c.lease.is_some()),
        ];
        if let Some((stray, _)) = given.iter().find(|(f, set)| *set && *f != target_name) {
            anyhow::bail!(
                "txn: compare[{i}].{stray}: not used with target {target_name:?} (set \"target\":\"{stray}\" to compare it)"
            );
        }
        let num = |v: Option<u64>, f: &str| v.ok_or_else(|| anyhow::anyhow!("txn: compare[{i}].{f}: required number"));
        let target = match target_name {
            "value" => Target::Value(
                c.value
                    .ok_or_else(|| anyhow::anyhow!("txn: compare[{i}].value: required string"))?
                    .into(),
            ),
            "version" => Target::Version(num(c.version, "version")?),
            "create" => Target::CreateRevision(num(c.create, "create")?),
            "mod" => Target::ModRevision(num(c.mod_revision, "mod")?),
            "lease" => Target::Lease(num(c.lease, "lease")?),
            other => anyhow::bail!(
                "txn: compare[{i}].target: unknown target {other:?} (use value, version, create, mod, lease)"
            ),
        };
        req.compares.push(pb::Compare {
            key: c.key.into(),
            op: op as i32,
            target: Some(target),
        });
    }
    let ops = |list: Vec<OpSpec>| -> Vec<pb::TxnOp> {
        use pb::txn_op::Op;
        list.into_iter()
            .map(|o| pb::TxnOp {
                op: Some(match o {
                    OpSpec::Put { key, value, lease } => Op::Put(pb::PutRequest {
                        key: key.into(),
                        value: value.into(),
                        lease,
                        ..Default::default()
                    }),
                    OpSpec::Delete { key } => Op::Delete(pb::DeleteRequest {
                        range: Some(key_range_key(key.into())),
                        ..Default::default()
                    }),
                    OpSpec::Get { key } => Op::Range(pb::RangeRequest {
                        range: Some(key_range_key(key.into())),
                        ..Default::default()
                    }),
                }),
            })
            .collect()
    };
    req.success = ops(spec.success);
    req.failure = ops(spec.failure);
    Ok(req)
}

/// The results of the branch a txn ran, in op order: JSON, and one line
/// per op (a get prints its key and value as `kv get` does; it reads the
/// state before the txn).
/// Puts and deletes of one txn share its revision (`revision`).
fn txn_results(results: &[pb::TxnOpResult], revision: u64) -> (Vec<Value>, String) {
    use pb::txn_op_result::Result as R;
    let mut json = Vec::with_capacity(results.len());
    let mut text_out = String::new();
    for r in results {
        match &r.result {
            Some(R::Put(p)) => {
                let rev = p.header.as_ref().map_or(revision, |h| h.revision);
                json.push(json!({"put": {"revision": rev}}));
                text_out.push_str(&format!("put: revision {rev}\n"));
            }
            Some(R::Delete(d)) => {
                json.push(json!({"delete": {"deleted": d.deleted}}));
                text_out.push_str(&format!("delete: {} deleted\n", d.deleted));
            }
            Some(R::Range(g)) => {
                json.push(json!({"get": {"kvs": g.kvs.iter().map(kv_json).collect::<Vec<_>>(), "count": g.count}}));
                if g.kvs.is_empty() {
                    text_out.push_str("get: (not found)\n");
                }
                for kv in &g.kvs {
                    text_out.push_str(&format!("get: {}\n{}\n", text(&kv.key), text(&kv.value)));
                }
            }
            None => json.push(Value::Null),
        }
    }
    (json, text_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_spec_refuses_what_it_does_not_know() {
        let cases = [
            (
                r#"{"sucess":[{"put":{"key":"k","value":"v"}}]}"#,
                "unknown field `sucess`",
            ),
            (
                r#"{"success":[{"pt":{"key":"k","value":"v"}}]}"#,
                "unknown variant `pt`",
            ),
            (
                r#"{"success":[{"put":{"key":"k","valu":"v"}}]}"#,
                "unknown field `valu`",
            ),
            (r#"{"compare":[{"key":"k","vesion":1}]}"#, "unknown field `vesion`"),
            (
                r#"{"compare":[{"key":"k","version":1}]}"#,
                "compare[0].version: not used with target \"value\"",
            ),
            (
                r#"{"compare":[{"key":"k","target":"version"}]}"#,
                "compare[0].version: required number",
            ),
            (
                r#"{"compare":[{"key":"k","op":"~","value":"v"}]}"#,
                "compare[0].op: unknown operator",
            ),
            (r#"[1]"#, "txn: invalid type"),
        ];
        for (spec, want) in cases {
            let err = parse_txn(spec).expect_err(spec).to_string();
            assert!(err.contains(want), "{spec}: {err:?} should contain {want:?}");
        }
    }

    #[test]
    fn txn_spec_builds_the_request() {
        let r = parse_txn(
            r#"{"compare":[{"key":"k","target":"mod","op":"<","mod":7}],
                "success":[{"put":{"key":"k","value":"w","lease":9}},{"get":{"key":"k"}}],
                "failure":[{"delete":{"key":"k"}}]}"#,
        )
        .expect("valid spec");
        assert_eq!(r.compares.len(), 1);
        assert_eq!(r.compares[0].op, pb::compare::Op::Less as i32);
        assert_eq!(r.compares[0].target, Some(pb::compare::Target::ModRevision(7)));
        assert!(matches!(&r.success[0].op, Some(pb::txn_op::Op::Put(p)) if p.lease == 9 && p.value == b"w"));
        assert!(matches!(&r.success[1].op, Some(pb::txn_op::Op::Range(_))));
        assert!(matches!(&r.failure[0].op, Some(pb::txn_op::Op::Delete(_))));
    }
}
