//! Certificates: `esf cert init` writes a small private CA and the
//! certificates a cluster needs (rcgen); [`TlsArgs`] are the client
//! commands' TLS files (`--cacert --cert --key`, etcdctl's names).
//!
//! `cert init` is for test and small clusters: ECDSA P-256 keys, a CA
//! valid for [`CA_VALIDITY_DAYS`], node and client certificates for
//! `--days`, each with a fresh random serial. The node certificate is
//! valid for every `--hosts` entry (IP addresses and DNS names) and for
//! both server and client authentication (nodes present it when they dial
//! each other); a client certificate's common name is its user name. Key
//! files are written mode 0600. Existing files are never overwritten
//! without `--force`. With `--ca-dir` it signs with an existing CA
//! instead of making one (to issue a new node certificate when rotating).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};

use super::*;

/// How long the CA `cert init` makes is valid, days.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Node and client certificates are valid from this long before they are
/// made (clocks of other machines may be behind).
pub const BACKDATE: time::Duration = time::Duration::hours(1);

#[derive(Debug, Subcommand)]
pub(super) enum CertCmd {
    /// Write a CA (ca.pem, ca-key.pem), a node certificate (node.pem,
    /// node-key.pem) and client certificates (client-NAME.pem,
    /// client-NAME-key.pem) into DIR.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Addresses and names the node certificate is valid for (every
        /// node's address, or the names clients dial), comma separated.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
        /// A client certificate for each name (its common name, the user),
        /// comma separated.
        #[arg(long, value_delimiter = ',', default_value = "root")]
        client_names: Vec<String>,
        /// Validity of the node and client certificates, days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Sign with the CA in this directory (ca.pem, ca-key.pem) instead
        /// of making a new one.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// A file `cert init` writes.
struct Out {
    path: PathBuf,
    pem: String,
    secret: bool,
}

pub(super) fn cert(out: Output, cmd: CertCmd) -> anyhow::Result<()> {
    let CertCmd::Init {
        dir,
        hosts,
        client_names,
        days,
        ca_dir,
        force,
    } = cmd;
    let hosts: Vec<String> = hosts
        .into_iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        anyhow::bail!("--hosts: give at least one address or name");
    }
    for n in &client_names {
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            anyhow::bail!("--client-names: {n:?}: use letters, digits and - _ . @ (it names a file)");
        }
    }
    if !(1..=CA_VALIDITY_DAYS).contains(&days) {
        anyhow::bail!("--days: {days}: must be 1 to {CA_VALIDITY_DAYS}");
    }
    let now = time::OffsetDateTime::now_utc();
    let mut files = Vec::new();
    let issuer = match &ca_dir {
        Some(ca) => load_ca(ca)?,
        None => {
            let key = KeyPair::generate().context("generate the CA key")?;
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "ESF CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.not_before = now - BACKDATE;
            p.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
            p.serial_number = Some(serial());
            let cert = p.self_signed(&key).context("sign the CA certificate")?;
            files.push(Out::new(&dir, "ca.pem", cert.pem(), false));
            files.push(Out::new(&dir, "ca-key.pem", key.serialize_pem(), true));
            Issuer::new(p, key)
        }
    };
    let leaf =
        |cn: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate().context("generate a key")?;
            let mut p = CertificateParams::new(sans).context("--hosts")?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = usages;
            p.not_before = now - BACKDATE;
            p.not_after = now + time::Duration::days(days);
            p.serial_number = Some(serial());
            p.use_authority_key_identifier_extension = true;
            let cert = p
                .signed_by(&key, &issuer)
                .with_context(|| format!("sign the certificate of {cn}"))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let (node, node_key) = leaf(
        "esf node",
        hosts.clone(),
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    files.push(Out::new(&dir, "node.pem", node, false));
    files.push(Out::new(&dir, "node-key.pem", node_key, true));
    for n in &client_names {
        let (c, k) = leaf(n, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth])?;
        files.push(Out::new(&dir, &format!("client-{n}.pem"), c, false));
        files.push(Out::new(&dir, &format!("client-{n}-key.pem"), k, true));
    }
    let existing: Vec<String> = files
        .iter()
        .filter(|f| f.path.exists())
        .map(|f| f.path.display().to_string())
        .collect();
    if !existing.is_empty() && !force {
        anyhow::bail!("refusing to overwrite {} (use --force)", existing.join(", "));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for f in &files {
        f.write()?;
    }
    let written: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    print(out, &json!({"written": written, "hosts": hosts}), || {
        written.iter().map(|w| format!("wrote {w}\n")).collect()
    });
    Ok(())
}

impl Out {
    fn new(dir: &std::path::Path, name: &str, pem: String, secret: bool) -> Out {
        Out {
            path: dir.join(name),
            pem,
            secret,
        }
    }

    /// Writes the file; a key file only its owner can read.
    fn write(&self) -> anyhow::Result<()> {
        let mode = if self.secret { 0o600 } else { 0o644 };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&self.path)
            .with_context(|| format!("create {}", self.path.display()))?;
        // `mode` applies to a new file only; an overwritten one gets it too.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .and_then(|_| f.write_all(self.pem.as_bytes()))
            .and_then(|_| f.sync_all())
            .with_context(|| format!("write {}", self.path.display()))
    }
}

/// The CA in `dir` (ca.pem, ca-key.pem).
fn load_ca(dir: &std::path::Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("--ca-dir: read {}", p.display()))
    };
    let key = KeyPair::from_pem(&read("ca-key.pem")?).context("--ca-dir: ca-key.pem is not a PEM private key")?;
    Issuer::from_ca_cert_pem(&read("ca.pem")?, key).context("--ca-dir: ca.pem is not a PEM certificate")
}

/// A random positive 127-bit serial number.
fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&esf_proto::wire::random_u64().to_be_bytes());
    b[8..].copy_from_slice(&esf_proto::wire::random_u64().to_be_bytes());
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// The client commands' TLS files (etcdctl's flag names; their ids
/// differ from the names, which commands' own arguments such as `key`
/// use).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// CA certificate (PEM) that signed the nodes' certificates: talk TLS.
    #[arg(long = "cacert", id = "tls_cacert", global = true, env = "ESF_CACERT")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM), for nodes that require one (--client-cert-auth).
    #[arg(long = "cert", id = "tls_cert", global = true, env = "ESF_CERT")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long = "key", id = "tls_key", global = true, env = "ESF_KEY")]
    key: Option<PathBuf>,
}

impl TlsArgs {
    /// `opts` with these files' TLS settings.
    pub(super) fn apply(&self, opts: ClientOptions) -> anyhow::Result<ClientOptions> {
        let read = |flag: &str, p: &PathBuf| std::fs::read(p).with_context(|| format!("{flag}: read {}", p.display()));
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read("--cert", c)?, read("--key", k)?)),
            (Some(_), None) => anyhow::bail!("--cert: needs --key (the certificate's private key)"),
            (None, Some(_)) => anyhow::bail!("--key: needs --cert"),
            (None, None) => None,
        };
        let Some(ca) = &self.cacert else {
            if identity.is_some() {
                anyhow::bail!("--cert: needs --cacert (the CA that signed the nodes' certificates)");
            }
            return Ok(opts);
        };
        let mut opts = opts.with_tls_ca_pem(read("--cacert", ca)?);
        if let Some((c, k)) = identity {
            opts = opts.with_tls_client_identity(c, k);
        }
        Ok(opts)
    }
}
