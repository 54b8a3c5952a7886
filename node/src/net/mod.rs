//! Node-to-node networking: the peer channel pool ([`peer_pool`]) and the
//! client side of the Raft transport ([`raft_network`], openraft's
//! `RaftNetworkV2` over tonic), and TLS ([`tls`]: the node's server and
//! peer settings, reloaded from their files by [`tls_reload`], served
//! through [`tls_accept`]). The server side of the transport is
//! `api/raft.rs`.

pub mod peer_auth;
pub mod peer_pool;
pub mod raft_network;
pub mod tls;
pub mod tls_accept;
pub mod tls_reload;
