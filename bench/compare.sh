#!/usr/bin/env bash
# Outpost against `deno serve` on the four handlers of bench/handlers/ (hello, JSON echo of a
# ~100-byte body, SHA-256 of a 64 KiB buffer, Wasm fib(20) imported from fib.wasm), at 64
# connections and at 1: req/s, p50/p99 latency, server CPU µs per request and RSS after the
# load, for both, and the ratio. One isolate each: `outpost dev --workers 1` (request logs and
# Server-Timing off) and `deno serve` (one isolate unless --parallel). Bounded: every load run
# stops after its seconds; loopback only.
#
#   bench/compare.sh                               # from the repository root
#   DENO=/path/to/deno DURATION=5 ROUNDS=2 bench/compare.sh
#   HANDLERS="echo" CONNS=64 DURATION=30 ROUNDS=1 bench/compare.sh
#
# Knobs: DENO (default /tmp/denoinst/node_modules/.bin/deno; `npm install --prefix /tmp/deno
#        deno@2.9.6` puts one at /tmp/deno/node_modules/.bin/deno), DURATION (measured seconds
#        per round, default 5), WARMUP (seconds before the first round, default 2), ROUNDS
#        (default 2), CONNS (default "64 1"), HANDLERS (default "hello echo sha256 fib"),
#        OUT (the markdown table, default target/bench-compare.md), BUILD=0 (no cargo build),
#        OUTPOST_BIN (the outpost binary, default target/release/outpost; bench/pgo.sh makes
#        target/pgo/release/outpost), OUTPOST_ARGS (more flags for `outpost dev`, e.g.
#        `--http1 hyper`).
#
# Per handler, runtime and connection count: a fresh server; the handler's answer is checked
# with curl; WARMUP s of load; ROUNDS measured runs of DURATION s. Server CPU is utime + stime
# of the server process itself (/proc/PID/stat, all its threads; the script checks that PID
# runs the server binary, not a wrapper) over each measured run, divided by its responses;
# RSS is VmRSS right after the last round. req/s, latencies and CPU are means over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
DENO=${DENO:-/tmp/denoinst/node_modules/.bin/deno}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-"64 1"}
HANDLERS=${HANDLERS:-"hello echo sha256 fib"}
OUT=${OUT:-target/bench-compare.md}
BUILD=${BUILD:-1}
OUTPOST_BIN=${OUTPOST_BIN:-target/release/outpost}
OUTPOST_ARGS=${OUTPOST_ARGS:-}
H=bench/handlers

source bench/lib.sh
need_deno
build_release
export OUTPOST_LOG=warn   # no request log lines
# Client and servers share the machine: anything else running moves every number.
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# The entry file of handler $1 for runtime $2 (Deno cannot default-import a .wasm file).
entry() {
  if [ "$1" = fib ] && [ "$2" = deno ]; then echo "$H/fib.deno.js"; else echo "$H/$1.js"; fi
}

# outpost-load's request options for handler $1.
request_args() {
  if [ "$1" = echo ]; then
    echo "--method POST --body-file $H/echo.json --header content-type:application/json"
  fi
}

# Checks the server at $2 answers handler $1 correctly.
check() {
  local got want
  case $1 in
    hello) want="hello from the edge"
           got=$(curl -sf --max-time 5 "$2/") ;;
    echo) want=$(cat "$H/echo.json")
          got=$(curl -sf --max-time 5 -X POST -H 'content-type: application/json' --data-binary "@$H/echo.json" "$2/") ;;
    sha256) want=$(python3 -c 'import hashlib; print(hashlib.sha256(bytes((i*31+7)&255 for i in range(65536))).hexdigest())')
            got=$(curl -sf --max-time 5 "$2/") ;;
    fib) want="fib(20) = 6765"
         got=$(curl -sf --max-time 5 "$2/") ;;
  esac
  if [ "$got" != "$want" ]; then
    echo "$1 answered ${got:-nothing} instead of $want" >&2
    return 1
  fi
}

