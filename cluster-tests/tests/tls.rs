//! TLS against real processes (issue 18, part 2): a cluster whose nodes
//! serve TLS and dial each other over it, with certificates from
//! `esf cert init`. Clients that do not trust its CA, plaintext clients
//! and (with `--client-cert-auth`) clients without a certificate get an
//! error and no data; a certificate replaced on disk is served to new
//! connections without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use esf_client::{Client, ClientOptions};
use esf_cluster_tests::{Cluster, POLL_INTERVAL, READY_DEADLINE, Tls, cli, esf_bin};
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// Deadline of calls expected to fail (they retry until it passes).
const FAILING_CALL_DEADLINE: Duration = Duration::from_secs(3);

/// A client of `c`'s nodes with `opts` and a short retry deadline.
fn client_with(c: &Cluster, opts: ClientOptions) -> Client {
    let eps: Vec<&str> = c.nodes.iter().map(|n| n.grpc.as_str()).collect();
    Client::new(&eps, opts.with_retry_deadline(FAILING_CALL_DEADLINE)).expect("client")
}

/// Certificates of another CA, that `c`'s nodes do not trust.
fn other_ca(c: &Cluster, dir: &Path) -> Tls {
    Tls::init(&c.bin, dir, &["127.0.0.1".into()], &["root"])
}

