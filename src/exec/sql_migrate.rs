//! `sql_migrate` (kind `deploy.migrate`): runs a migration statement over one
//! batch of rowids of a real SQLite database, exactly once per batch.
//!
//! What it does for a shard whose input is the rowid range `[start, end)`
//! (with hot-shard splitting, the sub-range `[start + units.start,
//! start + units.end)`; below, "the batch" is that effective range):
//!
//! - **Apply.** In ONE `BEGIN IMMEDIATE` transaction: create the ledger
//!   tables if missing; find the parts of the batch not yet covered by
//!   ledger rows of this cas_id in `_hxo_batches`; if none, do nothing (the
//!   batch was applied before: exactly once); otherwise, when
//!   `require_dry_run` is set, require every uncovered part to be covered by
//!   successful dry runs of this cas_id (else the shard fails with "batch
//!   rowids [s,e) has no successful dry run; run `hxo run --dry-run`
//!   first"), run `sql` once per uncovered part with `:start`/`:end` bound to
//!   it (normally one part: the whole batch), insert the ledger row
//!   `(stage_id, cas_id, start, end, applied_at_ms, dry_run_ok)`, commit.
//!   The data change and the ledger row commit or vanish together, so a
//!   crash at any instant leaves the batch either applied and recorded or
//!   neither.
//! - **Dry run** (`ctx.dry_run`). Run `sql` on the uncovered parts inside a
//!   transaction, then ROLLBACK; on success, record `(cas_id, start, end,
//!   ok_at_ms)` in `_hxo_dry_runs` in a separate, committed transaction. The
//!   data are never changed.
//!
//! Ledger tables (created on first use):
//! `_hxo_batches(stage_id TEXT, cas_id TEXT, start INTEGER, "end" INTEGER,
//! applied_at_ms INTEGER, dry_run_ok INTEGER, PRIMARY KEY(cas_id, start, "end"))`
//! and `_hxo_dry_runs(cas_id TEXT, start INTEGER, "end" INTEGER, ok_at_ms
//! INTEGER, PRIMARY KEY(cas_id, start, "end"))`. The key holds the range, not
//! only the cas_id, because split sub-batches of one shard may share its
//! cas_id; coverage is the union of a cas_id's ranges, so a batch applied
//! whole is not re-applied in parts, and parts applied are not re-applied by
//! the whole.
//!
//! **Output digest.** The RFC 6962 tree hash of one unit digest per rowid of
//! the batch, every unit digest being the same value `U`: the framed
//! SHA-256 (`support::UnitHasher`) of domain `hxo.sql_migrate.row.v1` and
//! the `sql` text (domain `hxo.sql_migrate.dry_run_row.v1` for a dry run,
//! so a dry run's digest can never pass for an applied one). It does not
//! count changed rows: a re-run that finds the batch applied changes none,
//! yet must return the same digest. It does not hash the range itself: a
//! digest of `(sql, start, end)` would not recombine when a batch is split;
//! the range is already in the cas_id, and each leaf's position in the tree
//! is its rowid. Because all leaves are equal, the root of `n` leaves costs
//! O(log n) hashes, however wide the rowid range.
//!
//! **Concurrency.** Batches of one database serialize on SQLite's write
//! lock: `BEGIN IMMEDIATE` is retried (a short `busy_timeout` per try) until
//! the lock is won, the shard is cancelled, or [`LOCK_WAIT_MAX_MS`] passes.
//! Inside the transaction a longer `busy_timeout` covers the commit. A
//! watcher thread interrupts a running statement when the shard is
//! cancelled or times out.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Batch, Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::config::{optional_str, required_path_under, required_str, ConfigError};
use super::support::{check_cancel, unit_indices, wrong_input, UnitHasher};
use crate::exec::ExecError;
use crate::exec::Executor;
use crate::exec::ShardContext;
use crate::hash::sha256;
use crate::hash::to_hex;
use crate::hash::Hash;
use crate::partition::PartitionInput;

const NAME: &str = "sql_migrate";

