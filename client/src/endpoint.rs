//! Endpoints: parsing an address, one lazily connected channel per node,
//! the cluster pin every request carries, and the one constructor of the
//! generated service clients ([`Stub::over`], with the response size
//! limit).
//!
//! A channel is made on first use and kept (one multiplexed HTTP/2
//! connection per node, reconnected by tonic); the call loop drops it
//! after a failure that suggests the connection broke. Nothing here
//! retries or chooses an endpoint: see `call` and `routing`.
//!
//! TLS ([`ClientOptions::tls_ca_pem`]): every channel dials `https`,
//! whatever scheme the endpoint was given with, and verifies the node's
//! certificate against the CA; the handshake has the connect timeout as
//! its deadline. Bad TLS settings (a CA file with no certificate, a key
//! that does not parse) are an [`Error::InvalidEndpoint`] from
//! [`crate::Client::new`].

use std::sync::{Arc, Mutex};

use esf_proto::wire::{CLUSTER_ID_METADATA, MAX_RESPONSE_BYTES, TOKEN_METADATA};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::pb;
use crate::{ClientOptions, Error, Result};

/// Parses `host:port` or `http://host:port` into a URI, with an error that
/// says what is wrong ([`esf_proto::wire::parse_endpoint`] as an
/// [`Error::InvalidEndpoint`]).
pub fn parse_endpoint(s: &str) -> Result<String> {
    esf_proto::wire::parse_endpoint(s).map_err(|e| Error::InvalidEndpoint {
        endpoint: e.endpoint,
        reason: e.reason,
    })
}

/// The URI the client dials `s` at: [`parse_endpoint`]'s, with `https`
/// when `opts` has TLS settings.
pub(crate) fn node_uri(s: &str, opts: &ClientOptions) -> Result<String> {
    let uri = parse_endpoint(s)?;
    Ok(match (&opts.tls_ca_pem, uri.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => uri,
    })
}

/// The cluster id a client is pinned to, and its auth token, sent with
/// every request.
#[derive(Clone, Default)]
pub(crate) struct ClusterPin(Arc<Mutex<Option<String>>>, Arc<Mutex<Login>>);

/// Whether the client has logged in (auth on or off), and its token.
#[derive(Default)]
pub(crate) struct Login {
    done: bool,
    token: Option<AsciiMetadataValue>,
    /// How many logins succeeded: a call that saw its token refused logs
    /// in again only if nobody has since it started.
    generation: u64,
}

impl ClusterPin {
    /// Pinned to `id` from the start (`None`: the first cluster to answer).
    pub(crate) fn new(id: Option<String>) -> Self {
        ClusterPin(Arc::new(Mutex::new(id)), Arc::default())
    }

    /// Whether the client has logged in (got a token, or learned that
    /// auth is off).
    pub(crate) fn logged_in(&self) -> bool {
        self.1.lock().expect("token lock poisoned").done
    }

    /// Logged in: sends `token` from now on (`None`: auth is off).
    pub(crate) fn set_token(&self, token: Option<&str>) -> Result<()> {
        let token = token
            .map(|t| {
                t.parse::<AsciiMetadataValue>()
                    .map_err(|_| Error::Internal("the token the cluster sent is not ASCII".into()))
            })
            .transpose()?;
        let mut g = self.1.lock().expect("token lock poisoned");
        *g = Login {
            done: true,
            token,
            generation: g.generation + 1,
        };
        Ok(())
    }

    /// How many logins have succeeded so far.
    pub(crate) fn login_generation(&self) -> u64 {
        self.1.lock().expect("token lock poisoned").generation
    }

    /// Forgets the token: the next call logs in again.
    pub(crate) fn forget_token(&self) {
        let mut g = self.1.lock().expect("token lock poisoned");
        g.done = false;
        g.token = None;
    }

