#!/usr/bin/env bash
# Runs every ESF test on a fresh or warm machine: installs what is missing
# (scripts/setup.sh), then builds and runs the whole workspace's tests with
# cargo-nextest (per-test time limits in .config/nextest.toml).
#
# Usage: scripts/test.sh [extra nextest args]
# The target directory defaults to $HOME/.cache/esf-target so repeated runs
# (and CI on the same machine) rebuild incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

profile=default
if [ "${CI:-}" = "true" ]; then profile=ci; fi

echo "test: layering of node/ and client/"
python3 scripts/check-layers.py

echo "test: building (target dir $CARGO_TARGET_DIR)"
# The test-only failpoints build first, kept as esf-failpoints (the
# Jepsen-style test broken_builds_are_caught_as_invalid runs it); the
# workspace build after it puts the normal esf back in place.
cargo build --locked -p esf-node --features failpoints
cp "$CARGO_TARGET_DIR/debug/esf" "$CARGO_TARGET_DIR/debug/esf-failpoints"
cargo build --workspace --all-targets --locked
echo "test: running"
cargo nextest run --workspace --locked --profile "$profile" "$@"
