//! Node settings, layered: defaults < TOML file (`--config`) < `ESF_*`
//! environment < command-line flags. Errors name the source of the bad value
//! (figment reports the file or the environment variable).

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Longest token lifetime `auth_token_ttl_secs` accepts: a week.
pub const MAX_AUTH_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// Settings of `esf serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (1..); persisted in the data dir at first start.
    pub node_id: u64,
    /// Data directory.
    pub data_dir: PathBuf,
    /// gRPC bind address.
    pub listen: String,
    /// Address peers and clients use; defaults to `listen`.
    pub advertise: Option<String>,
    /// Admin HTTP bind address (/livez, /readyz, /metrics).
    pub admin_listen: String,
    /// Peers' gRPC addresses.
    pub join: Vec<String>,
    /// File holding the cluster's peer secret (printable ASCII, 16 to 1024
    /// bytes; the same on every node). Nodes prove themselves to each other
    /// with it on Raft traffic and forwarded requests. Required with
    /// `join`; a node without one runs a single-node cluster only.
    pub peer_secret_file: Option<PathBuf>,
    /// The cluster forms once this many nodes (including this one) see each other.
    pub bootstrap_expect: u64,
    /// RocksDB block cache + memtable budget, MiB.
    pub memory_budget_mb: u64,
    /// Raft heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// Raft election timeout (lower bound; the upper is twice it), ms.
    pub election_timeout_ms: u64,
    /// Deadline of proposals and linearizable reads, ms.
    pub request_timeout_ms: u64,
    /// Apply lag (entries) above which /readyz reports not ready.
    pub max_apply_lag: u64,
    /// Leadership hand-over deadline on SIGTERM, ms.
    pub drain_timeout_ms: u64,
    /// Storage quota of the state machines (the `sm` column family), bytes.
    /// Past it, writes that add data fail; reads, deletes, lease revokes and
    /// compaction still work.
    pub quota_bytes: u64,
    /// Log filter (tracing env-filter syntax); `RUST_LOG` overrides.
    pub log_level: String,
    /// `text` (one human-readable line per event) or `json` (one JSON
    /// object per line, with `node`, the event's fields flattened, and the
    /// span it happened in, e.g. `{"name":"raft","group":3}`).
    pub log_format: String,
    /// Event partitions of a new cluster (1..=256). Fixed when the cluster
    /// is created and recorded in meta; a node of an existing cluster uses
    /// the recorded count.
    pub partitions: u32,
    /// Replicas of each event partition (1..=7; fewer while the cluster has
    /// fewer voters). Planned by the meta leader: give every node the same.
    pub partition_replicas: u32,
    /// Read every stored block once at start and refuse to start on
    /// damage (see docs/operations.md, "Damaged storage").
    pub verify_on_start: bool,
    /// A Raft group snapshots its state machine after this many log
    /// entries since its last snapshot.
    pub snapshot_logs: u64,
    /// Log entries a group keeps behind its last snapshot, so a follower
    /// that lags by fewer catches up from the log instead of a snapshot.
    pub snapshot_keep_logs: u64,
    /// Snapshot size, MiB, that adds another `snapshot_logs` entries to the
    /// wait before a group's next snapshot: a group whose last snapshot
    /// was 100 MiB snapshots every 4 x `snapshot_logs` entries with 32. 0:
    /// every `snapshot_logs` entries whatever the size.
    pub snapshot_step_mb: u64,
    /// Most concurrent meta writes (puts, single-key deletes, txns of
    /// those) the meta leader coalesces into one Raft entry; 0 or 1: each
    /// write is its own entry.
    pub propose_batch_max: usize,
    /// A coalesced entry takes no more writes past this many bytes of keys
    /// and values.
    pub propose_batch_max_bytes: usize,
    /// Meta proposals in Raft at once; writes arriving meanwhile wait and
    /// are coalesced into the next entry.
    pub propose_max_inflight: usize,
    /// How often each partition leader applies the retention rules, ms.
    pub retention_interval_ms: u64,
    /// Free space, MiB, the data dir's file system must keep: below it
    /// the node refuses writes it leads, hands every leadership to another
    /// voter, takes no new log entries and reports not ready, until a
    /// quarter more than this is free again (docs/operations.md, "Full
    /// disk"). 0: off.
    pub min_free_disk_mb: u64,
    /// How often the free space is looked at, ms.
    pub disk_check_interval_ms: u64,
    /// How long a token from `Auth/Authenticate` stays valid, seconds
    /// (etcd's `--auth-token-ttl`). Clients of esf-client authenticate
    /// again when theirs expires.
    pub auth_token_ttl_secs: u64,
    /// TLS (docs/security.md): the certificate chain (PEM) the gRPC and
    /// admin ports present. TLS is off without it.
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to with
    /// `client_cert_auth`; also verifies other nodes when
    /// `peer_trusted_ca_file` is not given.
    pub trusted_ca_file: Option<PathBuf>,
    /// Every connection (gRPC and admin) must present a client certificate
    /// that chains to `trusted_ca_file` or `peer_trusted_ca_file`.
    pub client_cert_auth: bool,
    /// The certificate (PEM) this node presents when it dials other nodes;
    /// `cert_file` when not given.
    pub peer_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `peer_cert_file`.
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) other nodes' certificates must chain to;
    /// `trusted_ca_file` when not given.
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// TLS files are looked at for changes at most this often, ms (on
    /// use); changed ones are loaded again without a restart.
    pub tls_reload_interval_ms: u64,
    /// Deadline of a TLS handshake on the gRPC and admin ports, ms: a
    /// client that connects and says nothing is dropped after it.
    pub tls_handshake_timeout_ms: u64,
    /// Gossip UDP bind address; defaults to `listen` (the same port
    /// number, on UDP).
    pub gossip_listen: Option<String>,
    /// Gossip address other nodes use; defaults to `advertise` (UDP).
    pub gossip_advertise: Option<String>,
    /// Time between gossip rounds (and heartbeats), ms.
    pub gossip_interval_ms: u64,
    /// chitchat's phi (time since the last heartbeat over the mean gap)
    /// above which a node is dead.
    pub gossip_phi_threshold: f64,
    /// A dead node's gossip state is forgotten after this long, s.
    pub gossip_dead_grace_secs: u64,
    /// How often the node checks run, ms.
    pub check_interval_ms: u64,
    /// A WAL fsync slower than this is a warning, ms.
    pub fsync_warn_ms: u64,
    /// A WAL fsync slower than this (or failing) is critical, ms.
    pub fsync_critical_ms: u64,
    /// Resident memory above this is a warning, MiB (0: memory_budget_mb
    /// plus 512).
    pub max_rss_mb: u64,
    /// A peer's clock further than this from ours is a warning, ms.
    pub max_clock_offset_ms: u64,
    /// After this many storage checks in a row critical, the node hands
    /// its leadership over and leads nothing...
    pub evacuate_after_checks: u32,
    /// ... until this many in a row are not critical.
    pub return_after_checks: u32,
    /// The meta leader promotes spare learners and replaces dead voters
    /// (docs/operations.md, "Autopilot").
    pub autopilot: bool,
    /// Voters autopilot keeps the cluster at (0: `bootstrap_expect`).
    pub autopilot_voters: u32,
    /// How often autopilot looks, ms.
    pub autopilot_interval_ms: u64,
    /// A voter dead (by gossip and by the leader's last contact) this long
    /// is replaced or removed, s.
    pub autopilot_dead_after_secs: u64,
    /// A learner is promoted after being a good spare this long; also the
    /// least time between two autopilot changes, s.
    pub autopilot_stabilization_secs: u64,
    /// A learner further behind the leader's log than this is no spare.
    pub autopilot_max_trailing_logs: u64,
    /// A node started with `join` that finds a cluster it is not a member
    /// of asks the leader to add it as a learner (off: it waits for `esf
    /// member add`).
    pub auto_join: bool,
}

