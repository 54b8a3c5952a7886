//! Event ids: UUIDs in their canonical text form (8-4-4-4-12 hex digits).
//!
//! Server and client share it: the client names events before their first
//! append attempt (so a retried append is applied once) and the node
//! parses the ids it stores. It does not implement the UUID versions
//! beyond random (v4) and does not validate the version or variant bits
//! of ids it parses: any 128 bits in canonical form are an id.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Parses a canonical UUID (either case). The error says what is wrong.
pub fn parse(s: &str) -> Result<[u8; 16], String> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return Err(format!("{s:?} is not a UUID (36 characters, 8-4-4-4-12 hex digits)"));
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return Err(format!("{s:?} is not a UUID (a '-' belongs at position {})", i + 1));
            }
            i += 1;
            continue;
        }
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        match (hex(b[i]), hex(b[i + 1])) {
            (Some(h), Some(l)) => out[n] = h << 4 | l,
            _ => return Err(format!("{s:?} is not a UUID (non-hex digit near position {})", i + 1)),
        }
        n += 1;
        i += 2;
    }
    Ok(out)
}

/// Formats 16 bytes as a canonical lowercase UUID.
pub fn format(id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        // Two hex digits without a format! allocation per byte (this runs
        // for every event returned and every audit event built).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0x0f)] as char);
    }
    s
}

/// A new random (version 4) UUID. The bits come from SipHash keyed with
/// the process's random keys over a counter and the clock: unique, not
/// cryptographic.
pub fn new_v4() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(std::collections::hash_map::RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = [0u8; 16];
    for (half, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = keys.build_hasher();
        h.write_u64(n);
        h.write_u128(now);
        h.write_usize(half);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed_ids() {
        let id = new_v4();
        assert_eq!(parse(&format(&id)), Ok(id));
        assert_eq!(format(&id).as_bytes()[14], b'4');
        assert_ne!(new_v4(), new_v4());
        let up = "0F8FAD5B-D9CB-469F-A165-70867728950E";
        assert_eq!(format(&parse(up).unwrap()), up.to_lowercase());
        for bad in [
            "",
            "0f8fad5b",
            "0f8fad5bd9cb-469f-a165-70867728950e0",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
        ] {
            assert!(parse(bad).unwrap_err().contains("is not a UUID"), "{bad}");
        }
    }
}
