//! End-to-end engine benchmarks with seeded, generated plans (nothing
//! checked in): compile, execute-to-root (durable and not), and reopening a
//! store of 10^6 outcomes to print a report.
//!
//! `cargo bench --bench engine`; `HXO_BENCH_MAX_SHARDS` caps the sweep
//! (default 1,000,000).

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use hxo::engine::{self, Engine};
use hxo::plan::{PlanDefaults, PlanSpec};
use hxo::settings::{Overrides, Settings};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sizes() -> Vec<u64> {
    let max: u64 = std::env::var("HXO_BENCH_MAX_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    [1_000u64, 10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|n| *n <= max)
        .collect()
}

fn noop_plan(shards: u64) -> PlanSpec {
    PlanSpec::from_json(&format!(
        r#"{{"name": "bench", "stages": [{{"id": "noop", "kind": "synthetic", "config": {{"shards": {shards}}}}}]}}"#
    ))
    .unwrap()
}

fn settings(db: &Path, sync_commits: bool) -> Settings {
    let mut settings = Settings::resolve(
        &|name| match name {
            "HXO_DB_PATH" => Some(db.display().to_string()),
            "HXO_ARTIFACTS_DIR" => Some(db.with_file_name("artifacts").display().to_string()),
            "HXO_MAX_SHARDS" => Some("20000000".into()),
            _ => None,
        },
        Overrides::default(),
    )
    .unwrap();
    settings.sync_commits = sync_commits;
    settings
}

const DEFAULTS: PlanDefaults = PlanDefaults {
    default_slo_ms: 120_000,
    max_shards: 20_000_000,
};

/// One whole run in a fresh store: open, compile, accept, execute,
/// aggregate, certify, close.
fn run_once(shards: u64, sync_commits: bool) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let engine: Arc<Engine> = Engine::open(
        settings(&dir.path().join("checkpoints"), sync_commits),
        false,
    )
    .unwrap();
    let compiled = engine.compile(noop_plan(shards), dir.path()).unwrap();
    let ticket = engine.start_new(compiled, "bench", false).unwrap();
    let summary = engine.run(ticket, None).unwrap();
    assert!(summary.report.truth_certified);
    engine.close().unwrap();
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for n in sizes() {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| engine::compile(noop_plan(n), Path::new("."), DEFAULTS).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("execute_to_root");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for n in sizes() {
        group.throughput(Throughput::Elements(n));
        for (label, sync) in [("durable", true), ("no_sync", false)] {
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, &n| {
                b.iter_custom(|iters| (0..iters).map(|_| run_once(n, sync)).sum())
            });
        }
    }
    group.finish();

    // Reopen a store holding 10^6 outcomes (read-only, as `hxo report`
    // does) and build the report.
    let n = *sizes().last().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("checkpoints");
    let plan_id = {
        let engine = Engine::open(settings(&db, true), false).unwrap();
        let compiled = engine.compile(noop_plan(n), dir.path()).unwrap();
        let ticket = engine.start_new(compiled, "bench", false).unwrap();
        let plan_id = *ticket.plan_id();
        engine.run(ticket, None).unwrap();
        engine.close().unwrap();
        plan_id
    };
    let mut group = c.benchmark_group("reopen_and_report");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(n));
    group.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| {
            let engine = Engine::open_read_only(settings(&db, true), false).unwrap();
            let report = engine.report(&plan_id).unwrap();
            assert_eq!(report.done_shards, n);
            report
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