/// Default of `tls_reload_interval_ms`.
pub const DEFAULT_TLS_RELOAD_INTERVAL_MS: u64 = 1_000;
/// Default of `tls_handshake_timeout_ms`.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 1,
            data_dir: PathBuf::from("esf-data"),
            listen: "127.0.0.1:2379".into(),
            advertise: None,
            admin_listen: "127.0.0.1:2380".into(),
            join: Vec::new(),
            peer_secret_file: None,
            bootstrap_expect: 1,
            memory_budget_mb: 256,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            request_timeout_ms: 5000,
            max_apply_lag: 1000,
            drain_timeout_ms: 5000,
            quota_bytes: 8 << 30,
            log_level: "info".into(),
            log_format: "text".into(),
            partitions: crate::cluster::partitions::DEFAULT_PARTITIONS,
            partition_replicas: crate::cluster::placement::DEFAULT_PARTITION_REPLICAS,
            verify_on_start: true,
            snapshot_logs: 10_000,
            snapshot_keep_logs: 1_000,
            snapshot_step_mb: 32,
            propose_batch_max: 256,
            propose_batch_max_bytes: 1 << 20,
            propose_max_inflight: 2,
            retention_interval_ms: 10_000,
            min_free_disk_mb: 256,
            disk_check_interval_ms: 1_000,
            auth_token_ttl_secs: 300,
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            tls_reload_interval_ms: DEFAULT_TLS_RELOAD_INTERVAL_MS,
            tls_handshake_timeout_ms: DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
            gossip_listen: None,
            gossip_advertise: None,
            gossip_interval_ms: 500,
            gossip_phi_threshold: 8.0,
            gossip_dead_grace_secs: 3600,
            check_interval_ms: 1_000,
            fsync_warn_ms: 500,
            fsync_critical_ms: 5_000,
            max_rss_mb: 0,
            max_clock_offset_ms: 500,
            evacuate_after_checks: 3,
            return_after_checks: 10,
            autopilot: true,
            autopilot_voters: 0,
            autopilot_interval_ms: 1_000,
            autopilot_dead_after_secs: 30,
            autopilot_stabilization_secs: 10,
            autopilot_max_trailing_logs: 250,
            auto_join: true,
        }
    }
}