results=$(mktemp)
for handler in $HANDLERS; do
  for conns in $CONNS; do
    for runtime in outpost deno; do
      file=$(entry "$handler" "$runtime")
      if [ "$runtime" = outpost ]; then
        bin=$OUTPOST_BIN
        # shellcheck disable=SC2086
        start "$bin" dev "$file" --listen 127.0.0.1:0 --workers 1 --server-timing off $OUTPOST_ARGS
      else
        bin=$DENO
        start "$bin" serve --host 127.0.0.1 --port 0 "$file"
      fi
      if [ "$(readlink -f "/proc/$server/exe")" != "$(readlink -f "$bin")" ]; then
        echo "pid $server is $(readlink -f "/proc/$server/exe"), not $bin" >&2
        exit 1
      fi
      check "$handler" "$url"
      for round in $(seq 1 "$ROUNDS"); do
        warmup=0; [ "$round" = 1 ] && warmup=$WARMUP
        # shellcheck disable=SC2046
        out=$(target/release/outpost-load "$url/" $(request_args "$handler") \
          --connections "$conns" --duration "$DURATION" --warmup "$warmup" \
          --requests 100000000 --server-pid "$server")
        echo "$handler c$conns $runtime round $round: $(tr '\n' ' ' <<<"$out")"
        sed -nE 's/.*errors ([0-9]+).*req\/s ([0-9.]+).*p50 ([0-9.]+).*p99 ([0-9.]+).*us\/req ([0-9.]+).*rss MiB ([0-9.]+).*/\2 \3 \4 \5 \6 \1/p' \
          <<<"$(tr '\n' ' ' <<<"$out")" | sed "s/^/$handler $conns $runtime /" >>"$results"
      done
      kill "$server"; wait "$server" 2>/dev/null || true
    done
  done
done

deno_version=$("$DENO" --version | head -1)
outpost_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown) ($OUTPOST_BIN of $(date -u -r "$OUTPOST_BIN" '+%F %H:%M'))"
python3 - "$results" "$OUT" "$deno_version" "$outpost_rev" "$DURATION" "$ROUNDS" "$WARMUP" <<'EOF'
import sys
from collections import defaultdict
results, out, deno_version, rev, duration, rounds, warmup = sys.argv[1:]
runs = defaultdict(list)   # (handler, conns, runtime) -> [(rps, p50, p99, cpu, rss, errors)]
order = []
for line in open(results):
    handler, conns, runtime, *nums = line.split()
    key = (handler, conns)
    if key not in order:
        order.append(key)
    runs[(handler, conns, runtime)].append(tuple(map(float, nums)))

def summary(key):
    rs = runs[key]
    mean = lambda i: sum(r[i] for r in rs) / len(rs)
    return mean(0), mean(1), mean(2), mean(3), rs[-1][4]

head = ["handler", "conns", "outpost req/s", "deno req/s", "ratio", "p50 ms o/d", "p99 ms o/d",
        "CPU µs/req o/d", "RSS MiB o/d"]
rows = []
for handler, conns in order:
    o, d = summary((handler, conns, "outpost")), summary((handler, conns, "deno"))
    errors = sum(r[5] for r in runs[(handler, conns, "outpost")] + runs[(handler, conns, "deno")])
    if errors:
        print(f"warning: {handler} at {conns} connections: {errors:.0f} failed requests (see the round lines)")
    rows.append([handler, conns, f"{o[0]:,.0f}", f"{d[0]:,.0f}", f"{o[0] / d[0]:.2f}×",
                 f"{o[1]:.2f} / {d[1]:.2f}", f"{o[2]:.2f} / {d[2]:.2f}",
                 f"{o[3]:.1f} / {d[3]:.1f}", f"{o[4]:.0f} / {d[4]:.0f}"])

title = (f"outpost {rev} vs {deno_version}, one isolate each, {warmup} s warm-up, "
         f"{rounds} × {duration} s (means), CPU = server utime+stime per request, RSS after the load")
widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
print()
print(title)
for r in [head] + rows:
    print("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))

with open(out, "w") as f:
    f.write(f"{title}\n\n")
    f.write("| " + " | ".join(head) + " |\n")
    f.write("|" + "|".join("---" for _ in head) + "|\n")
    for r in rows:
        f.write("| " + " | ".join(r) + " |\n")
print(f"\nmarkdown: {out}")
EOF
