#!/usr/bin/env bash
# The front door, measured: hello throughput over cleartext HTTP/1.1, TLS + HTTP/1.1,
# TLS + HTTP/2 and HTTP/3 (QUIC) in one run against one `outpost dev --https` node; the new
# TLS connection (handshake) rate; and the first-request latency of cold apps with and
# without SNI pre-warm. Clients: bench/src/load.rs (hyper, tokio-rustls, quinn + h3).
# Bounded: each load run stops after DURATION seconds or REQUESTS responses. Loopback only.
#
# The same number of requests is in flight for every protocol (CONNECTIONS): HTTP/1.1 on
# CONNECTIONS connections; HTTP/2 and HTTP/3 multiplexed as clients use them, STREAMS per
# connection on CONNECTIONS/STREAMS connections (and, for comparison, HTTP/2 with one stream
# on each of CONNECTIONS connections).
#
# Knobs: DURATION (s, default 10), CONNECTIONS (default 64), STREAMS (default 8),
#        REQUESTS (default 2000000), WORKERS (default 1), COLD_APPS (default 100),
#        RTT_MS (simulated round trip for the cold-app runs, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-8}
REQUESTS=${REQUESTS:-2000000}
WORKERS=${WORKERS:-1}
COLD_APPS=${COLD_APPS:-100}

bash ../shared/v8/install.sh >/dev/null
cargo build --release --quiet --bin outpost --bin outpost-load

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
export OUTPOST_HOME="$work/home"
ca="$OUTPOST_HOME/dev-tls/ca.pem"

# Starts `outpost dev ARGS… --https 127.0.0.1:0`; sets $server, $http_url and $https_port.
start() {
  local log="$work/log.$RANDOM"
  target/release/outpost dev "$@" --listen 127.0.0.1:0 --https 127.0.0.1:0 --workers "$WORKERS" \
    --server-timing off >"$log" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 1 600); do
    https_port=$(grep -oE 'listening on https://127.0.0.1:[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
    [ -n "$https_port" ] && break
    sleep 0.05
  done
  [ -n "$https_port" ] || { echo "node did not start:" >&2; cat "$log" >&2; return 1; }
  http_url=$(grep -oE 'listening on http://[0-9.]+:[0-9]+' "$log" | head -1 | sed 's/listening on //')
}

load() {
  target/release/outpost-load "$@" --duration "$DURATION" --requests "$REQUESTS" --cacert "$ca"
}
multiplexed=(--connections $((CONNECTIONS / STREAMS)) --streams "$STREAMS")
rps() { sed -E 's/.*req\/s ([0-9]+).*/\1/' <<<"$1"; }

echo "== hello over each protocol (workers $WORKERS, $CONNECTIONS requests in flight, ${DURATION}s each)"
start examples/hello
https_url="https://hello.localhost:$https_port/"
connect="127.0.0.1:$https_port"
one_each=(--connections "$CONNECTIONS")
plain=$(load "$http_url/" --protocol h1 "${one_each[@]}"); echo "cleartext HTTP/1.1          $plain"
tls1=$(load "$https_url" --connect "$connect" --protocol h1 "${one_each[@]}"); echo "TLS + HTTP/1.1              $tls1"
tls2=$(load "$https_url" --connect "$connect" --protocol h2 "${multiplexed[@]}"); echo "TLS + HTTP/2 (multiplexed)  $tls2"
tls2one=$(load "$https_url" --connect "$connect" --protocol h2 "${one_each[@]}"); echo "TLS + HTTP/2 (1 stream/conn) $tls2one"
h3=$(load "$https_url" --connect "$connect" --protocol h3 "${multiplexed[@]}"); echo "HTTP/3 (multiplexed)        $h3"
python3 - <<EOF
plain, tls1, tls2, tls2one, h3 = $(rps "$plain"), $(rps "$tls1"), $(rps "$tls2"), $(rps "$tls2one"), $(rps "$h3")
print(f"of cleartext HTTP/1.1: TLS+h1 {tls1/plain:.0%}  TLS+h2 {tls2/plain:.0%} (1 stream/conn {tls2one/plain:.0%})  HTTP/3 {h3/plain:.0%}")
EOF

echo "== new TLS connections (one request each, 16 at a time, ${DURATION}s)"
target/release/outpost-load "$https_url" --connect "$connect" --protocol h1 --cacert "$ca" \
  --fresh-connections --connections 16 --duration "$DURATION" --requests "$REQUESTS" --warmup 0.5
kill "$server"

echo "== first request to $COLD_APPS cold apps, each on a new TLS connection"
apps="$work/apps"
for i in $(seq 0 $((COLD_APPS - 1))); do
  mkdir -p "$apps/app$i/src"
  printf 'name = "app%s"\n' "$i" >"$apps/app$i/outpost.toml"
  printf 'export default { fetch() { return new Response("app %s"); } };\n' "$i" >"$apps/app$i/src/index.js"
done
# Over loopback a handshake costs no round trip, so a simulated RTT (RTT_MS, default 20)
# gives pre-warm the time it has on a real network; with no spare runtime ready (spares 0)
# the isolate's whole start can hide behind it.
for spares in 0 1; do
  for prewarm in off sni; do
    # dev starts one isolate per app at load; they idle out so that every app starts cold.
    start "$apps" --prewarm "$prewarm" --spares "$spares" --max-isolates $((COLD_APPS + 10)) \
      --idle-timeout-secs 1
    sleep 3
    printf 'spares %s prewarm %-4s rtt %s ms  ' "$spares" "$prewarm" "${RTT_MS:-20}"
    target/release/outpost-load "https://localhost:$https_port/" --connect "127.0.0.1:$https_port" \
      --protocol h1 --cacert "$ca" --cold-hosts "$COLD_APPS" --rtt-ms "${RTT_MS:-20}"
    kill "$server"
  done
done
