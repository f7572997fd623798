#!/usr/bin/env bash
# Runs the operations guide's curl commands, in the guide's order, against a
# server this script starts on a free loopback port with a temporary state
# directory and a demo project (src/ modules and data/app.sqlite) as --root.
# Every call sends `Authorization: Bearer $TOKEN` where the guide writes
# `Authorization: Admiral` (which the server refuses with 401, shown too).
# Prints each response and checks its code; ends with PASS or FAIL.
#
# The guide's plan migrates data/app.sqlite, and deploy.migrate requires a
# dry run first, so its migrate shards fail (retried with a 2 s backoff):
# the plan is still running when the guide aborts it. After the guide's
# commands, the script does what an operator would: a dry run of the same
# plan, then a replay of the aborted plan, which ends certified.
#
# Usage: scripts/guide_e2e.sh   (HXO_BIN=path/to/hxo to skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${HXO_BIN:-}" ]; then
  cargo build --quiet
  HXO_BIN="${CARGO_TARGET_DIR:-target}/debug/hxo"
fi
command -v curl >/dev/null || { echo "FAIL: curl is required"; exit 1; }

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# The demo project the guide's deploy plan works on.
PROJECT="$WORK/project"
mkdir -p "$PROJECT/data"
for module in api core web; do
  mkdir -p "$PROJECT/src/$module"
  for n in 1 2 3; do
    printf 'fn %s_%s() {}\n' "$module" "$n" > "$PROJECT/src/$module/file_$n.rs"
  done
done
python3 - "$PROJECT/data/app.sqlite" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance_cents INTEGER, migrated INTEGER DEFAULT 0)")
db.executemany("INSERT INTO accounts (balance_cents) VALUES (?)", [(n,) for n in range(20000)])
db.commit()
EOF

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
BASE="http://localhost:$PORT"

# The guide: "export HXO_ENABLED=true", then restart the application.
export HXO_ENABLED=true
HXO_DB_PATH="$WORK/state/checkpoints" HXO_ARTIFACTS_DIR="$WORK/state/artifacts" \
  HXO_ADMIRAL_TOKEN="$TOKEN" HXO_RETRY_BACKOFF_MS=2000 HXO_MAX_ATTEMPTS=3 \
  "$HXO_BIN" serve --bind "127.0.0.1:$PORT" --root "$PROJECT" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -sf "$BASE/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

FAILURES=0
STEP=0
BODY="$WORK/body.json"
# call EXPECTED_CODE TITLE CURL_ARGS...: runs curl, prints the response,
# checks the code.
call() {
  local expected=$1 title=$2
  shift 2
  STEP=$((STEP + 1))
  local code
  code=$(curl -s -o "$BODY" -w '%{http_code}' "$@")
  echo "== $STEP. $title"
  echo "   curl $*" | sed "s/$TOKEN/\$TOKEN/g"
  sed 's/^/   /' "$BODY"; echo
  if [ "$code" = "$expected" ]; then
    echo "   -> $code (expected $expected) ok"
  else
    echo "   -> $code (expected $expected) MISMATCH"
    FAILURES=$((FAILURES + 1))
  fi
}
field() { python3 -c "import json, sys; print(json.load(open('$BODY')).get('$1', ''))"; }
check() {
  if [ "$1" = "$2" ]; then echo "   -> $3 = $1 ok"; else echo "   -> $3 = $1, expected $2 MISMATCH"; FAILURES=$((FAILURES + 1)); fi
}
wait_ended() {
  for _ in $(seq 300); do
    curl -s -o "$BODY" -H "Authorization: Bearer $TOKEN" "$BASE/api/hxo/status/$1"
    case $(field status) in running|submitted|interrupted) sleep 0.1 ;; *) return 0 ;; esac
  done
}

# Verify HXO is Running.
call 404 "Verify HXO is running (404: plan not found)" \
  -H "Authorization: Bearer $TOKEN" "$BASE/api/hxo/status/test"
call 401 "The guide's bare 'Authorization: Admiral' proves nothing (401)" \
  -H "Authorization: Admiral" "$BASE/api/hxo/status/test"

# Method 1: Direct API Call.
PLAN='{
    "name": "deploy_full_stack",
    "stages": [
      {
        "id": "pack_backend",
        "kind": "deploy.pack",
        "slo_ms": 120000
      },
      {
        "id": "db_migrate",
        "kind": "deploy.migrate",
        "slo_ms": 30000
      },
      {
        "id": "prime_registry",
        "kind": "deploy.prime",
        "slo_ms": 45000
      }
    ],
    "constraints": {
      "max_shards": 500000
    }
  }'
call 201 "Submit the guide's plan" -X POST "$BASE/api/hxo/create-and-submit" \
  -H "Content-Type: application/json" -H "Authorization: Bearer $TOKEN" -d "$PLAN"
check "$(field status)" submitted status
PLAN_ID=$(field plan_id)

# Get Live Status.
call 200 "Live status" -H "Authorization: Bearer $TOKEN" "$BASE/api/hxo/status/$PLAN_ID"
check "$(field plan_name)" deploy_full_stack plan_name

# Abort Running Plan.
call 200 "Abort the running plan" -X POST "$BASE/api/hxo/abort/$PLAN_ID" \
  -H "Authorization: Bearer $TOKEN"
check "$(field status)" aborted status
call 200 "Status after the abort" -H "Authorization: Bearer $TOKEN" "$BASE/api/hxo/status/$PLAN_ID"
check "$(field status)" aborted status

# Replaying Failed Subtrees.
call 200 "Replay the failed subtree" -X POST "$BASE/api/hxo/replay/$PLAN_ID" \
  -H "Authorization: Bearer $TOKEN"
check "$(field status)" replaying status
wait_ended "$PLAN_ID"

# Troubleshooting: Shards Failing.
call 200 "Plan report" -H "Authorization: Bearer $TOKEN" "$BASE/api/hxo/report/$PLAN_ID"
call 200 "Failed-shard events" -H "Authorization: Bearer $TOKEN" \
  "$BASE/api/genesis/events?topic=hxo.shard.failed"
call 200 "Audit events" -H "Authorization: Bearer $TOKEN" \
  "$BASE/api/genesis/events?topic=hxo.audit"

# What the report says to do: dry-run the migration, then replay.
call 201 "Dry run of the same plan" -X POST "$BASE/api/hxo/create-and-submit?dry_run=true" \
  -H "Content-Type: application/json" -H "Authorization: Bearer $TOKEN" -d "$PLAN"
wait_ended "$(field plan_id)"
call 200 "Replay the original plan" -X POST "$BASE/api/hxo/replay/$PLAN_ID" \
  -H "Authorization: Bearer $TOKEN"
wait_ended "$PLAN_ID"
call 200 "Status: finished and certified" -H "Authorization: Bearer $TOKEN" \
  "$BASE/api/hxo/status/$PLAN_ID"
check "$(field status)" finished status
check "$(field truth_certified)" True truth_certified

if [ "$FAILURES" -eq 0 ]; then
  echo "PASS: $STEP calls as the guide shows"
else
  echo "FAIL: $FAILURES mismatches (server log: below)"
  cat "$WORK/serve.log"
  exit 1
fi
