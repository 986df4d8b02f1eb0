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
