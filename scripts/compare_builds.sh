#!/usr/bin/env bash
# Interleaved side-by-side runs of `hxo run` on 10^6 no-op shards for two
# or more hxo binaries, plus the bare hashing loop of this checkout, so a
# change is measured against the build before it on the same machine in
# the same minutes (these machines are shared and noisy). Prints, per
# binary, the median wall time (min-max), its ratio to the bare loop, the
# median CPU time (user+sys) and peak RSS.
#
#   scripts/compare_builds.sh 15 /tmp/hxo-before target/release/hxo
#   RUNS is the first argument; SHARDS=... sets the plan size (10^6).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:?usage: compare_builds.sh RUNS HXO_BINARY...}
shift
[ "$#" -ge 1 ] || { echo "usage: compare_builds.sh RUNS HXO_BINARY..." >&2; exit 2; }
SHARDS=${SHARDS:-1000000}
cargo build --release --quiet --example bare_hashing
BARE=$PWD/target/release/examples/bare_hashing
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/noop.json" <<JSON
{"name": "noop_${SHARDS}", "stages": [{"id": "noop", "kind": "synthetic", "config": {"shards": ${SHARDS}}}],
 "constraints": {"max_shards": ${SHARDS}}}
JSON
bins=()
for b in "$@"; do bins+=("$(cd "$(dirname "$b")" && pwd)/$(basename "$b")"); done
for _ in $(seq "$runs"); do
  "$BARE" "$SHARDS" | sed -E 's/.*wall_ms=([0-9.]+).*/bare \1/' | awk '{print $1, $2/1000, 0, 0}' >> "$WORK/t"
  for i in "${!bins[@]}"; do
    rm -rf "$WORK/state"
    (cd "$WORK" && HXO_MAX_SHARDS=$SHARDS HXO_DB_PATH="$WORK/state/checkpoints" \
      /usr/bin/time -f "%e %U %S %M" "${bins[$i]}" run noop.json 2>&1 >/dev/null | tail -1 | sed "s|^|b$i |") >> "$WORK/t"
  done
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
bare=$(awk '$1 == "bare" {print $2}' "$WORK/t" | median)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); shards: $SHARDS; runs: $runs"
printf "bare hashing loop  wall median %.3f s\n" "$bare"
for i in "${!bins[@]}"; do
  wall=$(awk -v k="b$i" '$1 == k {print $2}' "$WORK/t" | median)
  lo=$(awk -v k="b$i" '$1 == k {print $2}' "$WORK/t" | sort -g | head -1)
  hi=$(awk -v k="b$i" '$1 == k {print $2}' "$WORK/t" | sort -g | tail -1)
  cpu=$(awk -v k="b$i" '$1 == k {print $3 + $4}' "$WORK/t" | median)
  rss=$(awk -v k="b$i" '$1 == k {print $5}' "$WORK/t" | median)
  printf "%s  wall median %.3f s (%.3f-%.3f)  ratio to bare %.2fx  cpu %.2f s  peak RSS %.0f MiB\n" \
    "${bins[$i]}" "$wall" "$lo" "$hi" "$(echo "$wall $bare" | awk '{print $1/$2}')" "$cpu" "$(echo "$rss" | awk '{print $1/1024}')"
done
