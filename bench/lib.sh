# Shared by the benchmark scripts (sourced, from the repository root): background servers
# that are stopped on exit, and reading outpost-load's line.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts a server command in the background (its pid in $server) and waits until its output
# names the URL it listens on (in $url), for up to START_TIMEOUT seconds (default 15).
start() {
  local log; log=$(mktemp)
  "$@" >"$log" 2>&1 &
  server=$!
  pids+=("$server")
  url=""
  for _ in $(seq 1 $((${START_TIMEOUT:-15} * 20))); do
    url=$(grep -oE 'http://[0-9.]+:[0-9]+' "$log" | head -1 || true)
    [ -n "$url" ] && return 0
    sleep 0.05
  done
  echo "server did not start:" >&2; cat "$log" >&2; return 1
}

# The requests/s of an outpost-load result line.
rps() { sed -E 's/.*req\/s ([0-9]+).*/\1/' <<<"$1"; }

# Exits unless $DENO is a deno binary (the comparisons with `deno serve` need one).
need_deno() {
  if [ ! -x "$DENO" ]; then
    echo "no deno binary at $DENO: npm install --prefix /tmp/deno deno@2.9.6 and DENO=/tmp/deno/node_modules/.bin/deno" >&2
    exit 1
  fi
}

# Builds the release outpost and outpost-load (the V8 archive put in place first), unless
# BUILD=0.
build_release() {
  if [ "${BUILD:-1}" != 0 ]; then
    bash ../shared/v8/install.sh >/dev/null
    cargo build --release --quiet --bin outpost --bin outpost-load
  fi
}

# The training load of bench/pgo.sh and bench/bolt.sh, served by the binary $1 (instrumented
# one way or the other): each handler of bench/handlers/ and examples/cached (hits, and the
# uncached /nocache), at 64 connections and at 1, $REQUESTS requests each, then SIGTERM (an
# instrumented binary writes its counts as the node exits). Bounded, loopback only.
train_load() {
  local bin=$1 handler
  for handler in hello echo sha256 fib; do
    train_one "$bin" "bench/handlers/$handler.js" /
  done
  train_one "$bin" examples/cached / /nocache
}

train_one() { # binary, entry, then the paths to load
  local bin=$1 entry=$2 path conns; shift 2
  start "$bin" dev "$entry" --listen 127.0.0.1:0 --workers 1
  for path in "$@"; do
    for conns in 64 1; do
      local args=()
      [[ $entry == *echo.js ]] && args=(--method POST --body-file bench/handlers/echo.json --header content-type:application/json)
      target/release/outpost-load "$url$path" "${args[@]}" --connections "$conns" --warmup 0 \
        --requests "$REQUESTS" --duration 120 | head -1
    done
  done
  kill -TERM "$server"
  wait "$server" || true
}
