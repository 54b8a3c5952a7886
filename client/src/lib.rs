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
//!
//! It depends on neither RocksDB nor openraft.

mod error;

use std::collections::BTreeSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use error::{Error, Result};
pub use esf_proto::v1 as pb;
/// Event ids (moved to esf-proto, which the node and the client share).
pub use esf_proto::uuid;
use pb::cluster_client::ClusterClient;
use pb::config_client::ConfigClient;
use pb::events_client::EventsClient;
use pb::lease_client::LeaseClient;
use pb::registry_client::RegistryClient;
use pb::subscriptions_client::SubscriptionsClient;
/// The stream type of watches.
pub use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// Default deadline of one attempt.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline for establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline of a call including retries.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(15);
/// Longest pause between two rounds over the endpoints.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Largest response the client accepts (a lookup or range of many large
/// entries), bytes.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Request metadata carrying the cluster id the client talks to.
pub const CLUSTER_ID_METADATA: &str = "esf-cluster-id";

/// The cluster id a client is pinned to, sent with every request.
#[derive(Clone, Default)]
pub struct ClusterPin(Arc<Mutex<Option<String>>>);

impl ClusterPin {
    fn learn(&self, id: &str) {
        if id.is_empty() {
            return;
        }
        let mut g = self.0.lock().expect("cluster pin lock");
        if g.is_none() {
            *g = Some(id.to_string());
        }
    }

    /// The pinned id, if any yet.
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("cluster pin lock").clone()
    }
}

impl tonic::service::Interceptor for ClusterPin {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(id) = self.get() {
            if let Ok(v) = id.parse() {
                req.metadata_mut().insert(CLUSTER_ID_METADATA, v);
            }
        }
        Ok(req)
    }
}

/// A channel to one node that carries the cluster pin.
pub type PinnedChannel = tonic::service::interceptor::InterceptedService<Channel, ClusterPin>;

/// A response whose header names the answering node's cluster.
pub trait Headed {
    /// The cluster id in the response header, if it has one.
    fn cluster_id(&self) -> Option<&str>;
}

macro_rules! headed {
    ($($t:ty),* $(,)?) => {$(
        impl Headed for $t {
            fn cluster_id(&self) -> Option<&str> {
                self.header.as_ref().map(|h| h.cluster_id.as_str())
            }
        }
    )*};
}

headed!(
    pb::PutResponse,
    pb::SetRetentionResponse,
    pb::CreateIndexResponse,
    pb::DropIndexResponse,
    pb::ListIndexesResponse,
    pb::ListRetentionResponse,
    pb::RangeResponse,
    pb::DeleteResponse,
    pb::TxnResponse,
    pb::HistoryResponse,
    pb::CompactResponse,
    pb::LeaseGrantResponse,
    pb::LeaseRevokeResponse,
    pb::LeaseKeepAliveResponse,
    pb::LeaseTimeToLiveResponse,
    pb::MembersResponse,
    pb::TransferLeaderResponse,
    pb::StatusResponse,
    pb::RegisterResponse,
    pb::DeregisterResponse,
    pb::LookupResponse,
    pb::ListServicesResponse,
    pb::AppendResponse,
    pb::GetEventResponse,
    pb::ReadStreamResponse,
    pb::ReadPartitionResponse,
    pb::QueryEventsResponse,
    pb::DeleteStreamResponse,
    pb::SubscriptionResponse,
    pb::ListSubscriptionsResponse,
    pb::DeleteSubscriptionResponse,
    pb::ConsumersResponse,
    pb::ConsistencyResponse,
);

impl<T> Headed for Streaming<T> {
    fn cluster_id(&self) -> Option<&str> {
        None
    }
}

/// Metadata key carrying the leader's node id on a not-leader error.
pub const LEADER_ID_METADATA: &str = "esf-leader-id";
/// Metadata key carrying the leader's address on a not-leader error, and
/// on the answer to a meta request a node forwarded to its leader.
pub const LEADER_ADDR_METADATA: &str = "esf-leader-addr";

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one attempt on one endpoint.
    pub request_timeout: Duration,
    /// Deadline for connecting to an endpoint.
    pub connect_timeout: Duration,
    /// Deadline of a call including all retries.
    pub retry_deadline: Duration,
    /// The cluster the client must talk to. `None`: the first cluster
    /// that answers; from then on the client sends it with every request
    /// and a node of another cluster refuses (the client moves on to the
    /// next endpoint), so a stale endpoint list never reaches a different
    /// cluster.
    pub cluster_id: Option<String>,
    /// When a node answers a request it forwarded to the meta leader, its
    /// answer names that leader; send the next requests there directly
    /// (saves a hop per request). Off: stay on the endpoint that answered
    /// (tests that pin one node).
    pub follow_leader: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry_deadline: DEFAULT_RETRY_DEADLINE,
            cluster_id: None,
            follow_leader: true,
        }
    }
}

