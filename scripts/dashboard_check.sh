#!/usr/bin/env bash
# Checks the dashboard in headless Chromium: starts `hxo serve` on a free
# loopback port with a token, submits a slow synthetic plan, loads the page
# (token passed in the URL fragment, which never reaches the server) while
# the plan runs, and checks that the page shows the plan's name and a
# progress bar with a value. Saves a screenshot. Prints PASS or FAIL.
# Not part of `cargo test` (it needs Chromium: Debian's `chromium`).
#
# Usage: scripts/dashboard_check.sh   (HXO_BIN=path/to/hxo to skip the build;
#        SCREENSHOT=path.png to keep the screenshot)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  echo "installing chromium (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ -z "${HXO_BIN:-}" ]; then
  cargo build --quiet
  HXO_BIN="${CARGO_TARGET_DIR:-target}/debug/hxo"
fi

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
BASE="http://127.0.0.1:$PORT"
HXO_DB_PATH="$WORK/state/checkpoints" HXO_ARTIFACTS_DIR="$WORK/state/artifacts" \
  HXO_ADMIRAL_TOKEN="$TOKEN" HXO_THREADS=2 \
  "$HXO_BIN" serve --bind "127.0.0.1:$PORT" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -sf "$BASE/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# 3000 shards of 20 ms on two threads: about 30 s, running while we look.
NAME="dashboard_probe_$$"
PLAN="{\"name\": \"$NAME\", \"stages\": [{\"id\": \"slow\", \"kind\": \"synthetic\", \"config\": {\"shards\": 3000, \"sleep_ms\": 20}}]}"
PLAN_ID=$(curl -sf -X POST "$BASE/api/hxo/create-and-submit" -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" -d "$PLAN" | python3 -c 'import json, sys; print(json.load(sys.stdin)["plan_id"])')
for _ in $(seq 100); do
  DONE=$(curl -s -H "Authorization: Bearer $TOKEN" "$BASE/api/hxo/status/$PLAN_ID" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["done_shards"])')
  [ "$DONE" -gt 0 ] && break
  sleep 0.1
done

DEVTOOLS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --disable-dev-shm-usage \
  --user-data-dir="$(mktemp -d -p "$WORK")" --remote-debugging-address=127.0.0.1 \
  --remote-debugging-port="$DEVTOOLS_PORT" about:blank >"$WORK/chromium.log" 2>&1 &
CHROME_PID=$!
SHOT=${SCREENSHOT:-$WORK/dashboard.png}
# The page keeps an event stream open, which stops --virtual-time-budget
# from advancing; so drive it over DevTools in real time: the DOM after 3 s
# and after 6 s, then a screenshot.
timeout 60 python3 scripts/cdp_snapshot.py "$DEVTOOLS_PORT" "$BASE/#token=$TOKEN" "$WORK/dom" 3 3 || true
cp "$WORK/dom.png" "$SHOT" 2>/dev/null || true
kill "$CHROME_PID" 2>/dev/null || true
wait "$CHROME_PID" 2>/dev/null || true
touch "$WORK/dom.1.html" "$WORK/dom.2.html"

FAILURES=0
if grep -q "$NAME" "$WORK/dom.2.html"; then
  echo "ok: the page shows the plan's name ($NAME)"
else
  echo "MISSING: the plan's name"; FAILURES=$((FAILURES + 1))
fi
value() { grep -o '<progress max="3000" value="[0-9]*"' "$1" | head -1 | grep -o 'value="[0-9]*"' | tr -dc 0-9; }
FIRST=$(value "$WORK/dom.1.html")
SECOND=$(value "$WORK/dom.2.html")
PERCENT=$(grep -o 'class="pct">[0-9.]*%' "$WORK/dom.2.html" | head -1 | sed 's/.*>//')
if [ -n "$SECOND" ] && [ -n "$PERCENT" ]; then
  echo "ok: progress bar value $SECOND of 3000 ($PERCENT)"
else
  echo "MISSING: a progress value"; FAILURES=$((FAILURES + 1))
fi
# The page fetched the plans once; later values come from the stream.
if [ -n "$FIRST" ] && [ -n "$SECOND" ] && [ "$SECOND" -gt "$FIRST" ]; then
  echo "ok: progress moved live from $FIRST to $SECOND"
else
  echo "MISSING: live progress (first ${FIRST:-none}, then ${SECOND:-none})"; FAILURES=$((FAILURES + 1))
fi
if grep -q '>running<' "$WORK/dom.2.html" && grep -q '>live<' "$WORK/dom.2.html"; then
  echo "ok: the plan shows as running and the stream is live"
else
  echo "MISSING: the running status or the live stream"; FAILURES=$((FAILURES + 1))
fi
if [ -n "${SCREENSHOT:-}" ] && [ -s "$SHOT" ]; then echo "screenshot: $SHOT"; fi
if [ "$FAILURES" -eq 0 ]; then
  echo "PASS"
else
  echo "FAIL ($FAILURES checks); page and logs follow"
  head -c 4000 "$WORK/dom.2.html"; echo
  tail -20 "$WORK/chromium.log"
  tail -20 "$WORK/serve.log"
  exit 1
fi