/// Flag values given on the command line (only those given override).
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct Flags {
    /// TOML config file.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Node id.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Data directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// gRPC bind address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Advertised gRPC address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Admin HTTP bind address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Peers' gRPC addresses, comma separated.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<String>>,
    /// File with the cluster's peer secret (the same on every node).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_secret_file: Option<PathBuf>,
    /// Form the cluster once this many nodes see each other.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_expect: Option<u64>,
    /// Memory budget, MiB.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_mb: Option<u64>,
    /// Raft heartbeat, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Raft election timeout, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<u64>,
    /// Request deadline, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Log filter.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Storage quota of the state machines, bytes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// Event partitions of a new cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Replicas of each event partition.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_replicas: Option<u32>,
    /// Verify every stored block's checksum at start (true/false).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_on_start: Option<bool>,
    /// Snapshot a group after this many log entries.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_logs: Option<u64>,
    /// Log entries kept behind a snapshot.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_keep_logs: Option<u64>,
    /// Snapshot MiB that each add `snapshot_logs` entries between snapshots (0: off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_step_mb: Option<u64>,
    /// Most meta writes coalesced into one Raft entry (0 or 1: off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propose_batch_max: Option<usize>,
    /// Bytes of keys and values after which a coalesced entry is closed.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propose_batch_max_bytes: Option<usize>,
    /// Meta proposals in Raft at once (at least 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propose_max_inflight: Option<usize>,
    /// How often partition leaders apply the retention rules, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_interval_ms: Option<u64>,
    /// Free MiB the data dir must keep; below it writes are refused here
    /// and leadership moves away (0: off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_disk_mb: Option<u64>,
    /// How often free disk space is checked, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_check_interval_ms: Option<u64>,
    /// Token lifetime, seconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token_ttl_secs: Option<u64>,
    /// TLS certificate (PEM) of the gRPC and admin ports; TLS is off without it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CA (PEM) client certificates must chain to; verifies peers without --peer-trusted-ca-file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file or --peer-trusted-ca-file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_auth: Option<bool>,
    /// Certificate (PEM) presented when dialling other nodes (default: --cert-file).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file (default: --key-file).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_key_file: Option<PathBuf>,
    /// CA (PEM) other nodes' certificates must chain to (default: --trusted-ca-file).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// TLS files are looked at for changes at most this often, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_reload_interval_ms: Option<u64>,
    /// Deadline of a TLS handshake, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Gossip UDP bind address (default: --listen, on UDP).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_listen: Option<String>,
    /// Gossip address other nodes use (default: --advertise, on UDP).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_advertise: Option<String>,
    /// Time between gossip rounds, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_interval_ms: Option<u64>,
    /// Phi above which gossip marks a node dead.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_phi_threshold: Option<f64>,
    /// A dead node's gossip state is forgotten after this long, s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_dead_grace_secs: Option<u64>,
    /// How often the node checks run, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_interval_ms: Option<u64>,
    /// A WAL fsync slower than this is a warning, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_warn_ms: Option<u64>,
    /// A WAL fsync slower than this (or failing) is critical, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_critical_ms: Option<u64>,
    /// Resident memory above this is a warning, MiB (0: memory budget + 512).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rss_mb: Option<u64>,
    /// A peer clock further than this is a warning, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clock_offset_ms: Option<u64>,
    /// Storage checks critical in a row before the node stops leading.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evacuate_after_checks: Option<u32>,
    /// Storage checks not critical in a row before it may lead again.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_after_checks: Option<u32>,
    /// Autopilot on the meta leader: promote spares, replace dead voters.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autopilot: Option<bool>,
    /// Voters autopilot keeps the cluster at (0: --bootstrap-expect).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autopilot_voters: Option<u32>,
    /// How often autopilot looks, ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autopilot_interval_ms: Option<u64>,
    /// A voter dead this long is replaced or removed, s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autopilot_dead_after_secs: Option<u64>,
    /// A learner must be a good spare this long before promotion, s.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autopilot_stabilization_secs: Option<u64>,
    /// A learner further behind than this many entries is no spare.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autopilot_max_trailing_logs: Option<u64>,
    /// Ask the leader to add this node as a learner when it finds a cluster.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_join: Option<bool>,
}

