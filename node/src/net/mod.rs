//! Node-to-node networking: the peer channel pool ([`peer_pool`]) and the
//! client side of the Raft transport ([`raft_network`], openraft's
//! `RaftNetworkV2` over tonic). The server side of the transport is
//! `api/raft.rs`.

pub mod peer_auth;
pub mod peer_pool;
pub mod raft_network;
