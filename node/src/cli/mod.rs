//! Command-line interface: `esf serve`, `esf config validate`, and client
//! commands (kv, lease, registry, events, snapshot, member, endpoint,
//! leader).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use esf_client::{Client, ClientOptions, key_range_key, key_range_prefix, pb};
use serde_json::{Value, json};

use crate::config::{self, Flags};
use crate::keyspace::AUDIT_STREAM;

mod audit;
mod auth;
mod backup;
mod cert;
mod events;
mod kv;
mod lease;
mod member;
mod output;
mod registry;
mod subscription;

use audit::*;
use auth::*;
use backup::*;
use cert::*;
use events::*;
use kv::*;
use lease::*;
use member::*;
use output::*;
use registry::*;
use subscription::*;

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
    /// User name, or NAME:PASSWORD (etcdctl's --user), for a cluster with
    /// auth enabled.
    #[arg(long, global = true, env = "ESF_USER")]
    user: Option<String>,
    /// The user's password (or after the colon in --user).
    #[arg(long, global = true, env = "ESF_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
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
    /// Authentication: turn it on or off.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Users (auth).
    #[command(subcommand)]
    User(UserCmd),
    /// Roles and their permissions (auth).
    #[command(subcommand)]
    Role(RoleCmd),
    /// Per-endpoint status and health.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCmd),
    /// TLS certificates for a cluster and its clients.
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Check a TOML config file (with the environment layered on top).
    Validate { file: PathBuf },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut opts = ClientOptions::new()
        .with_retry_deadline(std::time::Duration::from_secs(cli.timeout_secs))
        .with_cluster_id(cli.cluster_id.clone());
    if let Some(u) = &cli.user {
        let (name, password) = match (u.split_once(':'), &cli.password) {
            (Some((n, p)), None) => (n.to_string(), p.to_string()),
            (None, Some(p)) => (u.clone(), p.clone()),
            (Some(_), Some(_)) => {
                anyhow::bail!("user: give the password in --user NAME:PASSWORD or in --password, not both")
            }
            (None, None) => anyhow::bail!(
                "password: --user {u} needs a password (--password, ESF_PASSWORD, or --user {u}:PASSWORD)"
            ),
        };
        opts = opts.with_credentials(name, password);
    }
    // TLS files are read by the commands that connect.
    let opts = match &cli.command {
        Command::Serve(_) | Command::Config(_) | Command::Cert(_) => opts,
        _ => cli.tls.apply(opts)?,
    };
    let client = || Client::new(&cli.endpoints, opts.clone()).map_err(|e| anyhow::anyhow!("endpoints: {e}"));
    // `member remove` retries while the node's partition replicas move.
    let remove_client = || {
        let opts = opts
            .clone()
            .with_retry_deadline(opts.retry_deadline.max(MEMBER_REMOVE_DEADLINE));
        Client::new(&cli.endpoints, opts).map_err(|e| anyhow::anyhow!("endpoints: {e}"))
    };
    let out = cli.output;
    match cli.command {
        Command::Serve(flags) => {
            let cfg = config::load(flags.config.as_deref(), &flags)?;
            init_tracing(&cfg.log_level, &cfg.log_format, cfg.node_id);
            crate::node::run(cfg).await?;
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
        Command::Auth(cmd) => auth(client()?, out, cmd).await?,
        Command::User(cmd) => user(client()?, out, cmd).await?,
        Command::Role(cmd) => role(client()?, out, cmd).await?,
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
            let v = json!({"leader_id": r.leader_id, "members": r.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter, "holds_data": m.holds_data, "leader": m.id == r.leader_id, "liveness": m.liveness, "generation": m.generation})).collect::<Vec<_>>()});
            print(out, &v, || {
                let mut s = format!(
                    "{:<6} {:<24} {:<8} {:<5} {:<8} {:<14} {}\n",
                    "ID", "ADDR", "ROLE", "DATA", "LIVENESS", "GENERATION", "LEADER"
                );
                for m in &r.members {
                    s += &format!(
                        "{:<6} {:<24} {:<8} {:<5} {:<8} {:<14} {}\n",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" },
                        if m.holds_data { "yes" } else { "no" },
                        if m.liveness.is_empty() { "-" } else { &m.liveness },
                        m.generation,
                        if m.id == r.leader_id { "*" } else { "" }
                    );
                }
                s
            });
        }
        Command::Endpoint(EndpointCmd::Health { cluster: true }) => {
            let h = client()?.cluster_health().await?;
            let v = cluster_health_json(&h);
            print(out, &v, || cluster_health_text(&h));
            if h.status != "healthy" {
                return Ok(ExitCode::from(1));
            }
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
            let health = matches!(cmd, EndpointCmd::Health { .. });
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
        Command::Cert(cmd) => cert(out, cmd)?,
        Command::Leader(LeaderCmd::Transfer { to }) => {
            let r = client()?.transfer_leader(to).await?;
            print(out, &json!({"leader_id": r.leader_id}), || {
                format!("leader is now node {}\n", r.leader_id)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr, as text or JSON lines (`log_format`). A server
/// outlives its log pipe: once stderr is closed (the reader of `esf serve
/// 2>&1 | ...` exited) lines are dropped and the node keeps running.
/// tracing-subscriber would otherwise report each failed write with
/// `eprintln!`, which panics on a closed stderr, and a panic while
/// unwinding aborts the process.
fn init_tracing(level: &str, format: &str, node_id: u64) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(filter)
        .with_target(false);
    let _ = if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(NodeTagged(node_id))
            .try_init()
    } else {
        builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// stderr, with `"node":ID` put first in every JSON log line.
struct NodeTagged(u64);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NodeTagged {
    type Writer = NodeTagged;

    fn make_writer(&'a self) -> NodeTagged {
        NodeTagged(self.0)
    }
}

impl std::io::Write for NodeTagged {
    /// Takes a whole formatted line (the formatter writes each event in
    /// one call). A failed write (closed stderr) drops the line.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        let _ = match buf.strip_prefix(b"{") {
            Some(rest) => write!(err, "{{\"node\":{},", self.0).and_then(|()| err.write_all(rest)),
            None => err.write_all(buf),
        };
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
