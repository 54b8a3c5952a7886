//! Node-to-node trust without TLS: the cluster's peer secret.
//!
//! Every node of a multi-node cluster is started with the same secret
//! (`peer_secret_file`). A node sends it as `esf-peer-auth` metadata on
//! every Raft RPC and every request it forwards to another node; a node
//! accepts Raft traffic and requests marked `esf-forwarded` only with it
//! (compared in constant time). A client cannot pass as a node by setting
//! a header: it would need the secret.
//!
//! What this does not do: encrypt. Without TLS the secret, like every
//! request, crosses the network in clear; keep the peer network private
//! or use TLS (a later feature). A node with no secret refuses all Raft
//! traffic and forwarded requests, so it can only run a single-node
//! cluster (`config::validate` refuses `join` without a secret).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use esf_proto::wire::PEER_AUTH_METADATA;
use tonic::Request;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// Shortest peer secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest peer secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 1024;

/// The cluster's peer secret, if this node has one.
#[derive(Clone, Default)]
pub struct PeerSecret(Option<Arc<AsciiMetadataValue>>);

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "PeerSecret(set)"
        } else {
            "PeerSecret(none)"
        })
    }
}

impl PeerSecret {
    /// The secret in `path` (surrounding whitespace trimmed): printable
    /// ASCII, [`MIN_SECRET_BYTES`] to [`MAX_SECRET_BYTES`] bytes.
    pub fn load(path: &Path) -> anyhow::Result<PeerSecret> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("peer_secret_file: cannot read {}", path.display()))?;
        PeerSecret::parse(text.trim())
            .map_err(|reason| anyhow::anyhow!("peer_secret_file: {}: {reason}", path.display()))
    }

    /// A secret from its text (see [`PeerSecret::load`]).
    pub fn parse(text: &str) -> Result<PeerSecret, String> {
        if text.len() < MIN_SECRET_BYTES || text.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; it must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} (e.g. `head -c 32 /dev/urandom | base64`)",
                text.len()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the secret must be printable ASCII without spaces (e.g. base64)".into());
        }
        let value = AsciiMetadataValue::try_from(text).map_err(|e| format!("not a metadata value: {e}"))?;
        Ok(PeerSecret(Some(Arc::new(value))))
    }

    /// The secret's bytes, if this node has one (gossip derives its key
    /// from them).
    pub fn bytes(&self) -> Option<&[u8]> {
        self.0.as_ref().map(|v| v.as_bytes())
    }

    /// Whether this node has a secret.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Marks `req` as sent by a node of the cluster (no-op without a secret).
    pub fn sign<T>(&self, req: &mut Request<T>) {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(PEER_AUTH_METADATA, (**v).clone());
        }
    }

    /// Whether `md` carries this node's secret; never without one.
    pub fn verify(&self, md: &MetadataMap) -> bool {
        let (Some(mine), Some(theirs)) = (&self.0, md.get(PEER_AUTH_METADATA)) else {
            return false;
        };
        constant_time_eq(mine.as_bytes(), theirs.as_bytes())
    }
}

impl PeerSecret {
    /// [`PeerSecret::verify`] on raw HTTP headers (the request guard runs
    /// before tonic has made metadata of them).
    pub fn verify_headers(&self, headers: &http::HeaderMap) -> bool {
        let (Some(mine), Some(theirs)) = (&self.0, headers.get(PEER_AUTH_METADATA)) else {
            return false;
        };
        constant_time_eq(mine.as_bytes(), theirs.as_bytes())
    }
}

/// Equal, in time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_verifies() {
        let s = PeerSecret::parse("0123456789abcdef-secret").expect("valid");
        let mut req = Request::new(());
        s.sign(&mut req);
        assert!(s.verify(req.metadata()));
        let other = PeerSecret::parse("0123456789abcdef-secreT").expect("valid");
        assert!(!other.verify(req.metadata()));
        assert!(!s.verify(Request::new(()).metadata()), "no header");
        assert!(
            !PeerSecret::default().verify(req.metadata()),
            "a node without a secret trusts no one"
        );
    }

    #[test]
    fn bad_secrets_are_refused_with_the_reason() {
        assert!(PeerSecret::parse("short").unwrap_err().contains("16 to 1024"));
        assert!(
            PeerSecret::parse("has a space in it ok")
                .unwrap_err()
                .contains("printable ASCII")
        );
        assert!(PeerSecret::parse(&"x".repeat(2000)).is_err());
    }
}