/// Builds the layered configuration and validates it.
pub fn load(file: Option<&std::path::Path>, flags: &Flags) -> anyhow::Result<NodeConfig> {
    let mut fig = Figment::from(Serialized::defaults(NodeConfig::default()));
    if let Some(f) = file {
        if !f.exists() {
            anyhow::bail!("config file {}: does not exist", f.display());
        }
        fig = fig.merge(Toml::file(f));
    }
    fig = fig.merge(Env::prefixed("ESF_").ignore(&[
        "join",
        "endpoints",
        "output",
        "cluster_id",
        "failpoints",
        // The CLI's TLS files (`esf --cacert`), not the node's.
        "cacert",
        "cert",
        "key",
    ]));
    if let Ok(join) = std::env::var("ESF_JOIN") {
        let list: Vec<String> = join
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        fig = fig.merge(Serialized::default("join", list));
    }
    fig = fig.merge(Serialized::defaults(flags));
    let cfg: NodeConfig = fig.extract().map_err(|e| anyhow::anyhow!("{e}"))?;
    validate(&cfg)?;
    Ok(cfg)
}

/// Checks values that parse but make no sense.
pub fn validate(c: &NodeConfig) -> anyhow::Result<()> {
    let check_addr = |field: &str, v: &str| -> anyhow::Result<()> {
        esf_proto::wire::parse_endpoint(v)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{field}: {e}"))
    };
    if c.node_id == 0 {
        anyhow::bail!("node_id: must be at least 1");
    }
    check_addr("listen", &c.listen)?;
    check_addr("admin_listen", &c.admin_listen)?;
    if let Some(a) = &c.advertise {
        check_addr("advertise", a)?;
    }
    for (i, j) in c.join.iter().enumerate() {
        check_addr(&format!("join[{i}]"), j)?;
    }
    if !c.join.is_empty() && c.peer_secret_file.is_none() {
        anyhow::bail!(
            "peer_secret_file: required with join: nodes prove themselves to each other with the cluster's peer secret \
             (write one with `head -c 32 /dev/urandom | base64 > FILE` and give every node the same FILE)"
        );
    }
    if c.bootstrap_expect == 0 {
        anyhow::bail!("bootstrap_expect: must be at least 1");
    }
    if c.bootstrap_expect > 1 && c.join.is_empty() {
        anyhow::bail!(
            "join: bootstrap_expect is {} but no peers are given to join",
            c.bootstrap_expect
        );
    }
    if c.heartbeat_interval_ms == 0 || c.election_timeout_ms <= c.heartbeat_interval_ms * 2 {
        anyhow::bail!(
            "election_timeout_ms: must be more than twice heartbeat_interval_ms ({})",
            c.heartbeat_interval_ms
        );
    }
    if !(1..=MAX_AUTH_TOKEN_TTL_SECS).contains(&c.auth_token_ttl_secs) {
        anyhow::bail!(
            "auth_token_ttl_secs: {} is outside 1..={MAX_AUTH_TOKEN_TTL_SECS} (a week)",
            c.auth_token_ttl_secs
        );
    }
    if !matches!(c.log_format.as_str(), "text" | "json") {
        anyhow::bail!("log_format: {:?} is neither \"text\" nor \"json\"", c.log_format);
    }
    if !(10..=60_000).contains(&c.disk_check_interval_ms) {
        anyhow::bail!(
            "disk_check_interval_ms: {} is outside 10..=60000",
            c.disk_check_interval_ms
        );
    }
    if let Some(a) = &c.gossip_listen {
        check_addr("gossip_listen", a)?;
    }
    if let Some(a) = &c.gossip_advertise {
        check_addr("gossip_advertise", a)?;
    }
    if !(50..=60_000).contains(&c.gossip_interval_ms) {
        anyhow::bail!("gossip_interval_ms: {} is outside 50..=60000", c.gossip_interval_ms);
    }
    if !(c.gossip_phi_threshold.is_finite() && (1.0..=100.0).contains(&c.gossip_phi_threshold)) {
        anyhow::bail!("gossip_phi_threshold: {} is outside 1..=100", c.gossip_phi_threshold);
    }
    if c.gossip_dead_grace_secs < 60 {
        anyhow::bail!(
            "gossip_dead_grace_secs: {} is under the minimum of 60",
            c.gossip_dead_grace_secs
        );
    }
    if !(100..=60_000).contains(&c.check_interval_ms) {
        anyhow::bail!("check_interval_ms: {} is outside 100..=60000", c.check_interval_ms);
    }
    if c.fsync_warn_ms == 0 || c.fsync_critical_ms <= c.fsync_warn_ms {
        anyhow::bail!(
            "fsync_critical_ms: {} must be above fsync_warn_ms ({}), which must be at least 1",
            c.fsync_critical_ms,
            c.fsync_warn_ms
        );
    }
    if c.autopilot_voters > 7 {
        anyhow::bail!("autopilot_voters: {} is over 7", c.autopilot_voters);
    }
    if !(100..=60_000).contains(&c.autopilot_interval_ms) {
        anyhow::bail!(
            "autopilot_interval_ms: {} is outside 100..=60000",
            c.autopilot_interval_ms
        );
    }
    if c.autopilot_dead_after_secs < 5 {
        anyhow::bail!(
            "autopilot_dead_after_secs: {} is under the minimum of 5 (a node must be missed longer than gossip needs to call it dead)",
            c.autopilot_dead_after_secs
        );
    }
    if c.evacuate_after_checks == 0 || c.return_after_checks == 0 {
        anyhow::bail!("evacuate_after_checks and return_after_checks: must be at least 1");
    }
    if c.retention_interval_ms < 100 {
        anyhow::bail!(
            "retention_interval_ms: {} is under the minimum of 100",
            c.retention_interval_ms
        );
    }
    if c.snapshot_logs == 0 {
        anyhow::bail!("snapshot_logs: must be at least 1");
    }
    if c.propose_batch_max > 10_000 {
        anyhow::bail!(
            "propose_batch_max: {} is over 10000 (one entry would hold too many writes to replicate in one message)",
            c.propose_batch_max
        );
    }
    if !(1024..=(16 << 20)).contains(&c.propose_batch_max_bytes) {
        anyhow::bail!(
            "propose_batch_max_bytes: {} is outside 1024..=16777216 (16 MiB)",
            c.propose_batch_max_bytes
        );
    }
    if !(1..=64).contains(&c.propose_max_inflight) {
        anyhow::bail!("propose_max_inflight: {} is outside 1..=64", c.propose_max_inflight);
    }
    if c.snapshot_step_mb > 1 << 30 {
        anyhow::bail!("snapshot_step_mb: must be at most {} (1 PiB)", 1u64 << 30);
    }
    if c.memory_budget_mb < 16 {
        anyhow::bail!("memory_budget_mb: must be at least 16");
    }
    if c.partitions == 0 || c.partitions > crate::cluster::partitions::MAX_PARTITIONS {
        anyhow::bail!(
            "partitions: must be 1 to {}, not {}",
            crate::cluster::partitions::MAX_PARTITIONS,
            c.partitions
        );
    }
    if c.partition_replicas == 0 || c.partition_replicas > crate::cluster::placement::MAX_PARTITION_REPLICAS {
        anyhow::bail!(
            "partition_replicas: must be 1 to {}, not {}",
            crate::cluster::placement::MAX_PARTITION_REPLICAS,
            c.partition_replicas
        );
    }
    if c.request_timeout_ms == 0 {
        anyhow::bail!("request_timeout_ms: must be at least 1");
    }
    validate_tls(c)
}

