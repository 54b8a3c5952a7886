//! TLS for the node's gRPC port, its admin HTTP port, and the channels it
//! dials to other nodes (docs/security.md, "TLS"). Flags follow etcd's.
//!
//! - Server: with `--cert-file`/`--key-file`, the one gRPC port (clients
//!   and other nodes alike) and the admin port serve TLS only (gRPC
//!   negotiates `h2`, admin `http/1.1`). With `--client-cert-auth`, every
//!   connection must present a client certificate that chains to
//!   `--trusted-ca-file` or `--peer-trusted-ca-file` (one port serves both,
//!   so both CAs are accepted); [`client_cert_common_name`] reads its
//!   subject's common name.
//! - Peers: a node with TLS dials other nodes with `https`, verifying them
//!   against `--peer-trusted-ca-file` (else `--trusted-ca-file`) and
//!   presenting `--peer-cert-file`/`--peer-key-file` (else
//!   `--cert-file`/`--key-file`) as its client certificate.
//! - Reload ([`super::tls_reload`]): the certificate, key and CAs are read
//!   again when their files change, looked at most every
//!   `tls_reload_interval_ms`; existing connections keep the certificate
//!   they started with, new ones get the new one. Peer channels are made
//!   anew after the peer files change.
//! - Handshakes ([`super::tls_accept`]) run under a deadline
//!   (`tls_handshake_timeout_ms`) and a bound on how many run at once.
//!
//! Every file is read and checked at start, before the data dir is
//! touched: it exists, holds PEM certificates (or one private key) that
//! parse, the key matches its certificate. Errors name the flag.
//!
//! What this does not do: certificate revocation (CRL, OCSP), several
//! certificates chosen by SNI, checking a client certificate's name
//! against anything (the auth layer decides what a common name may do),
//! or TLS without a CA file to verify peers by.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub use super::tls_reload::FileFlag;
use super::tls_reload::{CertResolver, Reloadable, ReloadingClientVerifier};
use crate::config::NodeConfig;

/// ALPN of the gRPC port.
const ALPN_GRPC: &[u8] = b"h2";
/// ALPN of the admin port (axum serves HTTP/1.1 there).
const ALPN_ADMIN: &[u8] = b"http/1.1";

/// The node's TLS settings, loaded and checked.
pub struct NodeTls {
    /// The gRPC port's server settings.
    pub grpc: Arc<ServerConfig>,
    /// The admin port's server settings (same certificate and client
    /// certificate rules, HTTP/1.1).
    pub admin: Arc<ServerConfig>,
    /// What the node dials other nodes with.
    pub peer: Arc<Reloadable<ClientTlsConfig>>,
    /// Deadline of a server-side handshake.
    pub handshake_timeout: Duration,
}

/// The cryptography every TLS setting here uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

impl NodeTls {
    /// The TLS settings of `cfg`, every file read and checked; `None`
    /// without `cert_file` (TLS off). `config::validate` has checked which
    /// settings go together.
    pub fn load(cfg: &NodeConfig) -> anyhow::Result<Option<NodeTls>> {
        let (Some(cert_path), Some(key_path)) = (&cfg.cert_file, &cfg.key_file) else {
            return Ok(None);
        };
        let interval = Duration::from_millis(cfg.tls_reload_interval_ms);
        let handshake_timeout = Duration::from_millis(cfg.tls_handshake_timeout_ms);
        let cert = FileFlag::new("--cert-file", cert_path);
        let key = FileFlag::new("--key-file", key_path);
        let served = Arc::new(Reloadable::load(
            "certificate (--cert-file, --key-file)",
            vec![cert.clone(), key.clone()],
            interval,
            |f| Ok(Arc::new(certified_key(&f[0], &read(&f[0])?, &f[1], &read(&f[1])?)?)),
        )?);
        let client_cas = if cfg.client_cert_auth {
            let mut cas: Vec<FileFlag> = cfg
                .trusted_ca_file
                .iter()
                .map(|p| FileFlag::new("--trusted-ca-file", p))
                .collect();
            cas.extend(
                cfg.peer_trusted_ca_file
                    .iter()
                    .map(|p| FileFlag::new("--peer-trusted-ca-file", p)),
            );
            if cas.is_empty() {
                bail!("--client-cert-auth: needs --trusted-ca-file (the CA client certificates must chain to)");
            }
            Some(Arc::new(Reloadable::load(
                "client CAs (--trusted-ca-file, --peer-trusted-ca-file)",
                cas,
                interval,
                client_verifier,
            )?))
        } else {
            None
        };
        let server = |alpn: &[u8]| -> anyhow::Result<Arc<ServerConfig>> {
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .context("tls protocol versions")?;
            let builder = match &client_cas {
                Some(cas) => builder.with_client_cert_verifier(Arc::new(ReloadingClientVerifier(cas.clone()))),
                None => builder.with_no_client_auth(),
            };
            let mut c = builder.with_cert_resolver(Arc::new(CertResolver(served.clone())));
            c.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(c))
        };
        let peer_identity = match (&cfg.peer_cert_file, &cfg.peer_key_file) {
            (Some(c), Some(k)) => (
                FileFlag::new("--peer-cert-file", c),
                FileFlag::new("--peer-key-file", k),
            ),
            _ => (cert, key),
        };
        let peer_ca = match (&cfg.peer_trusted_ca_file, &cfg.trusted_ca_file) {
            (Some(p), _) => FileFlag::new("--peer-trusted-ca-file", p),
            (None, Some(t)) => FileFlag::new("--trusted-ca-file", t),
            (None, None) => bail!(
                "--peer-trusted-ca-file: TLS is on (--cert-file) and nodes dial each other over TLS; \
                 give the CA that signed the other nodes' certificates (--peer-trusted-ca-file or --trusted-ca-file)"
            ),
        };
        let peer = Reloadable::load(
            "peer client settings (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file)",
            vec![peer_identity.0, peer_identity.1, peer_ca],
            interval,
            move |f| peer_client_config(&f[0], &f[1], &f[2], handshake_timeout),
        )?;
        Ok(Some(NodeTls {
            grpc: server(ALPN_GRPC)?,
            admin: server(ALPN_ADMIN)?,
            peer: Arc::new(peer),
            handshake_timeout,
        }))
    }
}

