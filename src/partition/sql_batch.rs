//! `by_sql_batch`: one shard per batch of `batch_size` rows (default 1000)
//! of SQLite table `table` in file `database`, or, without a table, one
//! shard per `batch_size` of the numbers `0..total_rows`. Keys are `None`.
//!
//! A batch is a half-open range of rowid *values* `[start, end)`: `start`
//! is the batch's first rowid, `end` the next batch's first rowid (or the
//! largest rowid + 1). Cutting by row count rather than by value keeps
//! batches balanced when rowids have gaps, and the ranges still cover every
//! row, so an executor can run `... WHERE rowid >= :start AND rowid < :end`.
//!
//! The database is opened read-only and only rowids are read: row contents
//! are not fingerprinted, since the migration that runs over the batches
//! changes them and its shards' cas_ids must stay put. In `total_rows` mode
//! the partitioner does not touch `database` at all (the executor reads
//! it). `table` must be a plain identifier, which is what makes quoting it
//! into the query safe. Rowids must be >= 0 (ranges are `u64`). A table
//! with a column named `rowid` hides the real rowid; that is not detected.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::config::{
    canonical_base, optional_positive_u64, optional_str, optional_u64, required_path, Config, Want,
};
use super::error::check_shard_count;
use super::{Partition, PartitionError, PartitionInput};

pub(crate) const CONFIG_KEYS: &[&str] = &["database", "table", "batch_size", "total_rows"];

const BATCH_SIZE_DEFAULT: u64 = 1000;

/// SQLite's own limit on identifiers is far larger; a longer name is a
/// mistake, and keeping it short keeps messages readable.
const TABLE_NAME_LEN_MAX: usize = 128;

pub(crate) fn partition(
    config: &Config,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let batch_size = optional_positive_u64(config, "batch_size")?.unwrap_or(BATCH_SIZE_DEFAULT);
    let table = optional_str(config, "table")?;
    let total_rows = optional_u64(config, "total_rows")?;
    match (table, total_rows) {
        (Some(_), Some(_)) => Err(PartitionError::config(
            "total_rows",
            "cannot be combined with table (give one of them)",
        )),
        (None, None) => Err(PartitionError::config(
            "table",
            "required key is missing (give table, or total_rows)",
        )),
        (None, Some(total_rows)) => counted(total_rows, batch_size, shards_max),
        (Some(table), None) => {
            check_table_name(table)?;
            // The path is checked before the table name is used, so a bad
            // name never reaches SQLite.
            let base = canonical_base("database", base_dir)?;
            let database = required_path(config, "database", &base, Want::File)?;
            from_table(&database, table, batch_size, shards_max)
        }
    }
}

fn range(start: u64, end: u64) -> Partition {
    Partition {
        key: None,
        input: PartitionInput::Range { start, end },
    }
}

/// `0..total_rows` in batches, checked against `shards_max` before
/// allocating.
fn counted(
    total_rows: u64,
    batch_size: u64,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let count = total_rows.div_ceil(batch_size);
    check_shard_count("batch_size", count, shards_max)?;
    Ok((0..count)
        .map(|index| {
            let start = index * batch_size;
            range(start, start.saturating_add(batch_size).min(total_rows))
        })
        .collect())
}

fn check_table_name(table: &str) -> Result<(), PartitionError> {
    let mut chars = table.chars();
    let plain = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|rest| rest.is_ascii_alphanumeric() || rest == '_')
        && table.len() <= TABLE_NAME_LEN_MAX;
    if plain {
        return Ok(());
    }
    Err(PartitionError::config(
        "table",
        format!(
            "{table:?} is not a plain table name (ASCII letters, digits and _, not starting with a digit, \
             at most {TABLE_NAME_LEN_MAX} characters)"
        ),
    ))
}

