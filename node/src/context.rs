//! The node's shared state ([`Ctx`]), handed to the gRPC services and to
//! every background task, and the pieces of calling another node that
//! both need: one constructor for a peer's gRPC stub ([`Ctx::peer`]),
//! where a request came from ([`Origin`]), and the leader a refused
//! request may be forwarded to ([`Ctx::forward_target`]).
//!
//! Not here: what the services do (the domain folders) or how requests
//! are answered (`api/`). This module imports neither.

use std::sync::Arc;

use esf_proto::v1 as pb;
use esf_proto::wire::MAX_RESPONSE_BYTES;
use esf_raft::command::{Command, OpResult};
use esf_raft::group::MetaGroup;
use esf_raft::openraft::async_runtime::WatchReceiver;
use tonic::Request;
use tonic::transport::Channel;

use crate::cluster::leaders::LeaderLog;
use crate::cluster::partitions::{Partitions, Routes};
use crate::error::{Error, Result};
use crate::net::peer_pool::{ClusterId, PeerPool};

/// Metadata that marks a request one node forwarded to another: it is
/// served where it lands and never forwarded again. Only a node sets it.
pub use esf_proto::wire::FORWARDED_METADATA;

/// Shared state of the services and background tasks.
#[derive(Clone)]
pub struct Ctx {
    /// Set once this node learned it was removed from the cluster (why):
    /// it then refuses every request (`cluster::removal`).
    pub removed: Arc<std::sync::OnceLock<String>>,
    /// Free space of the data dir: while low, writes this node leads are
    /// refused and it leads nothing.
    pub disk: Arc<crate::disk::DiskGuard>,
    /// Becomes true when the node stops: open watches and subscriptions
    /// end with a cancel, background tasks return.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The meta group (config, leases, registry, subscriptions, placement).
    pub meta: Arc<MetaGroup>,
    /// Event partitions (group `g` is `partitions[g - 1]`).
    pub partitions: Partitions,
    /// The cluster's partition count once meta has it (it never changes
    /// after; read once instead of on every events request).
    pub recorded_partitions: Arc<std::sync::OnceLock<u32>>,
    /// Where partitions live, as of the reconciler's last pass.
    pub routes: Arc<Routes>,
    /// Replicas of each partition (`--partition-replicas`).
    pub partition_replicas: u32,
    /// The leaders each group saw, per term.
    pub leaders: Arc<LeaderLog>,
    /// One lazily connected channel per peer address.
    pub pool: PeerPool,
    /// The cluster this node belongs to (empty until it joins one).
    pub cluster_id: ClusterId,
    /// The address other nodes and clients reach this node at.
    pub advertise: String,
    /// This binary's version.
    pub version: &'static str,
    /// One backup snapshot served at a time by this node (each holds the
    /// meta group's encoded state in memory while it streams).
    pub snapshots_in_progress: Arc<tokio::sync::Semaphore>,
    /// How long the tokens this node issues stay valid.
    pub auth_token_ttl: std::time::Duration,
    /// Connections must present a verified client certificate
    /// (`--client-cert-auth`): its common name names the user of a request
    /// without a token.
    pub client_cert_auth: bool,
    /// When each registry instance's ttl check was last updated, as the
    /// meta leader saw it (crate::registry_health).
    pub ttl_checks: Arc<TtlClock>,
}

/// When each registry instance's ttl check was last updated: kept by the
/// meta leader, cleared when it stops leading (crate::registry_health).
#[derive(Default)]
pub struct TtlClock(std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>);

impl TtlClock {
    /// Notes an update of `i`'s ttl check now.
    pub fn updated(&self, i: &esf_proto::v1::Instance) {
        self.lock()
            .insert((i.service.clone(), i.id.clone()), std::time::Instant::now());
    }

    /// Since `i`'s last update: from `now` if none is known (a new
    /// registration, or a new leader).
    pub(crate) fn since_update(&self, i: &esf_proto::v1::Instance, now: std::time::Instant) -> std::time::Duration {
        let at = *self.lock().entry((i.service.clone(), i.id.clone())).or_insert(now);
        now.saturating_duration_since(at)
    }

    pub(crate) fn retain(&self, live: &std::collections::HashSet<(String, String)>) {
        self.lock().retain(|k, _| live.contains(k));
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), std::time::Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An application or the CLI: may be forwarded to the leader.
    Client,
    /// Another node forwarded it: served here or refused with a hint.
    Peer,
}

impl Origin {
    /// The origin of a request as its metadata says.
    pub fn of<T>(req: &Request<T>) -> Origin {
        if req.metadata().get(FORWARDED_METADATA).is_some() {
            Origin::Peer
        } else {
            Origin::Client
        }
    }
}

/// A gRPC stub for calling another node: built from a channel with the
/// response size limit every stub of the node carries.
pub trait PeerStub: Sized {
    /// The stub over `ch`.
    fn connect(ch: Channel) -> Self;
}

macro_rules! peer_stubs {
    ($($stub:ty),* $(,)?) => {$(
        impl PeerStub for $stub {
            fn connect(ch: Channel) -> Self {
                <$stub>::new(ch).max_decoding_message_size(MAX_RESPONSE_BYTES)
            }
        }
    )*};
}

peer_stubs!(
    pb::config_client::ConfigClient<Channel>,
    pb::lease_client::LeaseClient<Channel>,
    pb::cluster_client::ClusterClient<Channel>,
    pb::events_client::EventsClient<Channel>,
    pb::subscriptions_client::SubscriptionsClient<Channel>,
    pb::registry_client::RegistryClient<Channel>,
    pb::auth_client::AuthClient<Channel>,
);

impl Ctx {
    /// A stub for calling the node at `addr` (the channel connects on first
    /// use).
    pub fn peer<S: PeerStub>(&self, addr: &str) -> Result<S> {
        let ch = self
            .pool
            .channel(addr)
            .map_err(|e| Error::unavailable(format!("peer {addr}: {e}")))?;
        Ok(S::connect(ch))
    }

    /// The leader's address to forward to, if a request from `origin`
    /// refused with `e` may be forwarded (never twice, never to itself).
    pub fn forward_target(&self, origin: Origin, e: &Error) -> Option<String> {
        if origin == Origin::Peer {
            return None;
        }
        e.leader_addr().filter(|a| *a != self.advertise).map(str::to_string)
    }

    /// `msg` marked as forwarded by this node, with the proof that a node
    /// of the cluster sent it.
    pub fn forwarded<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert(FORWARDED_METADATA, "1".parse().expect("static metadata value"));
        self.pool.secret().sign(&mut r);
        r
    }

    /// Proposes `cmd` to the meta group: its header and result.
    pub async fn write(&self, cmd: Command) -> Result<(pb::ResponseHeader, OpResult)> {
        // A follower forwards (its leader's disk decides); a leader low on
        // disk refuses until its leadership has moved.
        self.disk
            .refuse_write(|| self.meta.raft().metrics().borrow_watched().clone())?;
        let (h, resp) = self.meta.write(cmd).await?;
        Ok((crate::convert::header(h), resp.result))
    }

    /// A response header at the meta group's current revision.
    pub fn meta_header(&self) -> pb::ResponseHeader {
        crate::convert::header(self.meta.header(self.meta.store().revision()))
    }

    /// The cluster id as this node knows it.
    pub fn cluster_id(&self) -> String {
        self.cluster_id.read().expect("cluster id lock").clone()
    }
}
