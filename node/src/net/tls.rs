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
            (Some(c), Some(k)) => (FileFlag::new("--peer-cert-file", c), FileFlag::new("--peer-key-file", k)),
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
        x509_parser::parse_x509_certificate(c).map_err(|e| anyhow!("{f}: certificate {} does not parse: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The one private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn parse_key(f: &FileFlag, pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!("{f}: holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
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
