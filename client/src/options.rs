//! Client settings ([`ClientOptions`]) and their defaults.
//!
//! Build them with `ClientOptions::default()` (or `new()`) and the
//! `with_*` setters. The settings are read when a [`crate::Client`] is
//! made and never change afterwards; nothing here does I/O.

use std::time::Duration;

/// Default deadline of one attempt.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline for establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline of a call including retries.
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(15);

/// Client settings.
///
/// Built with [`ClientOptions::new`] and the `with_*` setters (fields will
/// be added: tokens, protections; `#[non_exhaustive]` keeps that from
/// breaking callers). The fields stay readable.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// User name and password for a cluster with auth enabled: the client
    /// trades them for a token (`Auth/Authenticate`) before its first
    /// call, sends the token with every request, and gets a new one when
    /// a node refuses it (expired, or the password changed).
    pub credentials: Option<Credentials>,
    /// TLS: the CA certificates (PEM) the nodes' certificates must chain
    /// to. Set: endpoints are dialled with `https` and a node whose
    /// certificate does not chain to them (or is not valid for the
    /// endpoint's host) is not talked to. `None`: plaintext.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// TLS: the certificate this client presents, for nodes that require
    /// one (`--client-cert-auth`). Needs [`ClientOptions::tls_ca_pem`].
    pub tls_client_identity: Option<TlsIdentity>,
    /// TLS: the name the nodes' certificates must be valid for, instead
    /// of each endpoint's host.
    pub tls_domain_name: Option<String>,
}

/// A user name and password (the password is never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A client certificate and its private key (PEM). Its `Debug` does not
/// show the key.
#[derive(Clone)]
#[non_exhaustive]
pub struct TlsIdentity {
    /// The certificate chain (PEM), the client's own certificate first.
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry_deadline: DEFAULT_RETRY_DEADLINE,
            cluster_id: None,
            follow_leader: true,
            credentials: None,
            tls_ca_pem: None,
            tls_client_identity: None,
            tls_domain_name: None,
        }
    }
}

impl ClientOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`ClientOptions::request_timeout`].
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Sets [`ClientOptions::connect_timeout`].
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`ClientOptions::retry_deadline`].
    pub fn with_retry_deadline(mut self, d: Duration) -> Self {
        self.retry_deadline = d;
        self
    }

    /// Sets [`ClientOptions::cluster_id`].
    pub fn with_cluster_id(mut self, id: Option<String>) -> Self {
        self.cluster_id = id;
        self
    }

    /// Sets [`ClientOptions::follow_leader`].
    pub fn with_follow_leader(mut self, follow: bool) -> Self {
        self.follow_leader = follow;
        self
    }

    /// Sets [`ClientOptions::credentials`].
    pub fn with_credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Sets [`ClientOptions::tls_ca_pem`]: talk TLS, trusting these CAs.
    pub fn with_tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Sets [`ClientOptions::tls_client_identity`].
    pub fn with_tls_client_identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls_client_identity = Some(TlsIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        });
        self
    }

    /// Sets [`ClientOptions::tls_domain_name`].
    pub fn with_tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.tls_domain_name = Some(name.into());
        self
    }
}
