//! Checkpoint log throughput against SQLite, side by side, at the same
//! durability.
//!
//! 10^6 `ShardDone` records in batches of 4096, one commit per batch, into
//! a fresh store each iteration (segment creation and preallocation
//! included); SQLite (bundled, WAL, one transaction per batch, a table with
//! the same columns) gets the same records at the same cadence. Two pairs,
//! one per durability level:
//!
//! - *a commit survives a killed process*: the log with `sync_commits` off
//!   (a commit hands the batch to the page cache) against WAL with
//!   `synchronous=NORMAL` (a commit writes the WAL, syncing only at
//!   checkpoints). A power loss may drop the last commits of either.
//! - *a commit survives a power loss*: the log as `hxo run` uses it (a
//!   commit is an fdatasync) against WAL with `synchronous=FULL` (the WAL
//!   is synced at every commit).
//!
//! Also the recovery scan (open a store of 10^6 records, decode every
//! record) against a full SQLite table scan. Data is generated from the
//! index, nothing is checked in. `HXO_BENCH_RECORDS` overrides the record
//! count.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use hxo::log::{Log, LogOptions, Record};

const BATCH_RECORDS: usize = 4096;

fn record_count() -> u64 {
    std::env::var("HXO_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn shard_done(i: u64) -> Record {
    let mut cas_id = [0u8; 32];
    cas_id[..8].copy_from_slice(&i.to_le_bytes());
    cas_id[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    let mut output_digest = cas_id;
    output_digest.reverse();
    Record::ShardDone {
        plan_id: [7; 16],
        leaf_index: i,
        cas_id,
        output_digest,
        attempts: 1,
        duration_us: i % 10_000,
    }
}

fn batches(n: u64) -> Vec<Vec<Record>> {
    let all: Vec<Record> = (0..n).map(shard_done).collect();
    all.chunks(BATCH_RECORDS).map(<[Record]>::to_vec).collect()
}

fn write_log(dir: &Path, batches: &[Vec<Record>], sync_commits: bool) {
    let options = LogOptions {
        sync_commits,
        ..LogOptions::default()
    };
    let (mut log, _) = Log::open(dir, options).expect("open");
    for batch in batches {
        for r in batch {
            log.append(r).expect("append");
        }
        log.commit().expect("commit");
    }
}

/// `synchronous` is `NORMAL` or `FULL`.
fn sqlite_open(path: &Path, synchronous: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("sqlite open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", synchronous)
        .expect("sync");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS shard_done (
            plan_id BLOB NOT NULL, leaf_index INTEGER NOT NULL,
            cas_id BLOB NOT NULL, output_digest BLOB NOT NULL,
            attempts INTEGER NOT NULL, duration_us INTEGER NOT NULL)",
    )
    .expect("create table");
    conn
}

fn write_sqlite(path: &Path, batches: &[Vec<Record>], synchronous: &str) {
    let mut conn = sqlite_open(path, synchronous);
    for batch in batches {
        let tx = conn.transaction().expect("begin");
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO shard_done VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .expect("prepare");
            for r in batch {
                if let Record::ShardDone {
                    plan_id,
                    leaf_index,
                    cas_id,
                    output_digest,
                    attempts,
                    duration_us,
                } = r
                {
                    stmt.execute(rusqlite::params![
                        &plan_id[..],
                        *leaf_index as i64,
                        &cas_id[..],
                        &output_digest[..],
                        attempts,
                        *duration_us as i64
                    ])
                    .expect("insert");
                }
            }
        }
        tx.commit().expect("commit");
    }
}

/// Times `run` on a fresh temporary directory per iteration; creating and
/// removing the directory is not timed.
fn timed_in_fresh_dir(iters: u64, mut run: impl FnMut(&Path)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let tmp = tempfile::tempdir().expect("tempdir");
        let start = Instant::now();
        run(tmp.path());
        total += start.elapsed();
    }
    total
}

fn bench(c: &mut Criterion) {
    let n = record_count();
    let batches = batches(n);
    let mut group = c.benchmark_group("checkpoint_log_vs_sqlite");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(n));

    // Pair 1: a commit survives a killed process.
    group.bench_with_input(
        BenchmarkId::new("hxo_log_append_commit_page_cache", n),
        &batches,
        |b, batches| {
            b.iter_custom(|iters| timed_in_fresh_dir(iters, |dir| write_log(dir, batches, false)))
        },
    );
    group.bench_with_input(
        BenchmarkId::new("sqlite_insert_wal_normal", n),
        &batches,
        |b, batches| {
            b.iter_custom(|iters| {
                timed_in_fresh_dir(iters, |dir| {
                    write_sqlite(&dir.join("db.sqlite"), batches, "NORMAL")
                })
            })
        },
    );
    // Pair 2: a commit survives a power loss.
    group.bench_with_input(
        BenchmarkId::new("hxo_log_append_commit_fdatasync", n),
        &batches,
        |b, batches| {
            b.iter_custom(|iters| timed_in_fresh_dir(iters, |dir| write_log(dir, batches, true)))
        },
    );
    group.bench_with_input(
        BenchmarkId::new("sqlite_insert_wal_full", n),
        &batches,
        |b, batches| {
            b.iter_custom(|iters| {
                timed_in_fresh_dir(iters, |dir| {
                    write_sqlite(&dir.join("db.sqlite"), batches, "FULL")
                })
            })
        },
    );

    let log_store = tempfile::tempdir().expect("tempdir");
    write_log(log_store.path(), &batches, true);
    group.bench_function(BenchmarkId::new("hxo_log_recovery_scan", n), |b| {
        b.iter(|| {
            let (mut log, report) =
                Log::open(log_store.path(), LogOptions::default()).expect("open");
            let mut count = 0u64;
            log.for_each_record(&mut |_| count += 1).expect("scan");
            assert_eq!(count, report.record_count);
            count
        })
    });

    let sqlite_store = tempfile::tempdir().expect("tempdir");
    let db = sqlite_store.path().join("db.sqlite");
    write_sqlite(&db, &batches, "NORMAL");
    group.bench_function(BenchmarkId::new("sqlite_scan", n), |b| {
        b.iter(|| {
            let conn = sqlite_open(&db, "NORMAL");
            let mut stmt = conn
                .prepare("SELECT plan_id, leaf_index, cas_id, output_digest, attempts, duration_us FROM shard_done")
                .expect("prepare");
            let mut rows = stmt.query([]).expect("query");
            let mut count = 0u64;
            while let Some(row) = rows.next().expect("row") {
                let plan_id: Vec<u8> = row.get(0).expect("plan_id");
                let leaf_index: i64 = row.get(1).expect("leaf_index");
                let cas_id: Vec<u8> = row.get(2).expect("cas_id");
                let output_digest: Vec<u8> = row.get(3).expect("output_digest");
                let attempts: u32 = row.get(4).expect("attempts");
                let duration_us: i64 = row.get(5).expect("duration_us");
                std::hint::black_box((plan_id, leaf_index, cas_id, output_digest, attempts, duration_us));
                count += 1;
            }
            assert_eq!(count, n);
            count
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