    /// Pins the cluster that answered, unless one is pinned already.
    pub(crate) fn learn(&self, id: &str) {
        if id.is_empty() {
            return;
        }
        let mut g = self.0.lock().expect("cluster pin lock poisoned");
        if g.is_none() {
            *g = Some(id.to_string());
        }
    }

    /// The pinned id, if any yet.
    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().expect("cluster pin lock poisoned").clone()
    }
}

impl tonic::service::Interceptor for ClusterPin {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(id) = self.get() {
            if let Ok(v) = id.parse() {
                req.metadata_mut().insert(CLUSTER_ID_METADATA, v);
            }
        }
        if let Some(t) = self.1.lock().expect("token lock poisoned").token.clone() {
            req.metadata_mut().insert(TOKEN_METADATA, t);
        }
        Ok(req)
    }
}

/// A channel to one node that carries the cluster pin.
pub(crate) type PinnedChannel = tonic::service::interceptor::InterceptedService<Channel, ClusterPin>;

/// One node the client knows: its URI and, once used, its channel.
pub(crate) struct Node {
    pub(crate) uri: String,
    channel: Mutex<Option<Channel>>,
}

impl Node {
    /// A node at `uri` (already parsed), not connected.
    pub(crate) fn new(uri: String) -> Arc<Node> {
        Arc::new(Node {
            uri,
            channel: Mutex::new(None),
        })
    }

    /// The node's channel carrying `pin`, made on first use (no I/O: it
    /// connects on the first request).
    pub(crate) fn pinned(&self, opts: &ClientOptions, pin: &ClusterPin) -> Result<PinnedChannel> {
        let mut guard = self.channel.lock().expect("channel lock poisoned");
        let ch = match guard.as_ref() {
            Some(c) => c.clone(),
            None => {
                let invalid = |reason: String| Error::InvalidEndpoint {
                    endpoint: self.uri.clone(),
                    reason,
                };
                let tls = tls_config(opts).map_err(invalid)?;
                let uri = match (&tls, self.uri.strip_prefix("http://")) {
                    (Some(_), Some(rest)) => format!("https://{rest}"),
                    (None, _) if self.uri.starts_with("https://") => {
                        return Err(invalid(
                            "https needs TLS settings (a CA: ClientOptions::with_tls_ca_pem)".into(),
                        ));
                    }
                    _ => self.uri.clone(),
                };
                let mut ep = Endpoint::from_shared(uri)
                    .map_err(|e| invalid(e.to_string()))?
                    .connect_timeout(opts.connect_timeout)
                    .timeout(opts.request_timeout)
                    .tcp_nodelay(true);
                if let Some(tls) = tls {
                    ep = ep.tls_config(tls).map_err(|e| invalid(format!("tls: {e}")))?;
                }
                let ch = ep.connect_lazy();
                *guard = Some(ch.clone());
                ch
            }
        };
        Ok(tonic::service::interceptor::InterceptedService::new(ch, pin.clone()))
    }

    /// Forgets the channel, so the next request reconnects.
    pub(crate) fn drop_channel(&self) {
        *self.channel.lock().expect("channel lock poisoned") = None;
    }
}

/// tonic's TLS settings from `opts` (`None`: plaintext), or why they
/// cannot be used.
pub(crate) fn tls_config(opts: &ClientOptions) -> std::result::Result<Option<ClientTlsConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(ca) = &opts.tls_ca_pem else {
        if opts.tls_client_identity.is_some() {
            return Err("tls: a client certificate needs a CA (ClientOptions::with_tls_ca_pem)".into());
        }
        return Ok(None);
    };
    let certs = CertificateDer::pem_slice_iter(ca)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("tls: the CA is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("tls: the CA holds no PEM certificate".into());
    }
    let mut c = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .timeout(opts.connect_timeout);
    if let Some(id) = &opts.tls_client_identity {
        c = c.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    if let Some(name) = &opts.tls_domain_name {
        c = c.domain_name(name.clone());
    }
    Ok(Some(c))
}

