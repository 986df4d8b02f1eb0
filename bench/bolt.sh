#!/usr/bin/env bash
# The PGO binary of bench/pgo.sh laid out again by BOLT (LLVM's post-link optimiser): a copy
# of it instrumented by BOLT serves the same training load, and BOLT rewrites the binary by
# what ran: hot blocks in a straight line (about half the taken branches gone), hot
# functions side by side in ~4 MB at the front, cold parts split off. rustc's PGO sees only
# the Rust code; BOLT lays out V8's C++ with it.
#
#   bench/pgo.sh && bench/bolt.sh                  # from the repository root
#   OUTPOST_BIN=target/pgo/release/outpost-bolt BUILD=0 bench/compare.sh
#
# Reads target/pgo/release/outpost (bench/pgo.sh links it with its relocations, which BOLT
# needs to move code); writes target/pgo/release/outpost-bolt and its profile
# target/pgo/outpost.fdata. Needs llvm-bolt and merge-fdata (Debian: `apt install bolt-19`;
# LLVM_BOLT=/path/to/llvm-bolt for another). ~6 min on 2 cores.
#
# Left where they are (--skip-funcs): V8's embedded builtins (`Builtins_*`), which V8 finds
# through its own table of offsets into them (moved or instrumented, the process crashes at
# start), and the regexp interpreter's `RawMatch`, whose computed jumps BOLT cannot follow.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-20000}
source bench/lib.sh
bolt=${LLVM_BOLT:-$(command -v llvm-bolt || ls /usr/lib/llvm-*/bin/llvm-bolt 2>/dev/null | tail -1 || true)}
merge_fdata=$(dirname "$bolt")/merge-fdata
[ -x "$merge_fdata" ] || merge_fdata=$(command -v merge-fdata || true)
if [ ! -x "$bolt" ] || [ ! -x "$merge_fdata" ]; then
  echo "needs llvm-bolt and merge-fdata (Debian: apt install bolt-19)" >&2
  exit 1
fi
pgo=target/pgo/release/outpost
if ! readelf -S "$pgo" 2>/dev/null | grep -q '\.rela\.text'; then
  echo "$pgo is missing or has no relocations: run bench/pgo.sh first" >&2
  exit 1
fi
[ -x target/release/outpost-load ] || { echo "needs target/release/outpost-load (bench/pgo.sh builds it)" >&2; exit 1; }
skip='.*RawMatch.*,Builtins_.*'
fdata=$(mktemp -d)
instrumented=target/pgo/release/outpost-bolt-instrumented
rm -f "$instrumented" target/pgo/release/outpost-bolt
"$bolt" "$pgo" -o "$instrumented" -instrument --skip-funcs="$skip" \
  --instrumentation-file="$fdata/outpost.fdata" --instrumentation-file-append-pid \
  2>&1 | grep -E '^BOLT-ERROR' >&2 || true
[ -x "$instrumented" ] || { echo "llvm-bolt did not instrument $pgo" >&2; exit 1; }
export OUTPOST_LOG=warn   # no request log lines
export START_TIMEOUT=120  # the instrumented binary starts slower
train_load "$instrumented"
rm -f "$instrumented"
"$merge_fdata" "$fdata"/outpost.fdata.* > target/pgo/outpost.fdata 2>/dev/null
rm -rf "$fdata"
"$bolt" "$pgo" -o target/pgo/release/outpost-bolt --data=target/pgo/outpost.fdata \
  --skip-funcs="$skip" -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions \
  -split-all-cold -split-eh -icf=1 -use-gnu-stack -dyno-stats 2>&1 |
  grep -E '^BOLT-ERROR|executed instructions|taken branches' || true
[ -x target/pgo/release/outpost-bolt ] || { echo "llvm-bolt did not write the binary" >&2; exit 1; }
echo "target/pgo/release/outpost-bolt (profile: target/pgo/outpost.fdata)"
