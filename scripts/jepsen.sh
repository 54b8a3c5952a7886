#!/usr/bin/env bash
# Runs one Jepsen-style test against a fresh local 3-node cluster of real
# `esf` processes and prints its summary; the last line is
# `verdict: VALID|INVALID|INCONCLUSIVE` (exit status 0 only for VALID).
#
# Usage: scripts/jepsen.sh [--workload register] [--nemesis kill|none] [--time SECS]
#                          [--keys N] [--concurrency N] [--out DIR]
# Example: scripts/jepsen.sh --workload register --nemesis kill --time 60
# The history (history.jsonl), nemesis log (nemesis.jsonl) and summary go
# to --out (default jepsen-out/). See docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
cargo build --workspace --all-targets --locked >&2
exec "$CARGO_TARGET_DIR/debug/esf-jepsen" "$@"
