//! `esf-jepsen`: runs one Jepsen-style test against a fresh local cluster
//! and prints its summary; the last line is `verdict: VALID|INVALID|INCONCLUSIVE`
//! (exit 0 only for VALID).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use esf_jepsen::runner::{Hosts, Nemesis, RunConfig, Verdict, Workload, run};

const USAGE: &str = "usage: esf-jepsen [--workload register|events|watch|registry] [--nemesis NAME[,NAME...]|none] [--hosts netns|loopback] [--nodes N] [--time SECS] [--keys N] [--concurrency N] [--out DIR] [--esf PATH] [--tls]
nemeses: kill, kill-all, pause, partition, partition-follower, one-way, flap, bridge (--nodes 5), netem, clock, member, snapshot, failover (--nodes 4)";

fn parse(args: &[String]) -> Result<RunConfig, String> {
    let mut cfg = RunConfig {
        esf_bin: default_esf_bin(),
        workload: Workload::Register,
        nemeses: vec![Nemesis::Kill],
        // Network namespaces when this machine allows them.
        nodes: 3,
        hosts: if esf_cluster_tests::netns::unavailable().is_none() {
            Hosts::Netns
        } else {
            Hosts::Loopback
        },
        time: Duration::from_secs(30),
        keys: 4,
        concurrency: 8,
        out: PathBuf::from("jepsen-out"),
        tls: false,
        // scripts/jepsen.sh --failpoints exports ESF_FAILPOINTS, which the
        // nodes inherit.
        failpoints: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name}: a value is required"));
        match flag.as_str() {
            "--workload" => cfg.workload = value("workload")?.parse()?,
            "--nemesis" => {
                let v = value("nemesis")?;
                cfg.nemeses = v
                    .split(',')
                    .filter(|n| *n != "none" && !n.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--time" => {
                let v = value("time")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("time: {v:?} is not a number of seconds"))?;
                if secs == 0 {
                    return Err("time: must be at least 1 second".into());
                }
                cfg.time = Duration::from_secs(secs);
            }
            "--keys" => cfg.keys = number("keys", &value("keys")?, 1..=usize::MAX, "a positive number")?,
            "--concurrency" => {
                cfg.concurrency = number(
                    "concurrency",
                    &value("concurrency")?,
                    1..=usize::MAX,
                    "a positive number",
                )?
            }
            "--nodes" => cfg.nodes = number("nodes", &value("nodes")?, 3..=7, "a number from 3 to 7")? as u64,
            "--out" => cfg.out = PathBuf::from(value("out")?),
            "--hosts" => {
                cfg.hosts = match value("hosts")?.as_str() {
                    "netns" => Hosts::Netns,
                    "loopback" => Hosts::Loopback,
                    other => return Err(format!("hosts: {other:?} is not one of: netns, loopback")),
                }
            }
            "--esf" => cfg.esf_bin = PathBuf::from(value("esf")?),
            "--tls" => cfg.tls = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("{other:?} is not an option\n{USAGE}")),
        }
    }
    if !cfg.esf_bin.exists() {
        return Err(format!(
            "esf: {} not found (build the workspace, or pass --esf PATH)",
            cfg.esf_bin.display()
        ));
    }
    Ok(cfg)
}

/// `v` as a number within `range`; else an error naming `field` and
/// saying what it must be (`what`).
fn number(field: &str, v: &str, range: std::ops::RangeInclusive<usize>, what: &str) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or(format!("{field}: {v:?} is not {what}"))
}

/// `esf` beside this binary (both are built into the same target dir).
fn default_esf_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("esf")))
        .unwrap_or_else(|| PathBuf::from("esf"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg).await {
        Ok(report) => {
            println!("history: {}", cfg.out.join("history.jsonl").display());
            // Ends with the `verdict:` line.
            print!("{}", report.summary());
            if report.verdict == Verdict::Valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            println!("verdict: INCONCLUSIVE");
            ExitCode::from(1)
        }
    }
}
