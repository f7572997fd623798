//! One function per subcommand. Each resolves settings, opens the store
//! (read-only for the commands that only look), calls the engine and
//! prints either the human form or `--json`.

use super::progress::Bar;
use super::{exit, Cli, CliError, Command, GlobalArgs, PlanCommand};
use crate::engine::lifecycle::AbortOutcome;
use crate::engine::{self, Compiled, Engine, Request, RunEnd, RunSummary, RunTicket};
use crate::hash::to_hex;
use crate::http::{Service, ServiceConfig};
use crate::ids::plan_id_text;
use crate::plan::{PlanSpec, StageSpec};
use crate::report::Report;
use crate::settings::{Overrides, Settings};
use crate::signals;
use anyhow::Context;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long `hxo abort` waits for a plan it stops to end.
const ABORT_WAIT: Duration = Duration::from_secs(10);

fn settings(global: &GlobalArgs) -> Result<Settings, CliError> {
    Ok(Settings::from_env(Overrides {
        db_path: global.db.clone(),
        artifacts_dir: global.artifacts.clone(),
        threads: global.threads.clone(),
        max_concurrency: global.max_concurrency.clone(),
        shard_timeout_ms: global.shard_timeout_ms.clone(),
        max_attempts: global.max_attempts.clone(),
        no_sync: global.no_sync,
    })?)
}

/// Prints to stdout; a closed pipe (`hxo export | head`) is not an error.
fn emit(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Internal(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
    }
}

fn emit_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).context("serialising output")?;
    emit(&format!("{text}\n"))
}

fn read_plan(path: &Path) -> Result<(PlanSpec, PathBuf), CliError> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| CliError::Usage(format!("plan file {}: {e}", path.display())))?;
    if metadata.len() > crate::limits::PLAN_BYTES_MAX {
        return Err(CliError::Usage(format!(
            "plan file {}: {} bytes is over the limit of {} bytes",
            path.display(),
            metadata.len(),
            crate::limits::PLAN_BYTES_MAX
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("plan file {}: {e}", path.display())))?;
    let spec = PlanSpec::from_json(&text)?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((spec, base_dir))
}

fn open_engine(global: &GlobalArgs) -> Result<Arc<Engine>, CliError> {
    Ok(Engine::open(settings(global)?, global.salvage)?)
}

/// For commands that only read: no lock, so they work beside a running
/// `hxo run`.
fn open_read_only(global: &GlobalArgs) -> Result<Arc<Engine>, CliError> {
    let settings = settings(global)?;
    if !settings.db_path.exists() {
        return Err(CliError::Usage(format!(
            "no checkpoint store at {} (set HXO_DB_PATH or --db)",
            settings.db_path.display()
        )));
    }
    Ok(Engine::open_read_only(settings, global.salvage)?)
}

pub fn dispatch(cli: Cli) -> Result<u8, CliError> {
    let global = &cli.global;
    match cli.command {
        Command::Run {
            plan: Some(path),
            dry_run,
            worker_count,
            worker_index,
        } => {
            let (spec, base_dir) = read_plan(&path)?;
            let worker =
                worker_slice(worker_count, worker_index, &|name| std::env::var(name).ok())?;
            let summary = run_plan(global, spec, &base_dir, dry_run, worker)?;
            finish(global, &summary)
        }
        Command::Run {
            plan: None,
            worker_count: Some(_),
            ..
        } => Err(CliError::Usage("--worker-count needs a plan file".into())),
        Command::Run {
            plan: None,
            dry_run,
            ..
        } => run_demo(global, dry_run),
        Command::Merge { workers } => merge(global, &workers),
        Command::Plan(PlanCommand::Validate { plan }) => validate(global, &plan),
        Command::Plan(PlanCommand::Explain { plan }) => explain(global, &plan),
        Command::Deploy {
            stages,
            root,
            database,
            dry_run,
        } => {
            let spec = deploy_plan(&stages, database.as_deref())?;
            let summary = run_plan(global, spec, &root, dry_run, None)?;
            finish(global, &summary)
        }
        Command::Resume { plan_id } => resume(global, plan_id.as_deref()),
        Command::Plans => plans(global),
        Command::Status { plan_id } => status(global, &plan_id, false),
        Command::Report { plan_id } => status(global, &plan_id, true),
        Command::Replay { plan_id } => replay(global, &plan_id),
        Command::Abort { plan_id } => abort(global, &plan_id),
        Command::Verify { plan_id } => verify(global, &plan_id),
        Command::Proof { plan_id, cas_id } => {
            let engine = open_read_only(global)?;
            let id = engine.find(&plan_id)?;
            let proof = engine.proof(&id, &cas_id)?;
            emit_json(&proof)?;
            Ok(exit::SUCCESS)
        }
        Command::Export { plan_id } => {
            let engine = open_read_only(global)?;
            let id = engine.find(&plan_id)?;
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            engine.export(&id, &mut stdout)?;
            let _ = stdout.flush();
            Ok(exit::SUCCESS)
        }
        Command::Events { topic, plan_id } => events(global, &topic, plan_id.as_deref()),
        Command::Serve { bind, root } => serve(global, bind, root),
        Command::Gc => gc(global),
        Command::Config => config(global),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut buffer = Vec::new();
            clap_complete::generate(shell, &mut command, "hxo", &mut buffer);
            emit(&String::from_utf8_lossy(&buffer))?;
            Ok(exit::SUCCESS)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut buffer = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut buffer)
                .context("rendering the man page")?;
            emit(&String::from_utf8_lossy(&buffer))?;
            Ok(exit::SUCCESS)
        }
    }
}

