#!/usr/bin/env bash
# The cache in front of handlers: requests/s and latency of cache hits against the handler
# path for the same hello app on one node, in one run, and against raw hyper serving the
# same static body (outpost-static). Bounded in time and requests; loopback only.
#
#   bench/cache.sh
#
# Knobs: DURATION (s, default 10), CONNECTIONS (default 64), REQUESTS (default 2000000),
#        WORKERS (node worker threads, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
REQUESTS=${REQUESTS:-2000000}
WORKERS=${WORKERS:-1}

bash ../shared/v8/install.sh >/dev/null
cargo build --release --quiet --bin outpost --bin outpost-load --bin outpost-static

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts a server in the background and waits until its output names its URL ($url).
start() {
  local log; log=$(mktemp)
  "$@" >"$log" 2>&1 &
  pids+=("$!")
  url=""
  for _ in $(seq 1 300); do
    url=$(grep -oE 'http://[0-9.]+:[0-9]+' "$log" | head -1 || true)
    [ -n "$url" ] && return 0
    sleep 0.05
  done
  echo "server did not start:" >&2; cat "$log" >&2; return 1
}

load() {
  target/release/outpost-load "$1" --connections "$CONNECTIONS" --duration "$DURATION" --requests "$REQUESTS"
}
rps() { sed -E 's/.*req\/s ([0-9]+).*/\1/' <<<"$1"; }

echo "== outpost dev examples/cached (workers $WORKERS, $CONNECTIONS connections, ${DURATION}s each)"
start target/release/outpost dev examples/cached --listen 127.0.0.1:0 --workers "$WORKERS"
node=$url
curl -s -o /dev/null "$node/"   # fills the entry
echo "-- the handler path: /nocache (not storable; the handler runs for each request)"
handler=$(load "$node/nocache"); echo "$handler"
echo "-- cache hits: / (Cache-Status: Outpost; hit)"
curl -s -D - -o /dev/null "$node/" | grep -i '^cache-status'
hits=$(load "$node/"); echo "$hits"

echo "== raw hyper serving the same static body (one current-thread runtime)"
start target/release/outpost-static --listen 127.0.0.1:0
raw=$(load "$url/"); echo "$raw"

python3 - "$(rps "$hits")" "$(rps "$handler")" "$(rps "$raw")" <<'PY'
import sys
hits, handler, raw = map(float, sys.argv[1:])
print(f"cache hits / handler path = {hits:.0f} / {handler:.0f} = {hits / handler:.2f}x")
print(f"cache hits / raw hyper    = {hits:.0f} / {raw:.0f} = {hits / raw:.2f}x")
PY