/// The file's bytes, or an error naming its flag.
pub fn read(f: &FileFlag) -> anyhow::Result<Vec<u8>> {
    std::fs::read(&f.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{f}: no such file"),
        _ => anyhow!("{f}: cannot read: {e}"),
    })
}

/// The certificates in `pem` (at least one, each a well-formed X.509
/// certificate).
pub fn parse_certs(f: &FileFlag, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{f}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        bail!("{f}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| anyhow!("{f}: certificate {} does not parse: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The one private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn parse_key(f: &FileFlag, pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow!("{f}: holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
        }
        e => anyhow!("{f}: not a PEM private key file: {e}"),
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert: &FileFlag, cert_pem: &[u8], key: &FileFlag, key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = parse_certs(cert, cert_pem)?;
    let der = parse_key(key, key_pem)?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| anyhow!("{key}: unusable private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        // ring cannot tell for some key types: let the handshake tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => bail!("{key}: does not match the certificate of {cert}: {e}"),
    }
}

/// A root store of every certificate in the CA files.
pub fn root_store(cas: &[FileFlag]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for f in cas {
        for (i, c) in parse_certs(f, &read(f)?)?.into_iter().enumerate() {
            roots
                .add(c)
                .map_err(|e| anyhow!("{f}: certificate {} is not a usable CA: {e}", i + 1))?;
        }
    }
    Ok(roots)
}

/// Verifies client certificates against the CA files.
fn client_verifier(cas: &[FileFlag]) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(cas)?), provider())
        .build()
        .map_err(|e| anyhow!("{}: {e}", cas[0]))
}

/// tonic's client settings for dialling other nodes: `ca` verifies them,
/// `cert` and `key` are presented to them.
fn peer_client_config(
    cert: &FileFlag,
    key: &FileFlag,
    ca: &FileFlag,
    handshake_timeout: Duration,
) -> anyhow::Result<ClientTlsConfig> {
    let (cert_pem, key_pem, ca_pem) = (read(cert)?, read(key)?, read(ca)?);
    certified_key(cert, &cert_pem, key, &key_pem)?;
    root_store(std::slice::from_ref(ca))?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(handshake_timeout))
}

/// The common name (CN) of the subject of the client certificate `req`
/// came with: on a TLS connection whose client presented one (always with
/// `--client-cert-auth`, which also verified it). `None` without TLS,
/// without a client certificate, or without a CN.
pub fn client_cert_common_name<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    common_name(certs.first()?)
}

