#!/usr/bin/env bash
# What security costs: the same esf-bench workloads against a 3-node ESF
# cluster (release build) with security off, and with TLS on every port,
# --client-cert-auth and auth enabled (a non-root user `bench` with
# readwrite on `bench/`, logged in with a password; every request carries
# its token and is checked against its role), alternating the two modes
# ROUNDS times in one invocation so drift on the machine hits both alike.
# Prints per workload the median throughput and p99 of each mode and the
# ratio secure/off; docs/benchmarks.md ("Security") has the last figures.
#
#   scripts/bench-security.sh [SECONDS_PER_RUN] [ROUNDS]   (default 10 2)
#   BENCH_MODES="off tls auth tls+auth" scripts/bench-security.sh 8 1
#     (tls: TLS and --client-cert-auth without auth; auth: auth with
#     tokens over plaintext; the ratios are against `off`)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
SECS="${1:-10}"
ROUNDS="${2:-2}"
RUNS=("kv-put 64" "kv-put 1" "kv-get 64")

bash scripts/setup.sh
source scripts/bench-cluster.sh
build_release bench-security
WORK="$(mktemp -d /tmp/esf-bench-security.XXXXXX)"
RESULTS="$WORK/results.jsonl"
trap 'stop_all; rm -rf "$WORK"' EXIT
ROOT_PASSWORD="root-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"
BENCH_PASSWORD="bench-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')"

wait_healthy() {
  for _ in $(seq 1 120); do
    if "$BIN" --endpoints "$ESF_EPS" endpoint health >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "bench-security: cluster not healthy within 60 s; logs in $WORK" >&2
  tail -n 20 "$WORK"/*/esf-*.log >&2 || true
  exit 1
}

# Users root and bench (readwrite on the benchmark's keys), then auth on.
enable_auth() {
  local esf=("$BIN" --endpoints "$ESF_EPS")
  ESF_NEW_PASSWORD="$ROOT_PASSWORD" "${esf[@]}" user add root >/dev/null
  "${esf[@]}" user grant-role root root >/dev/null
  "${esf[@]}" role add bench >/dev/null
  "${esf[@]}" role grant-permission bench readwrite bench/ --prefix >/dev/null
  ESF_NEW_PASSWORD="$BENCH_PASSWORD" "${esf[@]}" user add bench >/dev/null
  "${esf[@]}" user grant-role bench bench >/dev/null
  "${esf[@]}" auth enable >/dev/null
}

for round in $(seq 1 "$ROUNDS"); do
  for mode in ${BENCH_MODES:-off tls+auth}; do
    dir="$WORK/$mode-$round"
    unset ESF_CACERT ESF_CERT ESF_KEY ESF_USER ESF_PASSWORD
    if [[ "$mode" == tls* ]]; then BENCH_TLS=1; else BENCH_TLS=0; fi
    export BENCH_TLS
    start_esf "$BIN" "$dir" 27379
    wait_healthy
    if [[ "$mode" == *auth ]]; then
      enable_auth
      export ESF_USER=bench ESF_PASSWORD="$BENCH_PASSWORD"
      # The client certificate's CN is root; the token (user bench) wins.
      "$BIN" --endpoints "$ESF_EPS" kv put bench/probe 1 >/dev/null
    fi
    "$GEN" run --target esf --label warm-up --endpoints "$ESF_EPS" --workload kv-put --clients 16 --duration-secs 3 --quiet >/dev/null
    for r in "${RUNS[@]}"; do
      read -r workload clients <<<"$r"
      echo "bench-security: round $round, $mode, $workload, $clients clients, ${SECS}s" >&2
      "$GEN" run --target esf --label "$mode" --endpoints "$ESF_EPS" --workload "$workload" \
        --clients "$clients" --duration-secs "$SECS" --pids "$(IFS=,; echo "${PIDS[*]}")" >>"$RESULTS"
    done
    stop_all
    rm -rf "$dir"/esf-*/
  done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r.get("kind") == "result"]
by = {}
for r in rows:
    by.setdefault((r["workload"], r["clients"], r["label"]), []).append(r)
modes = []
for r in rows:
    if r["label"] not in modes:
        modes.append(r["label"])
others = [m for m in modes if m != "off"]
print("| workload | clients | off ops/s (p99 ms) | " + " | ".join(f"{m} ops/s (p99 ms) | {m} / off" for m in others) + " | errors |")
print("|---|---|---|" + "---|---|" * len(others) + "---|")
for (w, c) in sorted({(w, c) for (w, c, _) in by}, key=lambda k: (k[0], -k[1])):
    off = by.get((w, c, "off"), [])
    if not off:
        continue
    t_off = statistics.median(r["throughput"] for r in off)
    cells = [f"{t_off:,.0f} ({statistics.median(r['p99_ms'] for r in off):.2f})"]
    errors = sum(r["errors"] for r in off)
    for m in others:
        rs = by.get((w, c, m), [])
        if not rs:
            cells += ["", ""]
            continue
        t = statistics.median(r["throughput"] for r in rs)
        cells += [f"{t:,.0f} ({statistics.median(r['p99_ms'] for r in rs):.2f})", f"{t / t_off:.2f}x"]
        errors += sum(r["errors"] for r in rs)
    print(f"| {w} | {c} | " + " | ".join(cells) + f" | {errors} |")
EOF
