//! Compiling a plan: validation into a `Plan`, partitioning (which reads
//! the inputs), the DAG of content-addressed shards and the executors;
//! recompiling an accepted plan from its manifest; the manifest itself;
//! and whether a plan can be sliced across indexed workers.
//!
//! Errors stay typed: a partitioner's or an executor's error is kept whole
//! in [`CompileError`], prefixed with the JSON path of the stage's config,
//! and its causes (an `io::Error`, a SQLite error) stay reachable through
//! `source()`.

use super::{Engine, EngineError};
use crate::dag::{self, Dag};
use crate::exec::{self, ConfigError, Executor};
use crate::hash::to_hex;
use crate::ids::{plan_id_text, PlanId};
use crate::partition::{self, PartitionError};
use crate::plan::{
    Manifest, ManifestStage, Plan, PlanDefaults, PlanError, PlanSpec, WorkerSlice, MANIFEST_FORMAT,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A plan ready to run: validated, partitioned, compiled, with executors.
pub struct Compiled {
    pub plan: Plan,
    pub dag: Arc<Dag>,
    pub executors: Vec<Arc<dyn Executor>>,
    pub base_dir: PathBuf,
    /// Run only this worker's slice; `None`: all of it.
    pub worker: Option<WorkerSlice>,
}

/// Why a plan does not compile. Every variant names a JSON path
/// ([`CompileError::path`]); all are the caller's to fix (exit 2, HTTP 400).
#[derive(Debug)]
pub enum CompileError {
    /// The plan itself: its JSON, its fields, its DAG.
    Plan(PlanError),
    /// A stage's partitioner refused its config or could not read its input.
    Partition {
        stage_index: usize,
        error: PartitionError,
    },
    /// A stage's executor refused its config.
    Executor {
        stage_index: usize,
        error: ConfigError,
    },
}

impl CompileError {
    /// The JSON path of the value at fault (`stages[2].config.root`).
    pub fn path(&self) -> String {
        match self {
            CompileError::Plan(error) => error.path.clone(),
            CompileError::Partition { stage_index, error } => {
                format!("stages[{stage_index}].config.{}", error.key())
            }
            CompileError::Executor { stage_index, error } => {
                format!("stages[{stage_index}].config.{}", error.key())
            }
        }
    }

    /// What is wrong, without the path, causes included (for a one-line
    /// answer such as an HTTP error body).
    pub fn message(&self) -> String {
        let text = match self {
            CompileError::Plan(error) => return error.message.clone(),
            CompileError::Partition { error, .. } => error.to_string(),
            CompileError::Executor { error, .. } => error.to_string(),
        };
        let key = match self {
            CompileError::Partition { error, .. } => error.key().to_string(),
            CompileError::Executor { error, .. } => error.key().to_string(),
            CompileError::Plan(_) => unreachable!("returned above"),
        };
        let mut message = text
            .strip_prefix(&format!("config.{key}: "))
            .or_else(|| text.strip_prefix(&format!("{key}: ")))
            .map_or_else(|| text.clone(), str::to_string);
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    }
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompileError::Plan(error) => error.fmt(f),
            // The inner error's text starts with its key; the causes below
            // it are `source()`'s.
            CompileError::Partition { stage_index, error } => {
                write!(f, "stages[{stage_index}].config.{error}")
            }
            CompileError::Executor { stage_index, error } => {
                let text = error.to_string();
                let text = text.strip_prefix("config.").unwrap_or(&text);
                write!(f, "stages[{stage_index}].config.{text}")
            }
        }
    }
}

impl std::error::Error for CompileError {
    /// The inner error's own cause: its text is part of this one's.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CompileError::Plan(_) => None,
            CompileError::Partition { error, .. } => error.source(),
            CompileError::Executor { error, .. } => error.source(),
        }
    }
}

impl From<PlanError> for CompileError {
    fn from(error: PlanError) -> Self {
        CompileError::Plan(error)
    }
}

