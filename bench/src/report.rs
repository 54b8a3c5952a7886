//! Turns a results file (JSON lines of [`RunResult`] and one [`Limits`])
//! into the markdown table and the throughput plot of docs/benchmarks.md.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::{Context, bail};

use crate::limits::Limits;
use crate::run::RunResult;

/// Where `scripts/bench.sh` writes in docs/benchmarks.md.
pub const BEGIN: &str = "<!-- bench.sh:begin -->";
/// End of the written part.
pub const END: &str = "<!-- bench.sh:end -->";

/// The results and limits in a JSON-lines file's text.
pub fn parse(text: &str) -> anyhow::Result<(Vec<RunResult>, Option<Limits>)> {
    let mut results = Vec::new();
    let mut limits = None;
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("results line {}: not JSON", n + 1))?;
        match v["kind"].as_str() {
            Some("result") => {
                results.push(serde_json::from_value(v).with_context(|| format!("results line {}", n + 1))?)
            }
            Some("limits") => {
                limits = Some(serde_json::from_value(v).with_context(|| format!("results line {}", n + 1))?)
            }
            other => bail!("results line {}: kind {other:?} is neither result nor limits", n + 1),
        }
    }
    Ok((results, limits))
}

/// The peers each ESF row is compared with: etcd for kv workloads,
/// every NATS configuration for event workloads.
fn peers<'a>(all: &'a [RunResult], esf: &RunResult) -> Vec<&'a RunResult> {
    all.iter()
        .filter(|r| r.target != "esf" && r.workload == esf.workload && r.clients == esf.clients && r.batch == esf.batch)
        .collect()
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The physical floor of one operation of `workload` from one client:
/// a durable write needs at least one fdatasync and one round trip to a
/// follower; a linearizable read one round trip; a local read nothing.
fn floor(workload: &str, l: &Limits) -> String {
    let rtt = l.rtt.p50_ms;
    let fsync = l.fdatasync.p50_ms;
    match workload {
        "kv-get" => format!("RTT {rtt:.3} ms"),
        "kv-get-serializable" => "none (local read)".to_string(),
        _ => format!("fdatasync + RTT {:.3} ms", fsync + rtt),
    }
}

/// The markdown table: one row per ESF result and peer.
pub fn markdown(results: &[RunResult], limits: Option<&Limits>) -> String {
    let mut s = String::new();
    if let Some(l) = limits {
        let _ = writeln!(
            s,
            "Physical limits measured in the same run: **{} fdatasyncs/s** of {} B appends one at a time (p50 {:.3} ms, p99 {:.3} ms); loopback TCP round trip p50 **{:.3} ms** (p99 {:.3} ms); {} cores.\n",
            thousands(l.fdatasync_per_sec),
            l.fsync_bytes,
            l.fdatasync.p50_ms,
            l.fdatasync.p99_ms,
            l.rtt.p50_ms,
            l.rtt.p99_ms,
            l.cores
        );
    }
    s.push_str("| workload | clients | ESF | peer | peer result | ESF / peer throughput | ESF / peer p99 | server CPU per op ESF / peer | physical floor (1 op) | CPU busy ESF / peer |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let cell = |r: &RunResult| {
        let err = if r.errors > 0 {
            format!(", **{} errors**", r.errors)
        } else {
            String::new()
        };
        format!(
            "{} {} (p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms{err})",
            thousands(r.throughput),
            r.unit,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.p999_ms
        )
    };
    let us = |r: &RunResult| match r.server_cpu_us_per_op {
        Some(v) => format!("{v:.0} µs"),
        None => "n/a".to_string(),
    };
    for e in results.iter().filter(|r| r.target == "esf") {
        let what = match (e.workload.as_str(), e.batch, e.writers) {
            (w, b, _) if b > 1 => format!("{w} ({b} per append)"),
            (w, _, n) if n > 0 => format!("{w} ({n} writer{})", if n == 1 { "" } else { "s" }),
            (w, ..) => w.to_string(),
        };
        let fl = limits.map(|l| floor(&e.workload, l)).unwrap_or_default();
        let ps = peers(results, e);
        if ps.is_empty() {
            let _ = writeln!(
                s,
                "| {what} | {} | {} | none | | | | {} | {fl} | {:.0}% |",
                e.clients,
                cell(e),
                us(e),
                e.cpu_busy_pct
            );
        }
        for p in ps {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}x", a / b)
                } else {
                    "n/a".to_string()
                }
            };
            let _ = writeln!(
                s,
                "| {what} | {} | {} | {} | {} | **{}** | {} | {} / {} ({}) | {fl} | {:.0}% / {:.0}% |",
                e.clients,
                cell(e),
                p.label,
                cell(p),
                ratio(e.throughput, p.throughput),
                ratio(e.latency.p99_ms, p.latency.p99_ms),
                us(e),
                us(p),
                match (e.server_cpu_us_per_op, p.server_cpu_us_per_op) {
                    (Some(a), Some(b)) => ratio(a, b),
                    _ => "n/a".to_string(),
                },
                e.cpu_busy_pct,
                p.cpu_busy_pct
            );
        }
    }
    let rss: Vec<String> = results
        .iter()
        .filter(|r| r.target == "esf")
        .filter_map(|r| r.rss_mib.map(|m| format!("{m:.0}")))
        .collect();
    if let Some(last) = rss.last() {
        let _ = writeln!(s, "\nLargest ESF node RSS after the last ESF run: {last} MiB.");
    }
    s
}

