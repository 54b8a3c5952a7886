//! The load generator against a real 3-node ESF cluster: every ESF
//! workload completes exactly the operations asked, without errors, and
//! reports ordered percentiles; fan-out receivers get every change; an
//! open-loop run keeps its schedule; bad options are refused by name; the
//! report writes the table into a doc and a plot.

use std::process::Command;

use esf_cluster_tests::{Cluster, esf_bin};

/// `esf-bench ARGS`: (exit code, stdout, stderr).
fn bench(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_esf-bench"))
        .args(args)
        .output()
        .expect("run esf-bench");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(eps: &str, workload: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "run",
        "--target",
        "esf",
        "--endpoints",
        eps,
        "--workload",
        workload,
        "--clients",
        "2",
        "--keys",
        "20",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = bench(&args);
    assert_eq!(code, 0, "{workload}: {err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{workload}: {e}: {out}"));
    assert_eq!(r["errors"], 0, "{workload}: {r}");
    let p = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{workload}: no {k} in {r}"));
    assert!(
        0.0 < p("p50_ms")
            && p("p50_ms") <= p("p90_ms")
            && p("p90_ms") <= p("p99_ms")
            && p("p99_ms") <= p("p999_ms")
            && p("p999_ms") <= p("max_ms"),
        "{workload}: {r}"
    );
    assert!(p("throughput") > 0.0, "{workload}: {r}");
    // The human-readable row.
    assert!(err.contains(workload), "{err}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_esf_workload_runs_against_a_real_cluster() {
    let c = Cluster::start(&esf_bin(), 3);
    c.wait_converged().await;
    let eps = c.endpoints();
    let pids: Vec<String> = (1..=3)
        .map(|i| c.node(i).child.as_ref().expect("running").id().to_string())
        .collect();
    let pids = pids.join(",");

    for w in ["kv-put", "kv-get", "kv-get-serializable", "kv-txn", "events-append"] {
        let r = run(&eps, w, &["--ops", "40"]);
        assert_eq!(r["ops"], 40, "{w}: {r}");
    }
    let r = run(&eps, "events-append-batched", &["--ops", "6", "--batch", "50"]);
    assert_eq!(
        (r["ops"].as_u64(), r["batch"].as_u64(), r["unit"].as_str()),
        (Some(6), Some(50), Some("events/s"))
    );
    // Fan-out: 2 receivers each get all 30 writes (a missing one is an error).
    for w in ["watch", "events-subscribe"] {
        let r = run(&eps, w, &["--ops", "30", "--writers", "2"]);
        assert_eq!(
            (r["ops"].as_u64(), r["unit"].as_str()),
            (Some(30), Some("deliveries/s")),
            "{w}: {r}"
        );
    }
    // Open loop: 20 ops at 200/s are scheduled over 0.1 s at least; shared connections.
    let r = run(
        &eps,
        "kv-put",
        &["--ops", "20", "--rate", "200", "--connections", "1", "--pids", &pids],
    );
    assert_eq!((r["ops"].as_u64(), r["connections"].as_u64()), (Some(20), Some(1)));
    assert!(r["seconds"].as_f64().expect("seconds") >= 0.09, "{r}");
    assert!(r["rss_mib"].as_f64().expect("rss of the nodes") > 10.0, "{r}");

    // Bad options name the option and the reason, and nothing runs.
    for (args, needle) in [
        (vec!["--workload", "kv-put", "--target", "nats"], "workload:"),
        (
            vec![
                "--workload",
                "kv-put",
                "--target",
                "esf",
                "--clients",
                "2",
                "--connections",
                "3",
            ],
            "connections:",
        ),
        (
            vec!["--workload", "events-append", "--target", "esf", "--value-size", "8"],
            "value-size:",
        ),
        (vec!["--workload", "kv-put", "--target", "esf", "--rate=-5"], "rate:"),
    ] {
        let mut all = vec!["run", "--endpoints", eps.as_str(), "--quiet", "--ops", "1"];
        all.extend_from_slice(&args);
        let (code, out, err) = bench(&all);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
    }
}

#[test]
fn limits_and_report_write_the_doc_and_the_plot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (code, limits, err) = bench(&["limits", "--dir", d, "--fsyncs", "20", "--round-trips", "100"]);
    assert_eq!(code, 0, "{err}");
    let l: serde_json::Value = serde_json::from_str(limits.trim()).expect("limits json");
    assert!(l["fdatasync_per_sec"].as_f64().expect("rate") > 0.0);
    let row = |label: &str, target: &str, throughput: f64| {
        serde_json::json!({
            "kind": "result", "target": target, "label": label, "workload": "kv-put", "clients": 64,
            "connections": 64, "writers": 0, "batch": 1, "value_size": 256, "keys": 1000, "rate": null,
            "seconds": 10.0, "ops": 1000, "errors": 0, "first_error": null, "throughput": throughput,
            "unit": "ops/s", "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "p999_ms": 4.0, "max_ms": 5.0,
            "cpu_busy_pct": 95.0, "load1": 2.0, "rss_mib": 180.0
        })
        .to_string()
    };
    let results = dir.path().join("results.jsonl");
    std::fs::write(
        &results,
        format!(
            "{}\n{}\n{}",
            limits.trim(),
            row("esf", "esf", 9000.0),
            row("etcd", "etcd", 3000.0)
        ),
    )
    .expect("write results");
    let doc = dir.path().join("benchmarks.md");
    std::fs::write(
        &doc,
        "# Benchmarks\n\n<!-- bench.sh:begin -->\nold\n<!-- bench.sh:end -->\n\nKept.\n",
    )
    .expect("write doc");
    let svg = dir.path().join("plot.svg");
    let (code, table, err) = bench(&[
        "report",
        "--results",
        results.to_str().expect("utf-8"),
        "--doc",
        doc.to_str().expect("utf-8"),
        "--svg",
        svg.to_str().expect("utf-8"),
        "--preamble",
        "Made by a test.",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("**3.00x**"), "{table}");
    let doc = std::fs::read_to_string(&doc).expect("doc");
    assert!(
        doc.contains("Made by a test.") && doc.contains("**3.00x**") && doc.ends_with("Kept.\n"),
        "{doc}"
    );
    assert!(!doc.contains("old"), "{doc}");
    assert!(std::fs::read_to_string(&svg).expect("svg").contains("<polyline"));
}