/// Parses `host:port` or `http://host:port` into a URI, with an error that
/// says what is wrong.
pub fn parse_endpoint(s: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidEndpoint {
        endpoint: s.to_string(),
        reason: reason.to_string(),
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let rest = match t.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?} is not supported (use http or none)"))),
        None => t,
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() {
        return Err(bad("host is empty"));
    }
    if host.contains('/') {
        return Err(bad("host must not contain '/'"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad(&format!("port {port:?} is not a number in 1-65535")))?;
    if port == 0 {
        return Err(bad("port must not be 0"));
    }
    Ok(format!("http://{host}:{port}"))
}

struct Node {
    uri: String,
    channel: Mutex<Option<Channel>>,
}

/// A connection to an ESF cluster. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Where each event partition's leader is, as last seen.
struct PartitionMap {
    /// Leader node id per partition (0: none), partition `p` at `p - 1`.
    leaders: Vec<u64>,
    /// Member addresses.
    addrs: std::collections::HashMap<u64, String>,
    at: std::time::Instant,
}

/// How long the client trusts its map of partition leaders before asking
/// again (a stale entry costs one forwarding hop, never correctness).
pub const PARTITION_MAP_TTL: Duration = Duration::from_secs(5);

/// The event partition (1..=count) of a stream: FNV-1a 64 of its bytes
/// modulo the count, the same on every node and client, stable across
/// versions.
pub fn partition_of(stream: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as u32 + 1
}

struct Inner {
    /// The pinned cluster id (see [`ClientOptions::cluster_id`]).
    cluster: ClusterPin,
    partitions: Mutex<Option<PartitionMap>>,
    nodes: Mutex<Vec<Arc<Node>>>,
    preferred: Mutex<usize>,
    opts: ClientOptions,
    client_id: u64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().max(1) as u64;
    Duration::from_nanos(nanos / 2 + random_u64() % (nanos / 2 + 1))
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
        let mut nodes = Vec::new();
        for e in endpoints {
            let uri = parse_endpoint(e.as_ref())?;
            nodes.push(Arc::new(Node {
                uri,
                channel: Mutex::new(None),
            }));
        }
        Ok(Client {
            inner: Arc::new(Inner {
                cluster: ClusterPin(Arc::new(Mutex::new(opts.cluster_id.clone()))),
                partitions: Mutex::new(None),
                nodes: Mutex::new(nodes),
                preferred: Mutex::new(0),
                opts,
                client_id: random_u64() | 1,
                next_seq: AtomicU64::new(1),
                in_flight: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// This client's session id.
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// Endpoint URIs, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .nodes
            .lock()
            .expect("nodes lock")
            .iter()
            .map(|n| n.uri.clone())
            .collect()
    }

    fn pinned(&self, node: &Node) -> Result<PinnedChannel> {
        Ok(tonic::service::interceptor::InterceptedService::new(
            self.channel(node)?,
            self.inner.cluster.clone(),
        ))
    }

    fn channel(&self, node: &Node) -> Result<Channel> {
        let mut guard = node.channel.lock().expect("channel lock");
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(node.uri.clone())
            .map_err(|e| Error::InvalidEndpoint {
                endpoint: node.uri.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.inner.opts.connect_timeout)
            .timeout(self.inner.opts.request_timeout)
            .tcp_nodelay(true);
        let ch = ep.connect_lazy();
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// The index of the endpoint `addr` (added if unknown).
    fn node_index(&self, addr: &str) -> Option<usize> {
        let uri = parse_endpoint(addr).ok()?;
        let mut nodes = self.inner.nodes.lock().expect("nodes lock");
        Some(match nodes.iter().position(|n| n.uri == uri) {
            Some(i) => i,
            None => {
                nodes.push(Arc::new(Node {
                    uri,
                    channel: Mutex::new(None),
                }));
                nodes.len() - 1
            }
        })
    }

    fn prefer_addr(&self, addr: &str) {
        if let Some(idx) = self.node_index(addr) {
            *self.inner.preferred.lock().expect("preferred lock") = idx;
        }
    }

    /// Runs `f` against the preferred endpoint, failing over and following
    /// leader hints until it succeeds, fails for good, or the deadline passes.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(PinnedChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
        T: Headed,
    {
        self.call_at(None, what, f).await
    }

    /// [`Client::call`], trying the endpoint `first` (if given) before the
    /// preferred one.
    async fn call_at<T, F, Fut>(&self, first: Option<&str>, what: &str, f: F) -> Result<T>
    where
        F: Fn(PinnedChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
        T: Headed,
    {
        let deadline = tokio::time::Instant::now() + self.inner.opts.retry_deadline;
        let mut tried_this_round = 0usize;
        let mut round = 0u32;
        let mut last;
        let mut first = first.and_then(|a| self.node_index(a));
        loop {
            let (idx, node, n) = {
                let nodes = self.inner.nodes.lock().expect("nodes lock");
                let preferred = *self.inner.preferred.lock().expect("preferred lock");
                let idx = first.take().unwrap_or(preferred) % nodes.len();
                (idx, nodes[idx].clone(), nodes.len())
            };
            let status = match self.pinned(&node) {
                Ok(ch) => match tokio::time::timeout(self.inner.opts.request_timeout, f(ch)).await {
                    Ok(Ok(resp)) => {
                        if self.inner.opts.follow_leader {
                            if let Some(addr) = resp.metadata().get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok())
                            {
                                self.prefer_addr(addr);
                            }
                        }
                        let resp = resp.into_inner();
                        if let Some(id) = resp.cluster_id() {
                            self.inner.cluster.learn(id);
                        }
                        return Ok(resp);
                    }
                    Ok(Err(s)) => s,
                    Err(_) => tonic::Status::deadline_exceeded(format!(
                        "no answer within {:?}",
                        self.inner.opts.request_timeout
                    )),
                },
                Err(e) => return Err(e),
            };
            let err = Error::from_status(&status);
            if !err.is_retryable() {
                return Err(err);
            }
            last = format!("{}: {}", node.uri, status.message());
            tracing::debug!(endpoint = %node.uri, code = ?status.code(), "retrying {what}");
            let hint = status
                .metadata()
                .get(LEADER_ADDR_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match hint {
                Some(addr) if parse_endpoint(&addr).ok().as_deref() != Some(node.uri.as_str()) => {
                    self.prefer_addr(&addr)
                }
                _ => {
                    // Drop a broken channel so the next attempt reconnects.
                    if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
                        *node.channel.lock().expect("channel lock") = None;
                    }
                    *self.inner.preferred.lock().expect("preferred lock") = (idx + 1) % n;
                }
            }
            tried_this_round += 1;
            if tried_this_round >= n {
                tried_this_round = 0;
                round += 1;
                let backoff = jitter((Duration::from_millis(50) * 2u32.saturating_pow(round.min(5))).min(MAX_BACKOFF));
                if tokio::time::Instant::now() + backoff >= deadline {
                    return Err(Error::Unavailable(format!(
                        "{what}: no endpoint succeeded within {:?}; last: {last}",
                        self.inner.opts.retry_deadline
                    )));
                }
                // Retry pacing between rounds over every endpoint.
                tokio::time::sleep(backoff).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "{what}: no endpoint succeeded within {:?}; last: {last}",
                    self.inner.opts.retry_deadline
                )));
            }
        }
    }

    fn begin_write(&self) -> pb::Session {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        let mut inflight = self.inner.in_flight.lock().expect("in-flight lock");
        inflight.insert(seq);
        let acked_below = *inflight.iter().next().expect("just inserted");
        pb::Session {
            client_id: self.inner.client_id,
            seq,
            acked_below,
        }
    }

    fn end_write(&self, s: &pb::Session) {
        self.inner.in_flight.lock().expect("in-flight lock").remove(&s.seq);
    }

    async fn write<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(PinnedChannel, pb::Session) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
        T: Headed,
    {
        let session = self.begin_write();
        let r = self.call(what, |ch| f(ch, session)).await;
        self.end_write(&session);
        r
    }

    // ------------------------------------------------------------ config

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<pb::PutResponse> {
        self.put_with(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    /// Put with every option.
    pub async fn put_with(&self, req: pb::PutRequest) -> Result<pb::PutResponse> {
        self.write("put", |ch, s| {
            let mut r = req.clone();
            r.session = Some(s);
            async move {
                ConfigClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .put(r)
                    .await
            }
        })
        .await
    }

    /// Current value of `key` (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<(pb::ResponseHeader, Option<pb::KeyValue>)> {
        let req = pb::RangeRequest {
            range: Some(key_range_key(key.into())),
            ..Default::default()
        };
        let resp = self.range(req).await?;
        Ok((resp.header.unwrap_or_default(), resp.kvs.into_iter().next()))
    }

    /// Range read.
    pub async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse> {
        self.call("range", |ch| {
            let r = req.clone();
            async move {
                ConfigClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .range(r)
                    .await
            }
        })
        .await
    }

    /// Delete a key or range.
    pub async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        self.write("delete", |ch, s| {
            let mut r = req.clone();
            r.session = Some(s);
            async move {
                ConfigClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .delete(r)
                    .await
            }
        })
        .await
    }

    /// Transaction.
    pub async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.write("txn", |ch, s| {
            let mut r = req.clone();
            r.session = Some(s);
            async move {
                ConfigClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .txn(r)
                    .await
            }
        })
        .await
    }

    /// Versions of a key.
    pub async fn history(&self, req: pb::HistoryRequest) -> Result<pb::HistoryResponse> {
        self.call("history", |ch| {
            let r = req.clone();
            async move {
                ConfigClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .history(r)
                    .await
            }
        })
        .await
    }

    /// Compacts history below `revision`.
    pub async fn compact(&self, revision: u64) -> Result<pb::CompactResponse> {
        self.write("compact", |ch, s| {
            let r = pb::CompactRequest {
                revision,
                session: Some(s),
            };
            async move {
                ConfigClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .compact(r)
                    .await
            }
        })
        .await
    }

    /// Opens a watch on the first endpoint that answers. The stream ends
    /// (or yields an error) if that node goes away: resume with
    /// `start_revision` = last header revision + 1 (see [`Client::watch_from`]).
    pub async fn watch(&self, req: pb::WatchRequest) -> Result<tonic::Streaming<pb::WatchResponse>> {
        self.call("watch", |ch| {
            let r = req.clone();
            async move {
                ConfigClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .watch(r)
                    .await
            }
        })
        .await
    }

    /// A watch that survives the loss of its node: see [`ResumableWatch`].
    pub async fn watch_resumable(&self, mut req: pb::WatchRequest) -> Result<ResumableWatch> {
        if req.start_revision == 0 {
            // "From now" must mean one fixed revision, or a resume could skip
            // changes made before the first response.
            let r = self
                .range(pb::RangeRequest {
                    range: req.range.clone(),
                    count_only: true,
                    ..Default::default()
                })
                .await?;
            req.start_revision = r.header.map_or(0, |h| h.revision) + 1;
        }
        Ok(ResumableWatch::new(self.clone(), req))
    }

    /// The request that resumes a watch after a response with header
    /// revision `delivered`: every change up to it was seen.
    pub fn watch_from(req: &pb::WatchRequest, delivered: u64) -> pb::WatchRequest {
        pb::WatchRequest {
            start_revision: delivered + 1,
            ..req.clone()
        }
    }

    // ------------------------------------------------------------- leases

    /// Grants a lease of `ttl_secs` seconds (`id` 0: the cluster picks one).
    pub async fn lease_grant(&self, ttl_secs: u64, id: u64) -> Result<pb::LeaseGrantResponse> {
        self.write("lease grant", |ch, s| {
            let r = pb::LeaseGrantRequest {
                ttl_secs,
                id,
                session: Some(s),
            };
            async move {
                LeaseClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .grant(r)
                    .await
            }
        })
        .await
    }

    /// Revokes a lease, deleting its keys.
    pub async fn lease_revoke(&self, id: u64) -> Result<pb::LeaseRevokeResponse> {
        self.write("lease revoke", |ch, s| {
            let r = pb::LeaseRevokeRequest { id, session: Some(s) };
            async move {
                LeaseClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .revoke(r)
                    .await
            }
        })
        .await
    }

    /// Restarts a lease's countdown (call it well within the TTL, e.g. every
    /// third of it).
    pub async fn lease_keepalive(&self, id: u64) -> Result<pb::LeaseKeepAliveResponse> {
        self.call("lease keepalive", |ch| {
            let r = pb::LeaseKeepAliveRequest { id };
            async move {
                LeaseClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .keep_alive(r)
                    .await
            }
        })
        .await
    }

    /// Keeps lease `id` alive over a `KeepAliveStream` at the leader,
    /// renewing every third of its TTL and calling `on_renewed` after each
    /// renewal. Reopens at the new leader when its node fails or stops
    /// leading. Returns `NotFound` once the lease is gone (expired or
    /// revoked), or an error if no leader answers within the retry deadline.
    /// Runs until then: drop (or abort) the future to stop keeping it alive.
    pub async fn lease_keep_alive_forever(
        &self,
        id: u64,
        mut on_renewed: impl FnMut(&pb::LeaseKeepAliveResponse),
    ) -> Result<()> {
        loop {
            let sender: Arc<Mutex<Option<tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>>>> = Arc::default();
            let slot = sender.clone();
            let mut responses = self
                .call("lease keepalive stream", move |ch| {
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    *slot.lock().expect("keepalive sender lock") = Some(tx);
                    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
                    async move {
                        LeaseClient::new(ch)
                            .max_decoding_message_size(MAX_RESPONSE_BYTES)
                            .keep_alive_stream(requests)
                            .await
                    }
                })
                .await?;
            let Some(tx) = sender.lock().expect("keepalive sender lock").take() else {
                continue;
            };
            loop {
                if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                match tokio::time::timeout(self.inner.opts.request_timeout, responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl_secs == 0 => {
                        return Err(Error::NotFound(format!("lease {id} not found (expired or revoked)")));
                    }
                    Ok(Ok(Some(r))) => {
                        on_renewed(&r);
                        // Renewal cadence: a third of the TTL leaves two
                        // renewals of slack before expiry.
                        tokio::time::sleep(Duration::from_millis((r.ttl_secs * 1000 / 3).max(100))).await;
                    }
                    Ok(Err(s)) => {
                        let err = Error::from_status(&s);
                        if !err.is_retryable() {
                            return Err(err);
                        }
                        tracing::info!(lease = id, error = %s.message(), "keepalive stream lost; reopening");
                        break;
                    }
                    Ok(Ok(None)) | Err(_) => {
                        tracing::info!(lease = id, "keepalive stream ended; reopening");
                        break;
                    }
                }
            }
        }
    }

    /// Granted TTL, time left, and optionally the attached keys.
    pub async fn lease_ttl(&self, id: u64, keys: bool) -> Result<pb::LeaseTimeToLiveResponse> {
        self.call("lease ttl", |ch| {
            let r = pb::LeaseTimeToLiveRequest { id, keys };
            async move {
                LeaseClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .time_to_live(r)
                    .await
            }
        })
        .await
    }

    /// Opens the stream of a snapshot file of the cluster, served by the
    /// leader (the call follows the leader hint). Read each chunk within a
    /// deadline: the stream has none of its own.
    pub async fn snapshot(&self) -> Result<Streaming<pb::BackupChunk>> {
        self.call("snapshot", |ch| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .snapshot(pb::BackupRequest {})
                .await
        })
        .await
    }

    /// The cluster this client is pinned to (once one answered).
    pub fn cluster_id(&self) -> Option<String> {
        self.inner.cluster.get()
    }

    /// Per-attempt deadline, for callers reading streams.
    pub fn request_timeout(&self) -> Duration {
        self.inner.opts.request_timeout
    }

    // ------------------------------------------------------------- events

    /// Appends `events` to `stream` atomically (`expected`: the stream's
    /// version check, `None` for any). Events without an id get a random
    /// one before the first attempt, so a retried append (by this call or
    /// by the caller with the same ids) is applied once.
    pub async fn append(
        &self,
        stream: &str,
        mut events: Vec<pb::EventData>,
        expected: Option<pb::ExpectedVersion>,
    ) -> Result<pb::AppendResponse> {
        for e in &mut events {
            if e.id.is_empty() {
                e.id = uuid::format(&uuid::new_v4());
            }
        }
        let req = pb::AppendRequest {
            stream: stream.to_string(),
            events,
            expected,
        };
        // Straight to the partition's leader when known (else any node
        // forwards it there).
        let leader = self.partition_leader(stream).await;
        let r = self
            .call_at(leader.as_deref(), "append", |ch| {
                let r = req.clone();
                async move {
                    EventsClient::new(ch)
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .append(r)
                        .await
                }
            })
            .await?;
        // The answer comes from the leader (a forwarded append too): learn it.
        if let Some(h) = &r.header {
            self.learn_partition_leader(r.partition, h.node_id);
        }
        Ok(r)
    }

    /// The address of the leader of `stream`'s partition, from a map
    /// refreshed every [`PARTITION_MAP_TTL`] (`None` if unknown).
    async fn partition_leader(&self, stream: &str) -> Option<String> {
        let fresh = {
            let map = self.inner.partitions.lock().expect("partition map lock");
            map.as_ref().is_some_and(|m| m.at.elapsed() < PARTITION_MAP_TTL)
        };
        if !fresh {
            self.refresh_partition_map().await;
        }
        let map = self.inner.partitions.lock().expect("partition map lock");
        let m = map.as_ref()?;
        let p = partition_of(stream, m.leaders.len() as u32);
        let leader = m.leaders[p as usize - 1];
        m.addrs.get(&leader).cloned()
    }

    /// Asks one node for every group's leader and every member's address.
    async fn refresh_partition_map(&self) {
        let status = self
            .call("status", |ch| async move {
                ClusterClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .status(pb::StatusRequest {})
                    .await
            })
            .await;
        let members = self.members().await;
        let mut map = self.inner.partitions.lock().expect("partition map lock");
        match (status, members) {
            (Ok(s), Ok(m)) if s.groups.len() > 1 => {
                *map = Some(PartitionMap {
                    leaders: s.groups.iter().skip(1).map(|g| g.leader_id).collect(),
                    addrs: m.members.iter().map(|m| (m.id, m.addr.clone())).collect(),
                    at: std::time::Instant::now(),
                });
            }
            // Unknown for now: appends go to any node, which forwards.
            _ => {
                if let Some(m) = map.as_mut() {
                    m.at = std::time::Instant::now();
                }
            }
        }
    }

    fn learn_partition_leader(&self, partition: u32, node: u64) {
        let mut map = self.inner.partitions.lock().expect("partition map lock");
        if let Some(m) = map.as_mut() {
            if let Some(slot) = m.leaders.get_mut((partition as usize).wrapping_sub(1)) {
                *slot = node;
            }
        }
    }

    /// The event with `id` (give its stream if known: one partition is
    /// asked instead of all).
    pub async fn get_event(&self, id: &str, stream: &str) -> Result<pb::GetEventResponse> {
        let req = pb::GetEventRequest {
            id: id.to_string(),
            stream: stream.to_string(),
            ..Default::default()
        };
        self.call("get event", |ch| {
            let r = req.clone();
            async move {
                EventsClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .get(r)
                    .await
            }
        })
        .await
    }

    /// A stream's events.
    pub async fn read_stream(&self, req: pb::ReadStreamRequest) -> Result<pb::ReadStreamResponse> {
        self.call("read stream", |ch| {
            let r = req.clone();
            async move {
                EventsClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .read_stream(r)
                    .await
            }
        })
        .await
    }

    /// A partition's events from an offset.
    pub async fn read_partition(&self, req: pb::ReadPartitionRequest) -> Result<pb::ReadPartitionResponse> {
        self.call("read partition", |ch| {
            let r = req.clone();
            async move {
                EventsClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .read_partition(r)
                    .await
            }
        })
        .await
    }

    /// A page of events matching a query, across partitions; pass the
    /// response's cursor back (same filters) for the next page.
    pub async fn query_events(&self, req: pb::QueryEventsRequest) -> Result<pb::QueryEventsResponse> {
        self.call("query events", |ch| {
            let r = req.clone();
            async move {
                EventsClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .query(r)
                    .await
            }
        })
        .await
    }

    /// Tombstones a stream.
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: Option<pb::ExpectedVersion>,
    ) -> Result<pb::DeleteStreamResponse> {
        let req = pb::DeleteStreamRequest {
            stream: stream.to_string(),
            expected,
        };
        self.call("delete stream", |ch| {
            let r = req.clone();
            async move {
                EventsClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .delete_stream(r)
                    .await
            }
        })
        .await
    }

    /// Sets the retention rule of `rule.stream_prefix` (both limits 0:
    /// removes it). Idempotent, so retried like a read.
    pub async fn set_retention(&self, rule: pb::RetentionRule) -> Result<pb::SetRetentionResponse> {
        let req = pb::SetRetentionRequest { rule: Some(rule) };
        self.call("set retention", |ch| {
            let r = req.clone();
            async move { EventsClient::new(ch).set_retention(r).await }
        })
        .await
    }

    /// Declares an index on a JSON field (dotted path) of event data.
    pub async fn create_index(&self, field: &str) -> Result<pb::CreateIndexResponse> {
        let req = pb::CreateIndexRequest { field: field.into() };
        self.call("create index", |ch| {
            let r = req.clone();
            async move { EventsClient::new(ch).create_index(r).await }
        })
        .await
    }

    /// Drops a declared field index.
    pub async fn drop_index(&self, field: &str) -> Result<pb::DropIndexResponse> {
        let req = pb::DropIndexRequest { field: field.into() };
        self.call("drop index", |ch| {
            let r = req.clone();
            async move { EventsClient::new(ch).drop_index(r).await }
        })
        .await
    }

    /// The declared field indexes and how far each partition the answering
    /// node holds has built them.
    pub async fn list_indexes(&self) -> Result<pb::ListIndexesResponse> {
        self.call("list indexes", |ch| async move {
            EventsClient::new(ch).list_indexes(pb::ListIndexesRequest {}).await
        })
        .await
    }

    /// The retention rules in force.
    pub async fn list_retention(&self) -> Result<pb::ListRetentionResponse> {
        self.call("list retention", |ch| async move {
            EventsClient::new(ch)
                .list_retention(pb::ListRetentionRequest { serializable: false })
                .await
        })
        .await
    }

    /// Opens a subscription on the first endpoint that answers.
    pub async fn subscribe(&self, req: pb::SubscribeRequest) -> Result<Streaming<pb::SubscribeResponse>> {
        self.call("subscribe", |ch| {
            let r = req.clone();
            async move {
                EventsClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .subscribe(r)
                    .await
            }
        })
        .await
    }

    /// A subscription that survives the loss of its node: see
    /// [`ResumableSubscription`].
    pub fn subscribe_resumable(&self, req: pb::SubscribeRequest) -> ResumableSubscription {
        ResumableSubscription {
            client: self.clone(),
            req,
            next: None,
            stream: None,
            failures: 0,
        }
    }

    /// Creates a durable named subscription.
    pub async fn create_subscription(
        &self,
        name: &str,
        event_type: &str,
        stream_prefix: &str,
        from_now: bool,
    ) -> Result<pb::SubscriptionResponse> {
        let req = pb::CreateSubscriptionRequest {
            name: name.into(),
            r#type: event_type.into(),
            stream_prefix: stream_prefix.into(),
            from_now,
        };
        self.call("create subscription", |ch| {
            let r = req.clone();
            async move { SubscriptionsClient::new(ch).create(r).await }
        })
        .await
    }

    /// A durable subscription and its positions.
    pub async fn get_subscription(&self, name: &str) -> Result<pb::SubscriptionResponse> {
        let req = pb::SubscriptionNameRequest { name: name.into() };
        self.call("get subscription", |ch| {
            let r = req.clone();
            async move { SubscriptionsClient::new(ch).get(r).await }
        })
        .await
    }

    /// Every durable subscription.
    pub async fn list_subscriptions(&self) -> Result<pb::ListSubscriptionsResponse> {
        self.call("list subscriptions", |ch| async move {
            SubscriptionsClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .list(pb::ListSubscriptionsRequest {})
                .await
        })
        .await
    }

    /// Deletes a durable subscription.
    pub async fn delete_subscription(&self, name: &str) -> Result<pb::DeleteSubscriptionResponse> {
        let req = pb::SubscriptionNameRequest { name: name.into() };
        self.call("delete subscription", |ch| {
            let r = req.clone();
            async move { SubscriptionsClient::new(ch).delete(r).await }
        })
        .await
    }

    /// Records that every event before `next_offsets[p]` in partition `p`
    /// was processed (positions never move back).
    pub async fn ack(
        &self,
        name: &str,
        next_offsets: &std::collections::BTreeMap<u32, u64>,
    ) -> Result<pb::SubscriptionResponse> {
        let req = pb::AckRequest {
            name: name.into(),
            next_offsets: next_offsets.clone().into_iter().collect(),
        };
        self.call("ack", |ch| {
            let r = req.clone();
            async move { SubscriptionsClient::new(ch).ack(r).await }
        })
        .await
    }

    /// Adds consumer `consumer_id` ("" for a generated id) to the consumer
    /// group of subscription `name` while lease `lease_id` lives.
    pub async fn join_consumers(&self, name: &str, consumer_id: &str, lease_id: u64) -> Result<pb::ConsumersResponse> {
        let req = pb::JoinRequest {
            name: name.into(),
            lease_id,
            consumer_id: consumer_id.into(),
        };
        self.call("join", |ch| {
            let r = req.clone();
            async move { SubscriptionsClient::new(ch).join(r).await }
        })
        .await
    }

    /// Removes consumer `consumer_id` from the group of subscription `name`.
    pub async fn leave_consumers(&self, name: &str, consumer_id: &str) -> Result<pb::ConsumersResponse> {
        let req = pb::LeaveRequest {
            name: name.into(),
            consumer_id: consumer_id.into(),
        };
        self.call("leave", |ch| {
            let r = req.clone();
            async move { SubscriptionsClient::new(ch).leave(r).await }
        })
        .await
    }

    /// The consumer group of subscription `name`, sorted.
    pub async fn consumers(&self, name: &str) -> Result<pb::ConsumersResponse> {
        let req = pb::SubscriptionNameRequest { name: name.into() };
        self.call("consumers", |ch| {
            let r = req.clone();
            async move { SubscriptionsClient::new(ch).consumers(r).await }
        })
        .await
    }

    /// Joins the consumer group of durable subscription `name` with a lease
    /// of `ttl_secs` kept alive in the background: see [`GroupConsumer`].
    /// An empty `consumer_id` gets a random one (made here, so a retried
    /// join cannot add a second member).
    pub async fn consume_group(&self, name: &str, consumer_id: &str, ttl_secs: u64) -> Result<GroupConsumer> {
        let consumer_id = if consumer_id.is_empty() {
            uuid::format(&uuid::new_v4())
        } else {
            consumer_id.to_string()
        };
        let lease = self.lease_grant(ttl_secs, 0).await?.id;
        if let Err(e) = self.join_consumers(name, &consumer_id, lease).await {
            let _ = self.lease_revoke(lease).await;
            return Err(e);
        }
        let (tx, members) = tokio::sync::watch::channel(Ok(Vec::new()));
        let keeper = {
            let c = self.clone();
            tokio::spawn(async move { c.lease_keep_alive_forever(lease, |_| {}).await })
        };
        let watcher = {
            let c = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                // Publishes the members whenever they change (and stops on
                // an error that retrying cannot help).
                loop {
                    match c.consumers(&name).await {
                        Ok(r) => {
                            tx.send_if_modified(|cur| {
                                let changed = cur.as_ref().map_or(true, |m| *m != r.consumer_ids);
                                if changed {
                                    *cur = Ok(r.consumer_ids);
                                }
                                changed
                            });
                        }
                        Err(e) if !e.is_retryable() => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        Err(e) => tracing::info!(error = %e, "consumer group not read; retrying"),
                    }
                    tokio::time::sleep(REBALANCE_CHECK).await;
                }
            })
        };
        Ok(GroupConsumer {
            client: self.clone(),
            name: name.into(),
            consumer_id,
            lease,
            keeper,
            watcher,
            members,
            assigned: Vec::new(),
            sub: None,
            started: false,
            stale: false,
        })
    }

    /// Consumes durable subscription `name` as consumer `member` of
    /// `members` (it takes the partitions p with `(p - 1) % members ==
    /// member`): a resumable subscription from the acknowledged positions
    /// with the subscription's filter. Ack with [`Client::ack`].
    pub async fn consume(&self, name: &str, member: u32, members: u32) -> Result<ResumableSubscription> {
        if members == 0 || member >= members {
            return Err(Error::InvalidArgument(format!(
                "member: {member} is not below members ({members})"
            )));
        }
        let info = self.get_subscription(name).await?.subscription.unwrap_or_default();
        let mine: std::collections::BTreeMap<u32, u64> = info
            .positions
            .iter()
            .filter(|(p, _)| (**p - 1) % members == member)
            .map(|(p, o)| (*p, *o))
            .collect();
        if mine.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "member: consumer {member} of {members} gets none of the {} partitions; use fewer members",
                info.positions.len()
            )));
        }
        Ok(self.subscribe_resumable(pb::SubscribeRequest {
            partitions: mine.keys().copied().collect(),
            from_offsets: mine.into_iter().collect(),
            from_now: false,
            r#type: info.r#type,
            stream_prefix: info.stream_prefix,
        }))
    }

    // ----------------------------------------------------------- registry

    /// Registers (or re-registers) an instance; returns the previous
    /// registration of the same id, if any.
    pub async fn register(&self, instance: pb::Instance) -> Result<pb::RegisterResponse> {
        self.write("register", |ch, s| {
            let r = pb::RegisterRequest {
                instance: Some(instance.clone()),
                session: Some(s),
            };
            async move {
                RegistryClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .register(r)
                    .await
            }
        })
        .await
    }

    /// Removes an instance; `deregistered` is false if it was not registered.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<pb::DeregisterResponse> {
        self.write("deregister", |ch, s| {
            let r = pb::DeregisterRequest {
                service: service.to_string(),
                id: id.to_string(),
                session: Some(s),
            };
            async move {
                RegistryClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .deregister(r)
                    .await
            }
        })
        .await
    }

    /// The instances of a service carrying every tag in `tags`
    /// (linearizable).
    pub async fn lookup(&self, service: &str, tags: &[String]) -> Result<pb::LookupResponse> {
        self.call("lookup", |ch| {
            let r = pb::LookupRequest {
                service: service.to_string(),
                tags: tags.to_vec(),
                serializable: false,
            };
            async move {
                RegistryClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .lookup(r)
                    .await
            }
        })
        .await
    }

    /// Every service with at least one instance.
    pub async fn list_services(&self) -> Result<pb::ListServicesResponse> {
        self.call("list services", |ch| async move {
            RegistryClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .list_services(pb::ListServicesRequest { serializable: false })
                .await
        })
        .await
    }

    /// Opens a registry watch on the first endpoint that answers (see
    /// [`Client::watch`]).
    pub async fn registry_watch(&self, req: pb::RegistryWatchRequest) -> Result<Streaming<pb::RegistryWatchResponse>> {
        self.call("registry watch", |ch| {
            let r = req.clone();
            async move {
                RegistryClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .watch(r)
                    .await
            }
        })
        .await
    }

    /// A registry watch that survives the loss of its node (see
    /// [`ResumableWatch`]). With `start_revision` 0 it starts after the
    /// current revision.
    pub async fn registry_watch_resumable(
        &self,
        mut req: pb::RegistryWatchRequest,
    ) -> Result<ResumableWatch<pb::RegistryWatchRequest>> {
        if req.start_revision == 0 {
            let r = self.list_services().await?;
            req.start_revision = r.header.map_or(0, |h| h.revision) + 1;
        }
        Ok(ResumableWatch::new(self.clone(), req))
    }

    // ------------------------------------------------------------ cluster

    /// Members and the leader.
    pub async fn members(&self) -> Result<pb::MembersResponse> {
        self.call("members", |ch| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .members(pb::MembersRequest {})
                .await
        })
        .await
    }

    /// Adds a non-voting member.
    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<pb::MembersResponse> {
        let addr = addr.to_string();
        self.call("add learner", |ch| {
            let r = pb::AddLearnerRequest { id, addr: addr.clone() };
            async move {
                ClusterClient::new(ch)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .add_learner(r)
                    .await
            }
        })
        .await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: u64) -> Result<pb::MembersResponse> {
        self.call("promote", |ch| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .promote(pb::PromoteRequest { id })
                .await
        })
        .await
    }

    /// Removes a member.
    pub async fn remove(&self, id: u64) -> Result<pb::MembersResponse> {
        self.call("remove", |ch| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .remove(pb::RemoveRequest { id })
                .await
        })
        .await
    }

    /// Moves leadership (to `to`, or 0 for any other up-to-date voter).
    pub async fn transfer_leader(&self, to: u64) -> Result<pb::TransferLeaderResponse> {
        self.call("transfer leader", |ch| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .transfer_leader(pb::TransferLeaderRequest { to })
                .await
        })
        .await
    }

    /// For tests: the answering node's state fingerprint per group and the
    /// leaders it saw per term.
    pub async fn consistency(&self) -> Result<pb::ConsistencyResponse> {
        self.call("consistency", |ch| async move {
            ClusterClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .consistency(pb::ConsistencyRequest {})
                .await
        })
        .await
    }

    /// Status of every member the cluster lists (besides the endpoints
    /// given), each node answering for itself.
    pub async fn status_members(&self) -> Result<Vec<(String, Result<pb::StatusResponse>)>> {
        let m = self.members().await?;
        for member in &m.members {
            self.node_index(&member.addr);
        }
        Ok(self.status_all().await)
    }

    /// Status of every endpoint, each asked directly (no failover).
    pub async fn status_all(&self) -> Vec<(String, Result<pb::StatusResponse>)> {
        let nodes: Vec<Arc<Node>> = self.inner.nodes.lock().expect("nodes lock").clone();
        let mut out = Vec::new();
        for node in nodes {
            let r = match self.pinned(&node) {
                Err(e) => Err(e),
                Ok(ch) => match tokio::time::timeout(
                    self.inner.opts.request_timeout,
                    ClusterClient::new(ch)
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .status(pb::StatusRequest {}),
                )
                .await
                {
                    Ok(Ok(resp)) => Ok(resp.into_inner()),
                    Ok(Err(s)) => Err(Error::from_status(&s)),
                    Err(_) => Err(Error::Unavailable(format!(
                        "no answer within {:?}",
                        self.inner.opts.request_timeout
                    ))),
                },
            };
            out.push((node.uri.clone(), r));
        }
        out
    }
}

