//! Executors: what a shard does. The [`Executor`] trait, the context a shard
//! runs with, cancellation, and the builder that turns a stage's executor
//! name and config into an executor.
//!
//! The scheduler that runs shards on the pools is [`crate::sched`]; how it
//! works (states, termination, ordering, backpressure) is explained in
//! `src/sched/README.md`.
//!
//! Executors must be idempotent and deterministic: running a shard twice
//! gives the same output digest. Where a shard's work is made of units
//! (items, files, rows), the digest is the RFC 6962 tree hash of the unit
//! digests of `ctx.units`, so a shard split at the tree's own power-of-two
//! boundaries recombines to the same digest.

pub mod config;
pub mod docs_index;
pub mod index_assets;
pub mod pack_backend;
pub mod prime_caches;
pub mod shell;
pub mod sql_migrate;
pub mod support;
pub mod synthetic;
pub mod warm_registry;

pub use config::ConfigError;

use crate::hash::Hash;
use crate::partition::PartitionInput;
use crate::plan::{ExecutorKind, Stage};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

enum Flag<'a> {
    Shared(&'a AtomicBool),
    Own(AtomicBool),
}

/// Cancellation seen by a running shard: the run's abort flag plus the
/// shard's own deadline (`HXO_SHARD_TIMEOUT_MS`).
pub struct CancelToken<'a> {
    flag: Flag<'a>,
    deadline: Option<Instant>,
}

impl CancelToken<'static> {
    /// A token of its own, never cancelled unless [`CancelToken::cancel`]
    /// is called.
    pub fn new() -> Self {
        CancelToken {
            flag: Flag::Own(AtomicBool::new(false)),
            deadline: None,
        }
    }

    /// A token of its own that times out at `deadline`.
    pub fn with_deadline(deadline: Instant) -> Self {
        CancelToken {
            flag: Flag::Own(AtomicBool::new(false)),
            deadline: Some(deadline),
        }
    }
}

impl Default for CancelToken<'static> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> CancelToken<'a> {
    /// A token that follows the run's stop flag and the shard's deadline.
    pub fn for_run(run: &'a AtomicBool, deadline: Option<Instant>) -> Self {
        CancelToken {
            flag: Flag::Shared(run),
            deadline,
        }
    }

    fn flag(&self) -> &AtomicBool {
        match &self.flag {
            Flag::Shared(flag) => flag,
            Flag::Own(flag) => flag,
        }
    }

    pub fn cancel(&self) {
        self.flag().store(true, Ordering::SeqCst);
    }

    /// True once the run is stopped or the shard's deadline has passed.
    pub fn is_cancelled(&self) -> bool {
        self.flag().load(Ordering::Relaxed) || self.timed_out()
    }

    pub fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// Everything a shard execution may look at.
pub struct ShardContext<'a> {
    pub plan_id: &'a str,
    pub stage_id: &'a str,
    pub leaf_index: u64,
    pub cas_id: &'a Hash,
    pub input: &'a PartitionInput,
    /// The units this call processes: `0..unit_count`, or a sub-range when
    /// hot-shard splitting split the shard.
    pub units: Range<u64>,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub artifacts_dir: &'a Path,
    pub cancel: &'a CancelToken<'a>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
    #[error("timed out")]
    TimedOut,
}

pub trait Executor: Send + Sync {
    /// True when the executor blocks on a subprocess or I/O: such shards run
    /// on the blocking lane (`HXO_MAX_CONCURRENCY` threads), not the CPU pool.
    fn is_blocking(&self) -> bool {
        false
    }

    /// True when the digest is a tree hash over units, so the shard may be
    /// split into sub-ranges of units.
    fn is_splittable(&self) -> bool {
        false
    }

    /// Runs `ctx.units` of the shard and returns its output digest.
    ///
    /// Cancellation is cooperative: threads cannot be killed. An executor
    /// looks at `ctx.cancel` at least every few milliseconds of work (every
    /// unit, or every so many iterations of an inner loop) and returns
    /// [`ExecError::TimedOut`] or [`ExecError::Cancelled`] when it is set,
    /// so the shard timeout, an abort and SIGTERM take effect within
    /// 100 ms. A subprocess is killed with its process group. A result
    /// returned after the shard's deadline counts as timed out, not done.
    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError>;
}

/// Builds the executor of `stage`. `base_dir` resolves relative paths.
pub fn build(stage: &Stage, base_dir: &Path) -> Result<Arc<dyn Executor>, ConfigError> {
    let config = &stage.config;
    Ok(match stage.executor {
        ExecutorKind::Synthetic => Arc::new(synthetic::Synthetic::from_config(config)?),
        ExecutorKind::Exec => Arc::new(shell::Shell::from_config(config, base_dir)?),
        // The guide's file and graph executors take no config of their own
        // (their inputs come from the partitioners).
        ExecutorKind::PackBackend => Arc::new(pack_backend::PackBackend::default()),
        ExecutorKind::IndexAssets => Arc::new(index_assets::IndexAssets::default()),
        ExecutorKind::DocsIndex => Arc::new(docs_index::DocsIndex::default()),
        ExecutorKind::WarmRegistry => Arc::new(warm_registry::WarmRegistry::default()),
        ExecutorKind::PrimeCaches => Arc::new(prime_caches::PrimeCaches::default()),
        ExecutorKind::SqlMigrate => {
            let mut executor = sql_migrate::SqlMigrate::from_config(config, base_dir)?;
            executor.require_dry_run = stage.blueprint.require_dry_run;
            Arc::new(executor)
        }
    })
}