/// `busy_timeout` of one attempt to take the write lock.
pub const LOCK_ATTEMPT_MS: u64 = 200;
/// Longest wait for the write lock before the shard fails.
pub const LOCK_WAIT_MAX_MS: u64 = 10 * 60 * 1000;
/// `busy_timeout` once the write lock is held (covers the commit).
pub const STATEMENT_BUSY_TIMEOUT_MS: u64 = 30_000;
/// How often the watcher thread looks at the cancel token.
const CANCEL_POLL_MS: u64 = 20;

/// Statements that would end or escape the executor's transaction.
const FORBIDDEN_FIRST_WORDS: &[&str] = &[
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "VACUUM",
    "ATTACH",
    "DETACH",
];

const CREATE_BATCHES: &str = "CREATE TABLE IF NOT EXISTS _hxo_batches(\
    stage_id TEXT NOT NULL, cas_id TEXT NOT NULL, start INTEGER NOT NULL, \"end\" INTEGER NOT NULL, \
    applied_at_ms INTEGER NOT NULL, dry_run_ok INTEGER NOT NULL, \
    PRIMARY KEY(cas_id, start, \"end\"))";
const CREATE_DRY_RUNS: &str = "CREATE TABLE IF NOT EXISTS _hxo_dry_runs(\
    cas_id TEXT NOT NULL, start INTEGER NOT NULL, \"end\" INTEGER NOT NULL, \
    ok_at_ms INTEGER NOT NULL, PRIMARY KEY(cas_id, start, \"end\"))";

/// Runs a migration statement once per rowid batch, exactly once.
#[derive(Debug, Clone)]
pub struct SqlMigrate {
    // INVARIANT: resolved under the plan directory.
    database: PathBuf,
    table: Option<String>,
    // INVARIANT: names both `:start` and `:end`; does not start with a
    // transaction-control statement.
    sql: String,
    /// Refuse to apply a batch that has no successful dry run. The
    /// `deploy.migrate` blueprint sets it (default true).
    pub require_dry_run: bool,
}

impl SqlMigrate {
    /// `database` (shared with `by_sql_batch`), `table` (optional here; the
    /// partitioner uses it, the statement names its own tables), `sql`.
    pub const CONFIG_KEYS: &'static [&'static str] = &["database", "table", "sql"];

    pub fn from_config(config: &Map<String, Value>, base_dir: &Path) -> Result<Self, ConfigError> {
        let database = required_path_under(config, "database", base_dir)?;
        let table = optional_str(config, "table")?.map(str::to_owned);
        if table.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "table",
                reason: "must not be empty".to_owned(),
            });
        }
        let sql = required_str(config, "sql")?;
        validate_sql(sql)?;
        Ok(Self {
            database,
            table,
            sql: sql.to_owned(),
            require_dry_run: true,
        })
    }

    pub fn database(&self) -> &Path {
        &self.database
    }

    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }
}

fn sql_invalid(reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: "sql",
        reason: reason.to_owned(),
    }
}

/// True when `sql` has the named parameter `name` (e.g. `:end`, not `:ending`).
fn has_parameter(sql: &str, name: &str) -> bool {
    sql.match_indices(name).any(|(at, _)| {
        !sql[at + name.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
    })
}

/// `sql` with leading whitespace and comments removed.
fn skip_leading_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return sql;
        }
    }
}

fn validate_sql(sql: &str) -> Result<(), ConfigError> {
    for name in [":start", ":end"] {
        if !has_parameter(sql, name) {
            return Err(sql_invalid(&format!(
                "must use the parameter {name} (each batch binds :start and :end to its rowid range)"
            )));
        }
    }
    let first_word: String = skip_leading_comments(sql)
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    if FORBIDDEN_FIRST_WORDS
        .iter()
        .any(|w| w.eq_ignore_ascii_case(&first_word))
    {
        return Err(sql_invalid(&format!(
            "{} is not allowed: hxo runs each batch in its own transaction",
            first_word.to_ascii_uppercase()
        )));
    }
    Ok(())
}