/// Some key of a range (for a read that only needs the header).
/// Reopens of a watch in a row without a response before it gives up.
pub const WATCH_MAX_REOPENS: u32 = 5;

/// A watch request [`ResumableWatch`] can reopen: a config watch or a
/// registry watch.
pub trait WatchRequest: Clone + Send + Sync + 'static {
    /// Responses of the stream.
    type Response: Send + 'static;
    /// Opens the stream on the first endpoint that answers.
    fn open(&self, client: &Client) -> impl Future<Output = Result<Streaming<Self::Response>>> + Send;
    /// The request starting after revision `delivered`.
    fn resume_after(&self, delivered: u64) -> Self;
    /// First revision the request asks for.
    fn start_revision(&self) -> u64;
    /// The response's header revision (everything up to it delivered).
    fn revision(resp: &Self::Response) -> Option<u64>;
    /// The cancel reason, if the node canceled the watch.
    fn canceled(resp: &Self::Response) -> Option<&str>;
}

impl WatchRequest for pb::WatchRequest {
    type Response = pb::WatchResponse;
    fn open(&self, client: &Client) -> impl Future<Output = Result<Streaming<pb::WatchResponse>>> + Send {
        client.watch(self.clone())
    }
    fn resume_after(&self, delivered: u64) -> Self {
        Client::watch_from(self, delivered)
    }
    fn start_revision(&self) -> u64 {
        self.start_revision
    }
    fn revision(resp: &pb::WatchResponse) -> Option<u64> {
        resp.header.as_ref().map(|h| h.revision)
    }
    fn canceled(resp: &pb::WatchResponse) -> Option<&str> {
        resp.canceled.then_some(resp.cancel_reason.as_str())
    }
}

