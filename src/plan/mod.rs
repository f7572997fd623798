//! Plans: JSON wire types ([`PlanSpec`]) validated into a checked [`Plan`].
//!
//! This module is pure: it reads no files and no environment. Validation
//! fills every optional field from the kind's blueprint and rejects, with the
//! JSON path of the offending value, everything the README's plan section rules out:
//! unknown kinds, partitioners, executors and schedulers, a partitioner or
//! executor the kind does not allow, duplicate stage ids, unknown or cyclic
//! dependencies, non-positive SLOs and limits, and config keys that neither
//! the stage's partitioner nor its executor reads. Checks that need the
//! file system (paths escaping the plan's root, shard counts) happen when
//! the plan is partitioned.
//!
//! INVARIANT of [`Plan`]: stage ids are unique, every dependency index
//! points at another stage, and the dependency graph is acyclic.

mod kinds;
mod manifest;
mod spec;

pub use kinds::{kind_names, Blueprint, ExecutorKind, PartitionerKind, SchedulerKind, BLUEPRINTS};
pub use manifest::{Manifest, ManifestStage, WorkerSlice, MANIFEST_FORMAT};
pub use spec::{ConstraintsSpec, PlanSpec, StageSpec};

use serde_json::{Map, Value};

/// A rejected plan: the JSON path of the offending value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    pub path: String,
    pub message: String,
}

fn reject(path: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError {
        path: path.into(),
        message: message.into(),
    }
}

/// Settings that validation needs (passed in: this module reads no
/// environment).
#[derive(Clone, Copy, Debug)]
pub struct PlanDefaults {
    pub default_slo_ms: u64,
    /// `HXO_MAX_SHARDS`: a plan's `max_shards` may lower it, never raise it.
    pub max_shards: u64,
}

/// Index of a stage in plan order.
pub type StageIndex = usize;

/// A validated stage.
#[derive(Clone, Debug)]
pub struct Stage {
    pub id: String,
    pub blueprint: &'static Blueprint,
    pub slo_ms: u64,
    pub partitioner: PartitionerKind,
    pub executor: ExecutorKind,
    pub scheduler: SchedulerKind,
    /// Upstream stages, ascending, without duplicates.
    pub dependencies: Vec<StageIndex>,
    /// The stage's config with the blueprint's defaults filled in.
    pub config: Map<String, Value>,
}

/// A validated plan.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub stages: Vec<Stage>,
    /// The effective bound on shards: the smaller of the plan's
    /// `constraints.max_shards` and `HXO_MAX_SHARDS`.
    pub shards_max: u64,
    pub timebox_ms: Option<u64>,
    /// The spec as submitted, kept for the log's manifest.
    pub spec: PlanSpec,
}

impl Plan {
    /// Parses and validates plan JSON.
    pub fn from_json(text: &str, defaults: PlanDefaults) -> Result<Plan, PlanError> {
        Plan::validate(PlanSpec::from_json(text)?, defaults)
    }

    pub fn validate(spec: PlanSpec, defaults: PlanDefaults) -> Result<Plan, PlanError> {
        let name = spec.name.trim();
        if name.is_empty() {
            return Err(reject("name", "must not be empty"));
        }
        if name.len() > 256 {
            return Err(reject("name", "must be at most 256 bytes"));
        }
        if spec.stages.is_empty() {
            return Err(reject("stages", "a plan needs at least one stage"));
        }
        if spec.stages.len() > crate::limits::STAGES_MAX {
            return Err(reject(
                "stages",
                format!("at most {} stages", crate::limits::STAGES_MAX),
            ));
        }
        let mut stages = Vec::with_capacity(spec.stages.len());
        for (index, stage) in spec.stages.iter().enumerate() {
            stages.push(validate_stage(index, stage, &spec.stages, defaults)?);
        }
        check_acyclic(&stages)?;
        let mut shards_max = defaults.max_shards;
        let mut timebox_ms = None;
        if let Some(constraints) = &spec.constraints {
            if let Some(max) = constraints.max_shards {
                shards_max = shards_max.min(positive("constraints.max_shards", max)?);
            }
            if let Some(timebox) = constraints.timebox_ms {
                timebox_ms = Some(positive("constraints.timebox_ms", timebox)?);
            }
        }
        Ok(Plan {
            name: name.to_string(),
            stages,
            shards_max,
            timebox_ms,
            spec,
        })
    }

    pub fn stage_index(&self, id: &str) -> Option<StageIndex> {
        self.stages.iter().position(|s| s.id == id)
    }
}

fn positive(path: &str, value: i64) -> Result<u64, PlanError> {
    if value <= 0 {
        return Err(reject(
            path,
            format!("must be a positive number, got {value}"),
        ));
    }
    Ok(value as u64)
}