fn exit_code(end: &RunEnd) -> u8 {
    match end {
        RunEnd::Succeeded => exit::SUCCESS,
        RunEnd::Failed => exit::FAILED_SHARDS,
        RunEnd::Aborted => exit::ABORTED,
        RunEnd::Interrupted => exit::INTERRUPTED,
    }
}

/// Prints a run's report and gives its exit code.
fn finish(global: &GlobalArgs, summary: &RunSummary) -> Result<u8, CliError> {
    if global.json {
        emit_json(&summary.report)?;
    } else {
        emit(&summary.report.render())?;
    }
    Ok(exit_code(&summary.end))
}

/// Runs a plan's ticket in this thread with a progress bar; SIGINT or
/// SIGTERM stops it as interrupted.
fn execute(engine: &Arc<Engine>, ticket: RunTicket) -> Result<RunSummary, CliError> {
    let plan_id = *ticket.plan_id();
    let stopper = engine.clone();
    let _watch = signals::on_signal(move || stopper.interrupt_all())
        .context("starting the signal watcher")?;
    let bar = Bar::for_terminal(ticket.compiled().dag.shard_count() as u64);
    let progress = bar.as_ref().map(|b| b as &dyn engine::Progress);
    let summary = engine.run(ticket, progress)?;
    if summary.end == RunEnd::Interrupted {
        crate::note!(
            "hxo: interrupted; resume with `hxo resume {}`",
            plan_id_text(&plan_id)
        );
    }
    Ok(summary)
}