/// The subject's common name of a DER certificate.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    use super::*;

    /// A CA, a node certificate for 127.0.0.1 and a client certificate
    /// with common name `root`, written into `dir`; returns the CA's
    /// issuer for more.
    fn write_certs(dir: &Path) -> Issuer<'static, KeyPair> {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).expect("ca").pem()).expect("write");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, cn: &str, sans: Vec<String>, eku: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(sans).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &issuer).expect("sign");
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
        };
        leaf(
            "node",
            "esf node",
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf("client", "root", vec![], ExtendedKeyUsagePurpose::ClientAuth);
        issuer
    }

    fn tls_config(dir: &Path, client_cert_auth: bool) -> NodeConfig {
        NodeConfig {
            cert_file: Some(dir.join("node.pem")),
            key_file: Some(dir.join("node-key.pem")),
            trusted_ca_file: Some(dir.join("ca.pem")),
            client_cert_auth,
            ..NodeConfig::default()
        }
    }

    fn load_error(cfg: &NodeConfig) -> String {
        match NodeTls::load(cfg) {
            Ok(_) => panic!("loaded"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn bad_files_are_refused_naming_the_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_certs(d);
        assert!(NodeTls::load(&tls_config(d, true)).expect("good files").is_some());
        assert!(NodeTls::load(&NodeConfig::default()).expect("no TLS").is_none());

        let mut missing = tls_config(d, false);
        missing.cert_file = Some(d.join("nope.pem"));
        assert!(
            load_error(&missing).starts_with("--cert-file "),
            "{}",
            load_error(&missing)
        );
        assert!(load_error(&missing).contains("no such file"));

        std::fs::write(d.join("garbage.pem"), "not a certificate").expect("write");
        let mut garbage = tls_config(d, false);
        garbage.key_file = Some(d.join("garbage.pem"));
        assert!(
            load_error(&garbage).starts_with("--key-file "),
            "{}",
            load_error(&garbage)
        );
        let mut garbage_ca = tls_config(d, true);
        garbage_ca.trusted_ca_file = Some(d.join("garbage.pem"));
        assert!(
            load_error(&garbage_ca).contains("--trusted-ca-file"),
            "{}",
            load_error(&garbage_ca)
        );

        // The client's key with the node's certificate.
        let mut mismatch = tls_config(d, false);
        mismatch.key_file = Some(d.join("client-key.pem"));
        let e = load_error(&mismatch);
        assert!(
            e.starts_with("--key-file ") && e.contains("does not match") && e.contains("--cert-file"),
            "{e}"
        );

        let mut peer = tls_config(d, false);
        peer.peer_cert_file = Some(d.join("client.pem"));
        peer.peer_key_file = Some(d.join("node-key.pem"));
        assert!(
            load_error(&peer).starts_with("--peer-key-file "),
            "{}",
            load_error(&peer)
        );
    }

    #[test]
    fn common_name_of_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_certs(dir.path());
        let f = FileFlag::new("--test", dir.path().join("client.pem"));
        let certs = parse_certs(&f, &read(&f).expect("read")).expect("certs");
        assert_eq!(common_name(&certs[0]).as_deref(), Some("root"));
        assert_eq!(client_cert_common_name(&tonic::Request::new(())), None);
    }

    /// Through a real TLS connection: tonic sees the client certificate
    /// (`Request::peer_certs`) on the connections `tls_accept` hands it,
    /// and a client without one is refused with `--client-cert-auth`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_certificate_common_name_reaches_the_handler() {
        use tonic_health::pb::health_client::HealthClient;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_certs(d);
        let tls = NodeTls::load(&tls_config(d, true)).expect("load").expect("tls on");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let svc = tonic::service::interceptor::InterceptedService::new(health, move |req: tonic::Request<()>| {
            record.lock().expect("lock").push(client_cert_common_name(&req));
            Ok(req)
        });
        let accepted = crate::net::tls_accept::accept_tls(listener, tls.grpc.clone(), tls.handshake_timeout);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(crate::net::tls_accept::incoming(accepted)),
        );
        let read = |n: &str| std::fs::read(d.join(n)).expect("read");
        let client = |identity: bool| {
            let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem")));
            if identity {
                c = c.identity(Identity::from_pem(read("client.pem"), read("client-key.pem")));
            }
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .expect("uri")
                .tls_config(c)
                .expect("tls config")
                .connect_lazy()
        };
        let ask = tonic_health::pb::HealthCheckRequest::default();
        HealthClient::new(client(true))
            .check(ask.clone())
            .await
            .expect("a client with a certificate is served");
        assert_eq!(*seen.lock().expect("lock"), vec![Some("root".to_string())]);
        assert!(
            HealthClient::new(client(false)).check(ask).await.is_err(),
            "a client without a certificate was served"
        );
        assert_eq!(seen.lock().expect("lock").len(), 1);
    }
}
