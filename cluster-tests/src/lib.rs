//! A harness that runs real `esf` processes on loopback with OS-assigned
//! ports, each with its own data directory; processes are killed on drop and
//! readiness is polled against a deadline.
//!
//! A TLS cluster ([`Cluster::start_tls`], [`Cluster::create_tls`]) gets
//! certificates from `esf cert init` ([`Tls`]); its nodes serve TLS and
//! dial each other over it, and the harness's clients trust its CA and
//! present the `root` client certificate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use esf_client::{Client, ClientOptions};

/// Deadline for a cluster to become ready or converge.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two readiness polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of one admin HTTP request of a test.
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(5);
/// Replicas of each event partition (the nodes' default).
pub const PARTITION_REPLICAS: usize = 3;

/// The `esf` binary built beside this test (target/<profile>/esf). The
/// test scripts build the whole workspace first.
pub fn esf_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("esf");
    assert!(
        bin.exists(),
        "{} not found: build the workspace first (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// First port the harness hands out; below the kernel's ephemeral range
/// (32768 and up), so an outgoing connection never takes a port a node is
/// about to bind.
pub const PORT_BASE: u16 = 20_000;
/// Ports the harness hands out, from [`PORT_BASE`].
const PORT_SPAN: u16 = 12_000;

/// A loopback port that is free now and claimed by this test process for
/// its whole life ([`claim`]), so no other test process hands the port
/// out, even after the node that used it is killed (a client of this test
/// still dialling it must never reach another test's cluster).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(PORT_SPAN)) as u16;
    for _ in 0..PORT_SPAN {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = PORT_BASE + (start + offset) % PORT_SPAN;
        if claim(&port.to_string()) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port found from {PORT_BASE}");
}

/// Claims `name` (a port, a subnet) for this test process: an exclusive
/// lock (flock) on the file `esf-test-ports/NAME` in the temp dir, held
/// open until the process exits, when the kernel releases it (whatever way
/// it exits). False if another process, or this one, holds it. A lock
/// cannot be taken over by two processes at once, as a claim file naming
/// its owner's pid could be (both see the owner dead, both write theirs).
pub fn claim(name: &str) -> bool {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("esf-test-ports");
    std::fs::create_dir_all(&dir).expect("create the claim dir");
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
    else {
        return false;
    };
    if file.try_lock().is_err() {
        return false;
    }
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(file);
    true
}

pub mod netns;

/// One node process.
pub struct Node {
    /// Node id.
    pub id: u64,
    /// gRPC address.
    pub grpc: String,
    /// Admin HTTP address.
    pub admin: String,
    /// Data directory.
    pub dir: PathBuf,
    /// The running process, if any.
    pub child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
    /// Extra environment of the process (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
    /// The cluster's certificates, when it serves TLS.
    pub tls: Option<Tls>,
}

impl Node {
    /// Starts (or restarts) the process.
    pub fn start(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        self.spawn(bin, Stdio::from(log));
    }

    /// Starts the process with its log (stderr) on a pipe, and returns the
    /// pipe's read end.
    pub fn start_with_log_pipe(&mut self, bin: &Path) -> std::process::ChildStderr {
        self.spawn(bin, Stdio::piped());
        self.child
            .as_mut()
            .and_then(|c| c.stderr.take())
            .expect("the child's stderr pipe")
    }

    fn spawn(&mut self, bin: &Path, stderr: Stdio) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        // `ip netns exec` execs the node in place: the child is the node.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("serve")
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn esf serve");
        self.child = Some(child);
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) of the running process.
    pub fn pause(&self, stop: bool) {
        if let Some(c) = &self.child {
            let sig = if stop { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        c.wait().ok()
    }

    /// Waits (up to [`READY_DEADLINE`]) for a process that must exit by
    /// itself, and returns its exit status; panics, with the log, if it
    /// keeps running.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + READY_DEADLINE;
        let child = self.child.as_mut().expect("node is running");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for node") {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {} kept running:\n{}",
                self.id,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(POLL_INTERVAL);
        };
        self.child = None;
        status
    }

    /// Waits (up to [`READY_DEADLINE`]) until the node's log contains
    /// `needle`; panics with the log otherwise.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        while !self.log().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never logged {needle:?}:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Adds command-line arguments for the next start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| a.to_string()));
    }

    /// Whether the node is started with argument `arg`.
    pub fn has_arg(&self, arg: &str) -> bool {
        self.args.iter().any(|a| a == arg)
    }

    /// GET `path` from the node's admin port (plain HTTP): status code and
    /// body. Panics if the port does not answer within [`ADMIN_DEADLINE`].
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr: std::net::SocketAddr = self.admin.parse().expect("admin address");
        let mut s = std::net::TcpStream::connect_timeout(&addr, ADMIN_DEADLINE).expect("connect to the admin port");
        s.set_read_timeout(Some(ADMIN_DEADLINE)).expect("read timeout");
        s.set_write_timeout(Some(ADMIN_DEADLINE)).expect("write timeout");
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.admin).expect("send the request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the answer");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {out:?}"));
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (code, body)
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Client options that reach this node: with its cluster's CA and
    /// `root` client certificate when it serves TLS.
    pub fn client_options(&self) -> ClientOptions {
        match &self.tls {
            Some(t) => t.client_options("root"),
            None => ClientOptions::new(),
        }
    }

    /// A client for this node only.
    pub fn client(&self) -> Client {
        Client::new(
            &[self.grpc.as_str()],
            self.client_options()
                .with_retry_deadline(Duration::from_secs(20))
                // Pinned: requests go through this node, forwarded or not.
                .with_follow_leader(false),
        )
        .expect("client")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of node processes.
pub struct Cluster {
    /// The nodes, by id order.
    pub nodes: Vec<Node>,
    /// The `esf` binary.
    pub bin: PathBuf,
    _base: tempfile::TempDir,
    /// The network namespaces the nodes run in, if any (dropped after the
    /// nodes, which are killed first).
    pub net: Option<netns::Net>,
    /// The cluster's certificates, when it serves TLS.
    pub tls: Option<Tls>,
}

/// The peer secret every node the harness starts proves itself with (one
/// for all clusters of a test process, so clusters still tell each other
/// apart by cluster id, as before peer secrets existed).
pub const PEER_SECRET: &str = "esf-cluster-tests-peer-secret-v1";

/// The file holding [`PEER_SECRET`] under `base`, written if missing.
pub fn peer_secret_file(base: &Path) -> PathBuf {
    let f = base.join("peer-secret");
    if !f.exists() {
        std::fs::write(&f, PEER_SECRET).expect("write the peer secret file");
    }
    f
}

/// Builds (does not start) node `id` listening on `ports` (gRPC, admin).
fn new_node(base: &Path, id: u64, join: &[String], bootstrap_expect: Option<u64>, ports: (u16, u16)) -> Node {
    let (g, a) = ports;
    let dir = base.join(format!("node-{id}"));
    let secret = peer_secret_file(base);
    let mut args: Vec<String> = vec![
        "--node-id".into(),
        id.to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{g}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{a}"),
        "--join".into(),
        join.join(","),
        "--heartbeat-interval-ms".into(),
        "100".into(),
        "--election-timeout-ms".into(),
        "600".into(),
        "--peer-secret-file".into(),
        secret.display().to_string(),
    ];
    if let Some(n) = bootstrap_expect {
        args.extend(["--bootstrap-expect".to_string(), n.to_string()]);
    }
    let log = base.join(format!("node-{id}.log"));
    Node {
        id,
        grpc: format!("127.0.0.1:{g}"),
        admin: format!("127.0.0.1:{a}"),
        dir,
        child: None,
        args,
        log,
        netns: None,
        env: Vec::new(),
        tls: None,
    }
}

/// The certificates of a TLS cluster, written by `esf cert init` into
/// `dir`: a CA, one node certificate every node presents (valid for
/// every node's address) and client certificates.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Where the files are.
    pub dir: PathBuf,
}