/// The worker slice from `--worker-count` and `--worker-index`, the index
/// defaulting to what the job engine hands its workers.
fn worker_slice(
    count: Option<u32>,
    index: Option<u32>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::plan::WorkerSlice>, CliError> {
    let Some(count) = count else {
        return Ok(None);
    };
    if count == 0 {
        return Err(CliError::Usage("--worker-count must be at least 1".into()));
    }
    let index = match index {
        Some(index) => index,
        None => {
            let found = [
                "JOB_COMPLETION_INDEX",
                "SLURM_ARRAY_TASK_ID",
                "AWS_BATCH_JOB_ARRAY_INDEX",
            ]
            .iter()
            .find_map(|name| env(name).map(|value| (*name, value)));
            let Some((name, value)) = found else {
                return Err(CliError::Usage(
                    "--worker-count: no --worker-index, and none of JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID or AWS_BATCH_JOB_ARRAY_INDEX is set".into(),
                ));
            };
            value.trim().parse().map_err(|_| {
                CliError::Usage(format!("{name}={value:?}: expected a whole number"))
            })?
        }
    };
    if index >= count {
        return Err(CliError::Usage(format!(
            "worker index {index} is not below the worker count {count}"
        )));
    }
    Ok(Some(crate::plan::WorkerSlice { index, count }))
}

fn run_plan(
    global: &GlobalArgs,
    spec: PlanSpec,
    base_dir: &Path,
    dry_run: bool,
    worker: Option<crate::plan::WorkerSlice>,
) -> Result<RunSummary, CliError> {
    let engine = open_engine(global)?;
    let mut compiled = engine.compile(spec, base_dir)?;
    if worker.is_some_and(|w| w.count > 1) {
        engine::check_sliceable(&compiled)?;
    }
    compiled.worker = worker;
    // Kept past the run, see below.
    let dag = compiled.dag.clone();
    let summary = engine
        .start_new(compiled, &whoami(), dry_run)
        .map_err(CliError::from)
        .and_then(|ticket| {
            tracing::info!(plan_id = %plan_id_text(ticket.plan_id()), shards = dag.shard_count(), "plan accepted");
            execute(&engine, ticket)
        });
    engine.close()?;
    // The process ends next, and the store is closed (synced, unlocked):
    // freeing a large plan's DAG and index one allocation at a time would
    // take a while for memory the OS takes back at once.
    std::mem::forget(dag);
    std::mem::forget(engine);
    summary
}

/// `hxo run` with no plan file: the guide's `deploy_full_stack` against the
/// embedded fixture project, written into the state directory. The
/// migration kind requires a dry run, so one comes first (unless the user
/// asked for the dry run alone). Under `--json` both reports are one
/// document, `{"dry_run": REPORT, "run": REPORT or null}`; the human form
/// prints each report as its run ends.
fn run_demo(global: &GlobalArgs, dry_run_only: bool) -> Result<u8, CliError> {
    let settings = settings(global)?;
    let dir = settings.state_dir().join("demo");
    if crate::demo::prepare(&dir).context("preparing the demo project")? {
        crate::note!(
            "hxo: wrote the demo project and a database of {} accounts to {}",
            crate::demo::DEMO_ROWS,
            dir.display()
        );
    }
    let spec = PlanSpec::from_json(crate::demo::DEPLOY_PLAN)?;
    crate::note!("hxo: dry run of deploy_full_stack in {}", dir.display());
    let dry_run = run_plan(global, spec.clone(), &dir, true, None)?;
    if !global.json {
        emit(&dry_run.report.render())?;
    }
    let run = if dry_run.end == RunEnd::Succeeded && !dry_run_only {
        crate::note!("hxo: dry run passed; running deploy_full_stack for real");
        let run = run_plan(global, spec, &dir, false, None)?;
        if !global.json {
            emit(&run.report.render())?;
        }
        Some(run)
    } else {
        None
    };
    if global.json {
        emit_json(&DemoReports {
            dry_run: &dry_run.report,
            run: run.as_ref().map(|run| &run.report),
        })?;
    }
    Ok(exit_code(&run.as_ref().unwrap_or(&dry_run).end))
}

/// `hxo run --json` with no plan file.
#[derive(serde::Serialize)]
struct DemoReports<'a> {
    dry_run: &'a Report,
    /// None when only the dry run ran (asked for, or it did not pass).
    run: Option<&'a Report>,
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".to_string())
}

/// Compiles a plan file without a store (`plan validate`, `plan explain`).
fn compile_file(global: &GlobalArgs, path: &Path) -> Result<Compiled, CliError> {
    compile_with(&settings(global)?, path)
}

fn compile_with(settings: &Settings, path: &Path) -> Result<Compiled, CliError> {
    let (spec, base_dir) = read_plan(path)?;
    let defaults = crate::plan::PlanDefaults {
        default_slo_ms: settings.default_slo_ms,
        max_shards: settings.max_shards,
    };
    Ok(engine::compile(spec, &base_dir, defaults)?)
}

/// `plan validate`. Under `--json` an invalid (or unreadable) plan file is
/// an answer, not a failure of the command: `{"valid": false, "error",
/// "path"}` on stdout, the human message on stderr, and the error's exit
/// code (2). Bad settings are still an error object.
fn validate(global: &GlobalArgs, path: &Path) -> Result<u8, CliError> {
    let settings = settings(global)?;
    let compiled = match compile_with(&settings, path) {
        Ok(compiled) => compiled,
        Err(error) if global.json => {
            crate::note!("hxo: error: {}", error.message());
            let mut object = serde_json::Map::new();
            object.insert("valid".into(), false.into());
            object.extend(error.to_json());
            emit_json(&object)?;
            return Ok(error.exit_code());
        }
        Err(error) => return Err(error),
    };
    if global.json {
        emit_json(&json!({"valid": true, "name": compiled.plan.name,
                          "total_shards": compiled.dag.shard_count()}))?;
    } else {
        emit(&format!(
            "plan {} is valid: {} stages, {} shards\n",
            compiled.plan.name,
            compiled.plan.stages.len(),
            compiled.dag.shard_count()
        ))?;
    }
    Ok(exit::SUCCESS)
}

