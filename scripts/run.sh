#!/usr/bin/env bash
# Starts a local 3-node ESF cluster on loopback (installing and building what
# is missing), waits until it is healthy, and prints how to use it.
#
#   scripts/run.sh          start (data and logs under .esf-cluster/)
#   scripts/run.sh --tls    start with TLS: certificates from `esf cert init`
#                           under .esf-cluster/tls (made on first use), every
#                           node requiring a client certificate
#   scripts/run.sh stop     stop it (SIGTERM: graceful)
#   scripts/run.sh clean    stop it and delete its data (and certificates)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DIR="$ROOT/.esf-cluster"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/esf-target}"
BIN="$CARGO_TARGET_DIR/debug/esf"
NODES=(1 2 3)
grpc_port() { echo $((2379 + ($1 - 1) * 100)); }
admin_port() { echo $((2380 + ($1 - 1) * 100)); }
ENDPOINTS="127.0.0.1:$(grpc_port 1),127.0.0.1:$(grpc_port 2),127.0.0.1:$(grpc_port 3)"

stop() {
  for i in "${NODES[@]}"; do
    pidf="$DIR/node-$i.pid"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
      kill -TERM "$(cat "$pidf")"
    fi
  done
  for i in "${NODES[@]}"; do
    pidf="$DIR/node-$i.pid"
    if [ -f "$pidf" ]; then
      pid=$(cat "$pidf")
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      rm -f "$pidf"
    fi
  done
  echo "run: cluster stopped"
}

TLS=0
CMD=start
for arg in "$@"; do
  case "$arg" in
    --tls) TLS=1 ;;
    start|stop|clean) CMD="$arg" ;;
    *) echo "usage: scripts/run.sh [--tls] [start|stop|clean]" >&2; exit 2 ;;
  esac
done
case "$CMD" in
  stop) stop; exit 0 ;;
  clean) stop; rm -rf "$DIR"; echo "run: data removed"; exit 0 ;;
esac

bash scripts/setup.sh
echo "run: building (target dir $CARGO_TARGET_DIR)"
cargo build --workspace --all-targets --locked --quiet
mkdir -p "$DIR"
# The cluster's peer secret: every node proves itself to the others with it.
if [ ! -s "$DIR/peer-secret" ]; then
  (umask 077 && head -c 32 /dev/urandom | base64 >"$DIR/peer-secret")
fi
# TLS: a CA, one node certificate for 127.0.0.1/localhost and a client
# certificate for "root", made once.
TLS_DIR="$DIR/tls"
TLS_SERVE=()
CLIENT=("$BIN" --endpoints "$ENDPOINTS")
SCHEME=http
if [ "$TLS" = 1 ]; then
  if [ ! -s "$TLS_DIR/ca.pem" ]; then
    "$BIN" cert init --dir "$TLS_DIR" --hosts 127.0.0.1,localhost --client-names root
  fi
  TLS_SERVE=(--cert-file "$TLS_DIR/node.pem" --key-file "$TLS_DIR/node-key.pem"
    --trusted-ca-file "$TLS_DIR/ca.pem" --client-cert-auth)
  CLIENT+=(--cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/client-root.pem" --key "$TLS_DIR/client-root-key.pem")
  SCHEME=https
fi
for i in "${NODES[@]}"; do
  pidf="$DIR/node-$i.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    echo "run: node $i already running (pid $(cat "$pidf"))"
    continue
  fi
  nohup "$BIN" serve --node-id "$i" --data-dir "$DIR/node-$i" \
    --listen "127.0.0.1:$(grpc_port "$i")" --admin-listen "127.0.0.1:$(admin_port "$i")" \
    --join "$ENDPOINTS" --bootstrap-expect 3 --peer-secret-file "$DIR/peer-secret" \
    ${TLS_SERVE[@]+"${TLS_SERVE[@]}"} >"$DIR/node-$i.log" 2>&1 &
  echo $! >"$pidf"
done

echo -n "run: waiting for the cluster to be healthy"
for _ in $(seq 1 120); do
  if "${CLIENT[@]}" endpoint health >/dev/null 2>&1; then
    echo
    "${CLIENT[@]}" endpoint status
    if [ "$TLS" = 1 ]; then
      TRY="  export ESF_ENDPOINTS=$ENDPOINTS
  export ESF_CACERT=$TLS_DIR/ca.pem ESF_CERT=$TLS_DIR/client-root.pem ESF_KEY=$TLS_DIR/client-root-key.pem
  (or: $BIN --cacert $TLS_DIR/ca.pem --cert $TLS_DIR/client-root.pem --key $TLS_DIR/client-root-key.pem ...)
  curl --cacert $TLS_DIR/ca.pem --cert $TLS_DIR/client-root.pem --key $TLS_DIR/client-root-key.pem https://127.0.0.1:$(admin_port 1)/readyz"
    else
      TRY="  export ESF_ENDPOINTS=$ENDPOINTS"
    fi
    cat <<EOT

ESF is running: 3 nodes, data and logs in $DIR$([ "$TLS" = 1 ] && echo ", TLS with client certificates (certificates in $TLS_DIR)")
  gRPC endpoints: $ENDPOINTS
  admin HTTP:     $SCHEME://127.0.0.1:$(admin_port 1)/readyz  /metrics  (and $(admin_port 2), $(admin_port 3))

Try:
$TRY
  $BIN kv put greeting hello
  $BIN kv get greeting
  $BIN kv history greeting
  $BIN member list
  $BIN leader transfer

Stop it with: scripts/run.sh stop
EOT
    exit 0
  fi
  echo -n "."
  sleep 0.5
done
echo
echo "run: the cluster did not become healthy within 60 s; logs:" >&2
tail -n 20 "$DIR"/node-*.log >&2
exit 1
