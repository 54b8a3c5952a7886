//! `esf kv`: put, get, delete, txn, history, compact, watch.

use super::*;

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
    /// Set a key.
    Put {
        key: String,
        value: String,
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
        KvCmd::Put { key, value, lease } => {
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
            let v = json!({"header": header_json(&r.header), "succeeded": r.succeeded, "results": r.results.len()});
            print(out, &v, || {
                format!("{}\n", if r.succeeded { "SUCCESS" } else { "FAILURE" })
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

/// Parses the JSON txn spec of `esf kv txn`.
pub(super) fn parse_txn(spec: &str) -> anyhow::Result<pb::TxnRequest> {
    let v: Value = serde_json::from_str(spec).map_err(|e| anyhow::anyhow!("txn: not valid JSON: {e}"))?;
    let s = |v: &Value, field: &str| -> anyhow::Result<String> {
        v.get(field)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("txn: {field}: required string"))
    };
    let mut req = pb::TxnRequest::default();
    for (i, c) in v
        .get("compare")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let op = match c.get("op").and_then(Value::as_str).unwrap_or("=") {
            "=" | "==" => pb::compare::Op::Equal,
            "!=" => pb::compare::Op::NotEqual,
            ">" => pb::compare::Op::Greater,
            "<" => pb::compare::Op::Less,
            other => anyhow::bail!("txn: compare[{i}].op: unknown operator {other:?} (use =, !=, >, <)"),
        };
        use pb::compare::Target;
        let num = |f: &str| {
            c.get(f)
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow::anyhow!("txn: compare[{i}].{f}: required number"))
        };
        let target = match c.get("target").and_then(Value::as_str).unwrap_or("value") {
            "value" => Target::Value(s(c, "value")?.into()),
            "version" => Target::Version(num("version")?),
            "create" => Target::CreateRevision(num("create")?),
            "mod" => Target::ModRevision(num("mod")?),
            "lease" => Target::Lease(num("lease")?),
            other => anyhow::bail!(
                "txn: compare[{i}].target: unknown target {other:?} (use value, version, create, mod, lease)"
            ),
        };
        req.compares.push(pb::Compare {
            key: s(c, "key")?.into(),
            op: op as i32,
            target: Some(target),
        });
    }
    let ops = |name: &str| -> anyhow::Result<Vec<pb::TxnOp>> {
        let mut out = Vec::new();
        for (i, o) in v
            .get(name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            use pb::txn_op::Op;
            let op = if let Some(p) = o.get("put") {
                Op::Put(pb::PutRequest {
                    key: s(p, "key")?.into(),
                    value: s(p, "value")?.into(),
                    ..Default::default()
                })
            } else if let Some(d) = o.get("delete") {
                Op::Delete(pb::DeleteRequest {
                    range: Some(key_range_key(s(d, "key")?.into())),
                    ..Default::default()
                })
            } else if let Some(g) = o.get("get") {
                Op::Range(pb::RangeRequest {
                    range: Some(key_range_key(s(g, "key")?.into())),
                    ..Default::default()
                })
            } else {
                anyhow::bail!("txn: {name}[{i}]: expected one of put, delete, get");
            };
            out.push(pb::TxnOp { op: Some(op) });
        }
        Ok(out)
    };
    req.success = ops("success")?;
    req.failure = ops("failure")?;
    Ok(req)
}
