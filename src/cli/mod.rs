//! The command line: parses arguments with clap, resolves settings (flags
//! beat `HXO_*` variables, which beat defaults) and calls the engine.
//!
//! Machine output (`--json`) goes to stdout and is stable: one JSON
//! document per command (`hxo export` excepted: one JSON line per shard).
//! A command that fails prints [`CliError::to_json`] there instead,
//! `{"error": ..., "path": ...}`. Logs, the progress bar and the human form
//! of errors go to stderr (no bar when stderr is not a terminal). Exit
//! codes are [`exit`]'s, mapped in [`CliError::exit_code`].

mod commands;
mod progress;

use crate::engine::{CompileError, EngineError};
use crate::http::ServiceError;
use crate::plan::PlanError;
use crate::settings::SettingsError;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Help of every argument naming a plan by id.
const PLAN_ID_HELP: &str = "Plan id, or a unique prefix of it (at least 4 characters)";

/// Help of every argument naming a plan file.
const PLAN_FILE_HELP: &str = "Plan file (JSON)";

/// Exit codes. Scripts rely on them; they never change meaning.
pub mod exit {
    /// The command did what was asked (a run: every shard done, certified).
    pub const SUCCESS: u8 = 0;
    /// HXO or its store failed (i/o, a stopped log writer, a bug).
    pub const INTERNAL: u8 = 1;
    /// The caller asked for something invalid: a flag, a setting, a plan
    /// that does not compile, an unknown plan, an action that does not
    /// apply to the plan's state. Nothing was changed.
    pub const USAGE: u8 = 2;
    /// A run ended with failed (or blocked) shards.
    pub const FAILED_SHARDS: u8 = 3;
    /// A run was aborted or ran past its timebox.
    pub const ABORTED: u8 = 4;
    /// The log files do not reproduce a plan's recorded root.
    pub const VERIFY_FAILED: u8 = 5;
    /// A run was interrupted (SIGINT, SIGTERM); `hxo resume` continues it.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments.
    #[error("{0}")]
    Usage(String),
    /// A plan file that does not parse. The message says it all (no source,
    /// so the cause chain does not repeat it).
    #[error("invalid plan: {0}")]
    Plan(PlanError),
    #[error("{0}")]
    Settings(SettingsError),
    #[error(transparent)]
    Engine(EngineError),
    #[error(transparent)]
    Service(ServiceError),
    /// Verification found a mismatch.
    #[error("{0}")]
    Verify(String),
    /// Anything else.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<PlanError> for CliError {
    fn from(error: PlanError) -> Self {
        CliError::Plan(error)
    }
}

impl From<SettingsError> for CliError {
    fn from(error: SettingsError) -> Self {
        CliError::Settings(error)
    }
}

impl From<EngineError> for CliError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Invalid(CompileError::Plan(plan)) => CliError::Plan(plan),
            other => CliError::Engine(other),
        }
    }
}

impl From<CompileError> for CliError {
    fn from(error: CompileError) -> Self {
        EngineError::Invalid(error).into()
    }
}

impl From<ServiceError> for CliError {
    fn from(error: ServiceError) -> Self {
        CliError::Service(error)
    }
}

impl CliError {
    /// The exit code, from one exhaustive match: a new error variant does
    /// not compile until it is given one here.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Plan(_) | CliError::Settings(_) => exit::USAGE,
            CliError::Engine(error) => engine_exit_code(error),
            CliError::Service(error) => match error {
                ServiceError::Root(_) | ServiceError::SameTokens | ServiceError::Bind(_) => {
                    exit::USAGE
                }
                ServiceError::TokenFile { .. } | ServiceError::Spawn(_) => exit::INTERNAL,
            },
            CliError::Verify(_) => exit::VERIFY_FAILED,
            CliError::Internal(_) => exit::INTERNAL,
        }
    }

    /// The JSON path of a plan error, for `--json` error objects.
    pub fn path(&self) -> Option<String> {
        match self {
            CliError::Plan(error) => Some(error.path.clone()),
            CliError::Engine(EngineError::Invalid(error)) => Some(error.path()),
            _ => None,
        }
    }

    /// The message followed by its causes, joined by ": ".
    pub fn message(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// The error as `--json` prints it: `{"error": MESSAGE}`, with
    /// `"path"` (the JSON path) for a plan error.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut object = serde_json::Map::new();
        object.insert("error".into(), self.message().into());
        if let Some(path) = self.path() {
            object.insert("path".into(), path.into());
        }
        object
    }
}