/// How often the harness's TLS nodes look at their certificate files
/// (`--tls-reload-interval-ms`), so a reload test need not wait long.
pub const TLS_RELOAD_INTERVAL_MS: u64 = 100;

impl Tls {
    /// Runs `esf cert init` into `dir`: a node certificate for `hosts`,
    /// client certificates for `clients`.
    pub fn init(bin: &Path, dir: &Path, hosts: &[String], clients: &[&str]) -> Tls {
        let dir_s = dir.display().to_string();
        let hosts = hosts.join(",");
        let clients = clients.join(",");
        let (code, out, err) = cli(
            bin,
            &[
                "cert",
                "init",
                "--dir",
                &dir_s,
                "--hosts",
                &hosts,
                "--client-names",
                &clients,
            ],
        );
        assert_eq!(code, 0, "esf cert init: {out}{err}");
        Tls { dir: dir.to_path_buf() }
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The node certificate.
    pub fn node_cert(&self) -> PathBuf {
        self.dir.join("node.pem")
    }

    /// The node certificate's key.
    pub fn node_key(&self) -> PathBuf {
        self.dir.join("node-key.pem")
    }

    /// Client `name`'s certificate.
    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client-{name}.pem"))
    }

    /// Client `name`'s key.
    pub fn client_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client-{name}-key.pem"))
    }

    /// The `esf serve` arguments of a node that serves TLS with these
    /// files.
    pub fn node_args(&self) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "--cert-file".into(),
            p(self.node_cert()),
            "--key-file".into(),
            p(self.node_key()),
            "--trusted-ca-file".into(),
            p(self.ca()),
            "--tls-reload-interval-ms".into(),
            TLS_RELOAD_INTERVAL_MS.to_string(),
        ]
    }

    /// Client options trusting the CA and presenting client `name`'s
    /// certificate.
    pub fn client_options(&self, name: &str) -> ClientOptions {
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        ClientOptions::new()
            .with_tls_ca_pem(read(self.ca()))
            .with_tls_client_identity(read(self.client_cert(name)), read(self.client_key(name)))
    }

    /// The CLI's global TLS arguments (`--cacert --cert --key`) of client
    /// `name`.
    pub fn cli_args(&self, name: &str) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "--cacert".into(),
            p(self.ca()),
            "--cert".into(),
            p(self.client_cert(name)),
            "--key".into(),
            p(self.client_key(name)),
        ]
    }
}

