#!/usr/bin/env bash
# Before and after: the same esf-bench workloads against a 3-node cluster
# of a base `esf` binary (BASE_BIN, e.g. a release build of an earlier
# commit) and of this tree's release build, alternating ROUNDS times in one
# invocation so drift on the machine hits both alike. Prints per workload
# the median throughput, p99, p99.9 and server CPU per operation of each,
# and the ratios new/base.
#
#   BASE_BIN=/tmp/esf-old scripts/bench-ab.sh [SECONDS_PER_RUN] [ROUNDS]  (default 10 2)
#   BENCH_RUNS="kv-put:64 kv-put:1" BASE_BIN=... scripts/bench-ab.sh 8 3
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
SECS="${1:-10}"
ROUNDS="${2:-2}"
: "${BASE_BIN:?set BASE_BIN to the esf binary to compare with}"
[ -x "$BASE_BIN" ] || { echo "bench-ab: BASE_BIN $BASE_BIN is not an executable" >&2; exit 2; }
read -r -a RUNS <<<"${BENCH_RUNS:-kv-put:64 kv-put:1 kv-txn:64 kv-get:64}"

bash scripts/setup.sh
source scripts/bench-cluster.sh
build_release bench-ab
NEW_BIN="$BIN"
WORK="$(mktemp -d /tmp/esf-bench-ab.XXXXXX)"
RESULTS="$WORK/results.jsonl"
trap 'stop_all; rm -rf "$WORK"' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for mode in base new; do
    if [ "$mode" = base ]; then bin="$BASE_BIN"; else bin="$NEW_BIN"; fi
    dir="$WORK/$mode-$round"
    start_esf "$bin" "$dir" 28379
    healthy=0
    for _ in $(seq 1 120); do
      if "$bin" --endpoints "$ESF_EPS" endpoint health >/dev/null 2>&1; then healthy=1; break; fi
      sleep 0.5
    done
    [ "$healthy" = 1 ] || { echo "bench-ab: $mode cluster not healthy within 60 s" >&2; tail -n 20 "$dir"/esf-*.log >&2; exit 1; }
    "$GEN" run --target esf --label warm-up --endpoints "$ESF_EPS" --workload kv-put --clients 16 --duration-secs 3 --quiet >/dev/null
    for r in "${RUNS[@]}"; do
      workload="${r%%:*}" clients="${r##*:}"
      echo "bench-ab: round $round, $mode, $workload, $clients clients, ${SECS}s" >&2
      "$GEN" run --target esf --label "$mode" --endpoints "$ESF_EPS" --workload "$workload" \
        --clients "$clients" --duration-secs "$SECS" --pids "$(IFS=,; echo "${PIDS[*]}")" --quiet >>"$RESULTS"
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
med = lambda rs, k: statistics.median(r[k] for r in rs if r.get(k) is not None)
print("| workload | clients | base ops/s (p99 / p99.9 ms, server CPU per op) | new ops/s (p99 / p99.9 ms, server CPU per op) | new / base throughput | new / base CPU per op | rounds (new / base) | errors |")
print("|---|---|---|---|---|---|---|---|")
for (w, c) in sorted({(w, c) for (w, c, _) in by}, key=lambda k: (k[0], -k[1])):
    b, n = by.get((w, c, "base"), []), by.get((w, c, "new"), [])
    if not b or not n:
        continue
    cell = lambda rs: f"{med(rs, 'throughput'):,.0f} ({med(rs, 'p99_ms'):.2f} / {med(rs, 'p999_ms'):.2f}, {med(rs, 'server_cpu_us_per_op'):.0f} µs)"
    rounds = ", ".join(f"{x['throughput'] / y['throughput']:.2f}x" for x, y in zip(n, b))
    errors = sum(r["errors"] for r in b + n)
    print(f"| {w} | {c} | {cell(b)} | {cell(n)} | **{med(n, 'throughput') / med(b, 'throughput'):.2f}x** | {med(n, 'server_cpu_us_per_op') / med(b, 'server_cpu_us_per_op'):.2f}x | {rounds} | {errors} |")
EOF