/// Whether `opts`' TLS settings can be used (builds them for `uri`, a
/// [`node_uri`], without connecting).
pub(crate) fn check_tls(uri: &str, opts: &ClientOptions) -> Result<()> {
    let invalid = |reason: String| Error::InvalidEndpoint {
        endpoint: uri.to_string(),
        reason,
    };
    if let Some(tls) = tls_config(opts).map_err(invalid)? {
        Endpoint::from_shared(uri.to_string())
            .map_err(|e| invalid(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| invalid(format!("tls: {e}")))?;
    }
    Ok(())
}

/// A generated service client the call loop can make from a channel.
pub(crate) trait Stub: Sized {
    /// The client over `ch`, accepting responses up to
    /// [`MAX_RESPONSE_BYTES`].
    fn over(ch: PinnedChannel) -> Self;
}

macro_rules! stubs {
    ($($client:ty),* $(,)?) => {$(
        impl Stub for $client {
            fn over(ch: PinnedChannel) -> Self {
                <$client>::new(ch).max_decoding_message_size(MAX_RESPONSE_BYTES)
            }
        }
    )*};
}

/// The Config (KV) service.
pub(crate) type ConfigStub = pb::config_client::ConfigClient<PinnedChannel>;
/// The Lease service.
pub(crate) type LeaseStub = pb::lease_client::LeaseClient<PinnedChannel>;
/// The Registry service.
pub(crate) type RegistryStub = pb::registry_client::RegistryClient<PinnedChannel>;
/// The Events service.
pub(crate) type EventsStub = pb::events_client::EventsClient<PinnedChannel>;
/// The Subscriptions service.
pub(crate) type SubscriptionsStub = pb::subscriptions_client::SubscriptionsClient<PinnedChannel>;
/// The Cluster service.
pub(crate) type ClusterStub = pb::cluster_client::ClusterClient<PinnedChannel>;
/// The Auth service.
pub(crate) type AuthStub = pb::auth_client::AuthClient<PinnedChannel>;

stubs!(
    ConfigStub,
    LeaseStub,
    RegistryStub,
    EventsStub,
    SubscriptionsStub,
    ClusterStub,
    AuthStub
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_endpoint_is_an_invalid_endpoint_error() {
        assert_eq!(parse_endpoint("h:1").expect("valid"), "http://h:1");
        match parse_endpoint("h:0") {
            Err(Error::InvalidEndpoint { endpoint, reason }) => {
                assert_eq!(endpoint, "h:0");
                assert!(reason.contains("port must not be 0"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let none: [&str; 0] = [];
        assert!(matches!(
            crate::Client::new(&none, ClientOptions::default()),
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn tls_settings_choose_https_and_bad_ones_fail_at_new() {
        let tls = ClientOptions::new().with_tls_ca_pem("not pem");
        assert_eq!(node_uri("h:1", &ClientOptions::new()).expect("uri"), "http://h:1");
        assert_eq!(node_uri("http://h:1", &tls).expect("uri"), "https://h:1");
        let reason = |opts: ClientOptions| match crate::Client::new(&["h:1"], opts) {
            Err(Error::InvalidEndpoint { reason, .. }) => reason,
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("made a client"),
        };
        assert!(reason(tls).contains("no PEM certificate"));
        let identity_only = ClientOptions::new().with_tls_client_identity("c", "k");
        assert!(reason(identity_only).contains("needs a CA"));
        // https without TLS settings is refused when the channel is made.
        let c = crate::Client::new(&["https://h:1"], ClientOptions::new()).expect("client");
        let node = Node::new(c.endpoints()[0].clone());
        assert!(matches!(
            node.pinned(&ClientOptions::new(), &ClusterPin::default()),
            Err(Error::InvalidEndpoint { .. })
        ));
        assert!(format!("{:?}", ClientOptions::new().with_tls_client_identity("c", "secret")).contains("<redacted>"));
    }
}