impl Node {
    /// A node (not started) of its own, on new ports, whose data directory
    /// `dir` already holds a cluster (e.g. one `esf snapshot restore`
    /// seeded with advertise address [`Node::grpc`]); logs go to `base`.
    pub fn standalone(base: &Path, id: u64, dir: PathBuf, grpc_port: u16) -> Node {
        let mut n = new_node(base, id, &[], None, (grpc_port, free_port()));
        let at = n.args.iter().position(|a| a == "--data-dir").expect("data dir arg") + 1;
        n.args[at] = dir.display().to_string();
        n.dir = dir;
        let join = n.args.iter().position(|a| a == "--join").expect("join arg");
        n.args.drain(join..join + 2);
        n
    }

    /// Waits until this node reports a leader; returns its id.
    pub async fn wait_leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            if let Some((_, Ok(s))) = self.client().status_all().await.first() {
                if let Some(g) = s.groups.first().filter(|g| g.leader_id != 0) {
                    return g.leader_id;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} has no leader within {READY_DEADLINE:?}\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Cluster {
    /// Starts `n` nodes that form one cluster.
    pub fn start(bin: &Path, n: u64) -> Cluster {
        Cluster::start_with(bin, n, &[])
    }

    /// Starts `n` nodes with `extra` arguments each.
    pub fn start_with(bin: &Path, n: u64, extra: &[&str]) -> Cluster {
        Cluster::create(bin, n, None, extra, &|_| {})
    }

    /// Starts `n` nodes, node i in its own network namespace of `net` at
    /// its own address (port 2379, admin 2380), joined over a bridge; the
    /// test process reaches them from the host side of the bridge.
    pub fn start_in(bin: &Path, n: u64, net: netns::Net) -> Cluster {
        Cluster::create(bin, n, Some(net), &[], &|_| {})
    }

    /// Starts `n` nodes that form one cluster: on loopback ports, or each
    /// in its own network namespace of `net`; each with `extra` arguments,
    /// and `prepare`d (e.g. given an environment) before it starts.
    pub fn create(bin: &Path, n: u64, net: Option<netns::Net>, extra: &[&str], prepare: &dyn Fn(&mut Node)) -> Cluster {
        Cluster::create_with(bin, n, net, extra, prepare, false)
    }

    /// Starts `n` nodes that serve TLS ([`Tls`]) and form one cluster,
    /// each with `extra` arguments (e.g. `--client-cert-auth`).
    pub fn start_tls(bin: &Path, n: u64, extra: &[&str]) -> Cluster {
        Cluster::create_with(bin, n, None, extra, &|_| {}, true)
    }

    /// [`Cluster::create`] with TLS: certificates from `esf cert init`
    /// valid for every node's address.
    pub fn create_tls(
        bin: &Path,
        n: u64,
        net: Option<netns::Net>,
        extra: &[&str],
        prepare: &dyn Fn(&mut Node),
    ) -> Cluster {
        Cluster::create_with(bin, n, net, extra, prepare, true)
    }

    fn create_with(
        bin: &Path,
        n: u64,
        net: Option<netns::Net>,
        extra: &[&str],
        prepare: &dyn Fn(&mut Node),
        tls: bool,
    ) -> Cluster {
        let base = tempfile::tempdir().expect("tempdir");
        let mut nodes: Vec<Node> = match &net {
            None => {
                let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
                let join: Vec<String> = ports.iter().map(|(g, _)| format!("127.0.0.1:{g}")).collect();
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, p)| new_node(base.path(), i as u64 + 1, &join, Some(n), *p))
                    .collect()
            }
            Some(net) => {
                let join: Vec<String> = (1..=n).map(|i| format!("{}:2379", net.ip(i))).collect();
                (1..=n)
                    .map(|i| {
                        let mut node = new_node(base.path(), i, &join, Some(n), (2379, 2380));
                        let ip = net.ip(i);
                        for (flag, port) in [("--listen", 2379), ("--admin-listen", 2380)] {
                            let at = node.args.iter().position(|a| a == flag).expect("address flag") + 1;
                            node.args[at] = format!("{ip}:{port}");
                        }
                        node.grpc = format!("{ip}:2379");
                        node.admin = format!("{ip}:2380");
                        node.netns = Some(net.ns(i));
                        node
                    })
                    .collect()
            }
        };
        let tls = tls.then(|| {
            let mut hosts: Vec<String> = vec!["127.0.0.1".into(), "localhost".into()];
            if let Some(net) = &net {
                hosts.extend((1..=n).map(|i| net.ip(i)));
            }
            Tls::init(bin, &base.path().join("tls"), &hosts, &["root"])
        });
        for node in nodes.iter_mut() {
            if let Some(t) = &tls {
                node.args.extend(t.node_args());
                node.tls = Some(t.clone());
            }
            node.args.extend(extra.iter().map(|a| a.to_string()));
            prepare(node);
        }
        Cluster::launch(nodes, bin, base, net, tls)
    }