/// Validates, partitions and compiles a plan (no store needed).
pub fn compile(
    spec: PlanSpec,
    base_dir: &Path,
    defaults: PlanDefaults,
) -> Result<Compiled, CompileError> {
    let started = Instant::now();
    let plan = Plan::validate(spec, defaults)?;
    let base_dir = absolute(base_dir);
    let mut partitionings = Vec::with_capacity(plan.stages.len());
    for (stage_index, stage) in plan.stages.iter().enumerate() {
        let partitioning =
            partition::partition(stage.partitioner, &stage.config, &base_dir, plan.shards_max)
                .map_err(|error| CompileError::Partition { stage_index, error })?;
        partitionings.push(partitioning);
    }
    let mut executors = Vec::with_capacity(plan.stages.len());
    for (stage_index, stage) in plan.stages.iter().enumerate() {
        let executor = exec::build(stage, &base_dir)
            .map_err(|error| CompileError::Executor { stage_index, error })?;
        executors.push(executor);
    }
    let partitioned = Instant::now();
    let dag = dag::compile(&plan, partitionings).map_err(|e| too_many_shards(&plan, e))?;
    tracing::info!(
        shards = dag.shard_count(),
        partition_ms = (partitioned - started).as_millis() as u64,
        dag_ms = partitioned.elapsed().as_millis() as u64,
        "compiled"
    );
    Ok(Compiled {
        plan,
        dag: Arc::new(dag),
        executors,
        base_dir,
        worker: None,
    })
}

fn too_many_shards(plan: &Plan, error: dag::DagError) -> PlanError {
    let dag::DagError::TooManyShards {
        stage_index,
        count,
        max,
    } = error;
    let limited_by_plan = plan
        .spec
        .constraints
        .as_ref()
        .and_then(|c| c.max_shards)
        .is_some();
    PlanError {
        path: if limited_by_plan {
            "constraints.max_shards".to_string()
        } else {
            format!("stages[{stage_index}]")
        },
        message: format!(
            "{count} shards exceed max_shards {max} (constraints.max_shards or HXO_MAX_SHARDS)"
        ),
    }
}

pub(super) fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
    }
}

/// What the log keeps of a compiled plan, to recompile it later.
pub(super) fn manifest_of(compiled: &Compiled, submitted_by: &str, dry_run: bool) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        spec: compiled.plan.spec.clone(),
        base_dir: compiled.base_dir.display().to_string(),
        stages: compiled
            .plan
            .stages
            .iter()
            .zip(&compiled.dag.stages)
            .map(|(stage, dag_stage)| ManifestStage {
                id: stage.id.clone(),
                kind: stage.blueprint.kind.to_string(),
                executor: stage.executor.name().to_string(),
                first_leaf: dag_stage.first_leaf as u64,
                shard_count: dag_stage.shard_count as u64,
                slo_ms: stage.slo_ms,
            })
            .collect(),
        dag_digest: to_hex(&compiled.dag.dag_digest),
        submitted_by: submitted_by.to_string(),
        dry_run,
        worker: compiled.worker,
    }
}

/// Whether a plan can run sliced across workers: every worker must be
/// able to run its shards without another worker's, so no stage may wait
/// at a barrier for a whole upstream stage, or depth by depth.
pub fn check_sliceable(compiled: &Compiled) -> Result<(), PlanError> {
    let stages = compiled.plan.stages.iter().zip(&compiled.dag.stages);
    for (index, (stage, dag_stage)) in stages.enumerate() {
        if dag_stage.chained {
            return Err(PlanError {
                path: format!("stages[{index}].partitioner"),
                message: format!(
                    "stage {} runs depth after depth, which cannot be split across workers (run it with one worker)",
                    stage.id
                ),
            });
        }
        if let Some((up, _)) = dag_stage
            .upstream
            .iter()
            .find(|(_, join)| *join == dag::Join::Barrier)
        {
            return Err(PlanError {
                path: format!("stages[{index}].dependencies"),
                message: format!(
                    "stage {} waits for all of stage {}, which cannot be split across workers: run one array job per stage, chained by the job engine",
                    stage.id, compiled.plan.stages[*up].id
                ),
            });
        }
    }
    Ok(())
}

impl Engine {
    pub fn plan_defaults(&self) -> PlanDefaults {
        PlanDefaults {
            default_slo_ms: self.settings.default_slo_ms,
            max_shards: self.settings.max_shards,
        }
    }

