//! The partition layer's one error type.
//!
//! Every variant carries `key`: the path of the config key it concerns,
//! relative to the stage's `config` object (`root`, `routes[2]`,
//! `graph.deploy`, `buckets.images[0]`). The plan layer prefixes it with the
//! stage's JSON path (`stages[3].config.`) so that a user reads one message
//! that says what is wrong and where. Messages are lowercase with no
//! trailing period; causes hang off `#[source]` so the CLI can print the
//! chain.

use std::path::PathBuf;

/// Why a stage's config could not be turned into partitions.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// A key is missing, has the wrong type, or holds a value out of range.
    #[error("{key}: {message}")]
    Config { key: String, message: String },

    /// Reading a directory or file named (directly or by a walk) by `key`
    /// failed.
    #[error("{key}: cannot read {}", path.display())]
    Io {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Opening or querying the SQLite database named by `database` failed;
    /// `key` is the key whose value the query used (`database` or `table`).
    #[error("{key}: sqlite error on {}", path.display())]
    Sql {
        key: String,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A path resolves (lexically through `..`, or through a symlink) to a
    /// place outside the directory it must stay in: the plan's directory,
    /// or for routes the partitioner's `root`.
    #[error(
        "{key}: path {given:?} escapes {} (resolved to {})",
        root.display(),
        resolved.display()
    )]
    EscapesRoot {
        key: String,
        /// The path as the config wrote it (or as the walk found it).
        given: String,
        /// Where it leads.
        resolved: PathBuf,
        /// The directory it must stay inside.
        root: PathBuf,
    },

    /// The partitioner would make more shards than the plan allows. For
    /// `by_range` this is checked before anything is allocated.
    #[error("{key}: makes {count} shards, over the limit of {max}")]
    TooManyShards { key: String, count: u64, max: u64 },
}

impl PartitionError {
    /// The config key path this error concerns (`root`, `routes[1]`, ...).
    pub fn key(&self) -> &str {
        match self {
            PartitionError::Config { key, .. }
            | PartitionError::Io { key, .. }
            | PartitionError::Sql { key, .. }
            | PartitionError::EscapesRoot { key, .. }
            | PartitionError::TooManyShards { key, .. } => key,
        }
    }

    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        PartitionError::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(
        key: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PartitionError::Io {
            key: key.into(),
            path: path.into(),
            source,
        }
    }
}

/// Fails with [`PartitionError::TooManyShards`] when `count` is over `max`.
pub(crate) fn check_shard_count(key: &str, count: u64, max: u64) -> Result<(), PartitionError> {
    if count > max {
        return Err(PartitionError::TooManyShards {
            key: key.to_owned(),
            count,
            max,
        });
    }
    Ok(())
}
