#!/usr/bin/env bash
# N kill-and-resume iterations of a 100,000-shard plan: each run is killed
# with SIGKILL at a random moment (resumes too, sometimes), then resumed to
# the end; its root must equal an uninterrupted run's. Prints the
# iterations passed and the root.
#
#   scripts/crash_test.sh 20
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
cargo build --release --quiet --bin hxo
HXO=$PWD/target/release/hxo
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/plan.json" <<'JSON'
{"name": "crash_100k", "stages": [
  {"id": "a", "kind": "synthetic", "config": {"shards": 50000, "work_iters": 40, "seed": 1}},
  {"id": "b", "kind": "synthetic", "dependencies": ["a"], "config": {"shards": 50000, "work_iters": 40, "seed": 2}}]}
JSON
root_of() { sed -nE 's/.*"merkle_root": "([0-9a-f]+)".*/\1/p' | head -1; }
expected=$(HXO_DB_PATH="$WORK/clean/checkpoints" "$HXO" run --json "$WORK/plan.json" | root_of)
echo "uninterrupted root: $expected"
passed=0
for i in $(seq "$N"); do
  db="$WORK/run$i/checkpoints"
  HXO_DB_PATH=$db "$HXO" run "$WORK/plan.json" >/dev/null 2>&1 &
  pid=$!
  sleep "0.$(( RANDOM % 9 + 1 ))$(( RANDOM % 10 ))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  kills=1
  while (( RANDOM % 2 )); do
    HXO_DB_PATH=$db "$HXO" resume >/dev/null 2>&1 &
    pid=$!
    sleep "0.$(( RANDOM % 5 + 1 ))"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
  done
  HXO_DB_PATH=$db "$HXO" resume --json >/dev/null 2>&1 || true
  root=$(HXO_DB_PATH=$db "$HXO" plans --json | root_of)
  if [ "$root" = "$expected" ]; then
    passed=$((passed + 1))
    echo "iteration $i: ok after $kills kill(s)"
  else
    echo "iteration $i: FAILED after $kills kill(s): root $root"
  fi
  rm -rf "$WORK/run$i"
done
echo "$passed/$N iterations passed; root $expected"
[ "$passed" = "$N" ]