/// RFC 6962 root of `n` leaves that all carry the data `item`, in
/// O(log n) hashes: every perfect subtree of size 2^j has the same root.
pub fn root_of_uniform_leaves(item: &Hash, n: u64) -> Hash {
    if n == 0 {
        return sha256(b"");
    }
    let node = |l: &Hash, r: &Hash| -> Hash {
        let mut h = Sha256::new();
        h.update([0x01]);
        h.update(l);
        h.update(r);
        h.finalize().into()
    };
    // perfect[j] = root of 2^j leaves.
    let mut perfect: Vec<Hash> = Vec::with_capacity(64);
    let mut leaf = Sha256::new();
    leaf.update([0x00]);
    leaf.update(item);
    perfect.push(leaf.finalize().into());
    // The largest perfect subtree needed is the largest power of two < n.
    let log2_max = if n > 1 {
        63 - (n - 1).leading_zeros() as usize
    } else {
        0
    };
    while perfect.len() <= log2_max {
        let last = perfect[perfect.len() - 1];
        perfect.push(node(&last, &last));
    }
    // Walk the RFC 6962 split: the left part is always perfect.
    let mut lefts: Vec<Hash> = Vec::new();
    let mut remaining = n;
    while remaining > 1 {
        let k_log = 63 - (remaining - 1).leading_zeros() as usize;
        lefts.push(perfect[k_log]);
        remaining -= 1u64 << k_log;
    }
    let mut root = perfect[0];
    for left in lefts.iter().rev() {
        root = node(left, &root);
    }
    root
}

/// The data of every unit (rowid) of a batch of `sql`.
pub fn unit_data(sql: &str, dry_run: bool) -> Hash {
    let domain = if dry_run {
        "hxo.sql_migrate.dry_run_row.v1"
    } else {
        "hxo.sql_migrate.row.v1"
    };
    UnitHasher::new(domain).bytes(sql.as_bytes()).finish()
}

/// The parts of `batch` not covered by the union of `covered`.
fn uncovered(batch: Range<u64>, mut covered: Vec<(u64, u64)>) -> Vec<Range<u64>> {
    covered.sort_unstable();
    let mut gaps = Vec::new();
    let mut cursor = batch.start;
    for (a, b) in covered {
        if cursor >= batch.end || a >= batch.end {
            break;
        }
        if b <= cursor {
            continue;
        }
        if a > cursor {
            gaps.push(cursor..a);
        }
        cursor = b;
    }
    if cursor < batch.end {
        gaps.push(cursor..batch.end);
    }
    gaps
}

fn now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn to_sql_int(value: u64) -> Result<i64, ExecError> {
    i64::try_from(value)
        .map_err(|_| ExecError::Failed(format!("rowid {value} is beyond SQLite's integer range")))
}

/// What one call runs on: the effective batch and the ledger key.
struct BatchRun<'c> {
    ctx: &'c ShardContext<'c>,
    cas_hex: String,
    rows: Range<u64>,
}

impl BatchRun<'_> {
    fn range_text(&self) -> String {
        format!("[{},{})", self.rows.start, self.rows.end)
    }
}

impl SqlMigrate {
    fn failed(&self, run: &BatchRun<'_>, what: &str, err: rusqlite::Error) -> ExecError {
        if err.sqlite_error_code() == Some(ErrorCode::OperationInterrupted)
            && run.ctx.cancel.is_cancelled()
        {
            return ExecError::Cancelled;
        }
        ExecError::Failed(format!(
            "{what} for batch rowids {} of {}: {err}",
            run.range_text(),
            self.database.display()
        ))
    }

