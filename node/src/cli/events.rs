//! `esf events`: append, read, query, delete, index and retention commands.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum EventsCmd {
    /// Append one event (--type and --data), or a batch (--batch FILE, one
    /// JSON object per line: {"type", "data", "id", "correlation_id",
    /// "causation_id", "metadata"}; - reads stdin), atomically.
    Append {
        stream: String,
        #[arg(long = "type", required_unless_present = "batch")]
        event_type: Option<String>,
        /// JSON payload; `-` reads it from stdin, `@PATH` from a file.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Event id (UUID; default: a random one).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "")]
        correlation_id: String,
        #[arg(long, default_value = "")]
        causation_id: String,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta")]
        metadata: Vec<String>,
        /// any, no_stream, exists or a version number.
        #[arg(long, default_value = "any")]
        expected_version: String,
        #[arg(long, conflicts_with_all = ["event_type", "id"])]
        batch: Option<String>,
    },
    /// One event by id.
    Get {
        id: String,
        /// Its stream, if known.
        #[arg(long, default_value = "")]
        stream: String,
    },
    /// A stream's events (or, with --partition, a partition's).
    Read {
        #[arg(required_unless_present = "partition")]
        stream: Option<String>,
        /// First version (stream) or offset (partition).
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        backward: bool,
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long, conflicts_with = "stream")]
        partition: Option<u32>,
    },
    /// Find events across partitions by type, correlation id, time and
    /// JSON-field predicates, oldest first (--desc: newest first), a page at
    /// a time (--cursor continues one).
    Query {
        #[arg(long = "type", default_value = "")]
        event_type: String,
        #[arg(long, default_value = "")]
        correlation_id: String,
        /// Earliest timestamp, ms since the Unix epoch (inclusive).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Latest timestamp, ms since the Unix epoch (exclusive).
        #[arg(long, default_value_t = 0)]
        to: u64,
        /// "FIELD OP VALUE" on the JSON data (repeatable): OP is eq (=),
        /// lt (<), le (<=), gt (>), ge (>=), in (VALUE a JSON array) or
        /// exists (no VALUE); VALUE is JSON ("gold", 12, true).
        #[arg(long = "where")]
        predicates: Vec<String>,
        /// Newest first.
        #[arg(long)]
        desc: bool,
        /// Events per page (default 100, at most 1,000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// The cursor a previous page printed.
        #[arg(long, default_value = "")]
        cursor: String,
        /// Print the index used and the rows examined.
        #[arg(long)]
        explain: bool,
        /// Only these partitions (repeatable).
        #[arg(long = "partition")]
        partitions: Vec<u32>,
    },
    /// Follow events (catch-up, then live), resuming on another node if
    /// this one goes away.
    Subscribe {
        /// Start at the end instead of the beginning.
        #[arg(long)]
        from_now: bool,
        /// Only this event type.
        #[arg(long = "type", default_value = "")]
        event_type: String,
        /// Only streams starting with this.
        #[arg(long, default_value = "")]
        stream_prefix: String,
        /// Only these partitions (repeatable).
        #[arg(long = "partition")]
        partitions: Vec<u32>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Tombstone a stream: its events are no longer returned and it cannot
    /// be appended to again.
    DeleteStream {
        stream: String,
        #[arg(long, default_value = "any")]
        expected_version: String,
    },
    /// Retention rules: how long, and how many bytes per partition, events
    /// are kept.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Declared indexes on JSON fields of event data (serve `eq`
    /// predicates of queries).
    #[command(subcommand)]
    Index(IndexCmd),
}

#[derive(Debug, Subcommand)]
pub(super) enum IndexCmd {
    /// Declare an index on FIELD (a dotted path, e.g. customer.tier);
    /// older events are indexed in the background.
    Create { field: String },
    /// The declared indexes and how far the partitions built them.
    List,
    /// Drop the index on FIELD.
    Drop { field: String },
}