/// The DAG summary `plan explain` prints (also what fixtures snapshot).
pub fn explain_json(compiled: &Compiled) -> serde_json::Value {
    let stages: Vec<_> = compiled
        .plan
        .stages
        .iter()
        .zip(&compiled.dag.stages)
        .map(|(stage, dag_stage)| {
            let samples: Vec<String> = dag_stage
                .leaves()
                .take(3)
                .map(|leaf| to_hex(compiled.dag.cas_id(crate::dag::LeafIndex(leaf))))
                .collect();
            json!({
                "id": stage.id,
                "kind": stage.blueprint.kind,
                "partitioner": stage.partitioner.name(),
                "executor": stage.executor.name(),
                "scheduler": stage.scheduler.name(),
                "slo_ms": stage.slo_ms,
                "shards": dag_stage.shard_count,
                "first_leaf": dag_stage.first_leaf,
                "collapsed_duplicates": dag_stage.collapsed_count,
                "chained": dag_stage.chained,
                "upstream": dag_stage.upstream.iter().map(|(up, join)| json!({
                    "stage": compiled.plan.stages[*up].id, "join": join.name()
                })).collect::<Vec<_>>(),
                "sample_cas_ids": samples,
            })
        })
        .collect();
    json!({
        "name": compiled.plan.name,
        "total_shards": compiled.dag.shard_count(),
        "shard_edges": compiled.dag.edge_count(),
        "max_shards": compiled.plan.shards_max,
        "timebox_ms": compiled.plan.timebox_ms,
        "dag_digest": to_hex(&compiled.dag.dag_digest),
        "stages": stages,
    })
}

fn explain(global: &GlobalArgs, path: &Path) -> Result<u8, CliError> {
    let compiled = compile_file(global, path)?;
    let summary = explain_json(&compiled);
    if global.json {
        emit_json(&summary)?;
        return Ok(exit::SUCCESS);
    }
    let mut text = format!(
        "plan {}: {} shards, {} shard-level edges, DAG digest {}\n",
        compiled.plan.name,
        compiled.dag.shard_count(),
        compiled.dag.edge_count(),
        &summary["dag_digest"].as_str().unwrap_or("")[..16]
    );
    for stage in summary["stages"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "  {} ({}, {} -> {}, {}): {} shards",
            stage["id"].as_str().unwrap_or(""),
            stage["kind"].as_str().unwrap_or(""),
            stage["partitioner"].as_str().unwrap_or(""),
            stage["executor"].as_str().unwrap_or(""),
            stage["scheduler"].as_str().unwrap_or(""),
            stage["shards"]
        ));
        for up in stage["upstream"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                ", after {} ({})",
                up["stage"].as_str().unwrap_or(""),
                up["join"].as_str().unwrap_or("")
            ));
        }
        text.push('\n');
        for cas in stage["sample_cas_ids"].as_array().into_iter().flatten() {
            text.push_str(&format!("      {}\n", cas.as_str().unwrap_or("")));
        }
    }
    emit(&text)?;
    Ok(exit::SUCCESS)
}