    /// Takes the write lock, retrying while another batch holds it.
    fn begin<'c>(
        &self,
        conn: &'c Connection,
        run: &BatchRun<'_>,
    ) -> Result<Transaction<'c>, ExecError> {
        conn.busy_timeout(Duration::from_millis(LOCK_ATTEMPT_MS))
            .map_err(|e| self.failed(run, "setting busy timeout", e))?;
        let waited = Instant::now();
        loop {
            check_cancel(run.ctx)?;
            match Transaction::new_unchecked(conn, TransactionBehavior::Immediate) {
                Ok(tx) => {
                    tx.busy_timeout(Duration::from_millis(STATEMENT_BUSY_TIMEOUT_MS))
                        .map_err(|e| self.failed(run, "setting busy timeout", e))?;
                    return Ok(tx);
                }
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                    if waited.elapsed() >= Duration::from_millis(LOCK_WAIT_MAX_MS) {
                        return Err(self.failed(run, "waiting for the write lock", e));
                    }
                }
                Err(e) => return Err(self.failed(run, "beginning transaction", e)),
            }
        }
    }

    fn ranges_of(
        &self,
        tx: &Connection,
        run: &BatchRun<'_>,
        table: &str,
    ) -> Result<Vec<(u64, u64)>, ExecError> {
        let query = format!("SELECT start, \"end\" FROM {table} WHERE cas_id = ?1");
        let mut stmt = tx
            .prepare(&query)
            .map_err(|e| self.failed(run, "reading ledger", e))?;
        let rows = stmt
            .query_map([&run.cas_hex], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(|e| self.failed(run, "reading ledger", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (a, b) = row.map_err(|e| self.failed(run, "reading ledger", e))?;
            // Negative values cannot come from this executor; clamp them out.
            out.push((u64::try_from(a).unwrap_or(0), u64::try_from(b).unwrap_or(0)));
        }
        Ok(out)
    }

    /// Runs the single statement of `sql` over `rows`, stepping it to the end.
    fn run_sql(
        &self,
        tx: &Connection,
        run: &BatchRun<'_>,
        rows: &Range<u64>,
    ) -> Result<(), ExecError> {
        check_cancel(run.ctx)?;
        let mut batch = Batch::new(tx, &self.sql);
        let mut stmt = match batch.next() {
            Ok(Some(stmt)) => stmt,
            Ok(None) => {
                return Err(ExecError::Failed(
                    "config.sql holds no statement".to_owned(),
                ))
            }
            Err(e) => return Err(self.failed(run, "preparing sql", e)),
        };
        match batch.next() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => {
                return Err(ExecError::Failed(
                    "config.sql must be a single statement".to_owned(),
                ))
            }
        }
        let start = to_sql_int(rows.start)?;
        let end = to_sql_int(rows.end)?;
        let mut result = stmt
            .query(&[(":start", &start), (":end", &end)])
            .map_err(|e| self.failed(run, "running sql", e))?;
        while result
            .next()
            .map_err(|e| self.failed(run, "running sql", e))?
            .is_some()
        {}
        drop(result);
        if tx.is_autocommit() {
            return Err(ExecError::Failed(
                "config.sql ended hxo's batch transaction".to_owned(),
            ));
        }
        Ok(())
    }

    fn apply(&self, conn: &Connection, run: &BatchRun<'_>) -> Result<(), ExecError> {
        let tx = self.begin(conn, run)?;
        tx.execute_batch(&format!("{CREATE_BATCHES}; {CREATE_DRY_RUNS};"))
            .map_err(|e| self.failed(run, "creating ledger tables", e))?;
        let gaps = uncovered(run.rows.clone(), self.ranges_of(&tx, run, "_hxo_batches")?);
        if gaps.is_empty() {
            // Applied before: exactly once means not again.
            return Ok(());
        }
        let dry_ranges = self.ranges_of(&tx, run, "_hxo_dry_runs")?;
        let dry_run_ok = gaps
            .iter()
            .all(|gap| uncovered(gap.clone(), dry_ranges.clone()).is_empty());
        if self.require_dry_run && !dry_run_ok {
            return Err(ExecError::Failed(format!(
                "batch rowids {} has no successful dry run; run `hxo run --dry-run` first",
                run.range_text()
            )));
        }
        for gap in &gaps {
            self.run_sql(&tx, run, gap)?;
        }
        tx.execute(
            "INSERT INTO _hxo_batches(stage_id, cas_id, start, \"end\", applied_at_ms, dry_run_ok) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                run.ctx.stage_id,
                run.cas_hex,
                to_sql_int(run.rows.start)?,
                to_sql_int(run.rows.end)?,
                now_ms(),
                i64::from(dry_run_ok)
            ],
        )
        .map_err(|e| self.failed(run, "recording batch", e))?;
        check_cancel(run.ctx)?;
        tx.commit()
            .map_err(|e| self.failed(run, "committing batch", e))
    }

    fn dry_run(&self, conn: &Connection, run: &BatchRun<'_>) -> Result<(), ExecError> {
        {
            let rehearsal = self.begin(conn, run)?;
            // Created inside the rehearsal so the lookup works on a fresh
            // database; rolled back with everything else.
            rehearsal
                .execute_batch(&format!("{CREATE_BATCHES}; {CREATE_DRY_RUNS};"))
                .map_err(|e| self.failed(run, "creating ledger tables", e))?;
            let gaps = uncovered(
                run.rows.clone(),
                self.ranges_of(&rehearsal, run, "_hxo_batches")?,
            );
            for gap in &gaps {
                self.run_sql(&rehearsal, run, gap)?;
            }
            rehearsal
                .rollback()
                .map_err(|e| self.failed(run, "rolling back dry run", e))?;
        }
        let record = self.begin(conn, run)?;
        record
            .execute_batch(CREATE_DRY_RUNS)
            .map_err(|e| self.failed(run, "creating ledger tables", e))?;
        record
            .execute(
                "INSERT OR REPLACE INTO _hxo_dry_runs(cas_id, start, \"end\", ok_at_ms) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    run.cas_hex,
                    to_sql_int(run.rows.start)?,
                    to_sql_int(run.rows.end)?,
                    now_ms()
                ],
            )
            .map_err(|e| self.failed(run, "recording dry run", e))?;
        record
            .commit()
            .map_err(|e| self.failed(run, "recording dry run", e))
    }
}

