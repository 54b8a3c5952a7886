//! esf-node: the ESF node (`esf serve`) and its command-line client, as a
//! library the `esf` binary runs (and tests can start in-process).
//!
//! # Layers
//!
//! Imports point one way, down this list; nothing imports a layer above
//! its own (`scripts/check-layers.sh` checks it in CI):
//!
//! ```text
//! main.rs ─► cli/ ─► node.rs ─► api/, admin.rs            (entry, wiring, adapters)
//!                                  │
//!                                  ▼
//!          kv/  events/  registry  subscriptions  audit   (domain: typed calls
//!          cluster/  backup/  gossip/  health/             that handlers and
//!                                  │                       background tasks share)
//!                                  ▼
//!          context  error  keyspace  convert  identity    (shared ground)
//!          config  disk  net/  telemetry/
//! ```
//!
//! - Shared ground: [`context`] (the node's state and how to call a
//!   peer), [`error`] (the node's error type and THE mapping to gRPC
//!   status), [`keyspace`] (reserved meta keys and streams), [`convert`]
//!   (proto <-> raft types), [`identity`] (the data dir's owner),
//!   [`config`], [`disk`] (free space of the data dir and the floor
//!   below which the node steps back), [`net`] (peer channels, the Raft
//!   transport's client), [`telemetry`] (the metrics recorder and what
//!   it records).
//! - Domain: [`kv`] (watch engine), [`events`] (routing to partition
//!   replicas and leaders, feeds, queries, retention, field indexes),
//!   [`registry`] (and [`registry_health`], the instances' health checks), [`subscriptions`], [`audit`] (the audit relay),
//!   [`cluster`] (membership, formation, placement, the partition
//!   reconciler, leader log, the disk check loop), [`backup`] (the snapshot file and serving
//!   it). Domain functions return [`error::Error`]; they never build a
//!   gRPC status.
//! - [`gossip`] (chitchat over signed UDP: liveness and each node's
//!   published state), [`health`] (node checks and the aggregated view
//!   of the cluster) are domain too.
//! - Adapters: [`api`] (the gRPC services, forwarding to leaders; the
//!   only place requests and responses of tonic appear, besides the
//!   peer calls the domain makes), [`admin`] (HTTP health and metrics).
//! - Wiring: [`node`] (start, serve, shut down), [`cli`] (the `esf`
//!   commands).
//!
//! # Where a new feature goes
//!
//! A feature is one file (or folder) per layer: its records and rules in
//! a domain module (a new reserved key area in [`keyspace`]), its gRPC
//! service in `api/`, its command in `cli/`, its task started in
//! [`node`]. Gossip, health and failover go in `cluster/` (`gossip.rs`,
//! `health.rs`, `failover.rs`); TLS is in `net/tls*.rs`, users and
//! permissions in [`auth`] (callers, tokens, passwords) with the request
//! guard in `api/guard.rs` and the rules' state in `esf_raft::meta::auth`;
//! metrics and the performance monitor in a `telemetry/` folder;
//! jobs in a `jobs/` domain folder.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod context;
pub mod convert;
pub mod disk;
pub mod error;
pub mod events;
pub mod gossip;
pub mod health;
pub mod identity;
pub mod keyspace;
pub mod kv;
pub mod net;
pub mod node;
pub mod registry;
pub mod registry_health;
pub mod subscriptions;
pub mod telemetry;
