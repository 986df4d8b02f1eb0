#!/usr/bin/env bash
# Instructions per request of Outpost and `deno serve` on the handlers of bench/handlers/,
# counted by callgrind: a number that does not move with the machine's load or with the
# host the VM lands on (req/s and µs per request of compare.sh do, by up to 2× from one day
# to the next), and Outpost's split by part (HTTP/1.1 layer, gateway, cache, isolate, V8,
# JavaScript, tokio, allocator, memcpy). User space only: the kernel's share is not in it.
#
#   bench/instructions.sh                          # from the repository root; needs valgrind
#   HANDLERS="hello echo" CONNS="64 1" REQUESTS=3000 BUILD=0 bench/instructions.sh
#   WARMUP_REQUESTS=500 HANDLERS=hello CONNS=64 bench/instructions.sh   # quicker, not steady
#
# Knobs: DENO (default /tmp/denoinst/node_modules/.bin/deno, as compare.sh), HANDLERS
# (default "hello echo"), CONNS (default "64 1"), REQUESTS (measured requests per run,
# default 3000), WARMUP_REQUESTS (requests before the counts are zeroed, default 100000),
# BUILD=0 (no cargo build), OUTPOST_BIN (default target/release/outpost),
# OUTPOST_ARGS (more flags for `outpost dev`, e.g. `--http1 hyper`).
# Per handler, connection count and runtime: the server starts under callgrind, serves
# WARMUP_REQUESTS requests of warm-up, the counts are zeroed, REQUESTS requests are made and
# the counts dumped (bench/instructions.py reads them). One isolate each, as compare.sh.
# Bounded, loopback only; 1–4 min per run (one connection warms up slowest).
#
# The warm-up is long because V8 tiers its code up while it serves: after 500 requests its
# Maglev compiler still runs in the measured window (on V8's worker threads, which callgrind
# counts too), and after 20,000 Turbofan does; after 100,000 nothing compiles in Outpost's
# measured window any more (Deno's binary has no symbols to tell). The numbers are then what
# a long run (compare.sh) pays per request: hello at 64 connections counted 25.0k
# (Outpost) and 16.3k (Deno) after 500 requests, 21.7k and 12.0k after 100,000
# (bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=${DENO:-/tmp/denoinst/node_modules/.bin/deno}
HANDLERS=${HANDLERS:-"hello echo"}
CONNS=${CONNS:-"64 1"}
REQUESTS=${REQUESTS:-3000}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-100000}
BUILD=${BUILD:-1}
OUTPOST_BIN=${OUTPOST_BIN:-target/release/outpost}
OUTPOST_ARGS=${OUTPOST_ARGS:-}
H=bench/handlers
command -v valgrind >/dev/null || { echo "needs valgrind (apt install valgrind)" >&2; exit 1; }
source bench/lib.sh
need_deno
build_release
export OUTPOST_LOG=warn   # no request log lines
export START_TIMEOUT=300  # V8 starts slowly under valgrind
work=$(mktemp -d)
for handler in $HANDLERS; do
  args=()
  [ "$handler" = echo ] && args=(--method POST --body-file "$H/echo.json" --header content-type:application/json)
  for conns in $CONNS; do
    for runtime in outpost deno; do
      profile="$work/$handler-c$conns-$runtime"
      # --smc-check: V8 writes and runs code on the heap.
      grind=(valgrind --tool=callgrind --dump-instr=no --separate-threads=no
        --smc-check=all-non-file --callgrind-out-file="$profile.%p")
      if [ "$runtime" = outpost ]; then
        entry="$H/$handler.js"
        # shellcheck disable=SC2086
        start "${grind[@]}" "$OUTPOST_BIN" dev "$entry" --listen 127.0.0.1:0 --workers 1 --server-timing off $OUTPOST_ARGS
      else
        entry="$H/$handler.js"; [ "$handler" = fib ] && entry="$H/fib.deno.js"
        start "${grind[@]}" "$DENO" serve --host 127.0.0.1 --port 0 "$entry"
      fi
      target/release/outpost-load "$url/" "${args[@]}" --connections "$conns" --warmup 0 \
        --requests "$WARMUP_REQUESTS" --duration 600 >/dev/null
      callgrind_control -z "$server" >/dev/null 2>&1
      load=$(target/release/outpost-load "$url/" "${args[@]}" --connections "$conns" --warmup 0 \
        --requests "$REQUESTS" --duration 300 | head -1)
      callgrind_control -d "$server" >/dev/null 2>&1
      for _ in $(seq 1 100); do ls "$profile".*.1 >/dev/null 2>&1 && break; sleep 0.1; done
      kill "$server"; wait "$server" 2>/dev/null || true
      echo "$handler c$conns $runtime: $load"
      python3 bench/instructions.py "$profile".*.1 | sed "1s|^[^:]*:|  |"
    done
  done
done
rm -rf "$work"
