//! A minimal openraft type configuration for exercising the log store on its
//! own (crash writer, storage tests, benchmark). ESF's real configuration is
//! in esf-raft.

use serde::{Deserialize, Serialize};

/// An opaque byte-string payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(pub Vec<u8>);

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "payload({} bytes)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Type config with byte-string payloads.
    pub TestConfig:
        D = Payload,
        R = (),
        NodeId = u64,
        Node = openraft::BasicNode,
);