fn valid_stage_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn validate_stage(
    index: usize,
    spec: &StageSpec,
    all: &[StageSpec],
    defaults: PlanDefaults,
) -> Result<Stage, PlanError> {
    let at = |field: &str| format!("stages[{index}].{field}");
    if !valid_stage_id(&spec.id) {
        return Err(reject(
            at("id"),
            format!(
                "stage id {:?} must be 1 to 128 letters, digits, '_', '-' or '.'",
                spec.id
            ),
        ));
    }
    if let Some(first) = all[..index].iter().position(|s| s.id == spec.id) {
        return Err(reject(
            at("id"),
            format!(
                "duplicate stage id {:?} (first at stages[{first}])",
                spec.id
            ),
        ));
    }
    let blueprint = Blueprint::find(&spec.kind).ok_or_else(|| {
        reject(
            at("kind"),
            format!(
                "unknown kind {:?} (expected one of {})",
                spec.kind,
                kind_names().join(", ")
            ),
        )
    })?;
    let slo_ms = match spec.slo_ms {
        Some(slo) => positive(&at("slo_ms"), slo)?,
        None => blueprint.default_slo_ms.unwrap_or(defaults.default_slo_ms),
    };
    let partitioner = match &spec.partitioner {
        None => blueprint.partitioners[0],
        Some(name) => {
            let kind = PartitionerKind::from_name(name).ok_or_else(|| {
                let known: Vec<_> = PartitionerKind::ALL.iter().map(|p| p.name()).collect();
                reject(
                    at("partitioner"),
                    format!(
                        "unknown partitioner {name:?} (expected one of {})",
                        known.join(", ")
                    ),
                )
            })?;
            if !blueprint.partitioners.contains(&kind) {
                let allowed: Vec<_> = blueprint.partitioners.iter().map(|p| p.name()).collect();
                return Err(reject(
                    at("partitioner"),
                    format!(
                        "kind {} does not allow partitioner {name} (allowed: {})",
                        blueprint.kind,
                        allowed.join(", ")
                    ),
                ));
            }
            kind
        }
    };
    let executor = match &spec.executor {
        None => blueprint.executors[0],
        Some(name) => {
            let kind = ExecutorKind::from_name(name).ok_or_else(|| {
                let known: Vec<_> = ExecutorKind::ALL.iter().map(|e| e.name()).collect();
                reject(
                    at("executor"),
                    format!(
                        "unknown executor {name:?} (expected one of {})",
                        known.join(", ")
                    ),
                )
            })?;
            if !blueprint.executors.contains(&kind) {
                let allowed: Vec<_> = blueprint.executors.iter().map(|e| e.name()).collect();
                return Err(reject(
                    at("executor"),
                    format!(
                        "kind {} does not allow executor {name} (allowed: {})",
                        blueprint.kind,
                        allowed.join(", ")
                    ),
                ));
            }
            kind
        }
    };
    let scheduler = match &spec.scheduler {
        None => blueprint.default_scheduler,
        Some(name) => SchedulerKind::from_name(name).ok_or_else(|| {
            let known: Vec<_> = SchedulerKind::ALL.iter().map(|s| s.name()).collect();
            reject(
                at("scheduler"),
                format!(
                    "unknown scheduler {name:?} (expected one of {})",
                    known.join(", ")
                ),
            )
        })?,
    };
    let mut dependencies = Vec::new();
    for (dep_index, dep) in spec.dependencies.iter().flatten().enumerate() {
        let path = format!("stages[{index}].dependencies[{dep_index}]");
        let Some(target) = all.iter().position(|s| &s.id == dep) else {
            return Err(reject(path, format!("unknown stage {dep:?}")));
        };
        if target == index {
            return Err(reject(
                path,
                format!("stage {dep:?} cannot depend on itself"),
            ));
        }
        if dependencies.contains(&target) {
            return Err(reject(path, format!("duplicate dependency {dep:?}")));
        }
        dependencies.push(target);
    }
    dependencies.sort_unstable();
    let mut config = blueprint.default_config();
    if let Some(given) = &spec.config {
        let partitioner_keys = partitioner.config_keys();
        let executor_keys = executor.config_keys();
        for (key, value) in given {
            if !partitioner_keys.contains(&key.as_str()) && !executor_keys.contains(&key.as_str()) {
                let mut known: Vec<&str> = partitioner_keys.to_vec();
                known.extend_from_slice(executor_keys);
                return Err(reject(
                    format!("stages[{index}].config.{key}"),
                    format!(
                        "unknown key for partitioner {} and executor {} (known: {})",
                        partitioner.name(),
                        executor.name(),
                        known.join(", ")
                    ),
                ));
            }
            config.insert(key.clone(), value.clone());
        }
    }
    // Defaults of a blueprint's first partitioner/executor must not leak into
    // a stage that picked another one.
    config.retain(|key, _| {
        partitioner.config_keys().contains(&key.as_str())
            || executor.config_keys().contains(&key.as_str())
    });
    Ok(Stage {
        id: spec.id.clone(),
        blueprint,
        slo_ms,
        partitioner,
        executor,
        scheduler,
        dependencies,
        config,
    })
}

