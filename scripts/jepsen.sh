#!/usr/bin/env bash
# Runs one Jepsen-style test against a fresh local 3-node cluster of real
# `esf` processes (each node in its own network namespace when run as root)
# and prints its summary; the last line is
# `verdict: VALID|INVALID|INCONCLUSIVE` (exit status 0 only for VALID).
#
# Usage: scripts/jepsen.sh [--workload register|events|watch|registry]
#                          [--nemesis kill,kill-all,pause,partition,partition-follower,one-way,flap,failover,
#                                     bridge,netem,clock,member,snapshot|none]
#                          [--time SECS] [--nodes N]
#                          [--hosts netns|loopback] [--keys N] [--concurrency N]
#                          [--out DIR] [--failpoints local-reads,no-dedup] [--tls]
# Example: scripts/jepsen.sh --workload register --nemesis partition,kill --time 60
# The history (history.jsonl), nemesis log (nemesis.jsonl) and summary go
# to --out (default jepsen-out/). See docs/testing.md.
#
# --tls runs the nodes with TLS (certificates from `esf cert init`, every
# connection with a client certificate: --client-cert-auth) and the clients
# with the cluster's CA and a client certificate.
#
# --failpoints runs nodes built with the test-only `failpoints` feature and
# those faults switched on (the checkers must then say INVALID); that binary
# is built beside the normal one as esf-failpoints, never in its place.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"

args=()
failpoints=""
while [ $# -gt 0 ]; do
  case "$1" in
    --failpoints) failpoints="${2:?--failpoints needs a value}"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -n "$failpoints" ]; then
  cargo build --locked -p esf-node --features failpoints >&2
  cp "$CARGO_TARGET_DIR/debug/esf" "$CARGO_TARGET_DIR/debug/esf-failpoints"
fi
# Always last: puts the normal `esf` back in place.
cargo build --workspace --all-targets --locked >&2
if [ -n "$failpoints" ]; then
  export ESF_FAILPOINTS="$failpoints"
  args+=(--esf "$CARGO_TARGET_DIR/debug/esf-failpoints")
fi
exec "$CARGO_TARGET_DIR/debug/esf-jepsen" "${args[@]}"