impl Executor for SqlMigrate {
    /// The digest is the tree hash of per-unit digests of `ctx.units`.
    fn is_splittable(&self) -> bool {
        true
    }

    fn is_blocking(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        let start = match ctx.input {
            PartitionInput::Range { start, .. } => *start,
            other => return Err(wrong_input(NAME, "a rowid range", other)),
        };
        // Validates ctx.units against the range, so the sums cannot overflow.
        unit_indices(ctx)?;
        let rows = start + ctx.units.start..start + ctx.units.end;
        let unit_count = rows.end - rows.start;
        check_cancel(ctx)?;
        let run = BatchRun {
            ctx,
            cas_hex: to_hex(ctx.cas_id),
            rows,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.database, flags)
            .map_err(|e| self.failed(&run, "opening database", e))?;
        let interrupt = conn.get_interrupt_handle();
        let finished = AtomicBool::new(false);
        let outcome = std::thread::scope(|scope| {
            // The watcher turns a cancel (abort, shard timeout) into an
            // interrupt of whatever statement is running.
            let watcher = std::thread::Builder::new()
                .name("hxo-sql-cancel".to_owned())
                .spawn_scoped(scope, || {
                    while !finished.load(Ordering::Acquire) {
                        if ctx.cancel.is_cancelled() {
                            interrupt.interrupt();
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(CANCEL_POLL_MS));
                    }
                })
                .map_err(|e| ExecError::Failed(format!("starting cancel watcher: {e}")));
            let outcome = watcher.and_then(|_| {
                if ctx.dry_run {
                    self.dry_run(&conn, &run)
                } else {
                    self.apply(&conn, &run)
                }
            });
            finished.store(true, Ordering::Release);
            outcome
        });
        outcome?;
        tracing::debug!(
            stage_id = ctx.stage_id,
            rows = %run.range_text(),
            dry_run = ctx.dry_run,
            "migrated batch"
        );
        Ok(root_of_uniform_leaves(
            &unit_data(&self.sql, ctx.dry_run),
            unit_count,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::support::testing::{node, split_point, Fixture};
    use crate::exec::CancelToken;
    use crate::merkle::root_of_leaf_data;
    use serde_json::json;

    const BUMP: &str = "UPDATE t SET v = v + 1 WHERE rowid >= :start AND rowid < :end";

    fn config(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test configs are objects"),
        }
    }

    /// A database with rows rowid 1..=rows, v = 0.
    fn setup(fx: &Fixture, rows: u64) -> SqlMigrate {
        let conn = Connection::open(fx.dir.path().join("app.db")).unwrap();
        conn.execute_batch("CREATE TABLE t(v INTEGER NOT NULL)")
            .unwrap();
        for _ in 0..rows {
            conn.execute("INSERT INTO t(v) VALUES (0)", []).unwrap();
        }
        let cfg =
            config(json!({ "database": "app.db", "table": "t", "sql": BUMP, "batch_size": 2 }));
        SqlMigrate::from_config(&cfg, fx.dir.path()).unwrap()
    }

    fn values(fx: &Fixture) -> Vec<i64> {
        let conn = Connection::open(fx.dir.path().join("app.db")).unwrap();
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn count(fx: &Fixture, table: &str) -> i64 {
        let conn = Connection::open(fx.dir.path().join("app.db")).unwrap();
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap_or(0)
    }

    fn dry(fx: &Fixture, exec: &SqlMigrate, input: &PartitionInput) -> Result<Hash, ExecError> {
        fx.run_with(
            exec,
            input,
            0..input.unit_count(),
            &CancelToken::new(),
            true,
        )
    }

    #[test]
    fn uniform_root_matches_tree_hash() {
        let item = sha256(b"unit");
        for n in 0..=70u64 {
            let items = vec![item; n as usize];
            assert_eq!(
                root_of_uniform_leaves(&item, n),
                root_of_leaf_data(&items),
                "n = {n}"
            );
        }
        // Wide ranges are cheap.
        let _ = root_of_uniform_leaves(&item, u64::MAX);
    }

    #[test]
    fn coverage_gaps() {
        assert_eq!(uncovered(0..10, vec![]), vec![0..10]);
        assert_eq!(uncovered(0..10, vec![(0, 10)]), Vec::<Range<u64>>::new());
        assert_eq!(uncovered(2..4, vec![(0, 10)]), Vec::<Range<u64>>::new());
        assert_eq!(
            uncovered(0..10, vec![(3, 5), (0, 2), (4, 6)]),
            vec![2..3, 6..10]
        );
        assert_eq!(uncovered(5..10, vec![(0, 2), (12, 20)]), vec![5..10]);
    }

    #[test]
    fn applies_exactly_once_after_a_dry_run() {
        let fx = Fixture::new();
        let exec = setup(&fx, 5);
        assert!(exec.is_blocking());
        let input = PartitionInput::Range { start: 2, end: 4 };
        let dry_digest = dry(&fx, &exec, &input).unwrap();
        assert_eq!(
            values(&fx),
            [0, 0, 0, 0, 0],
            "dry run leaves rows untouched"
        );
        assert_eq!(count(&fx, "_hxo_dry_runs"), 1);
        assert_eq!(count(&fx, "_hxo_batches"), 0);

        let first = fx.run_all(&exec, &input).unwrap();
        assert_ne!(first, dry_digest);
        assert_eq!(values(&fx), [0, 1, 1, 0, 0]);
        let second = fx.run_all(&exec, &input).unwrap();
        assert_eq!(first, second, "same digest on re-run");
        assert_eq!(values(&fx), [0, 1, 1, 0, 0], "applied once");
        assert_eq!(count(&fx, "_hxo_batches"), 1);
        assert_eq!(
            first,
            root_of_leaf_data(&[unit_data(BUMP, false), unit_data(BUMP, false)])
        );
    }

    #[test]
    fn refuses_without_a_dry_run_unless_allowed() {
        let fx = Fixture::new();
        let mut exec = setup(&fx, 3);
        let input = PartitionInput::Range { start: 1, end: 3 };
        let err = fx.run_all(&exec, &input).unwrap_err();
        assert_eq!(
            err,
            ExecError::Failed(
                "batch rowids [1,3) has no successful dry run; run `hxo run --dry-run` first"
                    .to_owned()
            )
        );
        assert_eq!(values(&fx), [0, 0, 0]);
        exec.require_dry_run = false;
        fx.run_all(&exec, &input).unwrap();
        assert_eq!(values(&fx), [1, 1, 0]);
        let conn = Connection::open(fx.dir.path().join("app.db")).unwrap();
        let (stage, ok): (String, i64) = conn
            .query_row("SELECT stage_id, dry_run_ok FROM _hxo_batches", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((stage.as_str(), ok), ("stage-test", 0));
    }

    #[test]
    fn split_batches_recombine_and_stay_exactly_once() {
        let fx = Fixture::new();
        let mut exec = setup(&fx, 8);
        exec.require_dry_run = false;
        let input = PartitionInput::Range { start: 1, end: 6 };
        let n = input.unit_count();
        let k = split_point(n);
        // Apply the first half only, then the whole: only the gap runs.
        let left = fx.run(&exec, &input, 0..k).unwrap();
        assert_eq!(values(&fx), [1, 1, 1, 1, 0, 0, 0, 0]);
        let whole = fx.run_all(&exec, &input).unwrap();
        assert_eq!(values(&fx), [1, 1, 1, 1, 1, 0, 0, 0]);
        let right = fx.run(&exec, &input, k..n).unwrap();
        assert_eq!(
            values(&fx),
            [1, 1, 1, 1, 1, 0, 0, 0],
            "covered by the whole"
        );
        assert_eq!(whole, node(&left, &right));
    }

    #[test]
    fn dry_run_of_split_parts_covers_the_whole() {
        let fx = Fixture::new();
        let exec = setup(&fx, 4);
        let input = PartitionInput::Range { start: 1, end: 5 };
        let cancel = CancelToken::new();
        fx.run_with(&exec, &input, 0..2, &cancel, true).unwrap();
        assert!(
            fx.run_all(&exec, &input).is_err(),
            "half dry-run is not enough"
        );
        fx.run_with(&exec, &input, 2..4, &cancel, true).unwrap();
        fx.run_all(&exec, &input).unwrap();
        assert_eq!(values(&fx), [1, 1, 1, 1]);
    }

    #[test]
    fn concurrent_batches_serialize() {
        let fx = Fixture::new();
        let mut exec = setup(&fx, 40);
        exec.require_dry_run = false;
        std::thread::scope(|scope| {
            for b in 0..8u64 {
                let (fx, exec) = (&fx, &exec);
                scope.spawn(move || {
                    let input = PartitionInput::Range {
                        start: 1 + b * 5,
                        end: 6 + b * 5,
                    };
                    let cancel = CancelToken::new();
                    let artifacts = fx.artifacts();
                    let cas_id = sha256(&b.to_le_bytes());
                    let ctx = ShardContext {
                        attempt: 1,
                        plan_id: "p",
                        stage_id: "s",
                        leaf_index: b,
                        cas_id: &cas_id,
                        input: &input,
                        units: 0..5,
                        artifacts_dir: &artifacts,
                        cancel: &cancel,
                        dry_run: false,
                    };
                    exec.execute(&ctx).unwrap();
                });
            }
        });
        assert_eq!(values(&fx), vec![1; 40]);
        assert_eq!(count(&fx, "_hxo_batches"), 8);
    }

    #[test]
    fn cancellation_stops_and_interrupts() {
        let fx = Fixture::new();
        let _ = setup(&fx, 3);
        let input = PartitionInput::Range { start: 1, end: 3 };
        let cancel = CancelToken::new();
        cancel.cancel();
        let exec = setup_slow(&fx);
        assert_eq!(
            fx.run_with(&exec, &input, 0..2, &cancel, false),
            Err(ExecError::Cancelled)
        );

        // A long statement is interrupted once the deadline passes.
        let deadline = CancelToken::with_deadline(Instant::now() + Duration::from_millis(150));
        let began = Instant::now();
        assert_eq!(
            fx.run_with(&exec, &input, 0..2, &deadline, false),
            Err(ExecError::Cancelled)
        );
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{:?}",
            began.elapsed()
        );
        assert_eq!(values(&fx), [0, 0, 0]);
        assert_eq!(count(&fx, "_hxo_batches"), 0);
    }

    fn setup_slow(fx: &Fixture) -> SqlMigrate {
        let slow = "UPDATE t SET v = v + (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                    WHERE x < 1000000000) SELECT count(*) FROM c) WHERE rowid >= :start AND rowid < :end";
        let cfg = config(json!({ "database": "app.db", "sql": slow }));
        let mut exec = SqlMigrate::from_config(&cfg, fx.dir.path()).unwrap();
        exec.require_dry_run = false;
        exec
    }

    #[test]
    fn bad_sql_fails_the_shard() {
        let fx = Fixture::new();
        let _ = setup(&fx, 2);
        let input = PartitionInput::Range { start: 1, end: 2 };
        for sql in [
            "UPDATE nope SET v = 1 WHERE rowid >= :start AND rowid < :end",
            "UPDATE t SET v = 1 WHERE rowid >= :start AND rowid < :end; DELETE FROM t",
        ] {
            let cfg = config(json!({ "database": "app.db", "sql": sql }));
            let mut exec = SqlMigrate::from_config(&cfg, fx.dir.path()).unwrap();
            exec.require_dry_run = false;
            let err = fx.run_all(&exec, &input).unwrap_err();
            assert!(matches!(err, ExecError::Failed(_)), "{err:?}");
        }
        assert_eq!(values(&fx), [0, 0]);
        let missing = config(json!({ "database": "missing.db", "sql": BUMP }));
        let exec = SqlMigrate::from_config(&missing, fx.dir.path()).unwrap();
        assert!(
            matches!(dry(&fx, &exec, &input), Err(ExecError::Failed(m)) if m.contains("missing.db"))
        );
        let files = fx.files(&[("a", b"x")]);
        assert!(matches!(
            fx.run_all(&exec, &files),
            Err(ExecError::Failed(_))
        ));
    }

    #[test]
    fn config_errors_name_the_key() {
        let base = Path::new("/plans/p");
        let cases = [
            (json!({ "sql": BUMP }), "database"),
            (json!({ "database": "../x.db", "sql": BUMP }), "database"),
            (json!({ "database": 7, "sql": BUMP }), "database"),
            (json!({ "database": "a.db" }), "sql"),
            (json!({ "database": "a.db", "sql": "" }), "sql"),
            (
                json!({ "database": "a.db", "sql": "UPDATE t SET v = 1 WHERE rowid >= :start" }),
                "sql",
            ),
            (
                json!({ "database": "a.db", "sql": "UPDATE t SET v = :ending WHERE rowid >= :start" }),
                "sql",
            ),
            (
                json!({ "database": "a.db", "sql": "-- x\n commit; -- :start :end" }),
                "sql",
            ),
            (
                json!({ "database": "a.db", "sql": BUMP, "table": ["t"] }),
                "table",
            ),
            (
                json!({ "database": "a.db", "sql": BUMP, "table": " " }),
                "table",
            ),
        ];
        for (cfg, key) in cases {
            let err = SqlMigrate::from_config(&config(cfg.clone()), base).unwrap_err();
            assert_eq!(err.key(), key, "{cfg}: {err}");
            assert!(
                err.to_string().starts_with(&format!("config.{key}: ")),
                "{err}"
            );
        }
        let ok = SqlMigrate::from_config(&config(json!({ "database": "a.db", "sql": BUMP })), base)
            .unwrap();
        assert_eq!(ok.database(), Path::new("/plans/p/a.db"));
        assert!(ok.require_dry_run);
        assert_eq!(SqlMigrate::CONFIG_KEYS, ["database", "table", "sql"]);
    }
}
