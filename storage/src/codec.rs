//! Checksummed record encoding.
//!
//! Every value ESF writes to RocksDB is `crc32c(payload) as u32 LE ++ payload`
//! where payload is bincode. RocksDB checks its own blocks, but a checksum per
//! record also catches a torn or foreign value written through a bug, and lets
//! the error name the exact record. A record that fails the check is
//! [`StorageError::Corrupt`]; it is never treated as missing.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StorageError};

const CRC_LEN: usize = 4;

/// Encodes `value` as a checksummed record.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    let payload = bincode::serialize(value).map_err(|e| StorageError::Encode {
        what,
        reason: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(CRC_LEN + payload.len());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Where a record lives, for error messages.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    /// Column family name.
    pub cf: &'static str,
    /// Raft group id.
    pub group: u32,
    /// Human description of the record ("log index 7", "vote").
    pub record: &'a dyn std::fmt::Display,
}

/// Decodes a checksummed record, naming it in the error if it is damaged.
pub fn decode<T: DeserializeOwned>(at: RecordRef<'_>, bytes: &[u8]) -> Result<T> {
    let corrupt = |reason: String| StorageError::Corrupt {
        cf: at.cf,
        group: at.group,
        record: at.record.to_string(),
        reason,
    };
    if bytes.len() < CRC_LEN {
        return Err(corrupt(format!(
            "record is {} bytes, shorter than its checksum",
            bytes.len()
        )));
    }
    let (crc, payload) = bytes.split_at(CRC_LEN);
    let stored = u32::from_le_bytes(crc.try_into().expect("split_at(4) gives 4 bytes"));
    let actual = crc32fast::hash(payload);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    bincode::deserialize(payload).map_err(|e| corrupt(format!("undecodable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> RecordRef<'static> {
        RecordRef {
            cf: "raft_log",
            group: 3,
            record: &"log index 9",
        }
    }

    #[test]
    fn round_trip() {
        let v = (7u64, "hello".to_string(), vec![1u8, 2, 3]);
        let bytes = encode("test", &v).unwrap();
        let back: (u64, String, Vec<u8>) = decode(at(), &bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn flipped_bit_is_corruption_naming_the_record() {
        let mut bytes = encode("test", &42u64).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let err = decode::<u64>(at(), &bytes).unwrap_err();
        assert!(err.is_corruption());
        let msg = err.to_string();
        assert!(
            msg.contains("raft_log") && msg.contains("group 3") && msg.contains("log index 9"),
            "{msg}"
        );
    }

    #[test]
    fn short_record_is_corruption() {
        let err = decode::<u64>(at(), &[1, 2]).unwrap_err();
        assert!(err.is_corruption(), "{err}");
    }
}