    /// Starts every node of a new cluster.
    fn launch(
        nodes: Vec<Node>,
        bin: &Path,
        base: tempfile::TempDir,
        net: Option<netns::Net>,
        tls: Option<Tls>,
    ) -> Cluster {
        let mut c = Cluster {
            nodes,
            bin: bin.to_path_buf(),
            _base: base,
            net,
            tls,
        };
        for n in c.nodes.iter_mut() {
            n.start(bin);
        }
        c
    }

    /// Starts one more node that joins the running cluster (it waits to be
    /// added as a member). Returns its id.
    pub fn spawn_joining_node(&mut self) -> u64 {
        self.spawn_joining_node_with(&[])
    }

    /// As [`Cluster::spawn_joining_node`], with `extra` arguments.
    pub fn spawn_joining_node_with(&mut self, extra: &[&str]) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let join: Vec<String> = self.nodes.iter().map(|n| n.grpc.clone()).collect();
        let mut node = new_node(self._base.path(), id, &join, None, (free_port(), free_port()));
        if let Some(t) = &self.tls {
            node.args.extend(t.node_args());
            node.tls = Some(t.clone());
        }
        node.args.extend(extra.iter().map(|a| a.to_string()));
        node.start(&self.bin);
        self.nodes.push(node);
        id
    }

    /// Every node's gRPC address, comma separated (for `--endpoints`).
    pub fn endpoints(&self) -> String {
        self.nodes.iter().map(|n| n.grpc.as_str()).collect::<Vec<_>>().join(",")
    }

    /// A client over every node.
    pub fn client(&self) -> Client {
        let eps: Vec<&str> = self.nodes.iter().map(|n| n.grpc.as_str()).collect();
        Client::new(&eps, self.client_options().with_retry_deadline(Duration::from_secs(30))).expect("client")
    }

    /// Client options that reach this cluster (its CA and `root` client
    /// certificate when it serves TLS).
    pub fn client_options(&self) -> ClientOptions {
        match &self.tls {
            Some(t) => t.client_options("root"),
            None => ClientOptions::new(),
        }
    }

    /// Waits until every running node is a member and sees the same leader;
    /// returns the leader's id.
    pub async fn wait_ready(&self) -> u64 {
        self.wait_ready_without(&[]).await
    }

    /// Running nodes that are not in `skip` (nodes removed from the
    /// cluster but still running).
    fn members_without<'a>(&'a self, skip: &'a [u64]) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes
            .iter()
            .filter(move |n| n.child.is_some() && !skip.contains(&n.id))
    }

    /// [`Cluster::wait_ready`] ignoring the nodes in `skip`.
    pub async fn wait_ready_without(&self, skip: &[u64]) -> u64 {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            let mut leaders = std::collections::BTreeSet::new();
            let mut all = true;
            for n in self.members_without(skip) {
                let st = n.client().status_all().await;
                match st.first().map(|(_, r)| r) {
                    Some(Ok(s)) if !s.cluster_id.is_empty() && s.groups.first().is_some_and(|g| g.leader_id != 0) => {
                        leaders.insert(s.groups[0].leader_id);
                    }
                    _ => all = false,
                }
            }
            if all && leaders.len() == 1 {
                return *leaders.iter().next().expect("one leader");
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- node {} ---\n{}", n.id, n.log()))
                    .collect();
                panic!("cluster not ready within {READY_DEADLINE:?}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the meta leader reports every revision up to the current
    /// one relayed to the audit trail; returns that revision.
    pub async fn wait_audit_caught_up(&self) -> u64 {
        self.wait_audit_caught_up_as(&self.client()).await
    }

    /// [`Cluster::wait_audit_caught_up`], asking through `client` (one
    /// with credentials, once auth is on; it must know every endpoint).
    pub async fn wait_audit_caught_up_as(&self, client: &Client) -> u64 {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            let mut last = String::new();
            for (uri, s) in client.status_all().await {
                let s = match s {
                    Ok(s) => s,
                    Err(e) => {
                        last = format!("{uri}: {e}");
                        continue;
                    }
                };
                let Some(meta) = s.groups.first() else { continue };
                if meta.leader_id == s.node_id {
                    let revision = s.header.as_ref().map_or(0, |h| h.revision);
                    if s.audit_lag == 0 && s.audit_relayed_revision == revision {
                        return revision;
                    }
                    last = format!(
                        "revision {revision}, relayed {}, lag {}",
                        s.audit_relayed_revision, s.audit_lag
                    );
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let relay: Vec<String> = self
                    .nodes
                    .iter()
                    .flat_map(|n| {
                        n.log()
                            .lines()
                            .filter(|l| l.contains("audit"))
                            .map(|l| format!("node {}: {l}", n.id))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                panic!(
                    "the audit relay did not catch up within {READY_DEADLINE:?}: {last}\n{}",
                    relay[relay.len().saturating_sub(40)..].join("\n")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every running node has applied, in every group (meta
    /// and event partitions), at least what that group's leader committed.
    pub async fn wait_converged(&self) {
        self.wait_converged_without(&[]).await
    }

    /// [`Cluster::wait_converged`] ignoring the nodes in `skip`.
    pub async fn wait_converged_without(&self, skip: &[u64]) {
        self.wait_ready_without(skip).await;
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            let mut statuses = Vec::new();
            for n in self.members_without(skip) {
                if let Some((_, Ok(s))) = n.client().status_all().await.first() {
                    statuses.push(s.clone());
                }
            }
            let running = self.members_without(skip).count();
            // Every node sees the same placement, planned over the meta
            // voters ([`PARTITION_REPLICAS`] each); every replica (a group
            // the node holds) applied what its leader committed, and each
            // leader's membership is the planned one.
            let placed = |s: &esf_client::pb::StatusResponse| {
                let Some(meta) = s.groups.first() else { return false };
                let rf = PARTITION_REPLICAS.min(meta.voters.len());
                s.groups.iter().skip(1).all(|g| {
                    g.planned.len() == rf
                        && g.planned.iter().all(|n| meta.voters.contains(n))
                        && statuses
                            .iter()
                            .all(|o| o.groups.get(g.group as usize).is_some_and(|og| og.planned == g.planned))
                })
            };
            let converged = statuses.len() == running
                && statuses.iter().all(placed)
                && statuses.iter().all(|s| {
                    s.groups.iter().filter(|g| g.held).all(|g| {
                        let leader = statuses
                            .iter()
                            .find(|l| l.node_id == g.leader_id)
                            .and_then(|l| l.groups.iter().find(|lg| lg.group == g.group));
                        g.leader_id != 0
                            && leader.is_some_and(|l| {
                                let mut voters = l.voters.clone();
                                let mut planned = l.planned.clone();
                                voters.sort_unstable();
                                planned.sort_unstable();
                                g.applied_index >= l.commit_index
                                    && l.voters.contains(&g.leader_id)
                                    && (planned.is_empty() || (voters == planned && l.learners.is_empty()))
                            })
                    })
                });
            if converged {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "groups did not converge within {READY_DEADLINE:?}: {statuses:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The leader of group `group` as node `via` sees it (0: none).
    pub async fn group_leader(&self, via: u64, group: u32) -> u64 {
        match self.node(via).client().status_all().await.first() {
            Some((_, Ok(s))) => s.groups.iter().find(|g| g.group == group).map_or(0, |g| g.leader_id),
            _ => 0,
        }
    }

    /// The id of a node other than `id` (e.g. a follower of leader `id`).
    pub fn other_than(&self, id: u64) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.id)
            .find(|n| *n != id)
            .expect("a cluster of more than one node")
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    /// Node `id`, mutable.
    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }
}

/// Every event of partition `p` from `client`'s node, in offset order
/// (serializable reads: that node's replica when it holds one).
pub async fn read_whole_partition(client: &Client, p: u32) -> esf_client::Result<Vec<esf_client::pb::RecordedEvent>> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let r = client
            .read_partition(esf_client::pb::ReadPartitionRequest {
                partition: p,
                from_offset: from,
                limit: 0,
                serializable: true,
            })
            .await?;
        if r.events.is_empty() {
            return Ok(out);
        }
        out.extend(r.events);
        from = r.next_offset;
    }
}

/// A long-running `esf` CLI command (a keeper, a watch) whose stdout lines
/// are collected as they come; killed on drop.
pub struct CliProcess {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CliProcess {
    /// Starts `esf args...`.
    pub fn spawn(bin: &Path, args: &[&str]) -> CliProcess {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn esf");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines lock").push(line);
            }
        });
        CliProcess { child, lines }
    }

    /// Stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Waits (polling, against [`READY_DEADLINE`]) until `n` stdout lines
    /// contain `needle`.
    pub async fn wait_lines(&self, needle: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            let lines = self.lines();
            if lines.iter().filter(|l| l.contains(needle)).count() >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} lines with {needle:?} within {READY_DEADLINE:?}: {lines:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends `signal` (a `kill` signal name such as TERM or KILL) and waits
    /// for the exit status.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        self.child.wait().expect("wait for esf")
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `esf` CLI; returns (exit code, stdout, stderr).
pub fn cli(bin: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("run esf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli`] with `input` on its stdin.
pub fn cli_with_stdin(bin: &Path, args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run esf");
    let mut stdin = child.stdin.take().expect("stdin pipe");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for esf");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
