//! Command-line interface: `esf serve`, `esf config validate`, and client
//! commands (kv, lease, registry, events, snapshot, member, endpoint,
//! leader).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use esf_client::{Client, ClientOptions, key_range_key, key_range_prefix, pb};
use serde_json::{Value, json};

use crate::audit::STREAM as AUDIT_STREAM;
use crate::config::{self, Flags};

/// ESF: configuration, registry and events on Raft.
#[derive(Debug, Parser)]
#[command(name = "esf", version, about)]
pub struct Cli {
    /// gRPC endpoints of the cluster, comma separated.
    #[arg(
        long,
        global = true,
        env = "ESF_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, env = "ESF_OUTPUT", default_value = "table")]
    output: Output,
    /// Deadline of a client call including retries, in seconds.
    #[arg(long, global = true, default_value_t = 15)]
    timeout_secs: u64,
    /// Only talk to nodes of this cluster (default: the first that answers).
    #[arg(long, global = true, env = "ESF_CLUSTER_ID")]
    cluster_id: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Serve(Flags),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Key-value store.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Leases (keys that expire unless kept alive).
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Service registry.
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// Backups: save a snapshot of a live cluster, restore it offline.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Event store: append, read, subscribe.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Durable named subscriptions.
    #[command(subcommand)]
    Subscription(SubscriptionCmd),
    /// The audit trail: one event per revision of config, registry and
    /// subscription state, in stream $audit.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Cluster membership.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Per-endpoint status and health.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCmd),
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Print audit events, oldest first: the last --limit, or every one
    /// from --from-revision; --follow keeps printing new ones.
    Tail {
        /// How many of the latest to print (ignored with --from-revision).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print from the event of this revision on.
        #[arg(long)]
        from_revision: Option<u64>,
        /// Keep printing new events as they are appended.
        #[arg(long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Check a TOML config file (with the environment layered on top).
    Validate { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum LeaseCmd {
    /// Grant a lease; prints its id.
    Grant {
        /// Time to live in seconds.
        ttl_secs: u64,
        /// Lease id to use (default: the cluster picks one).
        #[arg(long, default_value_t = 0)]
        id: u64,
    },
    /// Revoke a lease and delete its keys.
    Revoke { id: u64 },
    /// Granted TTL and time left.
    Ttl {
        id: u64,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// Keep a lease alive: renews every third of its TTL until interrupted
    /// (or once with --once).
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCmd {
    /// Append one event (--type and --data), or a batch (--batch FILE, one
    /// JSON object per line: {"type", "data", "id", "correlation_id",
    /// "causation_id", "metadata"}; - reads stdin), atomically.
    Append {
        stream: String,
        #[arg(long = "type", required_unless_present = "batch")]
        event_type: Option<String>,
        /// JSON payload.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Event id (UUID; default: a random one).
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "")]
        correlation_id: String,
        #[arg(long, default_value = "")]
        causation_id: String,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta")]
        metadata: Vec<String>,
        /// any, no_stream, exists or a version number.
        #[arg(long, default_value = "any")]
        expected_version: String,
        #[arg(long, conflicts_with_all = ["event_type", "id"])]
        batch: Option<String>,
    },
    /// One event by id.
    Get {
        id: String,
        /// Its stream, if known.
        #[arg(long, default_value = "")]
        stream: String,
    },
    /// A stream's events (or, with --partition, a partition's).
    Read {
        #[arg(required_unless_present = "partition")]
        stream: Option<String>,
        /// First version (stream) or offset (partition).
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        backward: bool,
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long, conflicts_with = "stream")]
        partition: Option<u32>,
    },
    /// Find events across partitions by type, correlation id, time and
    /// JSON-field predicates, oldest first (--desc: newest first), a page at
    /// a time (--cursor continues one).
    Query {
        #[arg(long = "type", default_value = "")]
        event_type: String,
        #[arg(long, default_value = "")]
        correlation_id: String,
        /// Earliest timestamp, ms since the Unix epoch (inclusive).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Latest timestamp, ms since the Unix epoch (exclusive).
        #[arg(long, default_value_t = 0)]
        to: u64,
        /// "FIELD OP VALUE" on the JSON data (repeatable): OP is eq (=),
        /// lt (<), le (<=), gt (>), ge (>=), in (VALUE a JSON array) or
        /// exists (no VALUE); VALUE is JSON ("gold", 12, true).
        #[arg(long = "where")]
        predicates: Vec<String>,
        /// Newest first.
        #[arg(long)]
        desc: bool,
        /// Events per page (default 100, at most 1,000).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// The cursor a previous page printed.
        #[arg(long, default_value = "")]
        cursor: String,
        /// Print the index used and the rows examined.
        #[arg(long)]
        explain: bool,
        /// Only these partitions (repeatable).
        #[arg(long = "partition")]
        partitions: Vec<u32>,
    },
    /// Follow events (catch-up, then live), resuming on another node if
    /// this one goes away.
    Subscribe {
        /// Start at the end instead of the beginning.
        #[arg(long)]
        from_now: bool,
        /// Only this event type.
        #[arg(long = "type", default_value = "")]
        event_type: String,
        /// Only streams starting with this.
        #[arg(long, default_value = "")]
        stream_prefix: String,
        /// Only these partitions (repeatable).
        #[arg(long = "partition")]
        partitions: Vec<u32>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Tombstone a stream: its events are no longer returned and it cannot
    /// be appended to again.
    DeleteStream {
        stream: String,
        #[arg(long, default_value = "any")]
        expected_version: String,
    },
    /// Retention rules: how long, and how many bytes per partition, events
    /// are kept.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Declared indexes on JSON fields of event data (serve `eq`
    /// predicates of queries).
    #[command(subcommand)]
    Index(IndexCmd),
}

#[derive(Debug, Subcommand)]
enum IndexCmd {
    /// Declare an index on FIELD (a dotted path, e.g. customer.tier);
    /// older events are indexed in the background.
    Create { field: String },
    /// The declared indexes and how far the partitions built them.
    List,
    /// Drop the index on FIELD.
    Drop { field: String },
}

#[derive(Debug, Subcommand)]
enum RetentionCmd {
    /// Set the rule of a stream prefix (default: the cluster-wide rule).
    Set {
        /// Streams starting with this ("" every stream).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Remove events older than this: 500ms, 30s, 15m, 12h, 7d.
        #[arg(long)]
        max_age: Option<String>,
        /// Cluster-wide rule only: keep each partition to this many bytes
        /// of events (oldest removed first): 1048576, 512MiB, 10GiB.
        #[arg(long)]
        max_bytes: Option<String>,
    },
    /// The rules in force.
    List,
    /// Remove the rule of a prefix (default: the cluster-wide rule).
    Clear {
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// `--max-age` as milliseconds.
fn parse_age(field: &str, s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(at);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{field}: {s:?} is not a duration like 30s, 15m, 12h or 7d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("{field}: {s:?} needs a unit: ms, s, m, h or d"),
    };
    n.checked_mul(ms)
        .ok_or_else(|| anyhow::anyhow!("{field}: {s:?} is too long"))
}

/// `--max-bytes` as bytes.
fn parse_bytes(field: &str, s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(at);
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{field}: {s:?} is not a size like 1048576, 512MiB or 10GiB"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => anyhow::bail!("{field}: {s:?} has an unknown unit (B, KiB, MiB, GiB, TiB, KB, MB, GB)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("{field}: {s:?} is too large"))
}

fn retention_line(r: &pb::RetentionRule) -> String {
    format!(
        "{} max_age_ms={} max_bytes={}\n",
        if r.stream_prefix.is_empty() {
            "*"
        } else {
            &r.stream_prefix
        },
        r.max_age_ms,
        r.max_bytes
    )
}

#[derive(Debug, Subcommand)]
enum SubscriptionCmd {
    /// Create one (positions at the start of every partition, or the end
    /// with --from-now).
    Create {
        name: String,
        #[arg(long = "type", default_value = "")]
        event_type: String,
        #[arg(long, default_value = "")]
        stream_prefix: String,
        #[arg(long)]
        from_now: bool,
    },
    /// Every subscription with its positions.
    List,
    /// One subscription's filter and positions.
    Info {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Print its events from the acknowledged positions, acknowledging each
    /// response once printed. By default as a member of the subscription's
    /// consumer group (sharing its partitions with the other members,
    /// rebalanced as they come and go); with --member/--members as a fixed
    /// share.
    Consume {
        name: String,
        /// Fixed share: this consumer's index (0-based) ...
        #[arg(long, requires = "members")]
        member: Option<u32>,
        /// ... of this many consumers.
        #[arg(long, requires = "member")]
        members: Option<u32>,
        /// Group member: the lease TTL in seconds (the group drops a member
        /// that stops renewing after it).
        #[arg(long, default_value_t = 10)]
        ttl: u64,
        /// Group member: this consumer's id (default: generated).
        #[arg(long, default_value = "")]
        consumer_id: String,
        /// Exit after this many events (acknowledged up to the last one).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The members of a subscription's consumer group.
    Consumers {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCmd {
    /// Stream a consistent snapshot of every group from the leader into
    /// FILE (written to FILE.part, checked, then renamed).
    Save { file: PathBuf },
    /// Check FILE and print what it holds.
    Inspect { file: PathBuf },
    /// Seed the data directory of a new one-member cluster from FILE
    /// (offline; then start it with `esf serve` and the same node id,
    /// data dir and advertise address).
    Restore {
        file: PathBuf,
        /// New, empty (or absent) data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Id of the restored node.
        #[arg(long, default_value_t = 1)]
        node_id: u64,
        /// Address the restored node will advertise (its --advertise, or
        /// --listen if that is what it advertises).
        #[arg(long, default_value = "127.0.0.1:2379")]
        advertise: String,
    },
}

#[derive(Debug, Subcommand)]
enum RegistryCmd {
    /// Register an instance. With --ttl, grants a lease of that many
    /// seconds, binds the instance to it and keeps it alive until
    /// interrupted (SIGINT or SIGTERM revoke it, removing the instance; if
    /// this process dies, the instance goes when the TTL runs out).
    Register {
        service: String,
        id: String,
        /// host:port or URL where the instance is reached.
        address: String,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta")]
        metadata: Vec<String>,
        /// Bind to this existing lease.
        #[arg(long, default_value_t = 0, conflicts_with = "ttl")]
        lease: u64,
        /// Grant a lease of this many seconds and keep it alive.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove an instance.
    Deregister { service: String, id: String },
    /// Services with at least one instance.
    List,
    /// Instances of a service (with every --tag given).
    Get {
        service: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Print instances going up and down (every service if none is named).
    Watch {
        service: Option<String>,
        /// Start at this revision (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Exit after this many events (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum KvCmd {
    /// Print changes of a key (or prefix) as they happen.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Include the previous version of each key.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after this many events (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Set a key.
    Put {
        key: String,
        value: String,
        /// Attach to this lease.
        #[arg(long, default_value_t = 0)]
        lease: u64,
    },
    /// Read a key or, with --prefix, every key starting with it.
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Read at this revision.
        #[arg(long, default_value_t = 0)]
        rev: u64,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Local read of the answering node (may be stale).
        #[arg(long)]
        serializable: bool,
        #[arg(long)]
        keys_only: bool,
        #[arg(long)]
        count_only: bool,
    },
    /// Delete a key or, with --prefix, every key starting with it.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Transaction from JSON (argument or stdin), e.g.
    /// {"compare":[{"key":"k","target":"value","op":"=","value":"v"}],"success":[{"put":{"key":"k","value":"w"}}],"failure":[{"get":{"key":"k"}}]}
    Txn { spec: Option<String> },
    /// Every version of a key between two revisions.
    History {
        key: String,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// Drop history below a revision.
    Compact { revision: u64 },
}

#[derive(Debug, Subcommand)]
enum MemberCmd {
    /// Members and their roles.
    List,
    /// Add a node as a learner (it catches up without voting).
    Add { id: u64, addr: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
enum EndpointCmd {
    /// Role, term, leader, indexes, DB size and version of each endpoint.
    Status,
    /// Whether each endpoint answers and sees a leader; exit 1 if any does not.
    Health,
    /// Every event partition across the cluster: leader, term, planned
    /// replicas, members, and how far each replica's applied index lags
    /// its leader's commit index (every member is asked).
    Partitions,
}

#[derive(Debug, Subcommand)]
enum LeaderCmd {
    /// Move leadership to another voter.
    Transfer {
        /// Target node id (default: any other voter).
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
}

/// One row per event partition from every member's status: the view of
/// the highest-term node that reports leading it, its planned replicas,
/// and each replica's lag (leader commit index minus the replica's applied
/// index; null if the replica did not answer). False if some partition has
/// no leader.
fn partition_rows(all: &[(String, esf_client::Result<pb::StatusResponse>)]) -> (Vec<Value>, bool) {
    let views: Vec<&pb::StatusResponse> = all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    let count = views
        .iter()
        .map(|s| s.groups.len().saturating_sub(1))
        .max()
        .unwrap_or(0) as u32;
    let mut ok = true;
    let rows = (1..=count)
        .map(|p| {
            let of = |s: &pb::StatusResponse| s.groups.iter().find(|g| g.group == p).cloned();
            let leader = views
                .iter()
                .filter_map(|s| of(s))
                .filter(|g| g.role == "leader")
                .max_by_key(|g| g.term);
            let planned = views.iter().filter_map(|s| of(s)).map(|g| g.planned).find(|pl| !pl.is_empty());
            let Some(l) = leader else {
                ok = false;
                return json!({"partition": p, "leader_id": 0, "term": 0, "planned": planned, "voters": [], "learners": [], "commit_index": 0, "lag": {}});
            };
            let mut lag = serde_json::Map::new();
            for n in l.voters.iter().chain(&l.learners) {
                let applied = views
                    .iter()
                    .find(|s| s.node_id == *n)
                    .and_then(|s| of(s))
                    .map(|g| l.commit_index.saturating_sub(g.applied_index));
                lag.insert(n.to_string(), json!(applied));
            }
            json!({"partition": p, "leader_id": l.leader_id, "term": l.term, "planned": planned.unwrap_or_default(), "voters": l.voters, "learners": l.learners, "commit_index": l.commit_index, "lag": lag})
        })
        .collect();
    (rows, ok)
}

/// Least time `esf member remove` keeps retrying while the removed node's
/// partition replicas move (`--timeout-secs` raises it).
const MEMBER_REMOVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(150);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kv_json(kv: &pb::KeyValue) -> Value {
    json!({"key": text(&kv.key), "value": text(&kv.value), "create_revision": kv.create_revision, "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease})
}

fn header_json(h: &Option<pb::ResponseHeader>) -> Value {
    match h {
        Some(h) => {
            json!({"cluster_id": h.cluster_id, "node_id": h.node_id, "revision": h.revision, "raft_term": h.raft_term})
        }
        None => Value::Null,
    }
}

fn print(out: Output, v: &Value, table: impl FnOnce() -> String) {
    match out {
        Output::Json => println!("{v}"),
        Output::Table => print!("{}", table()),
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let opts = ClientOptions {
        retry_deadline: std::time::Duration::from_secs(cli.timeout_secs),
        cluster_id: cli.cluster_id.clone(),
        ..Default::default()
    };
    let client = || Client::new(&cli.endpoints, opts.clone()).map_err(|e| anyhow::anyhow!("endpoints: {e}"));
    // `member remove` retries while the node's partition replicas move.
    let remove_client = || {
        let opts = ClientOptions {
            retry_deadline: opts.retry_deadline.max(MEMBER_REMOVE_DEADLINE),
            ..opts.clone()
        };
        Client::new(&cli.endpoints, opts).map_err(|e| anyhow::anyhow!("endpoints: {e}"))
    };
    let out = cli.output;
    match cli.command {
        Command::Serve(flags) => {
            let cfg = config::load(flags.config.as_deref(), &flags)?;
            init_tracing(&cfg.log_level);
            crate::server::run(cfg).await?;
        }
        Command::Config(ConfigCmd::Validate { file }) => {
            let cfg = config::load(Some(&file), &Flags::default())?;
            print(out, &json!({"valid": true, "node_id": cfg.node_id}), || {
                format!("{}: valid\n", file.display())
            });
        }
        Command::Kv(cmd) => kv(client()?, out, cmd).await?,
        Command::Lease(cmd) => lease(client()?, out, cmd).await?,
        Command::Registry(cmd) => registry(client()?, out, cmd).await?,
        Command::Events(cmd) => events(client()?, out, cmd).await?,
        Command::Audit(AuditCmd::Tail {
            limit,
            from_revision,
            follow,
        }) => audit_tail(client()?, out, limit, from_revision, follow).await?,
        Command::Subscription(cmd) => subscription(client()?, out, cmd).await?,
        Command::Snapshot(SnapshotCmd::Save { file }) => snapshot_save(client()?, out, &file).await?,
        Command::Snapshot(SnapshotCmd::Inspect { file }) => snapshot_inspect(out, &file)?,
        Command::Snapshot(SnapshotCmd::Restore {
            file,
            data_dir,
            node_id,
            advertise,
        }) => snapshot_restore(out, &file, &data_dir, node_id, &advertise).await?,
        Command::Member(cmd) => {
            let c = client()?;
            let r = match cmd {
                MemberCmd::List => c.members().await?,
                MemberCmd::Add { id, addr } => c.add_learner(id, &addr).await?,
                MemberCmd::Promote { id } => c.promote(id).await?,
                MemberCmd::Remove { id } => remove_client()?.remove(id).await?,
            };
            let v = json!({"leader_id": r.leader_id, "members": r.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter, "holds_data": m.holds_data, "leader": m.id == r.leader_id})).collect::<Vec<_>>()});
            print(out, &v, || {
                let mut s = format!("{:<6} {:<24} {:<8} {:<5} {}\n", "ID", "ADDR", "ROLE", "DATA", "LEADER");
                for m in &r.members {
                    s += &format!(
                        "{:<6} {:<24} {:<8} {:<5} {}\n",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" },
                        if m.holds_data { "yes" } else { "no" },
                        if m.id == r.leader_id { "*" } else { "" }
                    );
                }
                s
            });
        }
        Command::Endpoint(EndpointCmd::Partitions) => {
            let c = client()?;
            let all = c.status_members().await?;
            let (rows, ok) = partition_rows(&all);
            let v = Value::Array(rows.clone());
            print(out, &v, || {
                let mut s = format!(
                    "{:<9} {:<6} {:<5} {:<12} {:<12} {:<9} {:<7} {}\n",
                    "PARTITION", "LEADER", "TERM", "PLANNED", "VOTERS", "LEARNERS", "COMMIT", "LAG (node:entries)"
                );
                let ids = |v: &Value| {
                    v.as_array()
                        .map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
                        .unwrap_or_default()
                };
                for r in &rows {
                    let lag = r["lag"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(n, l)| format!("{n}:{}", if l.is_null() { "?".into() } else { l.to_string() }))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    s += &format!(
                        "{:<9} {:<6} {:<5} {:<12} {:<12} {:<9} {:<7} {}\n",
                        r["partition"].to_string(),
                        r["leader_id"].to_string(),
                        r["term"].to_string(),
                        ids(&r["planned"]),
                        ids(&r["voters"]),
                        ids(&r["learners"]),
                        r["commit_index"].to_string(),
                        lag
                    );
                }
                s
            });
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Endpoint(cmd) => {
            let c = client()?;
            let all = c.status_all().await;
            let mut healthy = true;
            let mut rows = Vec::new();
            for (ep, r) in &all {
                match r {
                    Ok(s) => {
                        let g = s.groups.first().cloned().unwrap_or_default();
                        if g.leader_id == 0 {
                            healthy = false;
                        }
                        // Partitions this node holds a replica of (it
                        // forwards the others).
                        let held: Vec<&pb::GroupStatus> = s.groups.iter().skip(1).filter(|g| g.held).collect();
                        let led = held.iter().filter(|g| g.role == "leader").count();
                        let partitions = held.len();
                        let leaderless = held.iter().filter(|g| g.leader_id == 0).count();
                        if leaderless > 0 {
                            healthy = false;
                        }
                        rows.push(json!({"endpoint": ep, "healthy": g.leader_id != 0 && leaderless == 0, "partitions": partitions, "partitions_led": led, "partitions_without_leader": leaderless, "node_id": s.node_id, "cluster_id": s.cluster_id, "role": g.role, "term": g.term, "leader_id": g.leader_id, "commit_index": g.commit_index, "applied_index": g.applied_index, "db_size_bytes": s.db_size_bytes, "quota_alarm": s.quota_alarm, "quota_used_bytes": s.quota_used_bytes, "quota_bytes": s.quota_bytes, "audit_relayed_revision": s.audit_relayed_revision, "audit_lag": s.audit_lag, "version": s.version}));
                    }
                    Err(e) => {
                        healthy = false;
                        rows.push(json!({"endpoint": ep, "healthy": false, "error": e.to_string()}));
                    }
                }
            }
            let v = Value::Array(rows.clone());
            let health = matches!(cmd, EndpointCmd::Health);
            if !health {
                print(out, &v, || {
                    let mut s = format!(
                        "{:<26} {:<5} {:<9} {:<5} {:<6} {:<8} {:<8} {:<10} {:<7} {:<9} {:<9} {}\n",
                        "ENDPOINT",
                        "ID",
                        "ROLE",
                        "TERM",
                        "LEADER",
                        "COMMIT",
                        "APPLIED",
                        "DB BYTES",
                        "ALARM",
                        "PARTS LED",
                        "AUDIT LAG",
                        "VERSION"
                    );
                    for r in &rows {
                        if let Some(err) = r.get("error") {
                            s += &format!(
                                "{:<26} unreachable: {}\n",
                                r["endpoint"].as_str().unwrap_or(""),
                                err.as_str().unwrap_or("")
                            );
                        } else {
                            s += &format!(
                                "{:<26} {:<5} {:<9} {:<5} {:<6} {:<8} {:<8} {:<10} {:<7} {:<9} {:<9} {}\n",
                                r["endpoint"].as_str().unwrap_or(""),
                                r["node_id"].to_string(),
                                r["role"].as_str().unwrap_or(""),
                                r["term"].to_string(),
                                r["leader_id"].to_string(),
                                r["commit_index"].to_string(),
                                r["applied_index"].to_string(),
                                r["db_size_bytes"].to_string(),
                                if r["quota_alarm"] == true { "NOSPACE" } else { "-" },
                                format!("{}/{}", r["partitions_led"], r["partitions"]),
                                r["audit_lag"].to_string(),
                                r["version"].as_str().unwrap_or("")
                            );
                        }
                    }
                    s
                })
            } else {
                print(out, &v, || {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "{} is {}\n",
                                r["endpoint"].as_str().unwrap_or(""),
                                if r["healthy"] == json!(true) {
                                    "healthy"
                                } else {
                                    "unhealthy"
                                }
                            )
                        })
                        .collect()
                })
            }
            if !healthy && health {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Leader(LeaderCmd::Transfer { to }) => {
            let r = client()?.transfer_leader(to).await?;
            print(out, &json!({"leader_id": r.leader_id}), || {
                format!("leader is now node {}\n", r.leader_id)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn lease(c: Client, out: Output, cmd: LeaseCmd) -> anyhow::Result<()> {
    match cmd {
        LeaseCmd::Grant { ttl_secs, id } => {
            let r = c.lease_grant(ttl_secs, id).await?;
            print(out, &json!({"id": r.id, "ttl_secs": r.ttl_secs}), || {
                format!("lease {} granted with ttl {}s\n", r.id, r.ttl_secs)
            });
        }
        LeaseCmd::Revoke { id } => {
            let r = c.lease_revoke(id).await?;
            print(out, &json!({"id": id, "deleted_keys": r.deleted_keys}), || {
                format!("lease {id} revoked; {} keys deleted\n", r.deleted_keys)
            });
        }
        LeaseCmd::Ttl { id, keys } => {
            let r = c.lease_ttl(id, keys).await?;
            let names: Vec<String> = r.keys.iter().map(|k| text(k)).collect();
            print(
                out,
                &json!({"id": r.id, "granted_ttl_secs": r.granted_ttl_secs, "remaining_ms": r.remaining_ms, "keys": names}),
                || {
                    let mut s = format!(
                        "lease {} granted ttl {}s, remaining {:.1}s\n",
                        r.id,
                        r.granted_ttl_secs,
                        r.remaining_ms as f64 / 1000.0
                    );
                    for k in &names {
                        s += &format!("  {k}\n");
                    }
                    s
                },
            );
        }
        LeaseCmd::Keepalive { id, once: true } => {
            let r = c.lease_keepalive(id).await?;
            print(out, &json!({"id": r.id, "ttl_secs": r.ttl_secs}), || {
                format!("lease {} kept alive, ttl {}s\n", r.id, r.ttl_secs)
            });
        }
        LeaseCmd::Keepalive { id, once: false } => {
            c.lease_keep_alive_forever(id, |r| {
                print(out, &json!({"id": r.id, "ttl_secs": r.ttl_secs}), || {
                    format!("lease {} kept alive, ttl {}s\n", r.id, r.ttl_secs)
                })
            })
            .await?
        }
    }
    Ok(())
}

/// Longest wait for the next chunk of a snapshot (the first one comes once
/// the leader has read its state).
const SNAPSHOT_CHUNK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn sync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))
}

fn parent_dir(p: &std::path::Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn with_suffix(p: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

async fn snapshot_save(c: Client, out: Output, file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let part = with_suffix(file, ".part");
    let mut stream = c.snapshot().await?;
    let mut f = std::fs::File::create(&part).with_context(|| format!("create {}", part.display()))?;
    // Removes the partial file on every early return.
    struct Partial<'a>(&'a std::path::Path, bool);
    impl Drop for Partial<'_> {
        fn drop(&mut self) {
            if !self.1 {
                let _ = std::fs::remove_file(self.0);
            }
        }
    }
    let mut partial = Partial(&part, false);
    let bar = std::io::stderr().is_terminal();
    let mut received = 0u64;
    let mut total = 0u64;
    loop {
        let chunk = match tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, stream.message()).await {
            Err(_) => anyhow::bail!("snapshot: no data for {SNAPSHOT_CHUNK_TIMEOUT:?}; nothing saved"),
            Ok(Err(s)) => anyhow::bail!("snapshot: {}; nothing saved", s.message()),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        total = chunk.total_bytes;
        f.write_all(&chunk.data)
            .with_context(|| format!("write {}", part.display()))?;
        received += chunk.data.len() as u64;
        if bar {
            let pct = if total > 0 { received * 100 / total } else { 100 };
            let filled = (pct / 5) as usize;
            eprint!(
                "\r[{}{}] {pct:>3}% {} / {}",
                "#".repeat(filled),
                ".".repeat(20 - filled.min(20)),
                mib(received),
                mib(total)
            );
        }
    }
    if bar {
        eprintln!();
    }
    if received != total {
        anyhow::bail!("snapshot: the stream ended after {received} of {total} bytes; nothing saved");
    }
    f.sync_all().with_context(|| format!("sync {}", part.display()))?;
    drop(f);
    let (header, groups) =
        crate::snapshot::read(&part).context("the received snapshot does not check out; nothing saved")?;
    std::fs::rename(&part, file).with_context(|| format!("rename {} to {}", part.display(), file.display()))?;
    partial.1 = true;
    sync_dir(&parent_dir(file))?;
    let summary = esf_raft::meta::summarize_snapshot(&groups[0].1)?;
    print(
        out,
        &json!({"file": file.display().to_string(), "bytes": received, "cluster_id": header.cluster_id, "node_id": header.node_id, "revision": summary.revision, "keys": summary.keys}),
        || {
            format!(
                "saved {} ({}) from node {} of {}: revision {}, {} keys\n",
                file.display(),
                mib(received),
                header.node_id,
                header.cluster_id,
                summary.revision,
                summary.keys
            )
        },
    );
    Ok(())
}

fn snapshot_inspect(out: Output, file: &std::path::Path) -> anyhow::Result<()> {
    let (header, groups) = crate::snapshot::read(file)?;
    let mut rows = Vec::new();
    let mut parts = Vec::new();
    for (g, data) in &groups {
        if g.kind == "partition" {
            parts.push((g.clone(), esf_raft::events::store::summarize_snapshot(g.group, data)?));
        } else {
            rows.push((g.clone(), esf_raft::meta::summarize_snapshot(data)?));
        }
    }
    let mut list: Vec<Value> = rows
        .iter()
        .map(|(g, s)| json!({"group": g.group, "kind": g.kind, "bytes": g.bytes, "summary": s}))
        .collect();
    list.extend(
        parts
            .iter()
            .map(|(g, s)| json!({"group": g.group, "kind": g.kind, "bytes": g.bytes, "summary": s})),
    );
    let v = json!({
        "cluster_id": header.cluster_id, "node_id": header.node_id, "esf_version": header.esf_version,
        "created_unix_ms": header.created_unix_ms, "groups": list,
    });
    print(out, &v, || {
        let mut t = format!(
            "snapshot of {} from node {} (esf {}), taken at unix ms {}\n",
            header.cluster_id, header.node_id, header.esf_version, header.created_unix_ms
        );
        t += &format!(
            "{:<6} {:<9} {:<10} {:<10} {:<10} {:<8} {:<7} {:<10} {}\n",
            "GROUP", "KIND", "BYTES", "INDEX", "REVISION", "KEYS", "LEASES", "COMPACTED", "VOTERS"
        );
        for (g, s) in &rows {
            t += &format!(
                "{:<6} {:<9} {:<10} {:<10} {:<10} {:<8} {:<7} {:<10} {:?}\n",
                g.group, g.kind, g.bytes, s.last_index, s.revision, s.keys, s.leases, s.compact_revision, s.voters
            );
        }
        for (g, s) in &parts {
            t += &format!(
                "{:<6} {:<9} {:<10} {:<10} events: {}\n",
                g.group, g.kind, g.bytes, s.last_index, s.events
            );
        }
        t
    });
    Ok(())
}

async fn snapshot_restore(
    out: Output,
    file: &std::path::Path,
    data_dir: &std::path::Path,
    node_id: u64,
    advertise: &str,
) -> anyhow::Result<()> {
    if node_id == 0 {
        anyhow::bail!("--node-id: must be at least 1");
    }
    esf_client::parse_endpoint(advertise).map_err(|e| anyhow::anyhow!("--advertise: {e}"))?;
    let (header, groups) = crate::snapshot::read(file)?;
    if let Ok(mut entries) = std::fs::read_dir(data_dir) {
        if entries.next().is_some() {
            anyhow::bail!(
                "--data-dir: {} is not empty; restore needs a new data directory (nothing was changed)",
                data_dir.display()
            );
        }
    }
    // Build it beside the target and rename it into place at the end, so a
    // failed restore leaves no half-seeded data directory.
    let tmp = with_suffix(data_dir, ".restoring");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("remove leftover {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let seeded = async {
        let db = esf_storage::Db::open(&esf_storage::StorageConfig::new(tmp.join("db")))?;
        let (_, meta) = groups
            .iter()
            .find(|(g, _)| g.kind == "meta")
            .expect("decode checks a meta group");
        let summary = esf_raft::group::seed_from_snapshot(db.clone(), meta, node_id, advertise).await?;
        let mut events = 0;
        for (g, data) in groups.iter().filter(|(g, _)| g.kind == "partition") {
            events += esf_raft::events::group::seed_from_snapshot(db.clone(), g.group, data, node_id, advertise)
                .await?
                .events;
        }
        anyhow::Ok((summary, events))
    }
    .await;
    let (summary, events) = match seeded {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("restore {}", file.display())));
        }
    };
    let cluster_id = crate::server::new_cluster_id();
    crate::server::save_identity(
        &tmp,
        &crate::server::Identity {
            node_id,
            cluster_id: cluster_id.clone(),
            partitions: groups.iter().filter(|(g, _)| g.kind == "partition").count() as u32,
        },
    )?;
    if data_dir.exists() {
        std::fs::remove_dir(data_dir).with_context(|| format!("replace empty {}", data_dir.display()))?;
    }
    std::fs::rename(&tmp, data_dir).with_context(|| format!("rename {} to {}", tmp.display(), data_dir.display()))?;
    sync_dir(&parent_dir(data_dir))?;
    print(
        out,
        &json!({"data_dir": data_dir.display().to_string(), "node_id": node_id, "advertise": advertise, "cluster_id": cluster_id, "from_cluster_id": header.cluster_id, "revision": summary.revision, "keys": summary.keys, "events": events}),
        || {
            format!(
                "restored revision {} ({} keys, {events} events) of {} into {} as node {} of new cluster {}; start it with: esf serve --node-id {node_id} --data-dir {} --advertise {advertise}\n",
                summary.revision,
                summary.keys,
                header.cluster_id,
                data_dir.display(),
                node_id,
                cluster_id,
                data_dir.display()
            )
        },
    );
    Ok(())
}

fn expected_version(s: &str) -> anyhow::Result<Option<pb::ExpectedVersion>> {
    use pb::expected_version::Kind;
    let kind = match s {
        "any" => return Ok(None),
        "no_stream" => Kind::NoStream(true),
        "exists" => Kind::Exists(true),
        n => Kind::Exact(
            n.parse()
                .map_err(|_| anyhow::anyhow!("--expected-version: {n:?} is not any, no_stream, exists or a number"))?,
        ),
    };
    Ok(Some(pb::ExpectedVersion { kind: Some(kind) }))
}

fn event_json(e: &pb::RecordedEvent) -> Value {
    let data: Value = serde_json::from_slice(&e.data).unwrap_or_else(|_| Value::String(text(&e.data)));
    json!({"id": e.id, "stream": e.stream, "type": e.r#type, "version": e.version, "partition": e.partition, "offset": e.offset, "timestamp_ms": e.timestamp_ms, "correlation_id": e.correlation_id, "causation_id": e.causation_id, "metadata": e.metadata, "data": data})
}

fn event_line(e: &pb::RecordedEvent) -> String {
    format!(
        "{}@{} {} {} (partition {} offset {}) {}\n",
        e.stream,
        e.version,
        e.r#type,
        e.id,
        e.partition,
        e.offset,
        text(&e.data)
    )
}

fn audit_line(e: &pb::RecordedEvent) -> String {
    let data: Value = serde_json::from_slice(&e.data).unwrap_or_default();
    let changes: Vec<String> = data["changes"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let key = c["key"].as_str().unwrap_or_default();
                    match (c["op"].as_str(), c.get("value").and_then(Value::as_str)) {
                        (Some("delete"), _) => format!("-{key}"),
                        (_, Some(v)) => format!("{key}={v}"),
                        _ => format!("{key} ({} bytes)", c["value_bytes"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {} {}\n",
        e.metadata.get("revision").map_or("?", String::as_str),
        e.r#type,
        changes.join(" ")
    )
}

/// The stream version of the first audit event at or after `revision`
/// (binary search over the stream: one read per step).
async fn audit_version_of(c: &Client, revision: u64, last_version: u64) -> anyhow::Result<u64> {
    let (mut lo, mut hi) = (1u64, last_version + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let r = c
            .read_stream(pb::ReadStreamRequest {
                stream: AUDIT_STREAM.into(),
                from_version: mid,
                limit: 1,
                ..Default::default()
            })
            .await?;
        let rev = r
            .events
            .first()
            .and_then(|e| e.metadata.get("revision"))
            .and_then(|r| r.parse::<u64>().ok());
        match rev {
            Some(r) if r < revision => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

async fn audit_tail(
    c: Client,
    out: Output,
    limit: u32,
    from_revision: Option<u64>,
    follow: bool,
) -> anyhow::Result<()> {
    let end = c
        .read_stream(pb::ReadStreamRequest {
            stream: AUDIT_STREAM.into(),
            backward: true,
            limit: 1,
            ..Default::default()
        })
        .await?;
    let mut from = match from_revision {
        Some(r) => audit_version_of(&c, r, end.stream_version).await?,
        None => end.stream_version.saturating_sub(u64::from(limit)) + 1,
    };
    // Where the stream lives and the offset after the last event printed.
    let mut position = end.events.first().map(|e| (e.partition, 0u64));
    while from <= end.stream_version {
        let r = c
            .read_stream(pb::ReadStreamRequest {
                stream: AUDIT_STREAM.into(),
                from_version: from,
                ..Default::default()
            })
            .await?;
        let Some(last) = r.events.last() else { break };
        position = Some((last.partition, last.offset + 1));
        from = last.version + 1;
        for e in r.events.iter().filter(|e| e.version <= end.stream_version) {
            print(out, &event_json(e), || audit_line(e));
        }
    }
    if !follow {
        return Ok(());
    }
    // Every partition but the stream's is left at its end; the stream's
    // continues after the last event printed (from its start if none was).
    let mut req = pb::SubscribeRequest {
        from_now: true,
        stream_prefix: AUDIT_STREAM.into(),
        ..Default::default()
    };
    if let Some((p, offset)) = position {
        req.from_offsets.insert(p, offset);
        req.partitions.push(p);
    } else {
        req.from_now = false;
    }
    let mut sub = c.subscribe_resumable(req);
    loop {
        for e in sub.next().await?.events.iter().filter(|e| e.stream == AUDIT_STREAM) {
            print(out, &event_json(e), || audit_line(e));
        }
    }
}

fn print_events(out: Output, events: &[pb::RecordedEvent]) {
    for e in events {
        print(out, &event_json(e), || event_line(e));
    }
}

/// `FIELD OP [VALUE]` of `esf events query --where` as a predicate (the
/// node checks the field, operator and value).
fn parse_where(w: &str) -> Result<pb::Predicate, String> {
    let w = w.trim();
    let (field, rest) = w
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("{w:?} is not FIELD OP [VALUE]"))?;
    let rest = rest.trim_start();
    let (op, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let op = match op {
        "=" | "==" => "eq",
        "<" => "lt",
        "<=" => "le",
        ">" => "gt",
        ">=" => "ge",
        other => other,
    };
    Ok(pb::Predicate {
        field: field.to_string(),
        op: op.to_string(),
        value: value.trim().to_string(),
    })
}

/// One line of `esf events append --batch`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    correlation_id: String,
    #[serde(default)]
    causation_id: String,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

async fn events(c: Client, out: Output, cmd: EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Append {
            stream,
            event_type,
            data,
            id,
            correlation_id,
            causation_id,
            metadata,
            expected_version: ev,
            batch,
        } => {
            let expected = expected_version(&ev)?;
            let events = match batch {
                Some(src) => {
                    let body = if src == "-" {
                        std::io::read_to_string(std::io::stdin()).context("read the batch from stdin")?
                    } else {
                        std::fs::read_to_string(&src).with_context(|| format!("--batch: read {src}"))?
                    };
                    let mut events = Vec::new();
                    for (n, line) in body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                        let l: BatchLine =
                            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("--batch: line {}: {e}", n + 1))?;
                        events.push(pb::EventData {
                            id: l.id,
                            r#type: l.event_type,
                            correlation_id: l.correlation_id,
                            causation_id: l.causation_id,
                            data: serde_json::to_vec(&l.data.unwrap_or(Value::Object(Default::default())))?,
                            metadata: l.metadata,
                        });
                    }
                    events
                }
                None => {
                    let mut meta = std::collections::HashMap::new();
                    for m in metadata {
                        let Some((k, v)) = m.split_once('=') else {
                            anyhow::bail!("--meta: {m:?} is not KEY=VALUE");
                        };
                        meta.insert(k.to_string(), v.to_string());
                    }
                    vec![pb::EventData {
                        id: id.unwrap_or_default(),
                        r#type: event_type.unwrap_or_default(),
                        correlation_id,
                        causation_id,
                        data: data.into_bytes(),
                        metadata: meta,
                    }]
                }
            };
            let r = c.append(&stream, events, expected).await?;
            print(
                out,
                &json!({"stream": stream, "partition": r.partition, "first_offset": r.first_offset, "first_version": r.first_version, "count": r.count, "duplicate": r.duplicate, "ids": r.ids}),
                || {
                    format!(
                        "appended {} event(s) to {stream} at version {} (partition {} offset {}){}\n",
                        r.count,
                        r.first_version,
                        r.partition,
                        r.first_offset,
                        if r.duplicate { ", already appended before" } else { "" }
                    )
                },
            );
        }
        EventsCmd::Get { id, stream } => {
            let r = c.get_event(&id, &stream).await?;
            print_events(out, r.event.as_slice());
        }
        EventsCmd::Read {
            stream,
            from,
            backward,
            limit,
            partition,
        } => match partition {
            Some(p) => {
                let r = c
                    .read_partition(pb::ReadPartitionRequest {
                        partition: p,
                        from_offset: from,
                        limit,
                        serializable: false,
                    })
                    .await?;
                if from < r.first_offset {
                    eprintln!(
                        "note: partition {p} keeps events from offset {} on; those before were removed by retention",
                        r.first_offset
                    );
                }
                print_events(out, &r.events);
            }
            None => {
                let r = c
                    .read_stream(pb::ReadStreamRequest {
                        stream: stream.unwrap_or_default(),
                        from_version: from,
                        backward,
                        limit,
                        serializable: false,
                    })
                    .await?;
                if r.first_version > 1 && (from < r.first_version || backward) {
                    eprintln!(
                        "note: the stream keeps versions from {} on; those before were removed by retention",
                        r.first_version
                    );
                }
                print_events(out, &r.events);
            }
        },
        EventsCmd::Retention(RetentionCmd::Set {
            prefix,
            max_age,
            max_bytes,
        }) => {
            if max_age.is_none() && max_bytes.is_none() {
                anyhow::bail!(
                    "retention set: give --max-age, --max-bytes or both (esf events retention clear removes a rule)"
                );
            }
            let rule = pb::RetentionRule {
                stream_prefix: prefix,
                max_age_ms: max_age
                    .as_deref()
                    .map(|s| parse_age("max_age", s))
                    .transpose()?
                    .unwrap_or(0),
                max_bytes: max_bytes
                    .as_deref()
                    .map(|s| parse_bytes("max_bytes", s))
                    .transpose()?
                    .unwrap_or(0),
            };
            c.set_retention(rule.clone()).await?;
            print(
                out,
                &json!({"stream_prefix": rule.stream_prefix, "max_age_ms": rule.max_age_ms, "max_bytes": rule.max_bytes}),
                || format!("set {}", retention_line(&rule)),
            );
        }
        EventsCmd::Index(IndexCmd::Create { field }) => {
            c.create_index(&field).await?;
            print(out, &json!({"created": field}), || {
                format!("declared an index on {field}\n")
            });
        }
        EventsCmd::Index(IndexCmd::Drop { field }) => {
            c.drop_index(&field).await?;
            print(out, &json!({"dropped": field}), || {
                format!("dropped the index on {field}\n")
            });
        }
        EventsCmd::Index(IndexCmd::List) => {
            for i in c.list_indexes().await?.indexes {
                print(
                    out,
                    &json!({"field": i.field, "partitions_ready": i.partitions_ready, "partitions_building": i.partitions_building, "partitions_pending": i.partitions_pending}),
                    || {
                        format!(
                            "{} ready={} building={} pending={}\n",
                            i.field, i.partitions_ready, i.partitions_building, i.partitions_pending
                        )
                    },
                );
            }
        }
        EventsCmd::Retention(RetentionCmd::List) => {
            for r in c.list_retention().await?.rules {
                print(
                    out,
                    &json!({"stream_prefix": r.stream_prefix, "max_age_ms": r.max_age_ms, "max_bytes": r.max_bytes}),
                    || retention_line(&r),
                );
            }
        }
        EventsCmd::Retention(RetentionCmd::Clear { prefix }) => {
            c.set_retention(pb::RetentionRule {
                stream_prefix: prefix.clone(),
                ..Default::default()
            })
            .await?;
            print(out, &json!({"cleared": prefix}), || {
                format!("cleared the rule of {prefix:?}\n")
            });
        }
        EventsCmd::Query {
            event_type,
            correlation_id,
            from,
            to,
            predicates,
            desc,
            limit,
            cursor,
            explain,
            partitions,
        } => {
            let predicates = predicates
                .iter()
                .enumerate()
                .map(|(i, w)| parse_where(w).map_err(|e| anyhow::anyhow!("where[{i}]: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let r = c
                .query_events(pb::QueryEventsRequest {
                    r#type: event_type,
                    correlation_id,
                    from_time_ms: from,
                    to_time_ms: to,
                    predicates,
                    descending: desc,
                    limit,
                    cursor,
                    explain,
                    partitions,
                    serializable: false,
                })
                .await?;
            if matches!(out, Output::Json) {
                let events: Vec<Value> = r.events.iter().map(event_json).collect();
                let explain = r.explain.as_ref().map(|e| {
                    serde_json::json!({"index": e.index, "rows_examined": e.rows_examined, "events_loaded": e.events_loaded, "partitions": e.partitions})
                });
                println!(
                    "{}",
                    serde_json::json!({"events": events, "cursor": r.cursor, "explain": explain})
                );
            } else {
                print_events(out, &r.events);
                if !r.cursor.is_empty() {
                    println!("cursor: {}", r.cursor);
                }
                if let Some(e) = &r.explain {
                    println!(
                        "explain: index {}, {} rows examined, {} events loaded, {} partitions",
                        e.index, e.rows_examined, e.events_loaded, e.partitions
                    );
                }
            }
        }
        EventsCmd::Subscribe {
            from_now,
            event_type,
            stream_prefix,
            partitions,
            count,
        } => {
            let mut sub = c.subscribe_resumable(pb::SubscribeRequest {
                from_offsets: Default::default(),
                from_now,
                r#type: event_type,
                stream_prefix,
                partitions,
            });
            let mut seen = 0u64;
            loop {
                let resp = sub.next().await?;
                for e in &resp.events {
                    print(out, &event_json(e), || event_line(e));
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
        }
        EventsCmd::DeleteStream {
            stream,
            expected_version: ev,
        } => {
            let r = c.delete_stream(&stream, expected_version(&ev)?).await?;
            print(out, &json!({"stream": stream, "version": r.version}), || {
                format!("deleted stream {stream} at version {}\n", r.version)
            });
        }
    }
    Ok(())
}

fn subscription_json(s: &pb::SubscriptionInfo) -> Value {
    let positions: std::collections::BTreeMap<u32, u64> = s.positions.iter().map(|(p, o)| (*p, *o)).collect();
    json!({"name": s.name, "type": s.r#type, "stream_prefix": s.stream_prefix, "positions": positions, "created_revision": s.created_revision})
}

fn subscription_line(s: &pb::SubscriptionInfo) -> String {
    let positions: std::collections::BTreeMap<u32, u64> = s.positions.iter().map(|(p, o)| (*p, *o)).collect();
    let pos: Vec<String> = positions.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    format!(
        "{} type={} stream_prefix={} positions={}\n",
        s.name,
        if s.r#type.is_empty() { "*" } else { &s.r#type },
        if s.stream_prefix.is_empty() {
            "*"
        } else {
            &s.stream_prefix
        },
        pos.join(",")
    )
}

async fn subscription(c: Client, out: Output, cmd: SubscriptionCmd) -> anyhow::Result<()> {
    match cmd {
        SubscriptionCmd::Create {
            name,
            event_type,
            stream_prefix,
            from_now,
        } => {
            let r = c
                .create_subscription(&name, &event_type, &stream_prefix, from_now)
                .await?;
            let s = r.subscription.unwrap_or_default();
            print(out, &subscription_json(&s), || {
                format!("created {}", subscription_line(&s))
            });
        }
        SubscriptionCmd::List => {
            let r = c.list_subscriptions().await?;
            let v = Value::Array(r.subscriptions.iter().map(subscription_json).collect());
            print(out, &v, || r.subscriptions.iter().map(subscription_line).collect());
        }
        SubscriptionCmd::Info { name } => {
            let s = c.get_subscription(&name).await?.subscription.unwrap_or_default();
            print(out, &subscription_json(&s), || subscription_line(&s));
        }
        SubscriptionCmd::Delete { name } => {
            c.delete_subscription(&name).await?;
            print(out, &json!({"name": name, "deleted": true}), || {
                format!("deleted subscription {name}\n")
            });
        }
        SubscriptionCmd::Consumers { name } => {
            let r = c.consumers(&name).await?;
            print(out, &json!({"name": name, "consumers": r.consumer_ids}), || {
                r.consumer_ids.iter().map(|id| format!("{id}\n")).collect()
            });
        }
        SubscriptionCmd::Consume {
            name,
            member,
            members,
            ttl,
            consumer_id,
            count,
        } => {
            let mut source = match (member, members) {
                (Some(m), Some(n)) => Consumer::Fixed(c.consume(&name, m, n).await?),
                _ => {
                    let g = c.consume_group(&name, &consumer_id, ttl).await?;
                    eprintln!("joined the consumer group of {name} as {}", g.consumer_id());
                    Consumer::Group(Box::new(g))
                }
            };
            let mut stop = Interrupts::catch()?;
            let mut seen = 0u64;
            loop {
                let resp = tokio::select! {
                    r = source.next() => r?,
                    _ = stop.recv() => return source.finish().await,
                };
                if let Consumer::Group(g) = &source {
                    if resp.events.is_empty() && !resp.caught_up && !resp.next_offsets.is_empty() {
                        eprintln!("consuming partitions {:?}", g.assigned());
                    }
                }
                let mut done = std::collections::BTreeMap::new();
                for e in &resp.events {
                    print(out, &event_json(e), || event_line(e));
                    done.insert(e.partition, e.offset + 1);
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        c.ack(&name, &done).await?;
                        return source.finish().await;
                    }
                }
                // The whole response is processed: filtered events too.
                done.extend(resp.next_offsets.iter().map(|(p, o)| (*p, *o)));
                if !done.is_empty() {
                    c.ack(&name, &done).await?;
                }
            }
        }
    }
    Ok(())
}

fn instance_json(i: &pb::Instance) -> Value {
    json!({"service": i.service, "id": i.id, "address": i.address, "tags": i.tags, "metadata": i.metadata, "lease": i.lease, "revision": i.revision})
}

fn instance_line(i: &pb::Instance) -> String {
    let mut s = format!("{}/{} {}", i.service, i.id, i.address);
    if !i.tags.is_empty() {
        s += &format!(" tags={}", i.tags.join(","));
    }
    let mut meta: Vec<_> = i.metadata.iter().collect();
    meta.sort();
    for (k, v) in meta {
        s += &format!(" {k}={v}");
    }
    if i.lease != 0 {
        s += &format!(" lease={}", i.lease);
    }
    s
}

/// SIGINT and SIGTERM, caught from the moment this is called.
/// Where `subscription consume` reads from.
enum Consumer {
    Fixed(esf_client::ResumableSubscription),
    Group(Box<esf_client::GroupConsumer>),
}

impl Consumer {
    async fn next(&mut self) -> esf_client::Result<pb::SubscribeResponse> {
        match self {
            Consumer::Fixed(s) => s.next().await,
            Consumer::Group(g) => g.next().await,
        }
    }

    /// A group member leaves at once (its share moves to the others).
    async fn finish(self) -> anyhow::Result<()> {
        if let Consumer::Group(g) = self {
            g.leave().await?;
        }
        Ok(())
    }
}

struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn catch() -> anyhow::Result<Interrupts> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

async fn registry(c: Client, out: Output, cmd: RegistryCmd) -> anyhow::Result<()> {
    match cmd {
        RegistryCmd::Register {
            service,
            id,
            address,
            tags,
            metadata,
            lease,
            ttl,
        } => {
            let mut meta = std::collections::HashMap::new();
            for m in metadata {
                let Some((k, v)) = m.split_once('=') else {
                    anyhow::bail!("--meta: {m:?} is not KEY=VALUE");
                };
                meta.insert(k.to_string(), v.to_string());
            }
            // Caught before registering, so an early signal still revokes.
            let mut interrupts = match ttl {
                Some(_) => Some(Interrupts::catch()?),
                None => None,
            };
            let lease = match ttl {
                Some(t) => c.lease_grant(t, 0).await?.id,
                None => lease,
            };
            let inst = pb::Instance {
                service,
                id,
                address,
                tags,
                metadata: meta,
                lease,
                revision: 0,
            };
            let r = match c.register(inst.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    if ttl.is_some() {
                        let _ = c.lease_revoke(lease).await;
                    }
                    return Err(e.into());
                }
            };
            let registered = pb::Instance {
                revision: r.header.as_ref().map_or(0, |h| h.revision),
                ..inst
            };
            print(out, &json!({"registered": instance_json(&registered)}), || {
                format!(
                    "registered {} at revision {}\n",
                    instance_line(&registered),
                    registered.revision
                )
            });
            let Some(interrupts) = interrupts.as_mut() else {
                return Ok(());
            };
            let keep = async {
                loop {
                    let r = c
                        .lease_keep_alive_forever(lease, |k| {
                            print(out, &json!({"lease": k.id, "ttl_secs": k.ttl_secs}), || {
                                format!("lease {} kept alive, ttl {}s\n", k.id, k.ttl_secs)
                            })
                        })
                        .await;
                    match r {
                        Err(esf_client::Error::NotFound(_)) => {
                            return anyhow::anyhow!("lease {lease} is gone: the instance was removed");
                        }
                        // The cluster is unreachable for now; the lease may
                        // still be alive: keep trying until it is known gone.
                        Err(e) => eprintln!("warning: keepalive of lease {lease}: {e}; retrying"),
                        Ok(()) => {}
                    }
                }
            };
            tokio::select! {
                e = keep => return Err(e),
                _ = interrupts.recv() => {
                    // A second signal exits at once, without revoking.
                    tokio::select! {
                        r = c.lease_revoke(lease) => { r?; }
                        _ = interrupts.recv() => anyhow::bail!("interrupted again; lease {lease} left to expire"),
                    }
                    print(out, &json!({"deregistered": instance_json(&registered)}), || {
                        format!("deregistered {}/{} (lease {lease} revoked)\n", registered.service, registered.id)
                    });
                }
            }
        }
        RegistryCmd::Deregister { service, id } => {
            let r = c.deregister(&service, &id).await?;
            print(
                out,
                &json!({"service": service, "id": id, "deregistered": r.deregistered}),
                || {
                    if r.deregistered {
                        format!("deregistered {service}/{id}\n")
                    } else {
                        format!("{service}/{id} was not registered\n")
                    }
                },
            );
        }
        RegistryCmd::List => {
            let r = c.list_services().await?;
            let v = json!({"header": header_json(&r.header), "services": r.services.iter().map(|s| json!({"name": s.name, "instances": s.instances})).collect::<Vec<_>>()});
            print(out, &v, || {
                let mut s = format!("{:<32} {}\n", "SERVICE", "INSTANCES");
                for svc in &r.services {
                    s += &format!("{:<32} {}\n", svc.name, svc.instances);
                }
                s
            });
        }
        RegistryCmd::Get { service, tags } => {
            let r = c.lookup(&service, &tags).await?;
            let v = json!({"header": header_json(&r.header), "instances": r.instances.iter().map(instance_json).collect::<Vec<_>>()});
            print(out, &v, || {
                r.instances.iter().map(|i| instance_line(i) + "\n").collect()
            });
        }
        RegistryCmd::Watch { service, rev, count } => {
            let req = pb::RegistryWatchRequest {
                service: service.unwrap_or_default(),
                start_revision: rev,
                progress_notify_ms: 0,
            };
            let mut w = c.registry_watch_resumable(req).await?;
            let mut seen = 0u64;
            loop {
                let resp = w.next().await?;
                for e in &resp.events {
                    let i = e.instance.clone().unwrap_or_default();
                    let kind = if resp.snapshot {
                        "SNAPSHOT"
                    } else if e.r#type == pb::registry_event::EventType::Down as i32 {
                        "DOWN"
                    } else {
                        "UP"
                    };
                    let v = json!({"type": kind, "revision": e.revision, "instance": instance_json(&i)});
                    print(out, &v, || {
                        format!("{kind} {} (revision {})\n", instance_line(&i), e.revision)
                    });
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

async fn kv(c: Client, out: Output, cmd: KvCmd) -> anyhow::Result<()> {
    match cmd {
        KvCmd::Watch {
            key,
            prefix,
            rev,
            prev_kv,
            count,
        } => {
            let range = if prefix {
                esf_client::key_range_prefix(key.into_bytes())
            } else {
                esf_client::key_range_key(key.into_bytes())
            };
            let req = pb::WatchRequest {
                range: Some(range),
                start_revision: rev,
                prev_kv,
                progress_notify_ms: 0,
            };
            let mut stream = c.watch(req).await?;
            let mut seen = 0u64;
            while let Some(resp) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("watch: {}", s.message()))?
            {
                if resp.canceled {
                    anyhow::bail!("watch canceled: {}", resp.cancel_reason);
                }
                for e in &resp.events {
                    let kind = if resp.snapshot {
                        "SNAPSHOT"
                    } else if e.r#type == pb::event::EventType::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    let kv = e.kv.clone().unwrap_or_default();
                    let v = json!({"type": kind, "key": text(&kv.key), "value": text(&kv.value), "mod_revision": kv.mod_revision, "prev_value": e.prev_kv.as_ref().map(|p| text(&p.value))});
                    print(out, &v, || {
                        format!(
                            "{kind} {} {} (revision {})\n",
                            text(&kv.key),
                            text(&kv.value),
                            kv.mod_revision
                        )
                    });
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
            anyhow::bail!("watch: the node closed the stream");
        }
        KvCmd::Put { key, value, lease } => {
            let r = c
                .put_with(pb::PutRequest {
                    key: key.into(),
                    value: value.into(),
                    lease,
                    prev_kv: false,
                    session: None,
                })
                .await?;
            print(out, &json!({"header": header_json(&r.header)}), || "OK\n".into());
        }
        KvCmd::Get {
            key,
            prefix,
            rev,
            limit,
            serializable,
            keys_only,
            count_only,
        } => {
            let range = if prefix {
                key_range_prefix(key.into())
            } else {
                key_range_key(key.into())
            };
            let r = c
                .range(pb::RangeRequest {
                    range: Some(range),
                    revision: rev,
                    limit,
                    count_only,
                    keys_only,
                    serializable,
                })
                .await?;
            let v = json!({"header": header_json(&r.header), "count": r.count, "more": r.more, "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>()});
            print(out, &v, || {
                if count_only {
                    return format!("{}\n", r.count);
                }
                r.kvs
                    .iter()
                    .map(|kv| {
                        if keys_only {
                            format!("{}\n", text(&kv.key))
                        } else {
                            format!("{}\n{}\n", text(&kv.key), text(&kv.value))
                        }
                    })
                    .collect()
            });
        }
        KvCmd::Del { key, prefix } => {
            let range = if prefix {
                key_range_prefix(key.into())
            } else {
                key_range_key(key.into())
            };
            let r = c
                .delete(pb::DeleteRequest {
                    range: Some(range),
                    prev_kv: false,
                    session: None,
                })
                .await?;
            print(
                out,
                &json!({"header": header_json(&r.header), "deleted": r.deleted}),
                || format!("{}\n", r.deleted),
            );
        }
        KvCmd::Txn { spec } => {
            let spec = match spec {
                Some(s) => s,
                None => {
                    std::io::read_to_string(std::io::stdin()).map_err(|e| anyhow::anyhow!("txn: read stdin: {e}"))?
                }
            };
            let req = parse_txn(&spec)?;
            let r = c.txn(req).await?;
            let v = json!({"header": header_json(&r.header), "succeeded": r.succeeded, "results": r.results.len()});
            print(out, &v, || {
                format!("{}\n", if r.succeeded { "SUCCESS" } else { "FAILURE" })
            });
        }
        KvCmd::History { key, from, to } => {
            let r = c
                .history(pb::HistoryRequest {
                    key: key.into(),
                    from_revision: from,
                    to_revision: to,
                    serializable: false,
                })
                .await?;
            let v = json!({"header": header_json(&r.header), "versions": r.versions.iter().map(kv_json).collect::<Vec<_>>()});
            print(out, &v, || {
                r.versions
                    .iter()
                    .map(|kv| {
                        if kv.version == 0 {
                            format!("rev {:<6} (deleted)\n", kv.mod_revision)
                        } else {
                            format!(
                                "rev {:<6} version {:<4} {}\n",
                                kv.mod_revision,
                                kv.version,
                                text(&kv.value)
                            )
                        }
                    })
                    .collect()
            });
        }
        KvCmd::Compact { revision } => {
            let r = c.compact(revision).await?;
            print(out, &json!({"compact_revision": r.compact_revision}), || {
                format!("compacted below revision {}\n", r.compact_revision)
            });
        }
    }
    Ok(())
}

/// Parses the JSON txn spec of `esf kv txn`.
fn parse_txn(spec: &str) -> anyhow::Result<pb::TxnRequest> {
    let v: Value = serde_json::from_str(spec).map_err(|e| anyhow::anyhow!("txn: not valid JSON: {e}"))?;
    let s = |v: &Value, field: &str| -> anyhow::Result<String> {
        v.get(field)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("txn: {field}: required string"))
    };
    let mut req = pb::TxnRequest::default();
    for (i, c) in v
        .get("compare")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let op = match c.get("op").and_then(Value::as_str).unwrap_or("=") {
            "=" | "==" => pb::compare::Op::Equal,
            "!=" => pb::compare::Op::NotEqual,
            ">" => pb::compare::Op::Greater,
            "<" => pb::compare::Op::Less,
            other => anyhow::bail!("txn: compare[{i}].op: unknown operator {other:?} (use =, !=, >, <)"),
        };
        use pb::compare::Target;
        let num = |f: &str| {
            c.get(f)
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow::anyhow!("txn: compare[{i}].{f}: required number"))
        };
        let target = match c.get("target").and_then(Value::as_str).unwrap_or("value") {
            "value" => Target::Value(s(c, "value")?.into()),
            "version" => Target::Version(num("version")?),
            "create" => Target::CreateRevision(num("create")?),
            "mod" => Target::ModRevision(num("mod")?),
            "lease" => Target::Lease(num("lease")?),
            other => anyhow::bail!(
                "txn: compare[{i}].target: unknown target {other:?} (use value, version, create, mod, lease)"
            ),
        };
        req.compares.push(pb::Compare {
            key: s(c, "key")?.into(),
            op: op as i32,
            target: Some(target),
        });
    }
    let ops = |name: &str| -> anyhow::Result<Vec<pb::TxnOp>> {
        let mut out = Vec::new();
        for (i, o) in v
            .get(name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            use pb::txn_op::Op;
            let op = if let Some(p) = o.get("put") {
                Op::Put(pb::PutRequest {
                    key: s(p, "key")?.into(),
                    value: s(p, "value")?.into(),
                    ..Default::default()
                })
            } else if let Some(d) = o.get("delete") {
                Op::Delete(pb::DeleteRequest {
                    range: Some(key_range_key(s(d, "key")?.into())),
                    ..Default::default()
                })
            } else if let Some(g) = o.get("get") {
                Op::Range(pb::RangeRequest {
                    range: Some(key_range_key(s(g, "key")?.into())),
                    ..Default::default()
                })
            } else {
                anyhow::bail!("txn: {name}[{i}]: expected one of put, delete, get");
            };
            out.push(pb::TxnOp { op: Some(op) });
        }
        Ok(out)
    };
    req.success = ops("success")?;
    req.failure = ops("failure")?;
    Ok(req)
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