fn engine_exit_code(error: &EngineError) -> u8 {
    match error {
        EngineError::Invalid(_)
        | EngineError::UnknownPlan(_)
        | EngineError::UnknownShard { .. }
        | EngineError::InputsChanged { .. }
        | EngineError::WrongState { .. }
        | EngineError::NothingToReplay { .. }
        | EngineError::NoRoot { .. }
        | EngineError::Running(_)
        | EngineError::Merge(_) => exit::USAGE,
        EngineError::Store(_)
        | EngineError::AtCapacity { .. }
        | EngineError::Uncertifiable { .. }
        | EngineError::Spawn(_)
        | EngineError::Output(_) => exit::INTERNAL,
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "hxo",
    version,
    about = "Hypshard-X Orchestrator: run plans as content-addressed shards, resume after crashes, certify results with an RFC 6962 Merkle root",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Checkpoint store directory [env: HXO_DB_PATH] [default: .hxo/checkpoints]
    #[arg(long, global = true, value_name = "DIR")]
    pub db: Option<PathBuf>,
    /// Artifacts directory [env: HXO_ARTIFACTS_DIR] [default: .hxo/artifacts]
    #[arg(long, global = true, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Worker threads for CPU-bound shards [env: HXO_THREADS] [default: cores]
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<String>,
    /// Blocking shards (subprocesses, SQL) at once [env: HXO_MAX_CONCURRENCY] [default: 64]
    #[arg(long, global = true, value_name = "N")]
    pub max_concurrency: Option<String>,
    /// Per-shard timeout [env: HXO_SHARD_TIMEOUT_MS] [default: 15000]
    #[arg(long, global = true, value_name = "MS")]
    pub shard_timeout_ms: Option<String>,
    /// Attempts per shard [env: HXO_MAX_ATTEMPTS] [default: 3]
    #[arg(long, global = true, value_name = "N")]
    pub max_attempts: Option<String>,
    /// Stable machine-readable output on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Open a damaged checkpoint store anyway, dropping the damaged records
    #[arg(long, global = true)]
    pub salvage: bool,
    /// Do not sync the log at each group commit, only at the end (a killed
    /// process loses nothing; a power loss may lose the tail). For benchmarks
    #[arg(long, global = true)]
    pub no_sync: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a plan file (with no file: the embedded default plan)
    Run {
        /// Plan file (JSON); with none, the embedded demo plan: its dry run,
        /// then the real run
        plan: Option<PathBuf>,
        /// Execute every batch and roll it back (kinds that require it)
        #[arg(long)]
        dry_run: bool,
        /// Run one worker's slice of an indexed job of this many workers
        /// (then `hxo merge` the workers' stores)
        #[arg(long, value_name = "N")]
        worker_count: Option<u32>,
        /// This worker's index [default: JOB_COMPLETION_INDEX,
        /// SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX]
        #[arg(long, value_name = "I", requires = "worker_count")]
        worker_index: Option<u32>,
    },
    /// Check or explain a plan without running it
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Build the guide's deploy plan from stage names and run it
    Deploy {
        /// Comma-separated stages: pack, migrate, prime, assets, docs
        #[arg(long, value_delimiter = ',', required = true)]
        stages: Vec<String>,
        /// Project root holding src/, assets/ and docs/
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// SQLite database to migrate (relative to --root)
        #[arg(long)]
        database: Option<PathBuf>,
        /// Execute every batch and roll it back (kinds that require it)
        #[arg(long)]
        dry_run: bool,
    },
    /// Resume submitted or interrupted plans (all of them, or one)
    Resume {
        /// Plan id, or a unique prefix of it (at least 4 characters); with
        /// none, every plan that is submitted or interrupted (not created)
        plan_id: Option<String>,
    },
    /// List the plans in the store
    Plans,
    /// Live status of a plan
    Status {
        #[arg(help = PLAN_ID_HELP)]
        plan_id: String,
    },
    /// Full report of a plan: status fields, metrics, failures
    Report {
        #[arg(help = PLAN_ID_HELP)]
        plan_id: String,
    },
    /// Re-run failed shards and everything downstream of them
    Replay {
        #[arg(help = PLAN_ID_HELP)]
        plan_id: String,
    },
    /// Abort a plan that has not ended: pending shards fail (aborted), done shards stay
    Abort {
        #[arg(help = PLAN_ID_HELP)]
        plan_id: String,
    },
    /// Recompute the root from the log and check inclusion proofs (exit 5 on mismatch)
    Verify {
        #[arg(help = PLAN_ID_HELP)]
        plan_id: String,
    },
    /// Inclusion proof of one shard, as RFC 6962 JSON
    Proof {
        #[arg(help = PLAN_ID_HELP)]
        plan_id: String,
        /// The shard's cas_id: 64 hex digits, or a prefix of at least 8 that
        /// names one done shard of the plan
        cas_id: String,
    },
    /// One JSON line per shard, in leaf order
    Export {
        #[arg(help = PLAN_ID_HELP)]
        plan_id: String,
    },
    /// Durable plan-level and audit events
    Events {
        /// Only these topics: a comma-separated list (`hxo.plan,hxo.audit`),
        /// or the flag given more than once
        #[arg(long, value_delimiter = ',', value_name = "TOPIC,...")]
        topic: Vec<String>,
        /// Only the events of this plan (id or unique prefix)
        #[arg(long = "plan", value_name = "PLAN_ID")]
        plan_id: Option<String>,
    },
    /// Serve the REST API, event stream, metrics and dashboard
    Serve {
        /// Address to bind (loopback by default; put a TLS proxy in front
        /// before exposing it)
        #[arg(long, default_value = "127.0.0.1:8000")]
        bind: String,
        /// Directory that relative config paths of plans posted over HTTP
        /// resolve against (partition paths may not escape it; `exec`
        /// commands run as the server's user: the admiral token is a shell)
        #[arg(long, default_value = ".", value_name = "DIR")]
        root: PathBuf,
    },
    /// Union the stores of an indexed job's workers into this store as one
    /// plan, and aggregate and certify it
    Merge {
        /// The workers' checkpoint stores (their HXO_DB_PATH)
        #[arg(required = true)]
        workers: Vec<PathBuf>,
    },
    /// Compact the checkpoint log: keep the latest outcome per shard
    Gc,
    /// Show effective settings and where each came from
    Config,
    /// Print shell completions
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff: `hxo man | man -l -`)
    Man,
}

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Validate a plan: exit 0 if valid, 2 with the JSON path if not
    Validate {
        #[arg(help = PLAN_FILE_HELP)]
        plan: PathBuf,
    },
    /// Show stages, shard counts, joins and sample cas_ids without running
    Explain {
        #[arg(help = PLAN_FILE_HELP)]
        plan: PathBuf,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8, CliError> {
    commands::dispatch(cli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every positional argument of `command` and its subcommands, as
    /// `(command path, argument id, has help)`.
    fn positionals(command: &clap::Command, path: &str, out: &mut Vec<(String, String, bool)>) {
        for arg in command.get_positionals() {
            let help = arg
                .get_help()
                .is_some_and(|h| !h.to_string().trim().is_empty());
            out.push((path.to_string(), arg.get_id().to_string(), help));
        }
        for sub in command.get_subcommands() {
            positionals(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_positional_argument_has_help() {
        let mut found = Vec::new();
        positionals(&Cli::command(), "hxo", &mut found);
        // The walk reaches nested subcommands and the arguments named in
        // the task that asked for this test.
        for (path, id) in [
            ("hxo run", "plan"),
            ("hxo plan validate", "plan"),
            ("hxo proof", "cas_id"),
            ("hxo merge", "workers"),
            ("hxo completions", "shell"),
        ] {
            assert!(
                found.iter().any(|(p, i, _)| p == path && i == id),
                "{path} {id} not found in {found:?}"
            );
        }
        let missing: Vec<_> = found.iter().filter(|(_, _, help)| !help).collect();
        assert!(
            missing.is_empty(),
            "positional arguments without help: {missing:?}"
        );
    }

    #[test]
    fn id_help_states_the_prefix_lengths_the_engine_takes() {
        let command = Cli::command();
        let help = |sub: &str, arg: &str| {
            command
                .find_subcommand(sub)
                .and_then(|s| s.get_arguments().find(|a| a.get_id() == arg))
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        let cas = help("proof", "cas_id");
        let cas_min = crate::engine::certify::CAS_ID_PREFIX_LEN_MIN.to_string();
        assert!(cas.contains(&format!("at least {cas_min}")), "{cas}");
        let plan = help("status", "plan_id");
        let plan_min = crate::ids::PLAN_ID_PREFIX_LEN_MIN.to_string();
        assert!(plan.contains(&format!("at least {plan_min}")), "{plan}");
    }

    #[test]
    fn json_errors_join_causes_and_carry_plan_paths() {
        let internal = CliError::Internal(anyhow::anyhow!("disk full").context("writing a record"));
        assert_eq!(
            serde_json::Value::Object(internal.to_json()),
            serde_json::json!({"error": "writing a record: disk full"})
        );
        let plan = CliError::from(crate::plan::PlanSpec::from_json("{}").unwrap_err());
        let object = plan.to_json();
        assert_eq!(object["path"], plan.path().unwrap().as_str());
        assert!(object["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid plan: "));
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
