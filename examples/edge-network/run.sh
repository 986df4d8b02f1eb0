#!/usr/bin/env bash
# A local edge network in one command: one origin and three PoPs on loopback, an app
# deployed to them, a second version, a rollback, and the origin going away while the PoPs
# keep serving. Ports: origin 8788, PoPs 8081-8083 (change ORIGIN_PORT / POP_PORT_BASE).
#
#   examples/edge-network/run.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/../.."
ORIGIN_PORT=${ORIGIN_PORT:-8788}
POP_PORT_BASE=${POP_PORT_BASE:-8080}
bash ../shared/v8/install.sh >/dev/null
cargo build --release --quiet --bin outpost
OUTPOST=target/release/outpost
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

export OUTPOST_DEPLOY_TOKEN=deploy-$RANDOM$RANDOM OUTPOST_POP_TOKEN=pop-$RANDOM$RANDOM
ORIGIN=http://127.0.0.1:$ORIGIN_PORT

wait_for() { for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }

echo "== origin on $ORIGIN"
$OUTPOST origin --data "$work/origin" --listen 127.0.0.1:$ORIGIN_PORT > "$work/origin.log" 2>&1 &
pids+=($!); origin_pid=$!
sleep 0.5

for i in 1 2 3; do
  port=$((POP_PORT_BASE + i))
  echo "== pop-$i on http://127.0.0.1:$port"
  OUTPOST_TOKEN=$OUTPOST_POP_TOKEN $OUTPOST pop --origin "$ORIGIN" --data "$work/pop-$i" \
    --name "pop-$i" --listen 127.0.0.1:$port > "$work/pop-$i.log" 2>&1 &
  pids+=($!)
done

echo "== deploy examples/edge-network/app"
OUTPOST_TOKEN=$OUTPOST_DEPLOY_TOKEN $OUTPOST deploy examples/edge-network/app --origin "$ORIGIN"
curl_all() {
  for i in 1 2 3; do
    url=http://127.0.0.1:$((POP_PORT_BASE + i))/
    wait_for "$url"
    printf '%s  ' "$(curl -s -D - -o "$work/body" "$url" | tr -d '\r' | grep -i '^x-outpost-pop' )"
    cat "$work/body"
  done
}
sleep 0.5; curl_all

echo "== deploy a second version"
sed 's/(v1)/(v2)/' examples/edge-network/app/src/index.js > "$work/index.js"
cp -r examples/edge-network/app "$work/app-v2" && cp "$work/index.js" "$work/app-v2/src/index.js"
OUTPOST_TOKEN=$OUTPOST_DEPLOY_TOKEN $OUTPOST deploy "$work/app-v2" --origin "$ORIGIN"
sleep 0.5; curl_all

echo "== roll back"
OUTPOST_TOKEN=$OUTPOST_DEPLOY_TOKEN $OUTPOST rollback edge-hello --origin "$ORIGIN"
sleep 0.5; curl_all

echo "== stop the origin: the PoPs keep serving"
kill "$origin_pid"; sleep 0.5
curl_all