impl WatchRequest for pb::RegistryWatchRequest {
    type Response = pb::RegistryWatchResponse;
    fn open(&self, client: &Client) -> impl Future<Output = Result<Streaming<pb::RegistryWatchResponse>>> + Send {
        client.registry_watch(self.clone())
    }
    fn resume_after(&self, delivered: u64) -> Self {
        pb::RegistryWatchRequest {
            start_revision: delivered + 1,
            ..self.clone()
        }
    }
    fn start_revision(&self) -> u64 {
        self.start_revision
    }
    fn revision(resp: &pb::RegistryWatchResponse) -> Option<u64> {
        resp.header.as_ref().map(|h| h.revision)
    }
    fn canceled(resp: &pb::RegistryWatchResponse) -> Option<&str> {
        resp.canceled.then_some(resp.cancel_reason.as_str())
    }
}

/// A watch that, when its node goes away (or cancels it as too slow),
/// reopens on any endpoint from the revision after the last one delivered,
/// so its responses have every change once, in order. Gives up after
/// [`WATCH_MAX_REOPENS`] lost streams in a row without a response. `next`
/// is cancel-safe (dropping it, e.g. on a timeout, loses nothing).
pub struct ResumableWatch<R: WatchRequest = pb::WatchRequest> {
    client: Client,
    req: R,
    stream: Option<Streaming<R::Response>>,
    /// Every change up to this revision has been returned.
    delivered: u64,
    failures: u32,
}

