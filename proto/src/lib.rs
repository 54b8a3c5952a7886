//! esf-proto: ESF's gRPC API, generated from `proto/esf/v1/*.proto` at build
//! time with protox (no `protoc` needed), and the wire contract both the
//! node and the client follow beyond the `.proto` files.
//!
//! - [`v1`]: the generated messages and services.
//!   - `esf.v1.Config`: etcd-style KV with history (put, range, delete, txn,
//!     history, compact).
//!   - `esf.v1.Lease`: leases (keys and registry instances that expire
//!     unless kept alive).
//!   - `esf.v1.Registry`: service registry (instances bound to leases).
//!   - `esf.v1.Events`: event store (append, read, subscribe).
//!   - `esf.v1.Auth`: users, roles, permissions, tokens.
//!   - `esf.v1.Cluster`: members, status, membership changes, leader transfer.
//!   - `esf.v1.RaftTransport`: node-to-node Raft RPCs for every group,
//!     multiplexed on one channel per peer (internal; not for applications).
//! - [`wire`]: metadata keys, size limits, the stream-to-partition hash,
//!   endpoint syntax, and the classification of a broken connection.
//! - [`uuid`]: the text form of event ids.
//! - Typed constructors of the requests that are awkward as literals
//!   (`KeyRange::prefix`, `PutRequest::new(..).with_lease(..)`,
//!   `DeleteRequest::of`, `RangeRequest::of`, `WatchRequest::of`).
//!
//! It holds no client or server logic: no retries, no routing, no I/O.

#![warn(missing_docs)]

mod builders;
pub mod uuid;
pub mod wire;

/// Generated types and services of package `esf.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("esf.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/esf_descriptor.bin"));