/// Checks which TLS settings go together (the files themselves are read
/// and checked when the node starts: `net::tls::NodeTls::load`).
fn validate_tls(c: &NodeConfig) -> anyhow::Result<()> {
    let pair = |a: (&str, &Option<PathBuf>), b: (&str, &Option<PathBuf>)| -> anyhow::Result<()> {
        match (a.1, b.1) {
            (Some(_), None) => anyhow::bail!("{}: needs {} (the certificate's private key)", a.0, b.0),
            (None, Some(_)) => anyhow::bail!("{}: needs {} (the key's certificate)", b.0, a.0),
            _ => Ok(()),
        }
    };
    pair(("--cert-file", &c.cert_file), ("--key-file", &c.key_file))?;
    pair(
        ("--peer-cert-file", &c.peer_cert_file),
        ("--peer-key-file", &c.peer_key_file),
    )?;
    if c.cert_file.is_none() {
        let needs_tls = [
            ("--trusted-ca-file", c.trusted_ca_file.is_some()),
            ("--client-cert-auth", c.client_cert_auth),
            ("--peer-cert-file", c.peer_cert_file.is_some()),
            ("--peer-trusted-ca-file", c.peer_trusted_ca_file.is_some()),
        ];
        if let Some((flag, _)) = needs_tls.iter().find(|(_, set)| *set) {
            anyhow::bail!(
                "{flag}: needs --cert-file and --key-file: TLS is off without them (clients and other nodes \
                 share one port, so node-to-node TLS needs the node's own certificate too)"
            );
        }
        return Ok(());
    }
    if c.client_cert_auth && c.trusted_ca_file.is_none() {
        anyhow::bail!("--client-cert-auth: needs --trusted-ca-file (the CA that signed the clients' certificates)");
    }
    if c.trusted_ca_file.is_none() && c.peer_trusted_ca_file.is_none() {
        anyhow::bail!(
            "--trusted-ca-file: nodes dial each other over TLS and verify each other's certificates: \
             give the CA that signed them (--trusted-ca-file, or --peer-trusted-ca-file for node-to-node only)"
        );
    }
    if c.tls_handshake_timeout_ms == 0 {
        anyhow::bail!("tls_handshake_timeout_ms: must be at least 1");
    }
    Ok(())
}

