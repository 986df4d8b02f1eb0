#!/usr/bin/env bash
# The cache in front of handlers: requests/s and latency of cache hits against the handler
# path for the same hello app on one node, in one run, and against raw hyper serving the
# same static body (outpost-static). Bounded in time and requests; loopback only.
#
#   bench/cache.sh
#
# Knobs: DURATION (s per run, default 10), CONNECTIONS (default 64), REQUESTS (default
#        2000000), WORKERS (node worker threads, default 1), ROUNDS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
REQUESTS=${REQUESTS:-2000000}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-3}

bash ../shared/v8/install.sh >/dev/null
cargo build --release --quiet --bin outpost --bin outpost-load --bin outpost-static

source bench/lib.sh


load() {
  target/release/outpost-load "$1" --connections "$CONNECTIONS" --duration "$DURATION" --requests "$REQUESTS"
}

# Request logging and Server-Timing off on the node (raw hyper has neither); the three
# targets are loaded in turn, ROUNDS times, and each one's median is compared.
echo "== outpost dev examples/cached (workers $WORKERS) and outpost-static, $CONNECTIONS connections, ${DURATION}s x $ROUNDS each"
OUTPOST_LOG=warn start target/release/outpost dev examples/cached --listen 127.0.0.1:0 \
  --workers "$WORKERS" --server-timing off
node=$url
curl -s -o /dev/null "$node/"   # fills the entry
curl -s -D - -o /dev/null "$node/" | grep -i '^cache-status'
curl -s -D - -o /dev/null "$node/nocache" | grep -i '^cache-status'
start target/release/outpost-static --listen 127.0.0.1:0
raw=$url

hits=(); handler=(); static=()
for _ in $(seq 1 "$ROUNDS"); do
  line=$(load "$node/"); echo "cache hit  (/)        $line"; hits+=("$(rps "$line")")
  line=$(load "$node/nocache"); echo "handler    (/nocache) $line"; handler+=("$(rps "$line")")
  line=$(load "$raw/"); echo "raw hyper            $line"; static+=("$(rps "$line")")
done

python3 - "${hits[*]}" "${handler[*]}" "${static[*]}" <<'PY'
import statistics, sys
hits, handler, raw = (statistics.median(map(float, a.split())) for a in sys.argv[1:])
print(f"median req/s: cache hits {hits:.0f}, handler path {handler:.0f}, raw hyper {raw:.0f}")
print(f"cache hits / handler path = {hits / handler:.2f}x")
print(f"cache hits / raw hyper    = {hits / raw:.2f}x")
PY
