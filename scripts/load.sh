#!/usr/bin/env bash
# Load test of the REST service: builds the release binary, starts
# `hxo serve` on a free loopback port with a temporary state directory,
# submits a 1,000,000-shard no-op synthetic plan, and runs POLLERS
# concurrent status pollers (each on its own keep-alive connection, one
# request every INTERVAL_MS) plus one event-stream reader until the plan
# ends or DURATION_S passes. Prints requests, errors and p50/p90/p99 status
# latency (examples/http_load.rs). Only 127.0.0.1 is contacted; requests are
# capped by MAX_REQUESTS and time by DURATION_S.
#
# Usage: POLLERS=32 INTERVAL_MS=10 DURATION_S=120 SHARDS=1000000 WORK_ITERS=0 scripts/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

POLLERS=${POLLERS:-32}
INTERVAL_MS=${INTERVAL_MS:-10}
DURATION_S=${DURATION_S:-120}
MAX_REQUESTS=${MAX_REQUESTS:-5000000}
SHARDS=${SHARDS:-1000000}
# SHA-256 iterations per shard: 0 is a no-op plan (under a second for 10^6
# shards on two cores, a short window); 100 keeps it running about 20 s.
WORK_ITERS=${WORK_ITERS:-0}

if [ -z "${HXO_BIN:-}" ]; then
  cargo build --release --quiet --bin hxo --example http_load
  HXO_BIN="${CARGO_TARGET_DIR:-target}/release/hxo"
fi
LOAD_BIN=${LOAD_BIN:-$(dirname "$HXO_BIN")/examples/http_load}

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
HXO_DB_PATH="$WORK/state/checkpoints" HXO_ARTIFACTS_DIR="$WORK/state/artifacts" \
  HXO_ADMIRAL_TOKEN="$TOKEN" "$HXO_BIN" serve --bind "127.0.0.1:$PORT" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "plan: $SHARDS synthetic shards, work_iters $WORK_ITERS"
PLAN="{\"name\": \"load\", \"stages\": [{\"id\": \"noop\", \"kind\": \"synthetic\", \"config\": {\"shards\": $SHARDS, \"work_iters\": $WORK_ITERS}}]}"
SUBMITTED=$(date +%s.%N)
RESPONSE=$(curl -sf -X POST "http://127.0.0.1:$PORT/api/hxo/create-and-submit" \
  -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" -d "$PLAN")
PLAN_ID=$(printf '%s' "$RESPONSE" | python3 -c 'import json, sys; print(json.load(sys.stdin)["plan_id"])')
echo "submitted in $(python3 -c "print(f'{$(date +%s.%N) - $SUBMITTED:.2f}')") s (validate, partition, compile, accept): $PLAN_ID"

STATUS=0
"$LOAD_BIN" "$PORT" "$TOKEN" "$PLAN_ID" "$POLLERS" "$DURATION_S" "$INTERVAL_MS" "$MAX_REQUESTS" || STATUS=$?
curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/hxo/status/$PLAN_ID" |
  python3 -c 'import json, sys; s = json.load(sys.stdin); print("final status    ", s["status"], s["done_shards"], "/", s["total_shards"], "certified" if s["truth_certified"] else "not certified")'
exit $STATUS
