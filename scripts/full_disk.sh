#!/usr/bin/env bash
# A full disk in the middle of a run, for real: the checkpoint store lives
# on a small tmpfs (needs root, for mount), so the second log segment cannot
# be preallocated. The run must stop with a clear error and exit 1, keep
# everything it acknowledged, and a resume after the disk grows must finish
# with the root of an undisturbed run. Prints PASS or FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin hxo
HXO=$PWD/target/release/hxo
WORK=$(mktemp -d)
MNT=$WORK/disk
mkdir -p "$MNT"
cleanup() { umount "$MNT" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mount -t tmpfs -o size=100m tmpfs "$MNT"
# 700,000 records need more than one 64 MiB segment.
cat > "$WORK/plan.json" <<'JSON'
{"name": "full_disk", "stages": [{"id": "s", "kind": "synthetic", "config": {"shards": 700000}}]}
JSON
expected=$(HXO_DB_PATH="$WORK/clean/checkpoints" "$HXO" run --json "$WORK/plan.json" | sed -nE 's/.*"merkle_root": "([0-9a-f]+)".*/\1/p')
set +e
HXO_DB_PATH="$MNT/checkpoints" "$HXO" run "$WORK/plan.json" > "$WORK/out" 2> "$WORK/err"
code=$?
set -e
echo "full-disk run: exit $code"; cat "$WORK/err"
ok=1
[ "$code" = 1 ] || { echo "FAIL: expected exit 1"; ok=0; }
grep -q "No space left" "$WORK/err" || { echo "FAIL: the error does not say the disk is full"; ok=0; }
done_before=$(HXO_DB_PATH="$MNT/checkpoints" "$HXO" plans --json | sed -nE 's/.*"done_shards": ([0-9]+).*/\1/p')
echo "acknowledged before the failure: $done_before shards"
mount -o remount,size=400m "$MNT"
HXO_DB_PATH="$MNT/checkpoints" "$HXO" resume --json > "$WORK/resumed"
root=$(sed -nE 's/.*"merkle_root": "([0-9a-f]+)".*/\1/p' "$WORK/resumed")
echo "resumed root: $root; undisturbed root: $expected"
[ "$root" = "$expected" ] || { echo "FAIL: roots differ"; ok=0; }
[ "$ok" = 1 ] && echo PASS || { echo FAIL; exit 1; }
