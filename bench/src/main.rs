//! `esf-bench run|limits|report`: see `esf-bench --help` and
//! docs/benchmarks.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use esf_bench::run::{RunConfig, Workload};
use esf_bench::target::{Target, parse_endpoints};
use esf_bench::{limits, report, run};

#[derive(Debug, Parser)]
#[command(about = "Load generator: the same workloads against ESF, etcd or NATS JetStream")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one workload; prints a table row on stderr and a JSON line on stdout.
    Run(RunArgs),
    /// Measure the disk's fdatasync rate and the loopback round trip (JSON line).
    Limits {
        /// A directory on the disk the systems under test write to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Appends made durable one at a time.
        #[arg(long, default_value_t = 2000)]
        fsyncs: usize,
        /// Loopback round trips.
        #[arg(long, default_value_t = 10_000)]
        round_trips: usize,
    },
    /// Turn a results file into the markdown table (stdout) and the plot.
    Report {
        /// JSON lines written by `run` and `limits`.
        #[arg(long)]
        results: PathBuf,
        /// Write the plot of throughput against clients here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Replace the part of this markdown file between the bench.sh markers.
        #[arg(long)]
        doc: Option<PathBuf>,
        /// Text put above the table (how it was produced).
        #[arg(long, default_value = "")]
        preamble: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    target: Target,
    /// Name of this configuration in the results (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// Comma-separated host:port of the target's client endpoints.
    #[arg(long)]
    endpoints: String,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Concurrent clients (watchers or subscribers for the fan-out workloads).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Connections the clients share (default: one per client).
    #[arg(long)]
    connections: Option<usize>,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Value / event payload size, bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Events per append (events-append-batched).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Writers of the fan-out workloads (watch, events-subscribe).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Length of the measured run, seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Total operations instead of a duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Open loop at this many operations per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Deadline of one operation, ms (a late one counts as an error).
    #[arg(long, default_value_t = 5000)]
    op_timeout_ms: u64,
    /// Replicas of the JetStream stream (nats).
    #[arg(long, default_value_t = 3)]
    nats_replicas: usize,
    /// Comma-separated pids whose resident memory is reported after the run.
    #[arg(long, default_value = "")]
    pids: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => {
            let pids = a
                .pids
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    p.trim()
                        .parse::<u32>()
                        .with_context(|| format!("pids: {p:?} is not a process id"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let cfg = RunConfig {
                target: a.target,
                label: a.label.unwrap_or_else(|| format!("{:?}", a.target).to_lowercase()),
                endpoints: parse_endpoints(&a.endpoints)?,
                workload: a.workload,
                clients: a.clients,
                connections: a.connections.unwrap_or(a.clients),
                keys: a.keys,
                value_size: a.value_size,
                batch: a.batch,
                writers: a.writers,
                duration: Duration::from_secs(a.duration_secs),
                ops: a.ops,
                rate: a.rate,
                op_timeout: Duration::from_millis(a.op_timeout_ms),
                nats_replicas: a.nats_replicas,
                pids,
                progress: !a.quiet,
            };
            let r = run::run(cfg).await?;
            eprintln!(
                "{:<14} {:<22} clients {:>3}  {:>10.0} {:<12}  p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>8.2} ms  errors {}  cpu/op server {} client {}",
                r.label,
                r.workload,
                r.clients,
                r.throughput,
                r.unit,
                r.latency.p50_ms,
                r.latency.p90_ms,
                r.latency.p99_ms,
                r.latency.p999_ms,
                r.latency.max_ms,
                r.errors,
                r.server_cpu_us_per_op
                    .map_or("n/a".to_string(), |v| format!("{v:.0} µs")),
                r.client_cpu_us_per_op
                    .map_or("n/a".to_string(), |v| format!("{v:.0} µs"))
            );
            if let Some(e) = &r.first_error {
                eprintln!("  first error: {e}");
            }
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Limits {
            dir,
            fsyncs,
            round_trips,
        } => {
            let l = limits::measure(&dir, fsyncs, round_trips)?;
            println!("{}", serde_json::to_string(&l)?);
        }
        Cmd::Report {
            results,
            svg,
            doc,
            preamble,
        } => {
            let text = std::fs::read_to_string(&results).with_context(|| format!("results: {}", results.display()))?;
            let (rs, l) = report::parse(&text)?;
            let table = report::markdown(&rs, l.as_ref());
            println!("{table}");
            if let Some(path) = &svg {
                std::fs::write(path, report::svg(&rs, &["kv-put", "events-append"]))
                    .with_context(|| format!("svg: {}", path.display()))?;
            }
            if let Some(path) = &doc {
                let old = std::fs::read_to_string(path).with_context(|| format!("doc: {}", path.display()))?;
                let body = if preamble.is_empty() {
                    table
                } else {
                    format!("{preamble}\n\n{table}")
                };
                std::fs::write(path, report::splice(&old, &body)?)
                    .with_context(|| format!("doc: {}", path.display()))?;
            }
        }
    }
    Ok(())
}
