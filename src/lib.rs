//! HXO (Hypshard-X Orchestrator): a data-parallel batch engine.
//!
//! A plan names stages; each stage is partitioned into content-addressed
//! shards; shards run on a rayon pool; every outcome is appended to a
//! memory-mapped checkpoint log before anything reports it; the results
//! are certified by an RFC 6962 Merkle root.
//!
//! # Codemap
//!
//! The pure core, which does no I/O:
//! - [`plan`]: JSON wire types, validation into [`plan::Plan`], job kinds
//!   and their blueprints, the manifest kept in the log.
//! - [`dag`]: a plan plus partitions compiled into an arena of shards with
//!   cas_ids, barrier and pipelined joins.
//! - [`merkle`]: RFC 6962 tree hash, inclusion proofs, tree-aligned splits.
//! - [`events`], [`report`], [`settings`], [`limits`], [`hash`], [`ids`].
//!
//! The edges, which do:
//! - [`partition`]: the partitioners, reading directories and databases.
//! - [`exec`]: the executors: what a shard does.
//! - [`sched`]: the scheduler that runs shards on the pools (see
//!   `src/sched/README.md`).
//! - [`log`]: the checkpoint log; its byte layout is documented in
//!   `log/format.rs`.
//! - [`store`]: the index of what the log says, fed only by durable batches.
//! - [`engine`]: the one module that wires everything together, one
//!   operation per file: compile, run, certify, the plan lifecycle
//!   (`engine/lifecycle.rs`: states, transitions, verbs), merge.
//! - [`demo`]: the embedded fixture project behind `hxo run`.
//! - [`signals`]: SIGINT and SIGTERM, for whichever front-end runs.
//! - [`cli`], [`http`]: the front-ends, peers that call only the engine
//!   (never the log, the store or the scheduler).
//! - [`alloc`]: the binary's allocator (a huge-page hint on large
//!   allocations).
//!
//! Deliberately absent: any home-made clustering (workers are indexed jobs
//! of Kubernetes or Slurm, each with its own store, unioned by
//! `Engine::merge`), and claimed/running states in the log.

#![deny(unsafe_op_in_unsafe_fn)]

/// Writes a line for a person to stderr, ignoring a closed or full stream:
/// a message must never stop a run (`eprintln!` panics when stderr is a
/// closed pipe, as in `hxo run 2>&1 | head -1`).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod alloc;
pub mod cli;
pub mod dag;
pub mod demo;
pub mod engine;
pub mod events;
pub mod exec;
pub mod hash;
pub mod http;
pub mod ids;
pub mod limits;
pub mod log;
pub mod merkle;
pub mod partition;
pub mod plan;
pub mod report;
pub mod sched;
pub mod settings;
pub mod signals;
pub mod store;
