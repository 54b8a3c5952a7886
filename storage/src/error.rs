//! The storage error type and how callers must react to it.

use std::io;

/// Everything that can go wrong in esf-storage.
///
/// Corruption is never reported as "absent": a record that fails its checksum
/// or does not decode is [`StorageError::Corrupt`], naming the column family,
/// the group and the record, and the node must stop rather than serve it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error (I/O, its own corruption checks, options).
    #[error("rocksdb: {context}: {source}")]
    Rocks {
        /// What we were doing.
        context: String,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A persisted record failed its checksum or could not be decoded.
    #[error("corrupt record in column family {cf}, group {group}, {record}: {reason}")]
    Corrupt {
        /// Column family holding the record.
        cf: &'static str,
        /// Raft group id the record belongs to.
        group: u32,
        /// Which record, e.g. "log index 17" or "vote".
        record: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The data directory was written by an incompatible on-disk format.
    #[error("data directory {path} has on-disk format version {found}, this build reads version {expected}")]
    FormatVersion {
        /// Data directory.
        path: String,
        /// Version found on disk.
        found: u32,
        /// Version this build understands.
        expected: u32,
    },
    /// A value could not be encoded (a bug: our types always encode).
    #[error("encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Encoder message.
        reason: String,
    },
    /// The group-commit flusher thread is gone (the store is shutting down or crashed).
    #[error("wal flusher stopped: {0}")]
    FlusherStopped(String),
    /// A caller broke a documented contract (e.g. non-contiguous log append).
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// A file outside RocksDB (a snapshot file) could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the file.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    pub(crate) fn rocks(context: impl Into<String>, source: rocksdb::Error) -> Self {
        StorageError::Rocks {
            context: context.into(),
            source,
        }
    }

    /// An I/O error on a file, naming what was being done to which file.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }

    /// True if the write failed for lack of disk space (ENOSPC from the
    /// file system, as an I/O error or inside a RocksDB status).
    pub fn is_no_space(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28)
            }
            StorageError::Rocks { source, .. } => source.to_string().contains("No space left on device"),
            StorageError::FlusherStopped(m) => m.contains("No space left on device"),
            _ => false,
        }
    }

    /// True if the persisted state is damaged: the node must not serve from it.
    pub fn is_corruption(&self) -> bool {
        match self {
            StorageError::Corrupt { .. } | StorageError::FormatVersion { .. } => true,
            StorageError::Rocks { source, .. } => source.kind() == rocksdb::ErrorKind::Corruption,
            _ => false,
        }
    }
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> Self {
        let kind = if e.is_corruption() {
            io::ErrorKind::InvalidData
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, e)
    }
}

/// Result alias for this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
