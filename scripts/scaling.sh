#!/usr/bin/env bash
# How the pool scales from 1 to N threads (N = cores): median wall time of
# a CPU-bound plan (SHA-256 work per unit) and of 1,000,000 no-op shards,
# and the bare hashing loop, per thread count. Prints a table.
#
#   scripts/scaling.sh                    builds release binaries first
#   HXO=path BARE=path scripts/scaling.sh uses prebuilt ones (another machine)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${HXO:-}" ]; then
  cargo build --release --quiet --bin hxo --example bare_hashing
  HXO=$PWD/target/release/hxo
  BARE=$PWD/target/release/examples/bare_hashing
fi
RUNS=${RUNS:-3}
CORES=$(nproc)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/cpu.json" <<'JSON'
{"name": "cpu_bound", "stages": [{"id": "work", "kind": "synthetic",
  "config": {"shards": 20000, "work_iters": 2000, "seed": 3}}]}
JSON
cat > "$WORK/noop.json" <<'JSON'
{"name": "noop", "stages": [{"id": "noop", "kind": "synthetic", "config": {"shards": 1000000}}]}
JSON
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
wall() { /usr/bin/time -f "%e" "$@" 2>&1 >/dev/null | tail -1; }
echo "machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf "%8s %14s %10s %14s %10s %12s\n" threads cpu_bound_s speedup noop_1M_s shards/s bare_1M_s
base=""
for t in 1 2 4 8 16 32; do
  [ "$t" -gt "$CORES" ] && break
  : > "$WORK/c"; : > "$WORK/n"; : > "$WORK/b"
  for r in $(seq "$RUNS"); do
    rm -rf "$WORK/s"; (cd "$WORK" && HXO_DB_PATH="$WORK/s/cp" HXO_THREADS=$t wall "$HXO" run cpu.json) >> "$WORK/c"
    rm -rf "$WORK/s"; (cd "$WORK" && HXO_DB_PATH="$WORK/s/cp" HXO_THREADS=$t wall "$HXO" run noop.json) >> "$WORK/n"
    RAYON_NUM_THREADS=$t "$BARE" 1000000 | sed -E 's/.*wall_ms=([0-9.]+).*/\1/' | awk '{print $1/1000}' >> "$WORK/b"
  done
  c=$(median < "$WORK/c"); n=$(median < "$WORK/n"); b=$(median < "$WORK/b")
  [ -z "$base" ] && base=$c
  awk -v t="$t" -v c="$c" -v n="$n" -v b="$b" -v base="$base" 'BEGIN {
    printf "%8d %14.3f %10.2f %14.3f %10.0f %12.3f\n", t, c, base/c, n, 1e6/n, b }'
done