/// The certificate the TLS server at `addr` presents to a new connection.
async fn served_certificate(addr: &str, ca: &Path) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(c.expect("a CA certificate")).expect("add the CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let host = addr.rsplit_once(':').expect("host:port").0.to_string();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(host).expect("server name"), tcp)
        .await
        .expect("tls handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("the server's certificate")[0]
        .clone()
        .into_owned()
}

fn serial(der: &CertificateDer<'_>) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    cert.raw_serial().to_vec()
}

fn pem_cert(p: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(p).expect("a PEM certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_only_clients_that_trust_its_ca() {
    let c = Cluster::start_tls(&esf_bin(), 3, &["--tls-handshake-timeout-ms", "1000"]);
    // Formation, Raft and partition placement all run over TLS.
    c.wait_converged().await;
    let tls = c.tls.clone().expect("a TLS cluster");
    let client = c.client();
    client.put("tls/a", "1").await.expect("put over TLS");
    let got = client.get("tls/a").await.expect("get over TLS").1.expect("the key");
    assert_eq!(got.value, b"1");
    // Through each node (forwarded to the leader over peer TLS).
    for n in &c.nodes {
        n.client()
            .put(format!("tls/via-{}", n.id), "x")
            .await
            .expect("put through a node");
    }

    // A client that trusts another CA: an error and no data.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = other_ca(&c, other_dir.path());
    let stranger = client_with(&c, other.client_options("root"));
    assert!(
        stranger.put("tls/stranger", "1").await.is_err(),
        "a client of another CA wrote"
    );
    assert!(stranger.get("tls/a").await.is_err(), "a client of another CA read");
    // A plaintext client on the TLS port: an error and no data.
    let plain = client_with(&c, ClientOptions::new());
    assert!(plain.put("tls/plain", "1").await.is_err(), "a plaintext client wrote");
    assert!(plain.get("tls/a").await.is_err(), "a plaintext client read");
    assert!(client.get("tls/stranger").await.expect("get").1.is_none());
    assert!(client.get("tls/plain").await.expect("get").1.is_none());
    // Without --client-cert-auth a client needs no certificate.
    let anonymous = client_with(
        &c,
        ClientOptions::new().with_tls_ca_pem(std::fs::read(tls.ca()).expect("read the CA")),
    );
    anonymous
        .put("tls/anonymous", "1")
        .await
        .expect("put without a client certificate");

    // A connection that never starts its handshake is closed by the
    // deadline (1 s here).
    let mut silent = tokio::net::TcpStream::connect(&c.nodes[0].grpc).await.expect("connect");
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(READY_DEADLINE, silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was not closed: {closed:?}"
    );

    // The CLI with etcdctl's flags, and with the environment.
    let bin = &c.bin;
    let eps = c.endpoints();
    let mut args: Vec<String> = vec!["--endpoints".into(), eps.clone()];
    args.extend(tls.cli_args("root"));
    let with =
        |more: &[&str]| -> Vec<String> { args.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect() };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cli(bin, &a)
    };
    let (code, out, err) = run(with(&["kv", "put", "tls/cli", "from-cli"]));
    assert_eq!(code, 0, "esf --cacert kv put: {out}{err}");
    let (code, out, err) = run(with(&["kv", "get", "tls/cli"]));
    assert_eq!(code, 0, "esf --cacert kv get: {out}{err}");
    assert!(out.contains("from-cli"), "{out}");
    let out = std::process::Command::new(bin)
        .args(["--endpoints", &eps, "kv", "get", "tls/cli"])
        .env("ESF_CACERT", tls.ca())
        .output()
        .expect("run esf");
    assert!(out.status.success(), "ESF_CACERT: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-cli"));
    let (code, _, _) = cli(
        bin,
        &["--endpoints", &eps, "--timeout-secs", "2", "kv", "get", "tls/cli"],
    );
    assert_ne!(code, 0, "a plaintext CLI read from a TLS cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_auth_refuses_clients_without_a_trusted_certificate() {
    let c = Cluster::start_tls(&esf_bin(), 3, &["--client-cert-auth"]);
    // Nodes present their certificate as a client certificate to each other.
    let leader = c.wait_ready().await;
    let tls = c.tls.clone().expect("a TLS cluster");
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower");
    follower
        .client()
        .put("auth/a", "1")
        .await
        .expect("put through a follower with a client certificate");

    let ca = std::fs::read(tls.ca()).expect("read the CA");
    let no_cert = client_with(&c, ClientOptions::new().with_tls_ca_pem(ca.clone()));
    assert!(
        no_cert.put("auth/b", "1").await.is_err(),
        "a client without a certificate wrote"
    );
    assert!(
        no_cert.get("auth/a").await.is_err(),
        "a client without a certificate read"
    );
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = other_ca(&c, other_dir.path());
    let foreign = client_with(
        &c,
        ClientOptions::new().with_tls_ca_pem(ca).with_tls_client_identity(
            std::fs::read(other.client_cert("root")).expect("read"),
            std::fs::read(other.client_key("root")).expect("read"),
        ),
    );
    assert!(
        foreign.put("auth/c", "1").await.is_err(),
        "a client certificate of another CA wrote"
    );
    let client = c.client();
    assert!(client.get("auth/b").await.expect("get").1.is_none());
    assert!(client.get("auth/c").await.expect("get").1.is_none());
    assert_eq!(client.get("auth/a").await.expect("get").1.expect("the key").value, b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let mut c = Cluster::start_tls(&esf_bin(), 3, &[]);
    c.wait_ready().await;
    let tls = c.tls.clone().expect("a TLS cluster");
    let node = &c.nodes[0];
    let old = served_certificate(&node.grpc, &tls.ca()).await;
    assert_eq!(old, pem_cert(&tls.node_cert()), "the node serves node.pem");

    // A new certificate from the same CA (`esf cert init --ca-dir`),
    // moved over the old files (each rename is atomic; the node may see
    // the new certificate before the new key, and keeps the old pair
    // until both are there).
    let next = tempfile::tempdir().expect("tempdir");
    let dir = next.path().display().to_string();
    let ca_dir = tls.dir.display().to_string();
    let (code, out, err) = cli(
        &c.bin,
        &[
            "cert",
            "init",
            "--dir",
            &dir,
            "--ca-dir",
            &ca_dir,
            "--hosts",
            "127.0.0.1,localhost",
            "--client-names",
            "root",
        ],
    );
    assert_eq!(code, 0, "esf cert init --ca-dir: {out}{err}");
    assert!(!next.path().join("ca.pem").exists(), "--ca-dir makes no new CA");
    let new = pem_cert(&next.path().join("node.pem"));
    assert_ne!(serial(&new), serial(&old), "a new serial");
    for f in ["node.pem", "node-key.pem"] {
        std::fs::copy(next.path().join(f), tls.dir.join(format!("{f}.new"))).expect("copy");
        std::fs::rename(tls.dir.join(format!("{f}.new")), tls.dir.join(f)).expect("rename");
    }

    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let served = served_certificate(&node.grpc, &tls.ca()).await;
        if served == new {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} still serves serial {:?}\n{}",
            node.id,
            serial(&served),
            node.log()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Same processes; clients and peers (whose channels are made anew
    // from the changed files) still get through.
    for n in c.nodes.iter_mut() {
        let child = n.child.as_mut().expect("running");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "node {} restarted or exited",
            n.id
        );
    }
    c.wait_ready().await;
    for n in &c.nodes {
        n.client()
            .put(format!("rotated/{}", n.id), "1")
            .await
            .expect("put after the rotation");
    }
}