#[derive(Debug, Subcommand)]
pub(super) enum RetentionCmd {
    /// Set the rule of a stream prefix (default: the cluster-wide rule).
    Set {
        /// Streams starting with this ("" every stream).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Remove events older than this: 500ms, 30s, 15m, 12h, 7d.
        #[arg(long)]
        max_age: Option<String>,
        /// Cluster-wide rule only: keep each partition to this many bytes
        /// of events (oldest removed first): 1048576, 512MiB, 10GiB.
        #[arg(long)]
        max_bytes: Option<String>,
    },
    /// The rules in force.
    List,
    /// Remove the rule of a prefix (default: the cluster-wide rule).
    Clear {
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// `--max-age` as milliseconds.
pub(super) fn parse_age(field: &str, s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(at);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{field}: {s:?} is not a duration like 30s, 15m, 12h or 7d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("{field}: {s:?} needs a unit: ms, s, m, h or d"),
    };
    n.checked_mul(ms)
        .ok_or_else(|| anyhow::anyhow!("{field}: {s:?} is too long"))
}

/// `--max-bytes` as bytes.
pub(super) fn parse_bytes(field: &str, s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(at);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{field}: {s:?} is not a size like 1048576, 512MiB or 10GiB"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => anyhow::bail!("{field}: {s:?} has an unknown unit (B, KiB, MiB, GiB, TiB, KB, MB, GB)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("{field}: {s:?} is too large"))
}

pub(super) fn retention_line(r: &pb::RetentionRule) -> String {
    format!(
        "{} max_age_ms={} max_bytes={}\n",
        if r.stream_prefix.is_empty() {
            "*"
        } else {
            &r.stream_prefix
        },
        r.max_age_ms,
        r.max_bytes
    )
}

pub(super) fn expected_version(s: &str) -> anyhow::Result<Option<pb::ExpectedVersion>> {
    use pb::expected_version::Kind;
    let kind = match s {
        "any" => return Ok(None),
        "no_stream" => Kind::NoStream(true),
        "exists" => Kind::Exists(true),
        n => Kind::Exact(
            n.parse()
                .map_err(|_| anyhow::anyhow!("--expected-version: {n:?} is not any, no_stream, exists or a number"))?,
        ),
    };
    Ok(Some(pb::ExpectedVersion { kind: Some(kind) }))
}