impl<R: WatchRequest> ResumableWatch<R> {
    /// Follows `req`, which must name its start revision (not 0).
    pub fn new(client: Client, req: R) -> Self {
        ResumableWatch {
            client,
            delivered: req.start_revision().saturating_sub(1),
            req,
            stream: None,
            failures: 0,
        }
    }

    /// The next response (events, a snapshot, or a progress notification).
    pub async fn next(&mut self) -> Result<R::Response> {
        loop {
            if self.stream.is_none() {
                if self.failures >= WATCH_MAX_REOPENS {
                    return Err(Error::Unavailable(format!(
                        "watch: reopened {WATCH_MAX_REOPENS} times without a response"
                    )));
                }
                // Cancel-safe: nothing changes until the open completes.
                let req = self.req.resume_after(self.delivered);
                self.stream = Some(req.open(&self.client).await?);
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(resp)) => {
                    if let Some(reason) = R::canceled(&resp) {
                        tracing::info!(%reason, "watch canceled by the node; resuming");
                        self.stream = None;
                        self.failures += 1;
                        continue;
                    }
                    self.failures = 0;
                    if let Some(r) = R::revision(&resp) {
                        self.delivered = self.delivered.max(r);
                    }
                    return Ok(resp);
                }
                Ok(None) | Err(_) => {
                    tracing::info!(delivered = self.delivered, "watch stream lost; resuming elsewhere");
                    self.stream = None;
                    self.failures += 1;
                }
            }
        }
    }

    /// Every change up to this revision has been returned.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
}