    /// Validates, partitions and compiles a plan; runs nothing.
    pub fn compile(&self, spec: PlanSpec, base_dir: &Path) -> Result<Compiled, EngineError> {
        Ok(compile(spec, base_dir, self.plan_defaults())?)
    }

    /// Recompiles an accepted plan from its manifest and checks that its
    /// inputs still compile to the same DAG.
    pub fn recompile(&self, plan_id: &PlanId) -> Result<Compiled, EngineError> {
        let entry = self.entry(plan_id)?;
        let manifest = entry
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .manifest
            .clone();
        let mut compiled = compile(
            manifest.spec.clone(),
            Path::new(&manifest.base_dir),
            self.plan_defaults(),
        )?;
        if !compiled.dag.has_digest(&manifest.dag_digest) {
            return Err(EngineError::InputsChanged {
                plan_id: plan_id_text(plan_id),
                accepted: manifest.dag_digest,
                now: to_hex(&compiled.dag.dag_digest),
            });
        }
        compiled.worker = manifest.worker;
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PlanDefaults {
        PlanDefaults {
            default_slo_ms: 1000,
            max_shards: 100,
        }
    }

    fn spec(text: &str) -> PlanSpec {
        PlanSpec::from_json(text).unwrap()
    }

    #[test]
    fn a_partition_error_keeps_its_type_path_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("not_a_db"), b"not sqlite, not at all").unwrap();
        let plan = spec(
            r#"{"name": "p", "stages": [{"id": "a", "kind": "exec",
            "partitioner": "by_sql_batch", "config": {"database": "not_a_db",
            "table": "users", "command": "true"}}]}"#,
        );
        let Err(error) = compile(plan, dir.path(), defaults()) else {
            panic!("a broken database compiles");
        };
        assert!(
            matches!(
                error,
                CompileError::Partition {
                    stage_index: 0,
                    error: PartitionError::Sql { .. }
                }
            ),
            "{error:?}"
        );
        let key = error.path();
        assert!(key.starts_with("stages[0].config."), "{key}");
        assert!(
            error.to_string().starts_with(&format!("{key}: ")),
            "{error}"
        );
        let cause = std::error::Error::source(&error).expect("the sqlite error is kept");
        assert!(
            cause.downcast_ref::<rusqlite::Error>().is_some(),
            "{cause:?}"
        );
        assert!(
            error.message().contains(&cause.to_string()),
            "{}",
            error.message()
        );
    }

    #[test]
    fn an_executor_config_error_names_its_key() {
        let plan = spec(
            r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic",
            "config": {"shards": 2, "fail_rate": 2}}]}"#,
        );
        let Err(error) = compile(plan, Path::new("."), defaults()) else {
            panic!("a bad rate compiles");
        };
        assert!(
            matches!(error, CompileError::Executor { stage_index: 0, .. }),
            "{error:?}"
        );
        assert_eq!(error.path(), "stages[0].config.fail_rate");
        assert!(
            error
                .to_string()
                .starts_with("stages[0].config.fail_rate: "),
            "{error}"
        );
        assert!(
            !error.message().starts_with("config."),
            "{}",
            error.message()
        );
    }

    #[test]
    fn too_many_shards_names_the_limit_that_applies() {
        let plan = spec(
            r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic",
            "config": {"shards": 60}}, {"id": "b", "kind": "synthetic",
            "config": {"shards": 60}}]}"#,
        );
        let Err(CompileError::Plan(error)) = compile(plan, Path::new("."), defaults()) else {
            panic!("120 shards over a limit of 100 compile");
        };
        assert_eq!(error.path, "stages[1]");
    }

    #[test]
    fn a_barrier_is_not_sliceable() {
        let plan = spec(
            r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic",
            "config": {"shards": 2}}, {"id": "b", "kind": "synthetic", "dependencies": ["a"],
            "config": {"shards": 3}}]}"#,
        );
        let compiled = compile(plan, Path::new("."), defaults()).unwrap();
        let error = check_sliceable(&compiled).unwrap_err();
        assert_eq!(error.path, "stages[1].dependencies");
        let one = spec(
            r#"{"name": "p", "stages": [{"id": "a", "kind": "synthetic",
            "config": {"shards": 2}}]}"#,
        );
        check_sliceable(&compile(one, Path::new("."), defaults()).unwrap()).unwrap();
    }
}
