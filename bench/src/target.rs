//! One connection to a system under test, and the operations the
//! workloads issue through it: ESF (esf-client), etcd (its v3 gRPC API)
//! and NATS JetStream (async-nats).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::ValueEnum;
use futures::StreamExt;

use crate::etcdserverpb;

/// Any target's error as this crate's (the message is all a run reports).
fn msg(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// The system a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// An ESF cluster (esf-client).
    Esf,
    /// An etcd cluster (v3 gRPC API): kv workloads only.
    Etcd,
    /// A NATS JetStream cluster: event workloads only.
    Nats,
}

/// The JetStream stream the event workloads use (subjects `bench.>`).
pub const NATS_STREAM: &str = "ESFBENCH";

/// Prefix of the keys of the kv workloads.
pub const KEY_PREFIX: &str = "bench/";
/// Prefix of the keys the watch workload writes and watches.
pub const WATCH_PREFIX: &str = "bench-watch/";

/// An endpoint list as given on the command line.
pub fn parse_endpoints(s: &str) -> anyhow::Result<Vec<String>> {
    let eps: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    if eps.is_empty() {
        bail!("endpoints: empty (give host:port[,host:port...])");
    }
    Ok(eps)
}

/// A stream of watched changes: each item is the payloads of the changes
/// of one response.
pub type ChangeStream = futures::stream::BoxStream<'static, anyhow::Result<Vec<Vec<u8>>>>;

/// `opts` with credentials when `ESF_USER` and `ESF_PASSWORD` are set,
/// and with TLS when `ESF_CACERT` names the nodes' CA (and
/// `ESF_CERT`/`ESF_KEY` a client certificate), as the `esf` CLI reads
/// them; `scripts/bench-cluster.sh` sets the TLS ones with `BENCH_TLS=1`,
/// `scripts/bench-security.sh` the credentials.
fn esf_options_from_env(mut opts: esf_client::ClientOptions) -> anyhow::Result<esf_client::ClientOptions> {
    if let (Ok(user), Ok(password)) = (std::env::var("ESF_USER"), std::env::var("ESF_PASSWORD")) {
        opts = opts.with_credentials(user, password);
    }
    let read = |var: &str| -> anyhow::Result<Option<Vec<u8>>> {
        match std::env::var_os(var) {
            Some(p) => Ok(Some(
                std::fs::read(&p).with_context(|| format!("{var}: read {}", p.to_string_lossy()))?,
            )),
            None => Ok(None),
        }
    };
    let Some(ca) = read("ESF_CACERT")? else { return Ok(opts) };
    let opts = opts.with_tls_ca_pem(ca);
    Ok(match (read("ESF_CERT")?, read("ESF_KEY")?) {
        (Some(c), Some(k)) => opts.with_tls_client_identity(c, k),
        _ => opts,
    })
}

/// One connection to the target.
#[derive(Clone)]
pub enum Conn {
    /// ESF: one client (one channel per endpoint it uses).
    Esf(esf_client::Client),
    /// etcd: one channel, KV and Watch over it.
    Etcd(tonic::transport::Channel),
    /// NATS: one connection and its JetStream context.
    Nats(async_nats::Client, async_nats::jetstream::Context),
}

