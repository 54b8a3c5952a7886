//! Snapshot files: what `esf snapshot save` writes and `restore` and
//! `inspect` read.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! "ESFSNAP1"                      magic and file format 1
//! u32 header length, header       JSON: Header (who, when, which groups)
//! u32 crc32 of the header
//! group sections                  one per Header::groups entry, in order,
//!                                 each its group's snapshot blob (which
//!                                 carries its own crc32 and format)
//! ```
//!
//! Sections: the meta group (0, kind "meta"), then each event partition
//! (1..=P, kind "partition").

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Magic bytes and file format.
pub const MAGIC: &[u8; 8] = b"ESFSNAP1";
/// Bytes of a `SnapshotChunk` on the wire.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The file's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Cluster the snapshot was taken from.
    pub cluster_id: String,
    /// Node that served it.
    pub node_id: u64,
    /// `esf` version of that node.
    pub esf_version: String,
    /// Wall-clock time it was taken, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Sections, in file order.
    pub groups: Vec<GroupSection>,
}

/// One group's section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSection {
    /// Raft group id.
    pub group: u32,
    /// "meta" or "partition".
    pub kind: String,
    /// Section length in bytes.
    pub bytes: u64,
}

/// Chunks a node queues ahead of a slow reader.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// The start of a snapshot file: magic, header, header checksum. The
/// sections the header lists follow it.
pub fn encode_head(header: &Header) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("a header always serializes");
    let mut out = Vec::with_capacity(16 + h.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&crc32fast::hash(&h).to_be_bytes());
    out
}

/// A whole snapshot file from its header and the sections it lists.
#[cfg(test)]
pub fn encode(header: &Header, sections: &[&[u8]]) -> Vec<u8> {
    let mut out = encode_head(header);
    for s in sections {
        out.extend_from_slice(s);
    }
    out
}

/// Decodes a snapshot file, checking its structure and every group's
/// checksum; `name` (the file) starts every error.
pub fn decode<'a>(name: &str, bytes: &'a [u8]) -> anyhow::Result<(Header, Vec<(GroupSection, &'a [u8])>)> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        bail!(
            "{name}: not an ESF snapshot file (it does not start with {:?})",
            "ESFSNAP1"
        );
    }
    let rest = &bytes[MAGIC.len()..];
    let truncated = || anyhow::anyhow!("{name}: truncated ({} bytes)", bytes.len());
    let hlen = u32::from_be_bytes(rest.get(..4).ok_or_else(truncated)?.try_into().expect("4 bytes")) as usize;
    let h = rest.get(4..4 + hlen).ok_or_else(truncated)?;
    let crc = u32::from_be_bytes(
        rest.get(4 + hlen..8 + hlen)
            .ok_or_else(truncated)?
            .try_into()
            .expect("4 bytes"),
    );
    if crc32fast::hash(h) != crc {
        bail!("{name}: header checksum mismatch (the file is corrupt)");
    }
    let header: Header =
        serde_json::from_slice(h).with_context(|| format!("{name}: header does not decode (the file is corrupt)"))?;
    let mut body = &rest[8 + hlen..];
    let mut groups = Vec::new();
    for g in &header.groups {
        let n = usize::try_from(g.bytes).unwrap_or(usize::MAX);
        if body.len() < n {
            bail!(
                "{name}: truncated: group {} needs {} bytes, {} left",
                g.group,
                g.bytes,
                body.len()
            );
        }
        let (section, tail) = body.split_at(n);
        if g.kind == "meta" {
            esf_raft::meta::summarize_snapshot(section)
                .map_err(|e| anyhow::anyhow!("{name}: group {}: {e}", g.group))?;
        } else if g.kind == "partition" {
            esf_raft::events::store::summarize_snapshot(g.group, section)
                .map_err(|e| anyhow::anyhow!("{name}: group {}: {e}", g.group))?;
        } else {
            bail!(
                "{name}: group {} is of kind {:?}, which this esf does not know",
                g.group,
                g.kind
            );
        }
        groups.push((g.clone(), section));
        body = tail;
    }
    if !body.is_empty() {
        bail!(
            "{name}: {} bytes after the last group (the file is corrupt)",
            body.len()
        );
    }
    if !groups.iter().any(|(g, _)| g.kind == "meta") {
        bail!("{name}: it has no meta group");
    }
    Ok((header, groups))
}

/// Reads and decodes a snapshot file.
pub fn read(path: &Path) -> anyhow::Result<(Header, Vec<(GroupSection, Vec<u8>)>)> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("read {name}"))?;
    let (h, groups) = decode(&name, &bytes)?;
    Ok((h, groups.into_iter().map(|(g, s)| (g, s.to_vec())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: u64) -> Header {
        Header {
            cluster_id: "esf-1".into(),
            node_id: 1,
            esf_version: "0".into(),
            created_unix_ms: 1,
            groups: vec![GroupSection {
                group: 0,
                kind: "meta".into(),
                bytes,
            }],
        }
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "not an ESF snapshot file"),
            (MAGIC.to_vec(), "truncated"),
            (encode(&header(10), &[b"0123456789"]), "group 0: corrupt record"),
            (
                encode(&header(20), &[b"0123456789"]),
                "truncated: group 0 needs 20 bytes",
            ),
            (
                {
                    let mut f = encode(&header(0), &[]);
                    f[14] ^= 1;
                    f
                },
                "header checksum mismatch",
            ),
        ];
        for (bytes, want) in cases {
            let e = decode("f", &bytes).expect_err(want).to_string();
            assert!(
                e.starts_with("f: ") && e.contains(want),
                "{e:?} should contain {want:?}"
            );
        }
    }
}
