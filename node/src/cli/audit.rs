//! `esf audit tail`: the audit trail, printed as it grows.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum AuditCmd {
    /// Print audit events, oldest first: the last --limit, or every one
    /// from --from-revision; --follow keeps printing new ones.
    Tail {
        /// How many of the latest to print (ignored with --from-revision).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print from the event of this revision on.
        #[arg(long)]
        from_revision: Option<u64>,
        /// Keep printing new events as they are appended.
        #[arg(long)]
        follow: bool,
    },
}

pub(super) fn audit_line(e: &pb::RecordedEvent) -> String {
    let data: Value = serde_json::from_slice(&e.data).unwrap_or_default();
    let changes: Vec<String> = data["changes"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let key = c["key"].as_str().unwrap_or_default();
                    match (c["op"].as_str(), c.get("value").and_then(Value::as_str)) {
                        (Some("delete"), _) => format!("-{key}"),
                        (_, Some(v)) => format!("{key}={v}"),
                        _ => format!("{key} ({} bytes)", c["value_bytes"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {} {}\n",
        e.metadata.get("revision").map_or("?", String::as_str),
        e.r#type,
        changes.join(" ")
    )
}

/// The stream version of the first audit event at or after `revision`
/// (binary search over the stream: one read per step).
pub(super) async fn audit_version_of(c: &Client, revision: u64, last_version: u64) -> anyhow::Result<u64> {
    let (mut lo, mut hi) = (1u64, last_version + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let r = c
            .read_stream(pb::ReadStreamRequest {
                stream: AUDIT_STREAM.into(),
                from_version: mid,
                limit: 1,
                ..Default::default()
            })
            .await?;
        let rev = r
            .events
            .first()
            .and_then(|e| e.metadata.get("revision"))
            .and_then(|r| r.parse::<u64>().ok());
        match rev {
            Some(r) if r < revision => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

pub(super) async fn audit_tail(
    c: Client,
    out: Output,
    limit: u32,
    from_revision: Option<u64>,
    follow: bool,
) -> anyhow::Result<()> {
    let end = c
        .read_stream(pb::ReadStreamRequest {
            stream: AUDIT_STREAM.into(),
            backward: true,
            limit: 1,
            ..Default::default()
        })
        .await?;
    let mut from = match from_revision {
        Some(r) => audit_version_of(&c, r, end.stream_version).await?,
        None => end.stream_version.saturating_sub(u64::from(limit)) + 1,
    };
    // Where the stream lives and the offset after the last event printed.
    let mut position = end.events.first().map(|e| (e.partition, 0u64));
    while from <= end.stream_version {
        let r = c
            .read_stream(pb::ReadStreamRequest {
                stream: AUDIT_STREAM.into(),
                from_version: from,
                ..Default::default()
            })
            .await?;
        let Some(last) = r.events.last() else { break };
        position = Some((last.partition, last.offset + 1));
        from = last.version + 1;
        for e in r.events.iter().filter(|e| e.version <= end.stream_version) {
            print(out, &event_json(e), || audit_line(e));
        }
    }
    if !follow {
        return Ok(());
    }
    // Every partition but the stream's is left at its end; the stream's
    // continues after the last event printed (from its start if none was).
    let mut req = pb::SubscribeRequest {
        from_now: true,
        stream_prefix: AUDIT_STREAM.into(),
        ..Default::default()
    };
    if let Some((p, offset)) = position {
        req.from_offsets.insert(p, offset);
        req.partitions.push(p);
    } else {
        req.from_now = false;
    }
    let mut sub = c.subscribe_resumable(req);
    loop {
        for e in sub.next().await?.events.iter().filter(|e| e.stream == AUDIT_STREAM) {
            print(out, &event_json(e), || audit_line(e));
        }
    }
}