/// The guide's Method 2: `hxo deploy --stages pack,migrate,prime`.
pub fn deploy_plan(stages: &[String], database: Option<&Path>) -> Result<PlanSpec, CliError> {
    let mut specs = Vec::new();
    for name in stages {
        let (id, kind) = match name.trim() {
            "pack" => ("pack_backend", "deploy.pack"),
            "migrate" => ("db_migrate", "deploy.migrate"),
            "prime" => ("prime_registry", "deploy.prime"),
            "assets" => ("index_assets", "assets.index"),
            "docs" => ("index_docs", "docs.index"),
            other => {
                return Err(CliError::Usage(format!(
                "--stages: unknown stage {other:?} (expected pack, migrate, prime, assets or docs)"
            )))
            }
        };
        if specs.iter().any(|s: &StageSpec| s.id == id) {
            return Err(CliError::Usage(format!("--stages: {name} is listed twice")));
        }
        let config = match (kind, database) {
            ("deploy.migrate", Some(db)) => {
                let mut map = serde_json::Map::new();
                map.insert("database".into(), db.display().to_string().into());
                Some(map)
            }
            _ => None,
        };
        specs.push(StageSpec {
            id: id.to_string(),
            kind: kind.to_string(),
            slo_ms: None,
            partitioner: None,
            executor: None,
            scheduler: None,
            dependencies: None,
            config,
        });
    }
    Ok(PlanSpec {
        name: "deploy_full_stack".into(),
        stages: specs,
        constraints: None,
    })
}

fn resume(global: &GlobalArgs, plan_id: Option<&str>) -> Result<u8, CliError> {
    let engine = open_engine(global)?;
    let result = resume_plans(global, &engine, plan_id);
    engine.close()?;
    result
}

/// Resumes one plan, or every resumable one (like the server's
/// rehydration: created plans that were never submitted are not started).
/// The human form prints each report as its run ends; `--json` prints one
/// document once all have run, `{"resumed": [REPORT, ...]}` (empty when
/// nothing was incomplete).
fn resume_plans(
    global: &GlobalArgs,
    engine: &Arc<Engine>,
    plan_id: Option<&str>,
) -> Result<u8, CliError> {
    let targets = match plan_id {
        Some(text) => vec![engine.find(text)?],
        None => engine.resumable_plans(),
    };
    if targets.is_empty() {
        crate::note!("hxo: no incomplete plans");
    }
    let mut worst = exit::SUCCESS;
    let mut reports = Vec::new();
    for plan_id in targets {
        let ticket = engine.resume(&plan_id)?;
        crate::note!("hxo: resuming plan {}", plan_id_text(&plan_id));
        let summary = execute(engine, ticket)?;
        if !global.json {
            emit(&summary.report.render())?;
        }
        worst = worst.max(exit_code(&summary.end));
        let interrupted = summary.end == RunEnd::Interrupted;
        reports.push(summary.report);
        if interrupted {
            break;
        }
    }
    if global.json {
        emit_json(&json!({ "resumed": reports }))?;
    }
    Ok(worst)
}

fn replay(global: &GlobalArgs, text: &str) -> Result<u8, CliError> {
    let engine = match open_engine(global) {
        Ok(engine) => engine,
        Err(CliError::Engine(error)) if error.is_locked() => {
            return ask_owner(global, Request::Replay, text, error)
        }
        Err(error) => return Err(error),
    };
    let outcome = (|| -> Result<RunSummary, CliError> {
        let plan_id = engine.find(text)?;
        let (ticket, count) = engine.replay(&plan_id, &whoami())?;
        crate::note!(
            "hxo: replaying {count} shards of plan {}",
            plan_id_text(&plan_id)
        );
        execute(&engine, ticket)
    })();
    engine.close()?;
    finish(global, &outcome?)
}

fn abort(global: &GlobalArgs, text: &str) -> Result<u8, CliError> {
    let engine = match open_engine(global) {
        Ok(engine) => engine,
        Err(CliError::Engine(error)) if error.is_locked() => {
            return ask_owner(global, Request::Abort, text, error)
        }
        Err(error) => return Err(error),
    };
    let result = engine
        .find(text)
        .and_then(|plan_id| Ok((plan_id, engine.abort(&plan_id, &whoami(), ABORT_WAIT)?)));
    engine.close()?;
    let (plan_id, outcome) = result?;
    let status = match outcome {
        AbortOutcome::Aborted => "aborted",
        AbortOutcome::Stopping => "aborting",
    };
    if global.json {
        emit_json(&json!({"plan_id": plan_id_text(&plan_id), "status": status}))?;
    } else {
        emit(&format!("plan {} {status}\n", plan_id_text(&plan_id)))?;
    }
    Ok(exit::SUCCESS)
}

