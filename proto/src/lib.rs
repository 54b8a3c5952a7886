//! esf-proto: ESF's gRPC API, generated from `proto/esf/v1/*.proto` at build
//! time with protox (no `protoc` needed).
//!
//! - `esf.v1.Config`: etcd-style KV with history (put, range, delete, txn,
//!   history, compact).
//! - `esf.v1.Lease`: leases (keys and registry instances that expire
//!   unless kept alive).
//! - `esf.v1.Registry`: service registry (instances bound to leases).
//! - `esf.v1.Events`: event store (append, read, subscribe).
//! - `esf.v1.Cluster`: members, status, membership changes, leader transfer.
//! - `esf.v1.RaftTransport`: node-to-node Raft RPCs for every group,
//!   multiplexed on one channel per peer (internal; not for applications).

#![allow(missing_docs, clippy::all)]

/// Generated types and services of package `esf.v1`.
pub mod v1 {
    tonic::include_proto!("esf.v1");
}

/// Encoded `FileDescriptorSet` of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/esf_descriptor.bin"));
