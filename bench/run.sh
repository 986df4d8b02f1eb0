#!/usr/bin/env bash
# Hello-world benchmark of `outpost dev` (and of `deno serve` on the same handler, side by
# side, when a deno binary is available), plus process start → first 200 response.
# Bounded: each load run stops after DURATION seconds or REQUESTS responses. Loopback only.
#
#   bench/run.sh                      # outpost only (deno too if `deno` is on PATH)
#   DENO=/path/to/deno bench/run.sh   # side by side with deno serve
#
# Knobs: DURATION (s, default 10), CONNECTIONS (default 64), REQUESTS (default 2000000),
#        WORKERS (outpost isolate threads, default 1), COLDSTART_RUNS (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
REQUESTS=${REQUESTS:-2000000}
WORKERS=${WORKERS:-1}
COLDSTART_RUNS=${COLDSTART_RUNS:-10}
DENO=${DENO:-$(command -v deno || true)}
APP=examples/hello

bash ../shared/v8/install.sh >/dev/null
cargo build --release --quiet --bin outpost --bin outpost-load --bin outpost-coldstart

source bench/lib.sh


load() {
  target/release/outpost-load "$1/" --connections "$CONNECTIONS" --duration "$DURATION" --requests "$REQUESTS"
}

echo "== outpost dev $APP (workers $WORKERS, $CONNECTIONS connections, ${DURATION}s)"
start target/release/outpost dev "$APP" --listen 127.0.0.1:0 --workers "$WORKERS"
outpost_line=$(load "$url"); echo "$outpost_line"
kill "$server"

if [ -n "$DENO" ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "== deno serve $APP/src/index.js ($("$DENO" --version | head -1))"
  start "$DENO" serve --host 127.0.0.1 --port "$port" "$APP/src/index.js"
  deno_line=$(load "$url"); echo "$deno_line"
  kill "$server"
  python3 -c "print(f'outpost / deno = {$(rps "$outpost_line")}/{$(rps "$deno_line")} = {$(rps "$outpost_line")/$(rps "$deno_line"):.2f}x')"
fi

echo "== process start -> first 200 ($COLDSTART_RUNS runs)"
target/release/outpost-coldstart --outpost target/release/outpost --runs "$COLDSTART_RUNS" "$APP"