/// Hands a verb to the live process that owns the store, and reports its
/// answer; with no live owner, the store's lock error stands.
fn ask_owner(
    global: &GlobalArgs,
    request: Request,
    text: &str,
    locked: engine::EngineError,
) -> Result<u8, CliError> {
    let settings = settings(global)?;
    let Some(answer) = engine::ask_owner(&settings, request, text, &whoami())? else {
        return Err(locked.into());
    };
    if !answer.applied {
        return Err(CliError::Usage(format!(
            "the store's owner (pid {}): {}",
            answer.owner_pid, answer.message
        )));
    }
    if global.json {
        emit_json(&json!({"plan": text, "status": answer.message, "owner_pid": answer.owner_pid}))?;
    } else {
        emit(&format!(
            "plan {text}: {} by the store's owner (pid {})\n",
            answer.message, answer.owner_pid
        ))?;
    }
    Ok(exit::SUCCESS)
}

fn verify(global: &GlobalArgs, text: &str) -> Result<u8, CliError> {
    let engine = open_read_only(global)?;
    let plan_id = engine.find(text)?;
    let verification = engine.verify(&plan_id)?;
    if global.json {
        emit_json(&verification)?;
    } else {
        emit(&format!(
            "recorded root   {}\nrecomputed root {}\ntree size {}, {}/{} inclusion proofs verified\n{}\n",
            verification.recorded_root,
            verification.recomputed_root,
            verification.tree_size,
            verification.proofs_verified,
            verification.proofs_checked,
            if verification.ok { "verified" } else { "VERIFICATION FAILED" }
        ))?;
    }
    if verification.ok {
        return Ok(exit::SUCCESS);
    }
    let error = CliError::Verify(format!(
        "plan {}: {}",
        plan_id_text(&plan_id),
        verification.detail
    ));
    if global.json {
        // The verification object is this command's one JSON document and
        // says what failed (`ok`, `detail`); the error goes to stderr only.
        crate::note!("hxo: error: {error}");
        return Ok(error.exit_code());
    }
    Err(error)
}

/// `hxo plans`; `--json` prints what `GET /api/hxo/plans` answers.
fn plans(global: &GlobalArgs) -> Result<u8, CliError> {
    let engine = open_read_only(global)?;
    let rows = engine.plans();
    if global.json {
        emit_json(&json!({ "plans": rows }))?;
    } else {
        let mut text = String::new();
        for row in &rows {
            let r = &row.status;
            text.push_str(&format!(
                "{}  {:<14} {:>9}/{:<9} {}  {}\n",
                r.plan_id, r.status, r.done_shards, r.total_shards, row.started_at, r.plan_name
            ));
        }
        if rows.is_empty() {
            text.push_str("no plans\n");
        }
        emit(&text)?;
    }
    Ok(exit::SUCCESS)
}

fn status(global: &GlobalArgs, text: &str, full: bool) -> Result<u8, CliError> {
    let engine = open_read_only(global)?;
    let plan_id = engine.find(text)?;
    if global.json && !full {
        // The guide's status fields, without the report's pass over shards.
        emit_json(&engine.status(&plan_id)?)?;
        return Ok(exit::SUCCESS);
    }
    let report = engine.report(&plan_id)?;
    if global.json {
        emit_json(&report)?;
    } else {
        emit(&report.render())?;
    }
    Ok(exit::SUCCESS)
}

/// `hxo events`; `--json` prints what `GET /api/genesis/events` answers,
/// `{"events": [...], "last_seq": N}`, `last_seq` being the highest
/// sequence number in the store (where `since` would continue from).
fn events(global: &GlobalArgs, names: &[String], plan: Option<&str>) -> Result<u8, CliError> {
    let topics = topics(names)?;
    let engine = open_read_only(global)?;
    let plan_text = match plan {
        Some(text) => Some(plan_id_text(&engine.find(text)?)),
        None => None,
    };
    let shown: Vec<_> = engine
        .durable_events()
        .into_iter()
        .filter(|event| topics.is_empty() || topics.contains(&event.topic))
        .filter(|event| plan_text.as_deref().is_none_or(|p| event.is_for_plan(p)))
        .collect();
    if global.json {
        let events: Vec<_> = shown.iter().map(|event| event.to_json()).collect();
        emit_json(&json!({"events": events, "last_seq": engine.bus.last_seq()}))?;
        return Ok(exit::SUCCESS);
    }
    let mut out = String::new();
    for event in &shown {
        out.push_str(&format!(
            "{:>6} {} {:<24} {}\n",
            event.seq,
            crate::report::rfc3339(event.at_ms),
            event.topic,
            event.data_json()
        ));
    }
    emit(&out)?;
    Ok(exit::SUCCESS)
}