impl Conn {
    /// Opens a connection, trying `endpoints` rotated by `first` (so a
    /// fleet of clients spreads over the members, as real clients do).
    pub async fn open(target: Target, endpoints: &[String], first: usize, timeout: Duration) -> anyhow::Result<Conn> {
        let mut eps: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        let n = eps.len();
        eps.rotate_left(first % n);
        Ok(match target {
            Target::Esf => {
                let opts = esf_options_from_env(esf_client::ClientOptions::new().with_request_timeout(timeout))?;
                let client = esf_client::Client::new(&eps, opts).map_err(|e| anyhow!("esf client: {e}"))?;
                // With credentials, log in before the clock starts.
                client
                    .authenticate()
                    .await
                    .map_err(|e| anyhow!("esf client: log in: {e}"))?;
                Conn::Esf(client)
            }
            Target::Etcd => {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", eps[0]))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connect to etcd at {}", eps[0]))?;
                Conn::Etcd(ch)
            }
            Target::Nats => {
                let urls: Vec<String> = eps.iter().map(|e| format!("nats://{e}")).collect();
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(timeout)
                    .request_timeout(Some(timeout))
                    .retry_on_initial_connect()
                    .connect(urls.as_slice())
                    .await
                    .with_context(|| format!("connect to NATS at {}", eps[0]))?;
                let js = async_nats::jetstream::new(client.clone());
                Conn::Nats(client, js)
            }
        })
    }

    fn etcd_kv(ch: &tonic::transport::Channel) -> etcdserverpb::kv_client::KvClient<tonic::transport::Channel> {
        etcdserverpb::kv_client::KvClient::new(ch.clone())
    }

    /// A put of `key`.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Conn::Esf(c) => c.put(key, value).await.map(|_| ()).map_err(msg),
            Conn::Etcd(ch) => Self::etcd_kv(ch)
                .put(etcdserverpb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(msg),
            Conn::Nats(..) => bail!("kv workloads run against esf or etcd"),
        }
    }

    /// A get of `key` (linearizable unless `serializable`).
    pub async fn get(&self, key: Vec<u8>, serializable: bool) -> anyhow::Result<()> {
        match self {
            Conn::Esf(c) => c
                .range(esf_client::pb::RangeRequest {
                    range: Some(esf_client::key_range_key(key)),
                    serializable,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(msg),
            Conn::Etcd(ch) => Self::etcd_kv(ch)
                .range(etcdserverpb::RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(msg),
            Conn::Nats(..) => bail!("kv workloads run against esf or etcd"),
        }
    }

    /// A transaction: if `key` holds `value`, put `value` again, else
    /// read the key (the keys are preloaded with `value`, so it writes).
    pub async fn txn(&self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Conn::Esf(c) => {
                use esf_client::pb;
                let r = c
                    .txn(pb::TxnRequest {
                        compares: vec![pb::Compare {
                            key: key.clone(),
                            op: pb::compare::Op::Equal as i32,
                            target: Some(pb::compare::Target::Value(value.clone())),
                        }],
                        success: vec![pb::TxnOp {
                            op: Some(pb::txn_op::Op::Put(pb::PutRequest {
                                key: key.clone(),
                                value,
                                ..Default::default()
                            })),
                        }],
                        failure: vec![pb::TxnOp {
                            op: Some(pb::txn_op::Op::Range(pb::RangeRequest {
                                range: Some(esf_client::key_range_key(key)),
                                ..Default::default()
                            })),
                        }],
                        session: None,
                    })
                    .await
                    .map_err(msg)?;
                if !r.succeeded {
                    bail!("txn compare failed: the key did not hold the preloaded value");
                }
                Ok(())
            }
            Conn::Etcd(ch) => {
                use etcdserverpb::{Compare, RequestOp, TxnRequest, compare, request_op};
                let r = Self::etcd_kv(ch)
                    .txn(TxnRequest {
                        compare: vec![Compare {
                            result: compare::CompareResult::Equal as i32,
                            target: compare::CompareTarget::Value as i32,
                            key: key.clone(),
                            target_union: Some(compare::TargetUnion::Value(value.clone())),
                            range_end: Vec::new(),
                        }],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestPut(etcdserverpb::PutRequest {
                                key: key.clone(),
                                value,
                                ..Default::default()
                            })),
                        }],
                        failure: vec![RequestOp {
                            request: Some(request_op::Request::RequestRange(etcdserverpb::RangeRequest {
                                key,
                                ..Default::default()
                            })),
                        }],
                    })
                    .await
                    .map_err(msg)?
                    .into_inner();
                if !r.succeeded {
                    bail!("txn compare failed: the key did not hold the preloaded value");
                }
                Ok(())
            }
            Conn::Nats(..) => bail!("kv workloads run against esf or etcd"),
        }
    }

    /// Watches every key under [`WATCH_PREFIX`] from now on.
    pub async fn watch_prefix(&self) -> anyhow::Result<ChangeStream> {
        match self {
            Conn::Esf(c) => {
                let s = c
                    .watch(esf_client::pb::WatchRequest {
                        range: Some(esf_client::key_range_prefix(WATCH_PREFIX.as_bytes().to_vec())),
                        ..Default::default()
                    })
                    .await
                    .map_err(msg)?;
                Ok(s.map(|r| {
                    let r = r.map_err(|s| anyhow!("watch: {s}"))?;
                    if r.canceled {
                        bail!("watch canceled: {}", r.cancel_reason);
                    }
                    Ok(r.events.into_iter().filter_map(|e| e.kv.map(|kv| kv.value)).collect())
                })
                .boxed())
            }
            Conn::Etcd(ch) => {
                use etcdserverpb::{WatchCreateRequest, WatchRequest, watch_request};
                let prefix = WATCH_PREFIX.as_bytes().to_vec();
                let mut end = prefix.clone();
                *end.last_mut().expect("non-empty prefix") += 1;
                let create = WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
                        key: prefix,
                        range_end: end,
                        ..Default::default()
                    })),
                };
                // The request stream stays open for the watch's life.
                let requests = futures::stream::iter([create]).chain(futures::stream::pending());
                let mut s = etcdserverpb::watch_client::WatchClient::new(ch.clone())
                    .watch(requests)
                    .await
                    .map_err(|s| anyhow!("watch: {s}"))?
                    .into_inner();
                // The first response confirms the watch exists.
                match s.next().await {
                    Some(Ok(r)) if r.created => {}
                    other => bail!("watch not created: {other:?}"),
                }
                Ok(s.map(|r| {
                    let r = r.map_err(|s| anyhow!("watch: {s}"))?;
                    if r.canceled {
                        bail!("watch canceled: {}", r.cancel_reason);
                    }
                    Ok(r.events.into_iter().filter_map(|e| e.kv.map(|kv| kv.value)).collect())
                })
                .boxed())
            }
            Conn::Nats(..) => bail!("the watch workload runs against esf or etcd"),
        }
    }

    /// Appends `payloads` as events of `stream` and waits for the
    /// acknowledgement: ESF appends them in one atomic call; JetStream
    /// publishes each (with a message id, so retries deduplicate as ESF's
    /// event ids do) and awaits every ack.
    pub async fn append(&self, stream: &str, payloads: Vec<Vec<u8>>) -> anyhow::Result<()> {
        match self {
            Conn::Esf(c) => {
                let events = payloads
                    .into_iter()
                    .map(|data| esf_client::pb::EventData {
                        r#type: "bench".to_string(),
                        data,
                        ..Default::default()
                    })
                    .collect();
                c.append(stream, events, None).await.map(|_| ()).map_err(msg)
            }
            Conn::Nats(_, js) => {
                let subject = format!("bench.{stream}");
                let mut acks = Vec::with_capacity(payloads.len());
                for p in payloads {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id().as_str());
                    acks.push(
                        js.publish_with_headers(subject.clone(), headers, p.into())
                            .await
                            .map_err(|e| anyhow!("publish: {e}"))?,
                    );
                }
                for ack in acks {
                    ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
                }
                Ok(())
            }
            Conn::Etcd(_) => bail!("event workloads run against esf or nats"),
        }
    }

    /// Follows every event appended from now on (ESF: a subscription to
    /// streams starting `bench-`; JetStream: an ordered consumer of the
    /// bench stream delivering new messages).
    pub async fn subscribe(&self) -> anyhow::Result<ChangeStream> {
        match self {
            Conn::Esf(c) => {
                let s = c
                    .subscribe(esf_client::pb::SubscribeRequest {
                        from_now: true,
                        stream_prefix: "bench-".to_string(),
                        ..Default::default()
                    })
                    .await
                    .map_err(msg)?;
                Ok(s.map(|r| {
                    let r = r.map_err(|s| anyhow!("subscribe: {s}"))?;
                    if r.canceled {
                        bail!("subscription canceled: {}", r.cancel_reason);
                    }
                    Ok(r.events.into_iter().map(|e| e.data).collect())
                })
                .boxed())
            }
            Conn::Nats(client, js) => {
                use async_nats::jetstream::consumer::{DeliverPolicy, push};
                let stream = js
                    .get_stream(NATS_STREAM)
                    .await
                    .map_err(|e| anyhow!("stream {NATS_STREAM}: {e}"))?;
                let consumer = stream
                    .create_consumer(push::OrderedConfig {
                        deliver_subject: client.new_inbox(),
                        deliver_policy: DeliverPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("ordered consumer: {e}"))?;
                let messages = consumer.messages().await.map_err(|e| anyhow!("consume: {e}"))?;
                Ok(messages
                    .map(|m| {
                        let m = m.map_err(|e| anyhow!("consume: {e}"))?;
                        Ok(vec![m.payload.to_vec()])
                    })
                    .boxed())
            }
            Conn::Etcd(_) => bail!("event workloads run against esf or nats"),
        }
    }
}

/// Creates (or recreates, emptied) the JetStream stream of the event
/// workloads: file storage, `replicas` copies, subjects `bench.>`.
pub async fn prepare_nats(conn: &Conn, replicas: usize) -> anyhow::Result<()> {
    let Conn::Nats(_, js) = conn else {
        return Ok(());
    };
    let _ = js.delete_stream(NATS_STREAM).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: NATS_STREAM.to_string(),
        subjects: vec!["bench.>".to_string()],
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("create stream {NATS_STREAM} with {replicas} replicas: {e}"))?;
    Ok(())
}

/// A message id unique to this process and call.
fn message_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
