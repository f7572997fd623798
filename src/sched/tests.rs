//! Unit tests of the scheduler's start: which shards the first jobs claim,
//! and that they spread over the pool.

use super::*;
use crate::partition::Partitioning;
use crate::plan::{Plan, PlanDefaults};
use std::sync::atomic::AtomicUsize;

/// Sleeps per shard and records how many shards ran at once.
#[derive(Default)]
struct Overlap {
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Executor for Overlap {
    fn execute(&self, ctx: &crate::exec::ShardContext<'_>) -> Result<Hash, crate::exec::ExecError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(40));
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok([ctx.leaf_index as u8; 32])
    }
}

/// Runs a one-stage plan of `shards` shards, those marked `Done` in
/// `initial` skipped, on `threads` threads; returns the leaves that got an
/// outcome (sorted) and the most shards that ran at once.
fn run_one_stage(shards: u32, initial: Vec<Initial>, threads: usize) -> (Vec<u32>, usize) {
    let plan = Plan::from_json(
        &format!(
            r#"{{"name": "p", "stages": [{{"id": "s", "kind": "synthetic", "config": {{"shards": {shards}}}}}]}}"#
        ),
        PlanDefaults {
            default_slo_ms: 1000,
            max_shards: 1_000_000,
        },
    )
    .unwrap();
    let partitioning = Partitioning::unit_ranges(u64::from(shards));
    let dag = Arc::new(crate::dag::compile(&plan, vec![partitioning]).unwrap());
    let executor = Arc::new(Overlap::default());
    let input = RunInput {
        dag,
        executors: vec![executor.clone()],
        stage_ids: vec!["s".into()],
        plan_id: "p".into(),
        initial,
        schedulers: vec![SchedulerKind::FairRoundRobin],
        splits: HashMap::new(),
        pressure: Arc::new(|| 0),
    };
    let options = RunOptions {
        threads,
        max_concurrency: 1,
        max_attempts: 1,
        retry_backoff_ms: 0,
        shard_timeout_ms: 60_000,
        dry_run: false,
        artifacts_dir: std::env::temp_dir(),
        timebox: None,
        autosplit: Autosplit {
            p95_ms: u64::MAX / 1000,
            factor: 2,
        },
    };
    let (sink, outcomes) = crossbeam_channel::unbounded();
    run(input, options, Control::new(), Arc::new(sink));
    let mut leaves: Vec<u32> = outcomes
        .try_iter()
        .flatten()
        .map(|outcome| {
            assert!(matches!(outcome.kind, OutcomeKind::Done(_)), "{outcome:?}");
            outcome.leaf
        })
        .collect();
    leaves.sort_unstable();
    (leaves, executor.most_at_once.load(Ordering::SeqCst))
}

#[test]
fn a_small_plan_spreads_over_the_pool() {
    let (leaves, most_at_once) = run_one_stage(8, vec![Initial::Pending; 8], 4);
    assert_eq!(leaves, (0..8).collect::<Vec<_>>());
    assert!(most_at_once >= 2, "8 shards on 4 threads ran one at a time");
}

#[test]
fn pending_shards_bunched_among_done_ones_still_spread_and_only_they_run() {
    // A resumed plan: 2,048 shards, all done but 8 neighbours, which fall
    // in one of the ranges the first jobs claim from.
    let mut initial = vec![Initial::Done; 2048];
    for state in &mut initial[1000..1008] {
        *state = Initial::Pending;
    }
    let (leaves, most_at_once) = run_one_stage(2048, initial, 4);
    assert_eq!(leaves, (1000..1008).collect::<Vec<_>>());
    assert!(
        most_at_once >= 2,
        "8 bunched shards on 4 threads ran one at a time"
    );
}