const COLORS: [&str; 4] = ["#1b6ac9", "#d9480f", "#2f9e44", "#7048e8"];

/// An SVG plot of throughput against clients: one panel per workload in
/// `panels`, one line per label.
pub fn svg(results: &[RunResult], panels: &[&str]) -> String {
    let (pw, ph, margin) = (420.0, 300.0, 60.0);
    let width = pw * panels.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{ph}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, workload) in panels.iter().enumerate() {
        let x0 = i as f64 * pw;
        let rows: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.workload == *workload && r.batch == 1)
            .collect();
        let clients: BTreeSet<usize> = rows.iter().map(|r| r.clients).collect();
        let clients: Vec<usize> = clients.into_iter().collect();
        let labels: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        let ymax = rows.iter().map(|r| r.throughput).fold(0.0, f64::max).max(1.0) * 1.1;
        let (left, right, top, bottom) = (x0 + margin, x0 + pw - 20.0, 30.0, ph - 40.0);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\">{workload}: throughput against clients</text>",
            x0 + pw / 2.0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{bottom}\" stroke=\"black\"/>"
        );
        let xpos = |c: usize| {
            let k = clients.iter().position(|x| *x == c).unwrap_or(0) as f64;
            let n = (clients.len().max(2) - 1) as f64;
            left + 10.0 + k / n * (right - left - 20.0)
        };
        let ypos = |v: f64| bottom - v / ymax * (bottom - top);
        for c in &clients {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
                xpos(*c),
                bottom + 14.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">clients</text>",
            (left + right) / 2.0,
            bottom + 30.0
        );
        for k in 0..=4 {
            let v = ymax * k as f64 / 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left - 4.0,
                ypos(v) + 4.0,
                thousands(v)
            );
        }
        for (j, label) in labels.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.label == *label)
                .map(|r| (xpos(r.clients), ypos(r.throughput)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                path.join(" ")
            );
            for (x, y) in &pts {
                let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>");
            }
            let ly = top + 4.0 + 14.0 * j as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
                left + 10.0,
                ly,
                left + 24.0,
                ly + 9.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `body`.
pub fn splice(doc: &str, body: &str) -> anyhow::Result<String> {
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("doc: lacks the markers {BEGIN} and {END} that say where the results go");
    };
    if e < b {
        bail!("doc: {END} comes before {BEGIN}");
    }
    Ok(format!("{}{BEGIN}\n{body}\n{}", &doc[..b], &doc[e..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn result(label: &str, target: &str, workload: &str, clients: usize, throughput: f64, p99: f64) -> RunResult {
        RunResult {
            kind: "result".into(),
            target: target.into(),
            label: label.into(),
            workload: workload.into(),
            clients,
            connections: clients,
            writers: 0,
            batch: 1,
            value_size: 256,
            keys: 1000,
            rate: None,
            seconds: 10.0,
            ops: (throughput * 10.0) as u64,
            errors: 0,
            first_error: None,
            throughput,
            unit: "ops/s".into(),
            latency: Percentiles {
                p50_ms: p99 / 2.0,
                p90_ms: p99 / 1.5,
                p99_ms: p99,
                p999_ms: p99 * 2.0,
                max_ms: p99 * 3.0,
            },
            cpu_busy_pct: 90.0,
            load1: 2.0,
            rss_mib: Some(200.0),
            server_cpu_us_per_op: Some(2e6 / throughput),
            client_cpu_us_per_op: Some(1e5 / throughput),
        }
    }

    #[test]
    fn rows_pair_esf_with_each_peer_of_the_same_workload_and_clients() {
        let rs = vec![
            result("esf", "esf", "kv-put", 64, 3000.0, 20.0),
            result("etcd", "etcd", "kv-put", 64, 6000.0, 10.0),
            result("etcd", "etcd", "kv-put", 1, 900.0, 2.0),
            result("esf", "esf", "events-append", 16, 4000.0, 8.0),
            result("nats-always", "nats", "events-append", 16, 1000.0, 16.0),
            result("nats-default", "nats", "events-append", 16, 8000.0, 4.0),
        ];
        let md = markdown(&rs, None);
        let lines: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| kv-put") || l.starts_with("| events"))
            .collect();
        assert_eq!(lines.len(), 3, "{md}");
        assert!(
            lines[0].contains("| etcd |")
                && lines[0].contains("**0.50x**")
                && lines[0].contains("| 2.00x |")
                && lines[0].contains("| 667 µs / 333 µs (2.00x) |"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("nats-always") && lines[1].contains("**4.00x**"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("nats-default") && lines[2].contains("**0.50x**"),
            "{}",
            lines[2]
        );
        assert!(md.contains("3,000 ops/s"), "{md}");
    }

    #[test]
    fn the_plot_has_a_line_per_label_and_a_point_per_run() {
        let rs = vec![
            result("esf", "esf", "kv-put", 1, 500.0, 2.0),
            result("esf", "esf", "kv-put", 64, 3000.0, 20.0),
            result("etcd", "etcd", "kv-put", 1, 900.0, 2.0),
            result("etcd", "etcd", "kv-put", 64, 6000.0, 10.0),
        ];
        let svg = svg(&rs, &["kv-put", "events-append"]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains(">esf<") && svg.contains(">etcd<"));
        // The fastest point sits highest (smallest y).
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn splice_replaces_only_between_the_markers_and_refuses_a_doc_without_them() {
        let doc = format!("# B\nbefore\n{BEGIN}\nold\n{END}\nafter\n");
        let out = splice(&doc, "new table").expect("splice");
        assert_eq!(out, format!("# B\nbefore\n{BEGIN}\nnew table\n{END}\nafter\n"));
        assert!(
            splice("no markers", "x")
                .expect_err("no markers")
                .to_string()
                .starts_with("doc:")
        );
    }

    #[test]
    fn parse_reads_results_and_limits_and_names_a_bad_line() {
        let r = serde_json::to_string(&result("esf", "esf", "kv-put", 1, 1.0, 1.0)).expect("json");
        let (rs, l) = parse(&format!("{r}\n\n{r}\n")).expect("parse");
        assert_eq!((rs.len(), l.is_none()), (2, true));
        let e = parse("{\"kind\":\"other\"}").expect_err("bad kind").to_string();
        assert!(e.starts_with("results line 1"), "{e}");
    }
}
