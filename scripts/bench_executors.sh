#!/usr/bin/env bash
# Throughput of the guide's executors against the obvious tool for the job,
# side by side in one run:
#   pack_backend (deploy.pack) vs `tar -cf` of the same files, in MB/s;
#   sql_migrate (deploy.migrate) vs one `sqlite3` UPDATE over the same rows.
# Data is generated (seeded), nothing is checked in.
#   FILES=2000 FILE_KB=32 RUNS=3 scripts/bench_executors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-2000}
FILE_KB=${FILE_KB:-32}
RUNS=${RUNS:-3}
cargo build --release --quiet --bin hxo
HXO=$PWD/target/release/hxo
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
wall() { /usr/bin/time -f "%e" "$@" 2>&1 >/dev/null | tail -1; }

# Seeded file tree: FILES files of FILE_KB KiB in 20 directories.
python3 - "$WORK/tree/src" "$FILES" "$FILE_KB" <<'PY'
import os, random, sys
root, files, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
for i in range(files):
    d = os.path.join(root, f"module{i % 20:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.rs"), "wb") as f:
        f.write(bytes(rng.getrandbits(8) for _ in range(kb * 1024)))
PY
BYTES=$(du -sb "$WORK/tree/src" | cut -f1)
cat > "$WORK/tree/pack.json" <<'JSON'
{"name": "pack_bench", "stages": [{"id": "pack", "kind": "deploy.pack",
  "config": {"root": "src", "chunk_size_mb": 8}}]}
JSON
: > "$WORK/p_hxo"; : > "$WORK/p_tar"
for r in $(seq "$RUNS"); do
  rm -rf "$WORK/state"
  HXO_DB_PATH="$WORK/state/checkpoints" HXO_ARTIFACTS_DIR="$WORK/state/artifacts" wall "$HXO" run "$WORK/tree/pack.json" >> "$WORK/p_hxo"
  rm -f "$WORK/out.tar"
  (cd "$WORK/tree" && wall tar -cf "$WORK/out.tar" src) >> "$WORK/p_tar"
done
awk -v b="$BYTES" -v h="$(median < "$WORK/p_hxo")" -v t="$(median < "$WORK/p_tar")" 'BEGIN {
  printf "pack %.1f MB: hxo deploy.pack %.3f s (%.0f MB/s, includes compile: reading and hashing every file)  tar -cf %.3f s (%.0f MB/s)  hxo/tar speed %.2fx\n",
    b/1e6, h, b/1e6/h, t, b/1e6/t, t/h }'

# sql_migrate: the demo database (100,000 accounts), batches of 5,000.
HXO_DB_PATH="$WORK/demo/checkpoints" "$HXO" run --dry-run >/dev/null 2>&1
DB=$WORK/demo/demo/data/app.sqlite
cp "$DB" "$WORK/pristine.sqlite"
cat > "$WORK/migrate.json" <<JSON
{"name": "migrate_bench", "stages": [{"id": "m", "kind": "deploy.migrate",
  "config": {"database": "$WORK/db.sqlite", "batch_size": 5000}}]}
JSON
: > "$WORK/m_hxo"; : > "$WORK/m_sql"
ROWS=$(sqlite3 "$WORK/pristine.sqlite" "SELECT count(*) FROM accounts")
for r in $(seq "$RUNS"); do
  cp "$WORK/pristine.sqlite" "$WORK/db.sqlite"
  rm -rf "$WORK/state"
  HXO_DB_PATH="$WORK/state/checkpoints" "$HXO" run --dry-run "$WORK/migrate.json" >/dev/null
  HXO_DB_PATH="$WORK/state/checkpoints" wall "$HXO" run "$WORK/migrate.json" >> "$WORK/m_hxo"
  cp "$WORK/pristine.sqlite" "$WORK/db.sqlite"
  wall sqlite3 "$WORK/db.sqlite" "UPDATE accounts SET balance_cents = balance_cents * 100, migrated = 1 WHERE migrated = 0" >> "$WORK/m_sql"
done
awk -v n="$ROWS" -v h="$(median < "$WORK/m_hxo")" -v s="$(median < "$WORK/m_sql")" 'BEGIN {
  printf "sql_migrate %d rows: hxo %.3f s (%.0f rows/s, 20 batches, exactly-once ledger)  one sqlite3 UPDATE %.3f s (%.0f rows/s)  hxo/sqlite3 speed %.2fx\n",
    n, h, n/h, s, n/s, s/h }'