/// A subscription that, when its node goes away (or cancels it as too
/// slow), reopens on any endpoint from the next offset of every partition,
/// so its events arrive once each, in order per partition. Gives up after
/// [`WATCH_MAX_REOPENS`] reopens in a row without a response.
pub struct ResumableSubscription {
    client: Client,
    req: pb::SubscribeRequest,
    /// Next offset per partition, once the first response fixed them.
    next: Option<std::collections::BTreeMap<u32, u64>>,
    stream: Option<Streaming<pb::SubscribeResponse>>,
    failures: u32,
}

impl ResumableSubscription {
    /// The next response (events, the caught-up mark, or the start).
    pub async fn next(&mut self) -> Result<pb::SubscribeResponse> {
        loop {
            if self.stream.is_none() {
                if self.failures >= WATCH_MAX_REOPENS {
                    return Err(Error::Unavailable(format!(
                        "subscription: reopened {WATCH_MAX_REOPENS} times without a response"
                    )));
                }
                let mut req = self.req.clone();
                if let Some(next) = &self.next {
                    req.from_offsets = next.clone().into_iter().collect();
                    req.partitions = next.keys().copied().collect();
                    req.from_now = false;
                }
                self.stream = Some(self.client.subscribe(req).await?);
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(resp)) => {
                    let next = self.next.get_or_insert_with(Default::default);
                    for (p, o) in &resp.next_offsets {
                        let e = next.entry(*p).or_insert(*o);
                        *e = (*e).max(*o);
                    }
                    if resp.canceled {
                        tracing::info!(reason = %resp.cancel_reason, "subscription canceled by the node; resuming");
                        self.stream = None;
                        self.failures += 1;
                        continue;
                    }
                    self.failures = 0;
                    return Ok(resp);
                }
                Ok(None) | Err(_) => {
                    tracing::info!("subscription stream lost; resuming elsewhere");
                    self.stream = None;
                    self.failures += 1;
                }
            }
        }
    }

    /// The next offset per partition (every event before it was returned).
    pub fn next_offsets(&self) -> Option<&std::collections::BTreeMap<u32, u64>> {
        self.next.as_ref()
    }
}