/// The topics `--topic` names, each checked, as the events route's `topic`
/// parameter takes them (blanks between commas ignored; none: all topics).
fn topics(names: &[String]) -> Result<Vec<&'static str>, CliError> {
    let mut topics = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let topic = crate::events::topic(name).ok_or_else(|| {
            CliError::Usage(format!(
                "--topic: unknown topic {name:?} (expected one of {})",
                crate::events::TOPICS.join(", ")
            ))
        })?;
        topics.push(topic);
    }
    Ok(topics)
}

fn merge(global: &GlobalArgs, workers: &[PathBuf]) -> Result<u8, CliError> {
    let engine = open_engine(global)?;
    let result = engine.merge(workers, &whoami());
    let report = result.and_then(|plan_id| engine.report(&plan_id));
    engine.close()?;
    let report = report?;
    if global.json {
        emit_json(&report)?;
    } else {
        emit(&report.render())?;
    }
    Ok(if report.truth_certified {
        exit::SUCCESS
    } else {
        exit::VERIFY_FAILED
    })
}

fn gc(global: &GlobalArgs) -> Result<u8, CliError> {
    let settings = settings(global)?;
    let report = engine::compact_store(&settings)?;
    if global.json {
        emit_json(
            &json!({"records_before": report.records_before, "records_after": report.records_after}),
        )?;
    } else {
        emit(&format!(
            "compacted {}: {} records -> {}\n",
            settings.db_path.display(),
            report.records_before,
            report.records_after
        ))?;
    }
    Ok(exit::SUCCESS)
}

/// `hxo serve`: serves until SIGINT or SIGTERM, then stops running plans
/// as interrupted (the next start rehydrates them), closes the store and
/// exits 130 if a plan was interrupted, else 0.
fn serve(global: &GlobalArgs, bind: String, root: PathBuf) -> Result<u8, CliError> {
    let config = ServiceConfig { bind, root };
    Service::check(&settings(global)?, &config)?;
    let engine = open_engine(global)?;
    signals::install();
    let service = match Service::start(engine.clone(), config) {
        Ok(service) => service,
        Err(error) => {
            engine.close()?;
            return Err(error.into());
        }
    };
    if let Some(path) = service.token_file() {
        tracing::warn!(path = %path.display(), "no HXO_ADMIRAL_TOKEN or HXO_CAPTAIN_TOKEN: using the generated admiral token");
        crate::note!(
            "hxo: no HXO_ADMIRAL_TOKEN or HXO_CAPTAIN_TOKEN set: the admiral token is in {} (mode 0600); send it as Authorization: Bearer TOKEN",
            path.display()
        );
    }
    if !engine.settings.enabled {
        crate::note!(
            "hxo: HXO_ENABLED=false: /api/hxo routes answer 503 and no plan is rehydrated"
        );
    } else if service.rehydrating() > 0 {
        crate::note!("hxo: rehydrating {} plan(s)", service.rehydrating());
    }
    crate::note!(
        "hxo: serving on http://{}/ (dashboard at /, API under /api/hxo/)",
        service.local_addr()
    );
    let end = service.wait(&|| {
        let stop = signals::signalled();
        if stop {
            crate::note!("hxo: shutting down: stopping running plans (resumable)");
        }
        stop
    });
    engine.close()?;
    Ok(if end.interrupted_runs > 0 {
        exit::INTERRUPTED
    } else {
        exit::SUCCESS
    })
}

fn config(global: &GlobalArgs) -> Result<u8, CliError> {
    let settings = settings(global)?;
    if global.json {
        let map: serde_json::Map<String, serde_json::Value> = settings
            .sources
            .iter()
            .map(|(name, value, source)| {
                (
                    name.to_string(),
                    json!({"value": value, "source": source.as_str()}),
                )
            })
            .collect();
        emit_json(&map)?;
    } else {
        let mut text = String::new();
        for (name, value, source) in &settings.sources {
            text.push_str(&format!("{name:<24} {value:<24} ({})\n", source.as_str()));
        }
        emit(&text)?;
    }
    Ok(exit::SUCCESS)
}
