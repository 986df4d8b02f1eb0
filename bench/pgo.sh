#!/usr/bin/env bash
# A release `outpost` built with profile-guided optimisation (PGO): an instrumented build
# serves a training load, and the counts it writes tell the compiler which code runs (and
# which branch of it), so hot paths are laid out straight and side by side and cold code
# goes out of their way. Where this matters: a hello request of Outpost's touched ~1,500
# instruction-cache lines of 64 bytes per request under callgrind, ~1,250 of them in the
# Rust code around the isolate (hyper, the gateway, the cache, tokio), against ~900 for the
# whole of `deno serve` (bench/README.md, "Profile-guided optimisation").
#
#   bench/pgo.sh                                   # from the repository root
#   OUTPOST_BIN=target/pgo/release/outpost BUILD=0 bench/compare.sh
#
# Writes target/pgo/release/outpost (its own target directory: target/release stays the
# plain build) and target/pgo.profdata. Needs rustc's own llvm-profdata (`rustup component
# add llvm-tools`: the profile format follows rustc's LLVM). Three builds: the plain one
# (target/release, whose outpost-load is the client), the instrumented outpost
# (target/pgo-gen) and the optimised one; 27 min on 2 cores with the plain build already
# made, ~40 from nothing.
#
# The training load: each handler of bench/handlers/ (hello, JSON echo, SHA-256, Wasm) and
# examples/cached (cache hits, misses and the uncached path) under `outpost dev`, at 64
# connections and at 1, REQUESTS requests each (default 20000), then SIGTERM (the profile is
# written as the node exits). Paths it does not run (TLS, HTTP/2 and HTTP/3, origin and PoP
# sync, streaming bodies) are compiled as cold code: correct, and placed out of the hot
# path's way. Bounded, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-20000}
BUILD=${BUILD:-1}
source bench/lib.sh
profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -1)
if [ ! -x "$profdata" ]; then
  echo "needs rustc's llvm-profdata: rustup component add llvm-tools" >&2
  exit 1
fi
bash ../shared/v8/install.sh >/dev/null
build_release # the client (outpost-load) and the plain outpost
# Build scripts run instrumented too and leave their counts in the build's directory; the
# node's own go where LLVM_PROFILE_FILE says (%m: runs of one binary add up in one file).
RUSTFLAGS="-Cprofile-generate=$PWD/target/pgo-gen/build-counts" cargo build --release --quiet \
  --target-dir target/pgo-gen --bin outpost
export OUTPOST_LOG=warn   # no request log lines
export START_TIMEOUT=60   # the instrumented build starts slower
counts=$(mktemp -d)
LLVM_PROFILE_FILE="$counts/outpost-%m.profraw" train_load target/pgo-gen/release/outpost
"$profdata" merge -o target/pgo.profdata "$counts"
rm -rf "$counts"
# The binary keeps its relocations (sections a process does not load: the file is ~30% larger,
# its memory the same), which bench/bolt.sh needs to move its code.
RUSTFLAGS="-Cprofile-use=$PWD/target/pgo.profdata -Clink-arg=-Wl,--emit-relocs" \
  cargo build --release --quiet --target-dir target/pgo --bin outpost
echo "target/pgo/release/outpost (profile: target/pgo.profdata)"
