#!/usr/bin/env bash
# ESF against etcd on this machine, side by side: the same closed-loop KV
# workloads (esf-bench: same clients, keys, value size, one connection per
# client) run first against a 3-node ESF cluster, then against a 3-member
# etcd cluster (Debian's etcd-server, installed if missing), each alone on
# loopback with its data in a temporary directory. Prints one JSON line per
# run and a markdown table with the ratios.
#
#   scripts/bench.sh [SECONDS_PER_RUN]     (default 10)
#
# Started here so far (issue 8): the KV workloads against etcd. NATS
# JetStream, the event workloads, the physical limits and the plot come
# next (docs/benchmarks.md says what each figure is).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
SECS="${1:-10}"

bash scripts/setup.sh
if ! command -v etcd >/dev/null; then
  echo "bench: installing etcd-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
cargo build --locked --quiet -p esf-node -p esf-bench
BIN="$CARGO_TARGET_DIR/debug/esf"
GEN="$CARGO_TARGET_DIR/debug/esf-bench"
WORK="$(mktemp -d /tmp/esf-bench.XXXXXX)"
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# name clients workload
RUNS=("kv-put 1" "kv-put 64" "kv-get 64" "kv-get-serializable 64")
RESULTS="$WORK/results.jsonl"

run_all() { # target endpoints
  local target="$1" eps="$2" workload clients
  for r in "${RUNS[@]}"; do
    read -r workload clients <<<"$r"
    echo "bench: $target $workload with $clients clients for ${SECS}s" >&2
    "$GEN" --target "$target" --endpoints "$eps" --workload "$workload" --clients "$clients" \
      --duration-secs "$SECS" | tee -a "$RESULTS"
  done
}

wait_until() { # what command...
  local what="$1"
  shift
  for _ in $(seq 1 120); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "bench: $what not ready within 60 s; logs in $WORK" >&2
  tail -n 20 "$WORK"/*.log >&2
  trap - EXIT
  stop_all
  exit 1
}

# ESF: 3 nodes.
ESF_EPS="127.0.0.1:42379,127.0.0.1:42479,127.0.0.1:42579"
for i in 1 2 3; do
  port=$((42379 + (i - 1) * 100))
  "$BIN" serve --node-id "$i" --data-dir "$WORK/esf-$i" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$((port + 1))" --join "$ESF_EPS" --bootstrap-expect 3 \
    >"$WORK/esf-$i.log" 2>&1 &
  PIDS+=($!)
done
wait_until "ESF" "$BIN" --endpoints "$ESF_EPS" endpoint health
run_all esf "$ESF_EPS"
stop_all

# etcd: 3 members (WAL fsync on every commit, its default).
ETCD_EPS="127.0.0.1:52379,127.0.0.1:52479,127.0.0.1:52579"
CLUSTER="e1=http://127.0.0.1:52380,e2=http://127.0.0.1:52480,e3=http://127.0.0.1:52580"
for i in 1 2 3; do
  port=$((52379 + (i - 1) * 100))
  etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token esf-bench \
    >"$WORK/etcd-$i.log" 2>&1 &
  PIDS+=($!)
done
wait_until "etcd" "$GEN" --target etcd --endpoints "$ETCD_EPS" --workload kv-put --clients 1 --duration-secs 1 --keys 1
run_all etcd "$ETCD_EPS"
stop_all

python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["target"], r["workload"], r["clients"]): r for r in rows}
print()
print("| workload | clients | ESF ops/s | ESF p50 / p99 ms | etcd ops/s | etcd p50 / p99 ms | throughput ESF/etcd | p99 ESF/etcd |")
print("|---|---|---|---|---|---|---|---|")
for (t, w, c), e in by.items():
    if t != "esf" or ("etcd", w, c) not in by:
        continue
    d = by[("etcd", w, c)]
    print(f"| {w} | {c} | {e['ops_per_sec']:.0f} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | "
          f"{d['ops_per_sec']:.0f} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | "
          f"{e['ops_per_sec'] / d['ops_per_sec']:.2f}x | {e['p99_ms'] / d['p99_ms']:.2f}x |")
EOF
