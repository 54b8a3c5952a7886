#!/usr/bin/env bash
# Where a 3-node ESF cluster spends its CPU under one esf-bench workload:
# perf samples every node (cpu-clock, DWARF call graphs) while the load
# runs, then prints the hottest functions and, if inferno is installed
# (`cargo install inferno`), writes a flame graph.
#
#   scripts/profile.sh [WORKLOAD] [CLIENTS] [SECONDS] [OUT_DIR]
#   scripts/profile.sh kv-put 64 10 /tmp/esf-profile
#
# Needs linux-perf (installed if missing) and root (or a low
# kernel.perf_event_paranoid). Uses the release build, as scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
WORKLOAD="${1:-kv-put}"
CLIENTS="${2:-64}"
SECS="${3:-10}"
OUT="${4:-/tmp/esf-profile}"
mkdir -p "$OUT"
if ! command -v perf >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
cargo build --release --locked --quiet -p esf-node -p esf-bench
BIN="$CARGO_TARGET_DIR/release/esf"
GEN="$CARGO_TARGET_DIR/release/esf-bench"
WORK="$(mktemp -d /tmp/esf-profile.XXXXXX)"
source scripts/bench-cluster.sh
trap 'stop_all; rm -rf "$WORK"' EXIT

start_esf "$BIN" "$WORK" 25379
EPS="$ESF_EPS"
for _ in $(seq 1 120); do
  "$BIN" --endpoints "$EPS" endpoint health >/dev/null 2>&1 && break
  sleep 0.5
done
NODES="$(IFS=,; echo "${PIDS[*]}")"
# Warm up (leaders elected, connections open), then sample the measured run.
"$GEN" run --target esf --endpoints "$EPS" --workload "$WORKLOAD" --clients "$CLIENTS" --duration-secs 2 --quiet >/dev/null
perf record -e cpu-clock -F 199 --call-graph dwarf,16384 -p "$NODES" -o "$OUT/perf.data" -- sleep "$SECS" 2>"$OUT/perf-record.log" &
PERF=$!
"$GEN" run --target esf --endpoints "$EPS" --workload "$WORKLOAD" --clients "$CLIENTS" --duration-secs "$SECS" --quiet | tee "$OUT/result.json"
wait "$PERF"
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^$' | head -n 80 >"$OUT/top.txt" || true
perf report -i "$OUT/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' >"$OUT/threads.txt" || true
echo "profile: hottest functions in $OUT/top.txt, threads in $OUT/threads.txt" >&2
if command -v inferno-collapse-perf >/dev/null; then
  perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/stacks.folded"
  inferno-flamegraph --title "esf: $WORKLOAD, $CLIENTS clients" <"$OUT/stacks.folded" >"$OUT/flamegraph.svg"
  echo "profile: flame graph in $OUT/flamegraph.svg" >&2
fi
