#!/usr/bin/env bash
# Writes gateway/link-order.txt.gz: the functions of `outpost` that start-up and the four
# handlers of bench/handlers/ run, hottest first, which the linker places side by side at the
# front of the binary's text (see gateway/build.rs). Run it after changes that move the
# request path or after dependency updates (symbol names of changed crates change; names the
# linker no longer finds are skipped, so a stale list only loses effect), then rebuild.
#
#   bench/link-order.sh            # from the repository root; needs valgrind (apt install valgrind)
#   BUILD=0 bench/link-order.sh    # profile the existing target/release/outpost
#
# Under callgrind each handler's node starts and serves REQUESTS (default 3000) requests over
# 4 connections; bounded, loopback only. Takes ~3 min.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-3000}
BUILD=${BUILD:-1}
H=bench/handlers
command -v valgrind >/dev/null || { echo "needs valgrind (apt install valgrind)" >&2; exit 1; }
if [ "$BUILD" != 0 ]; then
  bash ../shared/v8/install.sh >/dev/null
  cargo build --release --quiet --bin outpost --bin outpost-load
fi

source bench/lib.sh
export OUTPOST_LOG=warn
export START_TIMEOUT=300   # V8 starts slowly under valgrind
work=$(mktemp -d)
for h in hello echo sha256 fib; do
  # Names as the object files spell them (--demangle=no): the linker matches those.
  start valgrind --tool=callgrind --demangle=no --dump-instr=no --separate-threads=no \
    --smc-check=all-non-file --callgrind-out-file="$work/$h.%p" \
    target/release/outpost dev "$H/$h.js" --listen 127.0.0.1:0 --workers 1 --server-timing off
  args=()
  [ "$h" = echo ] && args=(--method POST --body-file "$H/echo.json" --header content-type:application/json)
  echo "$h: $(target/release/outpost-load "$url/" --connections 4 --duration 120 --warmup 0 \
    --requests "$REQUESTS" "${args[@]}" | head -1)"
  kill "$server"; wait "$server" || true
done
python3 bench/link-order.py target/release/outpost "$work"/*.* | gzip -9n > gateway/link-order.txt.gz
echo "gateway/link-order.txt.gz: $(zcat gateway/link-order.txt.gz | wc -l) functions"
rm -rf "$work"
