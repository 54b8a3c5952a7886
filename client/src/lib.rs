//! esf-client: the library applications, the `esf` CLI, the tests and the
//! benchmarks use to talk to an ESF cluster.
//!
//! - Connects lazily to a list of endpoints (one multiplexed HTTP/2 channel
//!   per node) and fails over past dead ones.
//! - Follows the leader: a node that is not the leader answers UNAVAILABLE
//!   with the leader's address in metadata (or forwards the write itself);
//!   the client moves to that address.
//! - Every call has a deadline per attempt (`request_timeout`) and an overall
//!   retry deadline (`retry_deadline`); retries back off with jitter and
//!   happen only for retryable errors ([`Error::is_retryable`]).
//! - Writes carry a session `(client_id, seq)`, reused across retries, so a
//!   retried write whose first attempt did commit is applied once.
//! - Watches and subscriptions can resume on another node from where they
//!   were ([`ResumableWatch`], [`ResumableSubscription`], [`GroupConsumer`];
//!   each is also a `futures::Stream`).
//!
//! Modules, one concern each:
//!
//! | module | holds |
//! |---|---|
//! | `client` | the [`Client`] handle and its shared state |
//! | `options` | [`ClientOptions`] and the default deadlines |
//! | `error` | [`Error`], the gRPC status mapping, [`LeaderHint`] |
//! | `endpoint` | endpoint parsing, one lazy channel per node, the cluster pin, the service-stub constructor |
//! | `call` | the one retry/failover loop, write sessions |
//! | `routing` | preferred endpoint, leader following, the partition-leader map |
//! | `kv`, `lease`, `registry`, `events`, `subscriptions`, `cluster` | the operations of each gRPC service |
//! | `resume` | the one reopen loop behind the resumable streams |
//! | `watch` | [`ResumableWatch`] over config and registry watches |
//! | `consumer` | [`GroupConsumer`] |
//!
//! The wire contract shared with the node (metadata keys, size limit,
//! [`partition_of`], [`uuid`], transport-failure classification) lives in
//! [`esf_proto::wire`] and is re-exported here. It depends on neither
//! RocksDB nor openraft.

mod auth;
mod call;
mod client;
mod cluster;
mod consumer;
mod endpoint;
mod error;
mod events;
mod kv;
mod lease;
mod options;
mod registry;
mod resume;
mod routing;
mod subscriptions;
mod watch;

pub use auth::permission;
pub use call::MAX_BACKOFF;
pub use client::Client;
pub use consumer::GroupConsumer;
pub use endpoint::parse_endpoint;
pub use error::{Error, LeaderHint, Result};
pub use esf_proto::uuid;
pub use esf_proto::v1 as pb;
pub use esf_proto::wire::{
    CLUSTER_ID_METADATA, FORWARDED_METADATA, LEADER_ADDR_METADATA, LEADER_ID_METADATA, MAX_RESPONSE_BYTES, partition_of,
};
pub use kv::{key_range_key, key_range_prefix};
pub use options::{
    ClientOptions, Credentials, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_DEADLINE, TlsIdentity,
};
pub use resume::WATCH_MAX_REOPENS;
pub use routing::PARTITION_MAP_TTL;
pub use subscriptions::ResumableSubscription;
/// The stream type of one-shot watches and subscriptions.
pub use tonic::Streaming;
pub use watch::{ResumableWatch, WatchRequest};