pub(super) fn event_json(e: &pb::RecordedEvent) -> Value {
    let data: Value = serde_json::from_slice(&e.data).unwrap_or_else(|_| Value::String(text(&e.data)));
    json!({"id": e.id, "stream": e.stream, "type": e.r#type, "version": e.version, "partition": e.partition, "offset": e.offset, "timestamp_ms": e.timestamp_ms, "correlation_id": e.correlation_id, "causation_id": e.causation_id, "metadata": e.metadata, "data": data})
}

pub(super) fn event_line(e: &pb::RecordedEvent) -> String {
    format!(
        "{}@{} {} {} (partition {} offset {}) {}\n",
        e.stream,
        e.version,
        e.r#type,
        e.id,
        e.partition,
        e.offset,
        text(&e.data)
    )
}

pub(super) fn print_events(out: Output, events: &[pb::RecordedEvent]) {
    for e in events {
        print(out, &event_json(e), || event_line(e));
    }
}

/// `FIELD OP [VALUE]` of `esf events query --where` as a predicate (the
/// node checks the field, operator and value).
pub(super) fn parse_where(w: &str) -> Result<pb::Predicate, String> {
    let w = w.trim();
    let (field, rest) = w
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("{w:?} is not FIELD OP [VALUE]"))?;
    let rest = rest.trim_start();
    let (op, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let op = match op {
        "=" | "==" => "eq",
        "<" => "lt",
        "<=" => "le",
        ">" => "gt",
        ">=" => "ge",
        other => other,
    };
    Ok(pb::Predicate {
        field: field.to_string(),
        op: op.to_string(),
        value: value.trim().to_string(),
    })
}

/// One line of `esf events append --batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchLine {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    correlation_id: String,
    #[serde(default)]
    causation_id: String,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

pub(super) async fn events(c: Client, out: Output, cmd: EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Append {
            stream,
            event_type,
            data,
            id,
            correlation_id,
            causation_id,
            metadata,
            expected_version: ev,
            batch,
        } => {
            let expected = expected_version(&ev)?;
            let events = match batch {
                Some(src) => {
                    let body = if src == "-" {
                        std::io::read_to_string(std::io::stdin()).context("read the batch from stdin")?
                    } else {
                        std::fs::read_to_string(&src).with_context(|| format!("--batch: read {src}"))?
                    };
                    let mut events = Vec::new();
                    for (n, line) in body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                        let l: BatchLine =
                            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("--batch: line {}: {e}", n + 1))?;
                        events.push(pb::EventData {
                            id: l.id,
                            r#type: l.event_type,
                            correlation_id: l.correlation_id,
                            causation_id: l.causation_id,
                            data: serde_json::to_vec(&l.data.unwrap_or(Value::Object(Default::default())))?,
                            metadata: l.metadata,
                        });
                    }
                    events
                }
                None => {
                    let mut meta = std::collections::HashMap::new();
                    for m in metadata {
                        let Some((k, v)) = m.split_once('=') else {
                            anyhow::bail!("--meta: {m:?} is not KEY=VALUE");
                        };
                        meta.insert(k.to_string(), v.to_string());
                    }
                    vec![pb::EventData {
                        id: id.unwrap_or_default(),
                        r#type: event_type.unwrap_or_default(),
                        correlation_id,
                        causation_id,
                        data: match data.as_str() {
                            "-" => {
                                let mut v = Vec::new();
                                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                                    .context("--data: read stdin")?;
                                v
                            }
                            d => match d.strip_prefix('@') {
                                Some(path) => std::fs::read(path).with_context(|| format!("--data: read {path}"))?,
                                None => data.into_bytes(),
                            },
                        },
                        metadata: meta,
                    }]
                }
            };
            let r = c.append(&stream, events, expected).await?;
            print(
                out,
                &json!({"stream": stream, "partition": r.partition, "first_offset": r.first_offset, "first_version": r.first_version, "count": r.count, "duplicate": r.duplicate, "ids": r.ids}),
                || {
                    format!(
                        "appended {} event(s) to {stream} at version {} (partition {} offset {}){}\n",
                        r.count,
                        r.first_version,
                        r.partition,
                        r.first_offset,
                        if r.duplicate { ", already appended before" } else { "" }
                    )
                },
            );
        }
        EventsCmd::Get { id, stream } => {
            let r = c.get_event(&id, &stream).await?;
            print_events(out, r.event.as_slice());
        }
        EventsCmd::Read {
            stream,
            from,
            backward,
            limit,
            partition,
        } => match partition {
            Some(p) => {
                let r = c
                    .read_partition(pb::ReadPartitionRequest {
                        partition: p,
                        from_offset: from,
                        limit,
                        serializable: false,
                    })
                    .await?;
                if from < r.first_offset {
                    eprintln!(
                        "note: partition {p} keeps events from offset {} on; those before were removed by retention",
                        r.first_offset
                    );
                }
                print_events(out, &r.events);
                // A reply holds at most a server-set number of events (and
                // bytes): say where to go on rather than stop silently.
                if !r.events.is_empty() && (limit == 0 || r.events.len() < limit as usize) {
                    eprintln!(
                        "note: {} events returned (a reply holds at most {} events or 16 MiB); more may follow: read on with --partition {p} --from {}",
                        r.events.len(),
                        crate::events::MAX_EVENTS_PER_RESPONSE,
                        r.next_offset
                    );
                }
            }
            None => {
                let r = c
                    .read_stream(pb::ReadStreamRequest {
                        stream: stream.clone().unwrap_or_default(),
                        from_version: from,
                        backward,
                        limit,
                        serializable: false,
                    })
                    .await?;
                if r.first_version > 1 && (from < r.first_version || backward) {
                    eprintln!(
                        "note: the stream keeps versions from {} on; those before were removed by retention",
                        r.first_version
                    );
                }
                print_events(out, &r.events);
                let stream = stream.unwrap_or_default();
                let more = match (r.events.last(), backward) {
                    (Some(e), false) if e.version < r.stream_version => Some(format!("--from {}", e.version + 1)),
                    (Some(e), true) if e.version > r.first_version.max(1) => {
                        Some(format!("--from {} --backward", e.version - 1))
                    }
                    _ => None,
                };
                if let Some(from) = more.filter(|_| limit == 0 || r.events.len() < limit as usize) {
                    eprintln!(
                        "note: {} events returned (a reply holds at most {} events or 16 MiB); the stream has more: esf events read {stream} {from}",
                        r.events.len(),
                        crate::events::MAX_EVENTS_PER_RESPONSE,
                    );
                }
            }
        },
        EventsCmd::Retention(RetentionCmd::Set {
            prefix,
            max_age,
            max_bytes,
        }) => {
            if max_age.is_none() && max_bytes.is_none() {
                anyhow::bail!(
                    "retention set: give --max-age, --max-bytes or both (esf events retention clear removes a rule)"
                );
            }
            let rule = pb::RetentionRule {
                stream_prefix: prefix,
                max_age_ms: max_age
                    .as_deref()
                    .map(|s| parse_age("max_age", s))
                    .transpose()?
                    .unwrap_or(0),
                max_bytes: max_bytes
                    .as_deref()
                    .map(|s| parse_bytes("max_bytes", s))
                    .transpose()?
                    .unwrap_or(0),
            };
            c.set_retention(rule.clone()).await?;
            print(
                out,
                &json!({"stream_prefix": rule.stream_prefix, "max_age_ms": rule.max_age_ms, "max_bytes": rule.max_bytes}),
                || format!("set {}", retention_line(&rule)),
            );
        }
        EventsCmd::Index(IndexCmd::Create { field }) => {
            c.create_index(&field).await?;
            print(out, &json!({"created": field}), || {
                format!("declared an index on {field}\n")
            });
        }
        EventsCmd::Index(IndexCmd::Drop { field }) => {
            c.drop_index(&field).await?;
            print(out, &json!({"dropped": field}), || {
                format!("dropped the index on {field}\n")
            });
        }
        EventsCmd::Index(IndexCmd::List) => {
            for i in c.list_indexes().await?.indexes {
                print(
                    out,
                    &json!({"field": i.field, "partitions_ready": i.partitions_ready, "partitions_building": i.partitions_building, "partitions_pending": i.partitions_pending}),
                    || {
                        format!(
                            "{} ready={} building={} pending={}\n",
                            i.field, i.partitions_ready, i.partitions_building, i.partitions_pending
                        )
                    },
                );
            }
        }
        EventsCmd::Retention(RetentionCmd::List) => {
            for r in c.list_retention().await?.rules {
                print(
                    out,
                    &json!({"stream_prefix": r.stream_prefix, "max_age_ms": r.max_age_ms, "max_bytes": r.max_bytes}),
                    || retention_line(&r),
                );
            }
        }
        EventsCmd::Retention(RetentionCmd::Clear { prefix }) => {
            c.set_retention(pb::RetentionRule {
                stream_prefix: prefix.clone(),
                ..Default::default()
            })
            .await?;
            print(out, &json!({"cleared": prefix}), || {
                format!("cleared the rule of {prefix:?}\n")
            });
        }
        EventsCmd::Query {
            event_type,
            correlation_id,
            from,
            to,
            predicates,
            desc,
            limit,
            cursor,
            explain,
            partitions,
        } => {
            let predicates = predicates
                .iter()
                .enumerate()
                .map(|(i, w)| parse_where(w).map_err(|e| anyhow::anyhow!("where[{i}]: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let r = c
                .query_events(pb::QueryEventsRequest {
                    r#type: event_type,
                    correlation_id,
                    from_time_ms: from,
                    to_time_ms: to,
                    predicates,
                    descending: desc,
                    limit,
                    cursor,
                    explain,
                    partitions,
                    serializable: false,
                })
                .await?;
            if matches!(out, Output::Json) {
                let events: Vec<Value> = r.events.iter().map(event_json).collect();
                let explain = r.explain.as_ref().map(|e| {
                    serde_json::json!({"index": e.index, "rows_examined": e.rows_examined, "events_loaded": e.events_loaded, "partitions": e.partitions})
                });
                println!(
                    "{}",
                    serde_json::json!({"events": events, "cursor": r.cursor, "explain": explain})
                );
            } else {
                print_events(out, &r.events);
                if !r.cursor.is_empty() {
                    println!("cursor: {}", r.cursor);
                }
                if let Some(e) = &r.explain {
                    println!(
                        "explain: index {}, {} rows examined, {} events loaded, {} partitions",
                        e.index, e.rows_examined, e.events_loaded, e.partitions
                    );
                }
            }
        }
        EventsCmd::Subscribe {
            from_now,
            event_type,
            stream_prefix,
            partitions,
            count,
        } => {
            let mut sub = c.subscribe_resumable(pb::SubscribeRequest {
                from_offsets: Default::default(),
                from_now,
                r#type: event_type,
                stream_prefix,
                partitions,
            });
            let mut seen = 0u64;
            loop {
                let resp = sub.next().await?;
                for e in &resp.events {
                    print(out, &event_json(e), || event_line(e));
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
        }
        EventsCmd::DeleteStream {
            stream,
            expected_version: ev,
        } => {
            let r = c.delete_stream(&stream, expected_version(&ev)?).await?;
            print(out, &json!({"stream": stream, "version": r.version}), || {
                format!("deleted stream {stream} at version {}\n", r.version)
            });
        }
    }
    Ok(())
}
