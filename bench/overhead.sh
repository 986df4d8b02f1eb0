#!/usr/bin/env bash
# What observability costs on the hello path: requests/s of `outpost dev examples/hello`
# with request logs off, with one JSON log line per request, and with OTLP tracing at 1%
# sampling (spans sent to outpost-static, which answers every POST: a sink). Metrics are
# always on. The three are loaded in turn, ROUNDS times; medians compared. Bounded, loopback.
#
#   bench/overhead.sh
#
# Knobs: DURATION (s per run, default 5), CONNECTIONS (default 64), ROUNDS (default 3),
#        SAMPLE (tracing ratio, default 0.01).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
SAMPLE=${SAMPLE:-0.01}

bash ../shared/v8/install.sh >/dev/null
cargo build --release --quiet --bin outpost --bin outpost-load --bin outpost-static

source bench/lib.sh

load() {
  target/release/outpost-load "$1/" --connections "$CONNECTIONS" --duration "$DURATION" --requests 5000000
}

start target/release/outpost-static --listen 127.0.0.1:0
sink=$url
flags=(--listen 127.0.0.1:0 --server-timing off)
OUTPOST_LOG=warn start target/release/outpost dev examples/hello "${flags[@]}"
off=$url
OUTPOST_LOG=warn,outpost::request=info start target/release/outpost --log-format json dev examples/hello "${flags[@]}"
json=$url
OUTPOST_LOG=warn start target/release/outpost dev examples/hello "${flags[@]}" --otlp "$sink" --otlp-sample "$SAMPLE"
traced=$url

a=(); b=(); c=()
for _ in $(seq 1 "$ROUNDS"); do
  line=$(load "$off"); echo "logs off            $line"; a+=("$(rps "$line")")
  line=$(load "$json"); echo "JSON request lines  $line"; b+=("$(rps "$line")")
  line=$(load "$traced"); echo "tracing at $SAMPLE     $line"; c+=("$(rps "$line")")
done
python3 - "${a[*]}" "${b[*]}" "${c[*]}" <<'PY'
import statistics, sys
off, json, traced = (statistics.median(map(float, v.split())) for v in sys.argv[1:])
print(f"median req/s: off {off:.0f}, JSON logs {json:.0f} ({json / off:.0%}), tracing {traced:.0f} ({traced / off:.0%})")
PY