fn from_table(
    database: &Path,
    table: &str,
    batch_size: u64,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let sql_error = |key: &'static str| {
        move |source| PartitionError::Sql {
            key: key.to_owned(),
            path: database.to_owned(),
            source,
        }
    };
    // No SQLITE_OPEN_URI: the path is a file name, never a URI. Read-write
    // (but never create, and nothing here writes) because a migration killed
    // mid-batch leaves a hot journal that only a writable connection may
    // roll back; SQLite falls back to read-only for a write-protected file.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(database, flags).map_err(sql_error("database"))?;
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql_error("database"))?;
    // Reading the schema is also what detects a file that is not a
    // database, so its errors name `database`.
    let exists: bool = connection
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE)",
            [table],
            |row| row.get(0),
        )
        .map_err(sql_error("database"))?;
    if !exists {
        return Err(PartitionError::config(
            "table",
            format!("no table {table:?} in database {}", database.display()),
        ));
    }

    // No injection: `table` passed `check_table_name`, so it holds
    // no quote and cannot break out of the quoted identifier.
    let sql = format!("SELECT rowid FROM \"{table}\" ORDER BY rowid");
    let mut statement = connection.prepare(&sql).map_err(sql_error("table"))?;
    let mut rows = statement.query([]).map_err(sql_error("table"))?;
    let mut starts: Vec<u64> = Vec::new();
    // Rows still to place in the current batch; 0 starts a new one.
    let mut left_in_batch: u64 = 0;
    let mut last_rowid: u64 = 0;
    while let Some(row) = rows.next().map_err(sql_error("table"))? {
        let rowid: i64 = row.get(0).map_err(sql_error("table"))?;
        let Ok(rowid) = u64::try_from(rowid) else {
            return Err(PartitionError::config(
                "table",
                format!("table {table:?} has a negative rowid ({rowid}); batches need rowids >= 0"),
            ));
        };
        if left_in_batch == 0 {
            if starts.len() as u64 == shards_max {
                // Only now is the exact count worth a second scan.
                let total: u64 = connection
                    .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |row| {
                        row.get(0)
                    })
                    .map_err(sql_error("table"))?;
                // A writer may have deleted rows in between; the scan
                // already saw more than `shards_max` batches.
                let count = total.div_ceil(batch_size).max(shards_max.saturating_add(1));
                return Err(PartitionError::TooManyShards {
                    key: "batch_size".to_owned(),
                    count,
                    max: shards_max,
                });
            }
            starts.push(rowid);
            left_in_batch = batch_size;
        }
        left_in_batch -= 1;
        last_rowid = rowid;
    }
    // The largest rowid is at most i64::MAX, so + 1 fits in u64.
    let end_all = last_rowid + 1;
    let mut partitions = Vec::with_capacity(starts.len());
    for (index, &start) in starts.iter().enumerate() {
        let end = starts.get(index + 1).copied().unwrap_or(end_all);
        partitions.push(range(start, end));
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::super::files::tests::{temp_base, write_tree};
    use super::*;
    use serde_json::json;

    fn run(base: &Path, value: serde_json::Value) -> Result<Vec<Partition>, PartitionError> {
        partition(value.as_object().unwrap(), base, 1000)
    }

    fn ranges(partitions: &[Partition]) -> Vec<(u64, u64)> {
        partitions
            .iter()
            .map(|partition| {
                assert_eq!(partition.key, None);
                match partition.input {
                    PartitionInput::Range { start, end } => (start, end),
                    _ => unreachable!("by_sql_batch makes ranges"),
                }
            })
            .collect()
    }

    /// Creates `db.sqlite` in `base` with table `users` holding `rowids`.
    fn make_db(base: &Path, rowids: &[i64]) {
        let mut connection = Connection::open(base.join("db.sqlite")).unwrap();
        // One transaction: one sync instead of one per row.
        let transaction = connection.transaction().unwrap();
        transaction
            .execute_batch("CREATE TABLE users (name TEXT); CREATE TABLE empty (x INTEGER);")
            .unwrap();
        for rowid in rowids {
            transaction
                .execute("INSERT INTO users (rowid, name) VALUES (?1, 'n')", [rowid])
                .unwrap();
        }
        transaction.commit().unwrap();
    }

    #[test]
    fn batches_are_balanced_across_gaps() {
        let (_dir, base) = temp_base();
        make_db(&base, &[1, 2, 3, 10, 11, 50, 51, 52, 100, 1000]);
        let config = json!({"database": "db.sqlite", "table": "users", "batch_size": 3});
        assert_eq!(
            ranges(&run(&base, config).unwrap()),
            [(1, 10), (10, 51), (51, 1000), (1000, 1001)]
        );
    }

    #[test]
    fn default_batch_size_and_case_insensitive_table() {
        let (_dir, base) = temp_base();
        let rowids: Vec<i64> = (1..=2500).collect();
        make_db(&base, &rowids);
        let config = json!({"database": "db.sqlite", "table": "USERS"});
        assert_eq!(
            ranges(&run(&base, config).unwrap()),
            [(1, 1001), (1001, 2001), (2001, 2501)]
        );
    }

    #[test]
    fn empty_table_gives_no_partitions() {
        let (_dir, base) = temp_base();
        make_db(&base, &[]);
        let config = json!({"database": "db.sqlite", "table": "empty"});
        assert!(run(&base, config).unwrap().is_empty());
    }

    #[test]
    fn row_contents_do_not_change_the_partitions() {
        let (_dir, base) = temp_base();
        make_db(&base, &[1, 2, 3]);
        let config = json!({"database": "db.sqlite", "table": "users", "batch_size": 2});
        let before = run(&base, config.clone()).unwrap();
        Connection::open(base.join("db.sqlite"))
            .unwrap()
            .execute("UPDATE users SET name = 'migrated'", [])
            .unwrap();
        assert_eq!(run(&base, config).unwrap(), before);
    }

    #[test]
    fn total_rows_without_a_table() {
        let (_dir, base) = temp_base();
        assert_eq!(
            ranges(&run(&base, json!({"total_rows": 10, "batch_size": 4})).unwrap()),
            [(0, 4), (4, 8), (8, 10)]
        );
        assert!(run(&base, json!({"total_rows": 0})).unwrap().is_empty());
        assert_eq!(
            ranges(
                &run(
                    &base,
                    json!({"total_rows": u64::MAX, "batch_size": u64::MAX})
                )
                .unwrap()
            ),
            [(0, u64::MAX)]
        );
        // `database` is the executor's business here: not opened, not checked.
        assert_eq!(
            run(&base, json!({"total_rows": 5, "database": "later.db"}))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn errors_name_their_key() {
        let (_dir, base) = temp_base();
        make_db(&base, &[1]);
        write_tree(
            &base,
            &[(
                "not_a_db",
                b"this is not sqlite, just text long enough to matter",
            )],
        );
        let cases = [
            (json!({}), "table"),
            (json!({"table": "users", "total_rows": 5}), "total_rows"),
            (json!({"table": "users"}), "database"),
            (json!({"table": 5, "database": "db.sqlite"}), "table"),
            (
                json!({"table": "users", "database": "missing.db"}),
                "database",
            ),
            (
                json!({"table": "users", "database": "../db.sqlite"}),
                "database",
            ),
            (json!({"table": "users", "database": "."}), "database"),
            (
                json!({"table": "users", "database": "not_a_db"}),
                "database",
            ),
            (json!({"table": "nope", "database": "db.sqlite"}), "table"),
            (
                json!({"table": "users; DROP TABLE users", "database": "db.sqlite"}),
                "table",
            ),
            (
                json!({"table": "users\"", "database": "db.sqlite"}),
                "table",
            ),
            (json!({"table": "1users", "database": "db.sqlite"}), "table"),
            (json!({"table": "", "database": "db.sqlite"}), "table"),
            (
                json!({"table": "users", "database": "db.sqlite", "batch_size": 0}),
                "batch_size",
            ),
            (json!({"total_rows": -3}), "total_rows"),
        ];
        for (config, key) in cases {
            let error = run(&base, config.clone()).unwrap_err();
            assert_eq!(error.key(), key, "{config}: {error}");
        }
        let error = run(&base, json!({"table": "users", "database": "not_a_db"})).unwrap_err();
        assert!(matches!(error, PartitionError::Sql { .. }), "{error}");
        let error = run(&base, json!({"table": "nope", "database": "db.sqlite"})).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "table: no table \"nope\" in database {}",
                base.join("db.sqlite").display()
            )
        );
    }

    #[test]
    fn database_is_opened_read_only() {
        let (_dir, base) = temp_base();
        make_db(&base, &[1]);
        let path = base.join("db.sqlite");
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(&path, permissions).unwrap();
        let config = json!({"database": "db.sqlite", "table": "users"});
        assert_eq!(ranges(&run(&base, config).unwrap()), [(1, 2)]);
    }

    #[test]
    fn negative_rowids_are_rejected() {
        let (_dir, base) = temp_base();
        make_db(&base, &[-5, 1]);
        let error = run(&base, json!({"database": "db.sqlite", "table": "users"})).unwrap_err();
        assert_eq!(error.key(), "table");
        assert!(error.to_string().contains("negative rowid"), "{error}");
    }

    #[test]
    fn too_many_shards() {
        let (_dir, base) = temp_base();
        make_db(&base, &[1, 2, 3, 4, 5]);
        let config = json!({"database": "db.sqlite", "table": "users", "batch_size": 2});
        let error = partition(config.as_object().unwrap(), &base, 2).unwrap_err();
        assert!(
            matches!(
                error,
                PartitionError::TooManyShards {
                    count: 3,
                    max: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(
            partition(config.as_object().unwrap(), &base, 3)
                .unwrap()
                .len(),
            3
        );
        let config = json!({"total_rows": u64::MAX, "batch_size": 1});
        let error = partition(config.as_object().unwrap(), &base, 10).unwrap_err();
        assert!(
            matches!(
                error,
                PartitionError::TooManyShards {
                    count: u64::MAX,
                    ..
                }
            ),
            "{error}"
        );
    }
}
