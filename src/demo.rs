//! The demo: the fixture project of the guide's deploy plan, embedded in
//! the binary, so that `hxo run` with no plan file runs the guide's
//! `deploy_full_stack` for real on any machine.
//!
//! [`prepare`] writes the project into a directory (sources in a few
//! modules, assets of every bucket, Markdown docs under a few routes) and
//! creates its SQLite database of [`DEMO_ROWS`] seeded accounts, which the
//! `deploy.migrate` stage converts from dollars to cents.

use std::path::Path;

/// Accounts in the demo database.
pub const DEMO_ROWS: u64 = 100_000;

/// The guide's plan, as the guide writes it.
pub const DEPLOY_PLAN: &str = include_str!("../fixtures/project/deploy_full_stack.json");

/// Every file of `fixtures/project` but the database.
pub const PROJECT_FILES: &[(&str, &[u8])] = &[
    (
        "assets/fonts/inter.woff2",
        include_bytes!("../fixtures/project/assets/fonts/inter.woff2"),
    ),
    (
        "assets/images/logo.svg",
        include_bytes!("../fixtures/project/assets/images/logo.svg"),
    ),
    (
        "assets/images/pixel.png",
        include_bytes!("../fixtures/project/assets/images/pixel.png"),
    ),
    (
        "assets/scripts/app.js",
        include_bytes!("../fixtures/project/assets/scripts/app.js"),
    ),
    (
        "assets/styles/site.css",
        include_bytes!("../fixtures/project/assets/styles/site.css"),
    ),
    (
        "deploy_full_stack.json",
        include_bytes!("../fixtures/project/deploy_full_stack.json"),
    ),
    (
        "docs/api/errors.md",
        include_bytes!("../fixtures/project/docs/api/errors.md"),
    ),
    (
        "docs/api/index.md",
        include_bytes!("../fixtures/project/docs/api/index.md"),
    ),
    (
        "docs/blog/launch.md",
        include_bytes!("../fixtures/project/docs/blog/launch.md"),
    ),
    (
        "docs/guide/install.md",
        include_bytes!("../fixtures/project/docs/guide/install.md"),
    ),
    (
        "docs/guide/intro.md",
        include_bytes!("../fixtures/project/docs/guide/intro.md"),
    ),
    (
        "full_project.json",
        include_bytes!("../fixtures/project/full_project.json"),
    ),
    (
        "src/README.txt",
        include_bytes!("../fixtures/project/src/README.txt"),
    ),
    (
        "src/api/handlers.rs",
        include_bytes!("../fixtures/project/src/api/handlers.rs"),
    ),
    (
        "src/api/mod.rs",
        include_bytes!("../fixtures/project/src/api/mod.rs"),
    ),
    (
        "src/api/routes.rs",
        include_bytes!("../fixtures/project/src/api/routes.rs"),
    ),
    (
        "src/core/engine.py",
        include_bytes!("../fixtures/project/src/core/engine.py"),
    ),
    (
        "src/core/model.py",
        include_bytes!("../fixtures/project/src/core/model.py"),
    ),
    (
        "src/main.rs",
        include_bytes!("../fixtures/project/src/main.rs"),
    ),
    (
        "src/web/app.ts",
        include_bytes!("../fixtures/project/src/web/app.ts"),
    ),
    (
        "src/web/util.js",
        include_bytes!("../fixtures/project/src/web/util.js"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("writing the demo project into {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the demo database {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// Writes the demo project into `dir` (files that already match are left
/// alone) and creates its database if it does not exist. Returns whether
/// the database was created.
pub fn prepare(dir: &Path) -> Result<bool, DemoError> {
    for (relative, bytes) in PROJECT_FILES {
        let path = dir.join(relative);
        let io = |source| DemoError::Io {
            path: path.display().to_string(),
            source,
        };
        if std::fs::read(&path).ok().as_deref() == Some(*bytes) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
    }
    ensure_database(&dir.join("data/app.sqlite"), DEMO_ROWS)
}

/// Creates `path` with an `accounts` table of `rows` seeded rows (balances
/// in dollars, not yet migrated), unless it exists. Returns whether it did.
pub fn ensure_database(path: &Path, rows: u64) -> Result<bool, DemoError> {
    if path.exists() {
        return Ok(false);
    }
    let db_error = |source| DemoError::Database {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DemoError::Io {
            path: parent.display().to_string(),
            source,
        })?;
    }
    // Build under a temporary name, then rename: a crash never leaves a
    // half-filled database that looks complete.
    let partial = path.with_extension("sqlite.partial");
    let _ = std::fs::remove_file(&partial);
    let mut connection = rusqlite::Connection::open(&partial).map_err(db_error)?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE accounts (
                 id INTEGER PRIMARY KEY,
                 owner TEXT NOT NULL,
                 balance_cents INTEGER NOT NULL,
                 migrated INTEGER NOT NULL DEFAULT 0);",
        )
        .map_err(db_error)?;
    let transaction = connection.transaction().map_err(db_error)?;
    {
        let mut insert = transaction
            .prepare("INSERT INTO accounts (id, owner, balance_cents) VALUES (?1, ?2, ?3)")
            .map_err(db_error)?;
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for id in 1..=rows {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let dollars = (state % 100_000) as i64;
            insert
                .execute(rusqlite::params![
                    id as i64,
                    format!("owner-{id:06}"),
                    dollars
                ])
                .map_err(db_error)?;
        }
    }
    transaction.commit().map_err(db_error)?;
    connection
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
        .map_err(db_error)?;
    drop(connection);
    std::fs::rename(&partial, path).map_err(|source| DemoError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_writes_the_project_and_a_seeded_database_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(prepare(dir.path()).unwrap());
        assert!(
            !prepare(dir.path()).unwrap(),
            "the database is created once"
        );
        for (relative, bytes) in PROJECT_FILES {
            assert_eq!(std::fs::read(dir.path().join(relative)).unwrap(), *bytes);
        }
        let connection = rusqlite::Connection::open(dir.path().join("data/app.sqlite")).unwrap();
        let (count, sum): (i64, i64) = connection
            .query_row(
                "SELECT count(*), sum(balance_cents) FROM accounts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(count as u64, DEMO_ROWS);
        // Seeded: the same database every time.
        let other = tempfile::tempdir().unwrap();
        ensure_database(&other.path().join("a.sqlite"), DEMO_ROWS).unwrap();
        let again: i64 = rusqlite::Connection::open(other.path().join("a.sqlite"))
            .unwrap()
            .query_row("SELECT sum(balance_cents) FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sum, again);
    }

    #[test]
    fn every_fixture_project_file_is_embedded() {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                if path.is_dir() {
                    if relative != "data" {
                        walk(&path, root, out);
                    }
                } else {
                    out.push(relative);
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/project");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let embedded: Vec<String> = PROJECT_FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(embedded, on_disk, "update PROJECT_FILES in src/demo.rs");
    }
}