/// How often a [`GroupConsumer`] re-reads its group's members.
pub const REBALANCE_CHECK: Duration = Duration::from_secs(1);

/// Partitions consumer `index` of `members` takes, of `partitions`.
pub fn assigned_partitions(index: usize, members: usize, partitions: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut mine: Vec<u32> = partitions.filter(|p| ((*p - 1) as usize) % members == index).collect();
    mine.sort_unstable();
    mine
}

/// A member of a durable subscription's consumer group. It holds a lease
/// (kept alive in the background) and takes the partitions p with
/// `(p - 1) % n == k`, k being its place among the n sorted members. A
/// background task re-reads the members every [`REBALANCE_CHECK`]; when
/// they changed (one joined, left, or its lease expired) the consumer
/// resubscribes to its new share from the acknowledged positions. At least
/// once: after a rebalance the events after the last ack of a moved
/// partition come again. Ack with [`Client::ack`];
/// [`GroupConsumer::leave`] hands the share over at once (dropping it
/// leaves when the lease expires).
pub struct GroupConsumer {
    client: Client,
    name: String,
    consumer_id: String,
    lease: u64,
    keeper: tokio::task::JoinHandle<Result<()>>,
    watcher: tokio::task::JoinHandle<()>,
    /// The members as last read (an error that ends the watcher).
    members: tokio::sync::watch::Receiver<std::result::Result<Vec<String>, String>>,
    assigned: Vec<u32>,
    sub: Option<ResumableSubscription>,
    /// Whether the first share was taken.
    started: bool,
    /// The members changed since the share was taken.
    stale: bool,
}

