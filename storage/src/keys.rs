//! Column families and key layout.
//!
//! One RocksDB per node. Every key starts with the Raft group id as a
//! big-endian `u32`, so each group owns one contiguous key range in every
//! column family and many groups share one DB and one WAL:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `raft_log` | `group ++ index:u64 BE` | entry |
//! | `raft_meta` | `group ++ kind:u8` | vote / committed / last purged |
//! | `sm` | `group ++ table:u8 ++ ...` | state machine tables (owned by esf-raft) |
//! | `snapshot` | `group` | the group's last built snapshot |
//! | `raft_meta` | `"esf/format"` (not group-prefixed) | on-disk format version |
//!
//! Big-endian integers sort numerically, so a log is one ordered range and
//! `delete_range` purges a prefix of it.

/// Column family of Raft log entries.
pub const CF_LOG: &str = "raft_log";
/// Column family of Raft metadata: vote, committed, last purged log id.
pub const CF_RAFT_META: &str = "raft_meta";
/// Column family of state machine data.
pub const CF_SM: &str = "sm";
/// Column family of persisted snapshots, one per group.
pub const CF_SNAPSHOT: &str = "snapshot";
/// All column families, in creation order.
pub const ALL_CFS: [&str; 4] = [CF_LOG, CF_RAFT_META, CF_SM, CF_SNAPSHOT];

/// Key of the on-disk format version record in [`CF_RAFT_META`].
pub const FORMAT_VERSION_KEY: &[u8] = b"esf/format";

/// Raft group id. Group 0 is meta; 1..=P are event partitions.
pub type GroupId = u32;

/// Kinds of per-group records in [`CF_RAFT_META`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MetaKind {
    /// The current vote (term, candidate, committed flag), one atomic record.
    Vote = 1,
    /// The last known committed log id (advisory, speeds up restart).
    Committed = 2,
    /// The last purged log id; logs at or below it are gone.
    LastPurged = 3,
}

/// The 4-byte prefix of every key of `group`.
pub fn group_prefix(group: GroupId) -> [u8; 4] {
    group.to_be_bytes()
}

/// Key of log entry `index` of `group`.
pub fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Decodes the index of a `raft_log` key, checking it belongs to `group`.
pub fn log_index(group: GroupId, key: &[u8]) -> Option<u64> {
    if key.len() != 12 || key[..4] != group.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(key[4..].try_into().ok()?))
}

/// Key of a per-group metadata record.
pub fn meta_key(group: GroupId, kind: MetaKind) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4] = kind as u8;
    k
}

/// The exclusive upper bound of all keys starting with `prefix`, or `None`
/// if the prefix is all `0xff` (then the range is unbounded above).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Order-preserving, prefix-free encoding of a byte string, so a variable
/// length user key can be followed by more key parts (e.g. a revision) and
/// still sort by (user key, rest). `0x00` becomes `0x00 0xff`; the string ends
/// with `0x00 0x01`. Prefixes of user keys stay prefixes of encodings if the
/// terminator is left off ([`encode_bytes_prefix`]).
pub fn encode_bytes(out: &mut Vec<u8>, s: &[u8]) {
    encode_bytes_prefix(out, s);
    out.extend_from_slice(&[0x00, 0x01]);
}

/// [`encode_bytes`] without the terminator: the encoding of every key that
/// starts with `s` starts with this.
pub fn encode_bytes_prefix(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        if b == 0 {
            out.extend_from_slice(&[0x00, 0xff]);
        } else {
            out.push(b);
        }
    }
}

/// Decodes one [`encode_bytes`] string from the front of `input`, returning
/// it and the rest of the input; `None` if the input is not a valid encoding.
pub fn decode_bytes(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == 0 {
            match input.get(i + 1)? {
                0xff => out.push(0),
                0x01 => return Some((out, &input[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let mut keys = vec![log_key(1, 5), log_key(0, 900), log_key(1, 4), log_key(0, 1 << 40)];
        keys.sort();
        assert_eq!(
            keys,
            vec![log_key(0, 900), log_key(0, 1 << 40), log_key(1, 4), log_key(1, 5)]
        );
        assert_eq!(log_index(1, &log_key(1, 77)), Some(77));
        assert_eq!(log_index(2, &log_key(1, 77)), None);
    }

    #[test]
    fn prefix_end_table() {
        let cases: [(&[u8], Option<&[u8]>); 4] = [
            (b"abc", Some(b"abd")),
            (b"a\xff", Some(b"b")),
            (b"\xff\xff", None),
            (b"", None),
        ];
        for (input, want) in cases {
            assert_eq!(prefix_end(input).as_deref(), want, "prefix_end({input:?})");
        }
    }

    #[test]
    fn encoded_bytes_keep_order_and_round_trip() {
        let samples: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"\x00\x00",
            b"\x00\x01",
            b"a",
            b"a\x00",
            b"a\x00b",
            b"ab",
            b"b",
            b"\xff",
        ];
        let mut enc: Vec<(Vec<u8>, &[u8])> = samples
            .iter()
            .map(|s| {
                let mut out = Vec::new();
                encode_bytes(&mut out, s);
                out.extend_from_slice(b"tail");
                (out, *s)
            })
            .collect();
        enc.sort();
        let order: Vec<&[u8]> = enc.iter().map(|(_, s)| *s).collect();
        let mut sorted = samples.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        for (e, s) in &enc {
            let (dec, rest) = decode_bytes(e).unwrap();
            assert_eq!(&dec, s);
            assert_eq!(rest, b"tail");
        }
    }

    #[test]
    fn encoded_prefix_is_prefix_of_encoded_key() {
        for (key, prefix) in [(&b"foo/bar"[..], &b"foo/"[..]), (b"a\x00b", b"a\x00"), (b"abc", b"")] {
            let mut k = Vec::new();
            encode_bytes(&mut k, key);
            let mut p = Vec::new();
            encode_bytes_prefix(&mut p, prefix);
            assert!(k.starts_with(&p), "{key:?} / {prefix:?}");
        }
    }
}