/// Depth-first search for a cycle; the error names the first edge of the
/// cycle found and spells the cycle out.
fn check_acyclic(stages: &[Stage]) -> Result<(), PlanError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Finished,
    }
    fn visit(
        node: usize,
        stages: &[Stage],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Result<(), PlanError> {
        marks[node] = Mark::Active;
        stack.push(node);
        for &dep in &stages[node].dependencies {
            match marks[dep] {
                Mark::Finished => {}
                Mark::Active => {
                    let start = stack.iter().position(|&n| n == dep).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[start..]
                        .iter()
                        .map(|&n| stages[n].id.as_str())
                        .collect();
                    cycle.push(&stages[dep].id);
                    return Err(reject(
                        format!("stages[{node}].dependencies"),
                        format!("dependency cycle {}", cycle.join(" -> ")),
                    ));
                }
                Mark::New => visit(dep, stages, marks, stack)?,
            }
        }
        stack.pop();
        marks[node] = Mark::Finished;
        Ok(())
    }
    let mut marks = vec![Mark::New; stages.len()];
    let mut stack = Vec::new();
    for node in 0..stages.len() {
        if marks[node] == Mark::New {
            visit(node, stages, &mut marks, &mut stack)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: PlanDefaults = PlanDefaults {
        default_slo_ms: 120_000,
        max_shards: 1_000_000,
    };

    fn error_of(json: &str) -> String {
        Plan::from_json(json, DEFAULTS).unwrap_err().to_string()
    }

    #[test]
    fn guide_plan_validates_with_blueprint_defaults() {
        let plan = Plan::from_json(
            r#"{"name": "deploy_full_stack", "stages": [
                {"id": "pack_backend", "kind": "deploy.pack", "slo_ms": 120000},
                {"id": "db_migrate", "kind": "deploy.migrate", "slo_ms": 30000},
                {"id": "prime_registry", "kind": "deploy.prime"}],
                "constraints": {"max_shards": 500000}}"#,
            DEFAULTS,
        )
        .unwrap();
        assert_eq!(plan.stages.len(), 3);
        assert_eq!(plan.stages[0].partitioner, PartitionerKind::ByFilesize);
        assert_eq!(plan.stages[0].executor, ExecutorKind::PackBackend);
        assert_eq!(plan.stages[2].slo_ms, 45_000);
        assert_eq!(plan.shards_max, 500_000);
        assert_eq!(plan.stages[0].config["root"], "src");
    }

    #[test]
    fn errors_name_their_json_path() {
        let cases = [
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic", "dependencies": ["pakc"]}]}"#,
                "stages[0].dependencies[0]: unknown stage \"pakc\"",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "deploy.pak"}]}"#,
                "stages[0].kind: unknown kind \"deploy.pak\"",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic"}, {"id": "a", "kind": "synthetic"}]}"#,
                "stages[1].id: duplicate stage id \"a\" (first at stages[0])",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic", "slo_ms": 0}]}"#,
                "stages[0].slo_ms: must be a positive number, got 0",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "deploy.pack", "partitioner": "by_range"}]}"#,
                "stages[0].partitioner: kind deploy.pack does not allow partitioner by_range",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic", "executor": "exec"}]}"#,
                "stages[0].executor: kind synthetic does not allow executor exec",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic", "config": {"shardz": 3}}]}"#,
                "stages[0].config.shardz: unknown key",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic", "colour": 1}]}"#,
                "stages[0].colour: unknown field `colour`",
            ),
            (
                r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic"}], "constraints": {"max_shards": -1}}"#,
                "constraints.max_shards: must be a positive number, got -1",
            ),
            (
                r#"{"name": "x", "stages": []}"#,
                "stages: a plan needs at least one stage",
            ),
            (r#"{"stages": []}"#, "$: missing field `name`"),
        ];
        for (json, expected) in cases {
            let error = error_of(json);
            assert!(
                error.starts_with(expected),
                "got {error:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn cycles_are_spelled_out() {
        let error = error_of(
            r#"{"name": "x", "stages": [
                {"id": "a", "kind": "synthetic", "dependencies": ["c"]},
                {"id": "b", "kind": "synthetic", "dependencies": ["a"]},
                {"id": "c", "kind": "synthetic", "dependencies": ["b"]}]}"#,
        );
        assert!(
            error.contains("dependency cycle a -> c -> b -> a"),
            "{error}"
        );
    }

    #[test]
    fn plan_max_shards_only_lowers_the_setting() {
        let json = r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic"}], "constraints": {"max_shards": 5000000}}"#;
        assert_eq!(
            Plan::from_json(json, DEFAULTS).unwrap().shards_max,
            1_000_000
        );
    }
}
