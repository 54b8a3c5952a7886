# Sourced by scripts/bench.sh and scripts/profile.sh: processes started in
# the background (PIDS) and a 3-node ESF cluster on loopback.

PIDS=()

# build_release WHO: builds esf and esf-bench in release mode (WHO names
# the script in the message); sets BIN (BENCH_ESF_BIN wins, to measure
# another esf build) and GEN.
build_release() {
  echo "$1: building esf and esf-bench (release)" >&2
  cargo build --release --locked --quiet -p esf-node -p esf-bench
  BIN="${BENCH_ESF_BIN:-$CARGO_TARGET_DIR/release/esf}"
  GEN="$CARGO_TARGET_DIR/release/esf-bench"
}

# Stops every process in PIDS: SIGTERM, up to 5 s to exit, then SIGKILL.
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
}

# start_esf BIN WORK BASE_PORT: 3 nodes on BASE_PORT, +100, +200 (admin on
# port + 1), data and logs under WORK; sets ESF_EPS and adds to PIDS. With
# BENCH_TLS=1 the nodes serve TLS with --client-cert-auth (certificates
# from `esf cert init` under WORK/tls) and ESF_CACERT, ESF_CERT and ESF_KEY
# are exported, so the esf CLI and esf-bench talk TLS with a client
# certificate. Keep
# the ports below the kernel's ephemeral range (32768-60999 by default): a
# node's outgoing connection may otherwise take a port another node is
# about to listen on ("admin_listen: ... Address already in use").
start_esf() {
  local bin="$1" work="$2" base="$3" i port
  ESF_EPS="127.0.0.1:$base,127.0.0.1:$((base + 100)),127.0.0.1:$((base + 200))"
  mkdir -p "$work"
  [ -s "$work/peer-secret" ] || (umask 077 && head -c 32 /dev/urandom | base64 >"$work/peer-secret")
  local tls=()
  if [ "${BENCH_TLS:-0}" = 1 ]; then
    [ -s "$work/tls/ca.pem" ] || "$bin" cert init --dir "$work/tls" --hosts 127.0.0.1,localhost --client-names root >/dev/null
    tls=(--cert-file "$work/tls/node.pem" --key-file "$work/tls/node-key.pem"
      --trusted-ca-file "$work/tls/ca.pem" --client-cert-auth)
    export ESF_CACERT="$work/tls/ca.pem" ESF_CERT="$work/tls/client-root.pem" ESF_KEY="$work/tls/client-root-key.pem"
  fi
  for i in 1 2 3; do
    port=$((base + (i - 1) * 100))
    "$bin" serve --node-id "$i" --data-dir "$work/esf-$i" --listen "127.0.0.1:$port" \
      --admin-listen "127.0.0.1:$((port + 1))" --join "$ESF_EPS" --bootstrap-expect 3 --peer-secret-file "$work/peer-secret" \
      ${tls[@]+"${tls[@]}"} >"$work/esf-$i.log" 2>&1 &
    PIDS+=($!)
  done
}
