#!/usr/bin/env bash
# The one prepared script for a lent many-core machine (it has no Rust
# toolchain: build and strip here, copy the binaries along):
#   strip -o .devbin/hxo target/release/hxo
#   strip -o .devbin/bare_hashing target/release/examples/bare_hashing
#   HXO=.devbin/hxo BARE=.devbin/bare_hashing scripts/device_check.sh
# Prints the machine, the phases of five 10^6-shard runs (milliseconds from
# process start to `compiled`, `accepted`, `executed`, `root computed`, and
# to exit), a 10^7-shard run, then `scripts/bench.sh` and
# `scripts/scaling.sh` with the same binaries. About a minute on 16 cores.
set -u
cd "$(dirname "$0")/.."
HXO=$(cd "$(dirname "${HXO:?set HXO to an hxo binary}")" && pwd)/$(basename "$HXO")
BARE=$(cd "$(dirname "${BARE:?set BARE to a bare_hashing binary}")" && pwd)/$(basename "$BARE")
export HXO BARE
echo "== machine"
echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
echo '{"name": "noop", "stages": [{"id": "noop", "kind": "synthetic", "config": {"shards": 1000000}}]}' > "$W/noop.json"
echo '{"name": "noop7", "stages": [{"id": "noop", "kind": "synthetic", "config": {"shards": 10000000}}], "constraints": {"max_shards": 10000000}}' > "$W/noop7.json"
echo "== phases of 10^6 no-op shards (ms: compiled accepted executed root exit)"
for _ in 1 2 3 4 5; do
  rm -rf "$W/s"
  start=$(date +%s%N)
  (cd "$W" && HXO_DB_PATH="$W/s/cp" RUST_LOG=info NO_COLOR=1 "$HXO" run noop.json 2>&1 >/dev/null) |
    sed 's/\x1b\[[0-9;]*m//g' | grep -E "compiled|accepted|executed|root computed" |
    awk -v s="$start" '{split($1, t, ":"); printf "%5.0f ", (t[3] + 0) * 1000 - (s / 1e6 % 60000)}'
  echo " $(( ($(date +%s%N) - start) / 1000000 ))"
done
echo "== 10^7 no-op shards: root, certified, wall, peak RSS"
rm -rf "$W/s"
(cd "$W" && HXO_MAX_SHARDS=10000000 HXO_DB_PATH="$W/s/cp" /usr/bin/time -f "%e s %M KB" "$HXO" run --json noop7.json 2>"$W/t" |
  grep -oE '"(merkle_root|truth_certified)": ?[^,]+' | tr '\n' ' '; tail -1 "$W/t")
rm -rf "$W/s"
echo "== scripts/bench.sh"
RUNS=${RUNS:-5} scripts/bench.sh
echo "== scripts/scaling.sh"
RUNS=3 scripts/scaling.sh
