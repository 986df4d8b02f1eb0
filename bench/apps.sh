#!/usr/bin/env bash
# Benchmarks of a node hosting many apps (see bench/README.md): cold start over distinct
# apps, memory per idle isolate, a noisy neighbour, Zipf traffic under an isolate budget.
# Bounded in requests and time; loopback only.
#
#   bench/apps.sh                 # all four
#   bench/apps.sh coldstart       # one of: coldstart density noisy zipf
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/v8/install.sh >/dev/null
cargo build --release --quiet --bin outpost --bin outpost-apps
run() { target/release/outpost-apps --outpost target/release/outpost "$@"; }
which=${1:-all}
[[ $which == all || $which == coldstart ]] && run coldstart --apps 200
[[ $which == all || $which == density ]] && run density --apps 100,1000
[[ $which == all || $which == noisy ]] && run noisy
[[ $which == all || $which == zipf ]] && run zipf --apps 1000 --max-isolates 100
exit 0
