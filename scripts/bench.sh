#!/usr/bin/env bash
# The headline figures of BENCHMARKS.md, measured side by side in one run
# (this machine is shared and noisy: compare ratios, quote medians).
#
#   scripts/bench.sh            1,000,000 no-op shards vs the bare hashing loop,
#                               durable vs --no-sync, exec vs xargs -P / parallel
#   SHARDS=10000000 scripts/bench.sh   the same at 10^7 (takes minutes)
#   RUNS=5 scripts/bench.sh     repetitions per measurement (default 3)
#   HXO=path BARE=path scripts/bench.sh   prebuilt binaries (another machine)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-1000000}
RUNS=${RUNS:-3}
EXEC_SHARDS=${EXEC_SHARDS:-5000}
if [ -z "${HXO:-}" ]; then
  cargo build --release --quiet --bin hxo --example bare_hashing
  HXO=$PWD/target/release/hxo
  BARE=$PWD/target/release/examples/bare_hashing
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/noop.json" <<JSON
{"name": "noop_${SHARDS}", "stages": [{"id": "noop", "kind": "synthetic", "config": {"shards": ${SHARDS}}}],
 "constraints": {"max_shards": ${SHARDS}}}
JSON
export HXO_MAX_SHARDS=$SHARDS

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# wall seconds and peak RSS (KiB) of one command
measure() { /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "shards: $SHARDS, runs: $RUNS"
: > "$WORK/bare" ; : > "$WORK/hxo" ; : > "$WORK/nosync"; : > "$WORK/rss"
for run in $(seq "$RUNS"); do
  "$BARE" "$SHARDS" | sed -E 's/.*wall_ms=([0-9.]+).*/\1/' | awk '{print $1/1000}' >> "$WORK/bare"
  rm -rf "$WORK/state"
  read -r secs rss < <(cd "$WORK" && HXO_DB_PATH="$WORK/state/checkpoints" measure "$HXO" run noop.json)
  echo "$secs" >> "$WORK/hxo"; echo "$rss" >> "$WORK/rss"
  rm -rf "$WORK/state"
  read -r secs _ < <(cd "$WORK" && HXO_DB_PATH="$WORK/state/checkpoints" measure "$HXO" run --no-sync noop.json)
  echo "$secs" >> "$WORK/nosync"
done
bare=$(median < "$WORK/bare"); durable=$(median < "$WORK/hxo"); nosync=$(median < "$WORK/nosync"); rss=$(median < "$WORK/rss")
awk -v s="$SHARDS" -v b="$bare" -v d="$durable" -v n="$nosync" -v r="$rss" 'BEGIN {
  printf "bare hashing loop      %8.3f s  %12.0f shards/s\n", b, s/b
  printf "hxo run (durable)      %8.3f s  %12.0f shards/s  ratio to bare %.2fx  peak RSS %.0f MiB (%.0f bytes/shard)\n", d, s/d, d/b, r/1024, r*1024/s
  printf "hxo run --no-sync      %8.3f s  %12.0f shards/s  ratio to bare %.2fx\n", n, s/n, n/b
  printf "durable / no-sync throughput: %.2f\n", n/d
}'

# exec shards running `true`, against xargs -P and GNU parallel
cat > "$WORK/exec.json" <<JSON
{"name": "exec_true", "stages": [{"id": "t", "kind": "exec", "config": {"shards": ${EXEC_SHARDS}, "command": "true"}}]}
JSON
: > "$WORK/e_hxo"; : > "$WORK/e_xargs"; : > "$WORK/e_par"
have_parallel=0; command -v parallel >/dev/null && have_parallel=1
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/state"
  read -r secs _ < <(cd "$WORK" && HXO_DB_PATH="$WORK/state/checkpoints" measure "$HXO" run exec.json)
  echo "$secs" >> "$WORK/e_hxo"
  read -r secs _ < <(measure sh -c "seq $EXEC_SHARDS | xargs -P$(nproc) -n1 sh -c true")
  echo "$secs" >> "$WORK/e_xargs"
  if [ $have_parallel = 1 ]; then
    read -r secs _ < <(measure sh -c "seq $EXEC_SHARDS | parallel -j$(nproc) sh -c true")
    echo "$secs" >> "$WORK/e_par"
  fi
done
e_hxo=$(median < "$WORK/e_hxo"); e_xargs=$(median < "$WORK/e_xargs")
awk -v s="$EXEC_SHARDS" -v h="$e_hxo" -v x="$e_xargs" 'BEGIN {
  printf "exec %d x true: hxo %.2f s (%.0f/s)  xargs -P%s %.2f s (%.0f/s)  hxo/xargs speed %.2fx\n", s, h, s/h, ENVIRON["NPROC"], x, s/x, x/h }' NPROC="$(nproc)"
if [ $have_parallel = 1 ]; then
  e_par=$(median < "$WORK/e_par")
  awk -v s="$EXEC_SHARDS" -v p="$e_par" 'BEGIN { printf "GNU parallel: %.2f s (%.0f/s)\n", p, s/p }'
else
  echo "GNU parallel: not installed (apt-get install parallel)"
fi
