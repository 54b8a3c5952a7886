#!/usr/bin/env bash
# Installs every system package ESF needs to build and test on a fresh Debian
# machine. Idempotent: quiet and fast when everything is already present.
set -euo pipefail

# Debian packages: libclang-dev and clang for librocksdb-sys's bindgen and C++
# build (the same C compiler builds ring, the cryptography of TLS and of
# `esf cert init`); pkg-config for -sys crates.
# iproute2 (`ip`) for the network-namespace test hosts, nftables for packet
# loss on kernels without sch_netem; faketime (libfaketime) for the clock
# nemesis.
PACKAGES=(libclang-dev clang pkg-config iproute2 nftables faketime)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# python3 for scripts/check-layers.py (any python3 on PATH will do).
command -v python3 >/dev/null 2>&1 || missing+=(python3)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi
