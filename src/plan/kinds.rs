//! Job kinds and their blueprints: the guide's five deploy and index kinds
//! plus the generic `exec` and `synthetic`.
//!
//! A blueprint fixes, per kind, the defaults of every optional stage field
//! and the safety policy (which partitioners and executors the kind allows,
//! whether batches must have had a successful dry run before they apply).

use serde_json::{Map, Value};

pub use crate::partition::PartitionerKind;

/// What a shard of a stage does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    Synthetic,
    Exec,
    PackBackend,
    IndexAssets,
    DocsIndex,
    WarmRegistry,
    PrimeCaches,
    SqlMigrate,
}

impl ExecutorKind {
    pub const ALL: [ExecutorKind; 8] = [
        ExecutorKind::Synthetic,
        ExecutorKind::Exec,
        ExecutorKind::PackBackend,
        ExecutorKind::IndexAssets,
        ExecutorKind::DocsIndex,
        ExecutorKind::WarmRegistry,
        ExecutorKind::PrimeCaches,
        ExecutorKind::SqlMigrate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Synthetic => "synthetic",
            ExecutorKind::Exec => "exec",
            ExecutorKind::PackBackend => "pack_backend",
            ExecutorKind::IndexAssets => "index_assets",
            ExecutorKind::DocsIndex => "docs_index",
            ExecutorKind::WarmRegistry => "warm_registry",
            ExecutorKind::PrimeCaches => "prime_caches",
            ExecutorKind::SqlMigrate => "sql_migrate",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The stage `config` keys this executor reads.
    pub fn config_keys(self) -> &'static [&'static str] {
        match self {
            ExecutorKind::Synthetic => &[
                "work_iters",
                "sleep_ms",
                "fail_rate",
                "panic_rate",
                "seed",
                "flaky_attempts",
            ],
            ExecutorKind::Exec => &["command"],
            ExecutorKind::SqlMigrate => &["database", "table", "sql"],
            _ => &[],
        }
    }
}

/// How ready shards of a stage are scheduled (the guide's `scheduler`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    FairRoundRobin,
    HotShardSplitter,
    BackpressureAware,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 3] = [
        SchedulerKind::FairRoundRobin,
        SchedulerKind::HotShardSplitter,
        SchedulerKind::BackpressureAware,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::FairRoundRobin => "fair_round_robin",
            SchedulerKind::HotShardSplitter => "hot_shard_splitter",
            SchedulerKind::BackpressureAware => "backpressure_aware",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A job kind's defaults and policy.
#[derive(Debug)]
pub struct Blueprint {
    pub kind: &'static str,
    /// `None`: the `HXO_DEFAULT_SLO_MS` setting.
    pub default_slo_ms: Option<u64>,
    /// The first is the default.
    pub partitioners: &'static [PartitionerKind],
    /// The first is the default.
    pub executors: &'static [ExecutorKind],
    pub default_scheduler: SchedulerKind,
    /// Config keys filled in when the stage leaves them out (JSON object).
    pub default_config: &'static str,
    /// Batches must have had a successful dry run before they apply.
    pub require_dry_run: bool,
}

use ExecutorKind as E;
use PartitionerKind as P;

const ALL_PARTITIONERS: &[PartitionerKind] = &[
    P::ByRange,
    P::ByFilesize,
    P::ByModule,
    P::ByAssetBucket,
    P::ByRouteMap,
    P::BySqlBatch,
    P::ByDagDepth,
];

pub const BLUEPRINTS: &[Blueprint] = &[
    Blueprint {
        kind: "deploy.pack",
        default_slo_ms: Some(120_000),
        partitioners: &[P::ByFilesize, P::ByModule],
        executors: &[E::PackBackend],
        default_scheduler: SchedulerKind::FairRoundRobin,
        default_config: r#"{"root": "src", "chunk_size_mb": 10}"#,
        require_dry_run: false,
    },
    Blueprint {
        kind: "deploy.migrate",
        default_slo_ms: Some(30_000),
        partitioners: &[P::BySqlBatch],
        executors: &[E::SqlMigrate],
        default_scheduler: SchedulerKind::BackpressureAware,
        default_config: r#"{"database": "data/app.sqlite", "table": "accounts", "batch_size": 5000,
            "sql": "UPDATE accounts SET balance_cents = balance_cents * 100, migrated = 1 WHERE rowid >= :start AND rowid < :end AND migrated = 0"}"#,
        require_dry_run: true,
    },
    Blueprint {
        kind: "deploy.prime",
        default_slo_ms: Some(45_000),
        partitioners: &[P::ByModule, P::ByDagDepth],
        executors: &[E::WarmRegistry, E::PrimeCaches],
        default_scheduler: SchedulerKind::FairRoundRobin,
        default_config: r#"{"root": "src"}"#,
        require_dry_run: false,
    },
    Blueprint {
        kind: "assets.index",
        default_slo_ms: Some(60_000),
        partitioners: &[P::ByAssetBucket, P::ByFilesize],
        executors: &[E::IndexAssets],
        default_scheduler: SchedulerKind::FairRoundRobin,
        default_config: r#"{"root": "assets"}"#,
        require_dry_run: false,
    },
    Blueprint {
        kind: "docs.index",
        default_slo_ms: Some(60_000),
        partitioners: &[P::ByRouteMap, P::ByModule],
        executors: &[E::DocsIndex],
        default_scheduler: SchedulerKind::FairRoundRobin,
        default_config: r#"{"root": "docs", "routes": ["/"]}"#,
        require_dry_run: false,
    },
    Blueprint {
        kind: "exec",
        default_slo_ms: None,
        partitioners: ALL_PARTITIONERS,
        executors: &[E::Exec],
        default_scheduler: SchedulerKind::FairRoundRobin,
        default_config: "{}",
        require_dry_run: false,
    },
    Blueprint {
        kind: "synthetic",
        default_slo_ms: None,
        partitioners: ALL_PARTITIONERS,
        executors: &[E::Synthetic],
        default_scheduler: SchedulerKind::FairRoundRobin,
        default_config: "{}",
        require_dry_run: false,
    },
];

impl Blueprint {
    pub fn find(kind: &str) -> Option<&'static Blueprint> {
        BLUEPRINTS.iter().find(|b| b.kind == kind)
    }

    pub fn default_config(&self) -> Map<String, Value> {
        match serde_json::from_str(self.default_config) {
            Ok(Value::Object(map)) => map,
            // The blueprints are constants checked by a unit test.
            _ => unreachable!("blueprint {} has a malformed default config", self.kind),
        }
    }
}

pub fn kind_names() -> Vec<&'static str> {
    BLUEPRINTS.iter().map(|b| b.kind).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blueprint_defaults_parse_and_are_allowed_keys() {
        for blueprint in BLUEPRINTS {
            let config = blueprint.default_config();
            for key in config.keys() {
                let known = blueprint.partitioners[0]
                    .config_keys()
                    .contains(&key.as_str())
                    || blueprint.executors[0].config_keys().contains(&key.as_str());
                assert!(known, "{}: default key {key} is unknown", blueprint.kind);
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in ExecutorKind::ALL {
            assert_eq!(ExecutorKind::from_name(kind.name()), Some(kind));
        }
        for kind in SchedulerKind::ALL {
            assert_eq!(SchedulerKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ExecutorKind::from_name("sleep"), None);
    }
}