impl NodeConfig {
    /// The advertised gRPC address.
    pub fn advertise(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.clone())
    }

    /// Where gossip binds: `gossip_listen`, else `listen` (on UDP).
    pub fn gossip_listen(&self) -> String {
        self.gossip_listen.clone().unwrap_or_else(|| self.listen.clone())
    }

    /// Where other nodes send gossip: `gossip_advertise`, else the
    /// advertised gRPC address (on UDP).
    pub fn gossip_advertise(&self) -> String {
        self.gossip_advertise.clone().unwrap_or_else(|| self.advertise())
    }

    /// Voters autopilot keeps: `autopilot_voters`, else `bootstrap_expect`.
    pub fn autopilot_voters(&self) -> usize {
        if self.autopilot_voters == 0 {
            self.bootstrap_expect as usize
        } else {
            self.autopilot_voters as usize
        }
    }

    /// `max_rss_mb` in bytes, with its default.
    pub fn max_rss_bytes(&self) -> u64 {
        let mb = if self.max_rss_mb == 0 {
            self.memory_budget_mb + 512
        } else {
            self.max_rss_mb
        };
        mb << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_that_do_not_go_together_name_the_flag() {
        let f = |s: &str| Some(PathBuf::from(s));
        let tls = NodeConfig {
            cert_file: f("n.pem"),
            key_file: f("k.pem"),
            trusted_ca_file: f("ca.pem"),
            ..NodeConfig::default()
        };
        assert!(validate(&tls).is_ok());
        assert!(validate(&NodeConfig::default()).is_ok());
        let cases: Vec<(NodeConfig, &str)> = vec![
            (
                NodeConfig {
                    key_file: None,
                    ..tls.clone()
                },
                "--cert-file: needs --key-file",
            ),
            (
                NodeConfig {
                    cert_file: None,
                    trusted_ca_file: None,
                    ..tls.clone()
                },
                "--key-file: needs --cert-file",
            ),
            (
                NodeConfig {
                    peer_cert_file: f("p.pem"),
                    ..tls.clone()
                },
                "--peer-cert-file: needs --peer-key-file",
            ),
            (
                NodeConfig {
                    cert_file: None,
                    key_file: None,
                    ..tls.clone()
                },
                "--trusted-ca-file: needs --cert-file",
            ),
            (
                NodeConfig {
                    client_cert_auth: true,
                    ..NodeConfig::default()
                },
                "--client-cert-auth: needs --cert-file",
            ),
            (
                NodeConfig {
                    client_cert_auth: true,
                    trusted_ca_file: None,
                    peer_trusted_ca_file: f("p.pem"),
                    ..tls.clone()
                },
                "--client-cert-auth: needs --trusted-ca-file",
            ),
            (
                NodeConfig {
                    trusted_ca_file: None,
                    ..tls.clone()
                },
                "--trusted-ca-file: nodes dial each other",
            ),
            (
                NodeConfig {
                    tls_handshake_timeout_ms: 0,
                    ..tls.clone()
                },
                "tls_handshake_timeout_ms",
            ),
        ];
        for (cfg, want) in cases {
            let e = validate(&cfg).expect_err(want).to_string();
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn client_cert_auth_is_a_bare_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            flags: Flags,
        }
        let s = Serve::try_parse_from(["esf", "--client-cert-auth", "--cert-file", "n.pem"]).expect("parse");
        assert_eq!(s.flags.client_cert_auth, Some(true));
        let s = Serve::try_parse_from(["esf", "--client-cert-auth=false"]).expect("parse");
        assert_eq!(s.flags.client_cert_auth, Some(false));
    }
}
