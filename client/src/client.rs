//! The [`Client`] handle: its endpoints, settings and shared state.
//!
//! Making a client does no I/O: endpoints are parsed, channels come on
//! first use. The handle is an `Arc`; clones share endpoints, channels,
//! the cluster pin, the session and the partition map. The operations
//! live in the modules of their service (`kv`, `lease`, `events`, ...);
//! how a call is tried is in `call`, where it goes in `routing`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::call::Sessions;
use crate::endpoint::{ClusterPin, Node, node_uri};
use crate::routing::PartitionMap;
use crate::{ClientOptions, Error, Result};

/// A connection to an ESF cluster. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// State every clone of a [`Client`] shares.
pub(crate) struct Inner {
    /// The pinned cluster id (see [`ClientOptions::cluster_id`]).
    pub(crate) cluster: ClusterPin,
    /// Where each event partition's leader is, once asked.
    pub(crate) partitions: Mutex<Option<PartitionMap>>,
    /// The endpoints given, then the addresses learned (never removed).
    pub(crate) nodes: Mutex<Vec<Arc<Node>>>,
    /// Index in `nodes` of the endpoint tried first.
    pub(crate) preferred: Mutex<usize>,
    pub(crate) opts: ClientOptions,
    /// The write session (client id and sequence numbers).
    pub(crate) sessions: Sessions,
    /// Held while logging in, so concurrent calls share one login.
    pub(crate) login_lock: tokio::sync::Mutex<()>,
}

impl Client {
    /// A client for `endpoints` (`host:port` or `http://host:port`). Does not
    /// connect until the first call.
    pub fn new<S: AsRef<str>>(endpoints: &[S], opts: ClientOptions) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        let nodes = endpoints
            .iter()
            .map(|e| node_uri(e.as_ref(), &opts).map(Node::new))
            .collect::<Result<Vec<_>>>()?;
        // Bad TLS settings fail here, not at the first call.
        crate::endpoint::check_tls(&nodes[0].uri, &opts)?;
        Ok(Client {
            inner: Arc::new(Inner {
                cluster: ClusterPin::new(opts.cluster_id.clone()),
                partitions: Mutex::new(None),
                nodes: Mutex::new(nodes),
                preferred: Mutex::new(0),
                opts,
                sessions: Sessions::new(),
                login_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// This client's session id.
    pub fn client_id(&self) -> u64 {
        self.inner.sessions.client_id()
    }

    /// Endpoint URIs, in order (the given ones, then those learned).
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .nodes
            .lock()
            .expect("nodes lock poisoned")
            .iter()
            .map(|n| n.uri.clone())
            .collect()
    }

    /// The cluster this client is pinned to (once one answered).
    pub fn cluster_id(&self) -> Option<String> {
        self.inner.cluster.get()
    }

    /// Per-attempt deadline, for callers reading streams.
    pub fn request_timeout(&self) -> Duration {
        self.inner.opts.request_timeout
    }
}