impl GroupConsumer {
    /// This consumer's id in the group.
    pub fn consumer_id(&self) -> &str {
        &self.consumer_id
    }

    /// The partitions this consumer currently takes.
    pub fn assigned(&self) -> &[u32] {
        &self.assigned
    }

    /// Resubscribes to this consumer's share of `members`.
    async fn rebalance(&mut self, members: Vec<String>) -> Result<()> {
        if self.keeper.is_finished() {
            return Err(Error::NotFound(format!(
                "consumer {}: its lease {} is gone; join again",
                self.consumer_id, self.lease
            )));
        }
        let Some(index) = members.iter().position(|m| *m == self.consumer_id) else {
            return Err(Error::NotFound(format!(
                "consumer {}: no longer a member of {:?} (its lease expired)",
                self.consumer_id, self.name
            )));
        };
        let info = self
            .client
            .get_subscription(&self.name)
            .await?
            .subscription
            .unwrap_or_default();
        let mine: Vec<u32> = assigned_partitions(index, members.len(), info.positions.keys().copied());
        tracing::info!(consumer = %self.consumer_id, partitions = ?mine, members = members.len(), "consumer group rebalanced");
        self.sub = (!mine.is_empty()).then(|| {
            self.client.subscribe_resumable(pb::SubscribeRequest {
                from_offsets: mine.iter().map(|p| (*p, info.positions[p])).collect(),
                partitions: mine.clone(),
                from_now: false,
                r#type: info.r#type.clone(),
                stream_prefix: info.stream_prefix.clone(),
            })
        });
        self.assigned = mine;
        Ok(())
    }

    /// The next response of this consumer's share (the first one after a
    /// rebalance carries no events and the start offsets).
    pub async fn next(&mut self) -> Result<pb::SubscribeResponse> {
        let stopped = || Error::Unavailable("consumer group watcher stopped".into());
        loop {
            // `changed()` below marks the members seen: take them once.
            if self.members.has_changed().unwrap_or(false) || self.stale || !self.started {
                let members = self.members.borrow_and_update().clone();
                self.stale = false;
                match members {
                    Err(e) => return Err(Error::Unavailable(format!("consumer group of {:?}: {e}", self.name))),
                    // Not read yet.
                    Ok(m) if m.is_empty() => {
                        self.members.changed().await.map_err(|_| stopped())?;
                        continue;
                    }
                    Ok(m) => {
                        self.rebalance(m).await?;
                        self.started = true;
                    }
                }
            }
            match self.sub.as_mut() {
                // Only a change of members interrupts a read (the read is
                // cancel-safe: a response not yet taken stays queued).
                Some(sub) => tokio::select! {
                    r = sub.next() => return r,
                    c = self.members.changed() => {
                        c.map_err(|_| stopped())?;
                        self.stale = true;
                    }
                },
                // More members than partitions: wait for a share.
                None => {
                    self.members.changed().await.map_err(|_| stopped())?;
                    self.stale = true;
                }
            }
        }
    }

    /// Leaves the group now (its share moves on the others' next check).
    pub async fn leave(self) -> Result<()> {
        self.keeper.abort();
        self.watcher.abort();
        self.client.leave_consumers(&self.name, &self.consumer_id).await?;
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Not renewed any more: the group drops this member when the
        // lease expires.
        self.keeper.abort();
        self.watcher.abort();
    }
}

/// A `KeyRange` of one key.
pub fn key_range_key(key: Vec<u8>) -> pb::KeyRange {
    pb::KeyRange {
        kind: Some(pb::key_range::Kind::Key(key)),
    }
}

/// A `KeyRange` of every key with `prefix`.
pub fn key_range_prefix(prefix: Vec<u8>) -> pb::KeyRange {
    pb::KeyRange {
        kind: Some(pb::key_range::Kind::Prefix(prefix)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing_table() {
        let cases = [
            ("127.0.0.1:2379", Ok("http://127.0.0.1:2379")),
            ("http://localhost:7000/", Ok("http://localhost:7000")),
            ("[::1]:7000", Ok("http://[::1]:7000")),
            ("", Err("empty")),
            ("localhost", Err("expected host:port")),
            (":7000", Err("host is empty")),
            ("host:port", Err("port \"port\" is not a number")),
            ("host:0", Err("port must not be 0")),
            ("https://h:1", Err("scheme \"https\" is not supported")),
        ];
        for (input, want) in cases {
            match (parse_endpoint(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{input}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sessions_release_acknowledged_sequences() {
        let c = Client::new(&["127.0.0.1:1"], ClientOptions::default()).unwrap();
        let a = c.begin_write();
        let b = c.begin_write();
        assert_eq!((a.seq, a.acked_below), (1, 1));
        assert_eq!((b.seq, b.acked_below), (2, 1));
        c.end_write(&a);
        let d = c.begin_write();
        assert_eq!((d.seq, d.acked_below), (3, 2));
        assert_eq!(a.client_id, d.client_id);
    }
}
