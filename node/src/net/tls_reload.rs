//! Certificates and CAs that follow their files: [`Reloadable`] holds what
//! was last loaded from a set of files and loads it again when one of them
//! changes on disk (its modification time or length), looking at most once
//! per reload interval, on use. [`CertResolver`] (the certificate a server
//! presents) and [`ReloadingClientVerifier`] (the CAs it accepts client
//! certificates from) are rustls's two hooks over it; the peer pool reads
//! its client settings through one too.
//!
//! Invariants: a value is only ever replaced by one that loaded and
//! checked completely (a certificate with its matching key, a CA file
//! with at least one certificate); a failed load logs a warning and keeps
//! the previous value, and is tried again once the files change again (so
//! a certificate and key written one after the other load once both are
//! in place). Handshakes never wait for a reload: the one that finds the
//! interval passed looks at the files, the others use what is there.
//!
//! What it does not do: watch with inotify (a change is seen on the first
//! use after the interval, not at once), or reload anything else (the
//! listen address, `--client-cert-auth` itself).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tracing::{info, warn};

/// A file as the operator named it: the flag that gave it and its path,
/// so every error says which setting to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFlag {
    /// The command-line flag (`--cert-file`); its config key and `ESF_*`
    /// variable follow from it.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
}

impl FileFlag {
    /// `path` as given by `flag`.
    pub fn new(flag: &'static str, path: impl Into<PathBuf>) -> FileFlag {
        FileFlag {
            flag,
            path: path.into(),
        }
    }
}

impl std::fmt::Display for FileFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.flag, self.path.display())
    }
}

/// A loaded value and its generation (1 for the first load, one more for
/// each reload).
pub struct Loaded<T> {
    /// Counts loads; a user that built something from the value compares
    /// it to see whether to rebuild.
    pub generation: u64,
    /// The value.
    pub value: T,
}

/// How one file looked when last loaded or tried: its modification time
/// and length (`None`: it could not be read).
type Stamp = Option<(SystemTime, u64)>;

type Loader<T> = Box<dyn Fn(&[FileFlag]) -> anyhow::Result<T> + Send + Sync>;

/// A value loaded from `files`, loaded again when they change.
pub struct Reloadable<T> {
    what: &'static str,
    files: Vec<FileFlag>,
    load: Loader<T>,
    current: ArcSwap<Loaded<T>>,
    interval: Duration,
    check: Mutex<Check>,
}

/// When the files were last looked at, and how they were then.
struct Check {
    at: Instant,
    stamps: Vec<Stamp>,
}

fn stamps(files: &[FileFlag]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(&f.path).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl<T> std::fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("what", &self.what)
            .field("files", &self.files)
            .field("generation", &self.current.load().generation)
            .finish()
    }
}

impl<T> Reloadable<T> {
    /// Loads `what` from `files` with `load` (an error stops the caller:
    /// at start a node refuses bad files), to be loaded again when the
    /// files change, looking at most every `interval`.
    pub fn load(
        what: &'static str,
        files: Vec<FileFlag>,
        interval: Duration,
        load: impl Fn(&[FileFlag]) -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Reloadable<T>> {
        // Stamps before contents: a write after this is seen as a change.
        let stamps = stamps(&files);
        let value = load(&files)?;
        Ok(Reloadable {
            what,
            files,
            load: Box::new(load),
            current: ArcSwap::from_pointee(Loaded { generation: 1, value }),
            interval,
            check: Mutex::new(Check {
                at: Instant::now(),
                stamps,
            }),
        })
    }

    /// The value, reloaded first if the interval passed and the files
    /// changed since they were last loaded or tried.
    pub fn current(&self) -> Arc<Loaded<T>> {
        self.reload_if_changed();
        self.current.load_full()
    }

    fn reload_if_changed(&self) {
        // One caller looks; the others go on with the current value.
        let Ok(mut check) = self.check.try_lock() else {
            return;
        };
        if check.at.elapsed() < self.interval {
            return;
        }
        check.at = Instant::now();
        let now = stamps(&self.files);
        if now == check.stamps {
            return;
        }
        check.stamps = now;
        match (self.load)(&self.files) {
            Ok(value) => {
                let generation = self.current.load().generation + 1;
                self.current.store(Arc::new(Loaded { generation, value }));
                info!(what = self.what, generation, "tls: reloaded from changed files");
            }
            Err(e) => warn!(
                what = self.what,
                error = format!("{e:#}"),
                "tls: reload failed; keeping the previous one"
            ),
        }
    }
}

/// The certificate the node presents, from `--cert-file` and
/// `--key-file`, reloaded when they change.
#[derive(Debug)]
pub struct CertResolver(pub Arc<Reloadable<Arc<CertifiedKey>>>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().value.clone())
    }
}

/// With `--client-cert-auth`: client certificates must chain to a CA of
/// the trusted CA files, as they are now (reloaded when they change).
/// Sends no CA names as hints (clients send the certificate they have).
#[derive(Debug)]
pub struct ReloadingClientVerifier(pub Arc<Reloadable<Arc<dyn ClientCertVerifier>>>);

impl ReloadingClientVerifier {
    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.current().value.clone()
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        self.verifier().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(dir: &std::path::Path) -> Reloadable<String> {
        Reloadable::load(
            "test value",
            vec![FileFlag::new("--test-file", dir.join("v"))],
            Duration::ZERO,
            |f| {
                let s = std::fs::read_to_string(&f[0].path)?;
                anyhow::ensure!(!s.contains("bad"), "bad content");
                Ok(s)
            },
        )
        .expect("first load")
    }

    #[test]
    fn reloads_on_change_and_keeps_the_old_value_on_a_bad_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("v");
        std::fs::write(&f, "one").expect("write");
        let r = counter(dir.path());
        assert_eq!((r.current().generation, r.current().value.as_str()), (1, "one"));
        // Unchanged files: no reload.
        assert_eq!(r.current().generation, 1);
        // A bad file keeps the old value.
        std::fs::write(&f, "bad!").expect("write");
        assert_eq!((r.current().generation, r.current().value.as_str()), (1, "one"));
        // The next good one loads (a different length, so a change even
        // within the file system's time resolution).
        std::fs::write(&f, "three").expect("write");
        assert_eq!((r.current().generation, r.current().value.as_str()), (2, "three"));
        // A missing file keeps the old value too.
        std::fs::remove_file(&f).expect("remove");
        assert_eq!((r.current().generation, r.current().value.as_str()), (2, "three"));
    }

    #[test]
    fn looks_at_most_once_per_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("v");
        std::fs::write(&f, "one").expect("write");
        let r = Reloadable::load(
            "test value",
            vec![FileFlag::new("--test-file", f.clone())],
            Duration::from_secs(3600),
            |f| Ok(std::fs::read_to_string(&f[0].path)?),
        )
        .expect("first load");
        std::fs::write(&f, "changed").expect("write");
        assert_eq!(
            r.current().value,
            "one",
            "within the interval the files are not looked at"
        );
    }

    #[test]
    fn a_failed_first_load_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("v"), "bad").expect("write");
        let r = Reloadable::load(
            "test value",
            vec![FileFlag::new("--test-file", dir.path().join("v"))],
            Duration::ZERO,
            |f| {
                let s = std::fs::read_to_string(&f[0].path)?;
                anyhow::ensure!(!s.contains("bad"), "bad content");
                Ok(s)
            },
        );
        assert!(r.is_err());
    }
}
