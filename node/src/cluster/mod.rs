//! The cluster as a whole: who is a member ([`membership`]), how a
//! cluster forms and a node leaves ([`formation`]), where partition
//! replicas go ([`placement`], a pure plan) and how they get there
//! ([`partitions`], the reconciler), and which leader each group had per
//! term ([`leaders`]); a node low on disk steps back ([`disk_watch`]); a
//! removed node learns it was ([`removal`]).
//! Every change to the cluster is carried out through
//! Raft. Gossip, health aggregation and failover belong here too.

pub mod autopilot;
pub mod disk_watch;
pub mod formation;
pub mod leaders;
pub mod membership;
pub mod partitions;
pub mod placement;
pub mod removal;
