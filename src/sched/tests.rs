//! Unit tests of the scheduler: which shards the first jobs claim and that
//! they spread over the pool; readiness across barriers and pipelines,
//! blocking below failures, stops and the sweep, hot-shard splits and the
//! live counts. Plans are built in memory; a recording sink collects the
//! outcomes and a probe executor records when each shard starts and ends.

use super::*;
use crate::dag::Join;
use crate::partition::{Partitioning, Partitions};
use crate::plan::{Plan, PlanDefaults};
use std::collections::HashSet;
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

const DEFAULTS: PlanDefaults = PlanDefaults {
    default_slo_ms: 1000,
    max_shards: 1_000_000,
};

/// A hot-shard threshold no shard reaches.
const NEVER_HOT_MS: u64 = u64::MAX / 1000;

/// Compiles a plan of synthetic stages; `shape` gives each stage's shard
/// count and units per shard (even ranges, keyless, so stages with equal
/// shard counts pipeline and others join by barrier).
fn dag_of(json: &str, shape: &[(u64, u64)]) -> Arc<Dag> {
    let plan = Plan::from_json(json, DEFAULTS).unwrap();
    let partitionings = shape
        .iter()
        .map(|&(shards, units)| Partitioning {
            partitions: Partitions::EvenRanges {
                items: shards * units,
                count: shards,
            },
            chained: false,
        })
        .collect();
    Arc::new(crate::dag::compile(&plan, partitionings).unwrap())
}

/// One stage `a` of `shards` shards of `units` units.
fn one_stage(shards: u64, units: u64) -> Arc<Dag> {
    dag_of(
        &format!(
            r#"{{"name": "p", "stages": [{{"id": "a", "kind": "synthetic", "config": {{"shards": {shards}}}}}]}}"#
        ),
        &[(shards, units)],
    )
}

/// Stage `a` of `up` shards and stage `b` of `down` shards depending on it:
/// pipelined when the counts are equal, a barrier otherwise.
fn two_stages(up: u64, down: u64) -> Arc<Dag> {
    dag_of(
        r#"{"name": "p", "stages": [
            {"id": "a", "kind": "synthetic"},
            {"id": "b", "kind": "synthetic", "dependencies": ["a"]}]}"#,
        &[(up, 1), (down, 1)],
    )
}

fn options(threads: usize) -> RunOptions {
    RunOptions {
        threads,
        max_concurrency: 1,
        max_attempts: 1,
        retry_backoff_ms: 0,
        shard_timeout_ms: 60_000,
        dry_run: false,
        artifacts_dir: std::env::temp_dir(),
        timebox: None,
        autosplit: Autosplit {
            p95_ms: NEVER_HOT_MS,
            factor: 2,
        },
    }
}

/// Every stage of `dag` runs `executor` under `scheduler`; every shard is
/// pending.
fn input_for(dag: &Arc<Dag>, executor: Arc<dyn Executor>, scheduler: SchedulerKind) -> RunInput {
    let stages = dag.stages.len();
    RunInput {
        dag: dag.clone(),
        executors: vec![executor; stages],
        stage_ids: (0..stages).map(|s| format!("s{s}")).collect(),
        plan_id: "p".into(),
        initial: vec![Initial::Pending; dag.shard_count()],
        schedulers: vec![scheduler; stages],
        splits: HashMap::new(),
        pressure: Arc::new(|| 0),
    }
}

/// A sink that keeps every outcome, in the order they were handed over.
#[derive(Default)]
struct Recording {
    outcomes: Mutex<Vec<Outcome>>,
}

impl OutcomeSink for Recording {
    fn accept(&self, batch: Vec<Outcome>) {
        assert!(batch.len() <= OUTCOME_BATCH_MAX, "a batch over the bound");
        self.outcomes.lock().unwrap().extend(batch);
    }
}

/// Runs `input` and returns every outcome handed over, in order. The run
/// gets 10 s: one that never ends fails the test instead of hanging it.
fn run_recorded(input: RunInput, options: RunOptions, control: Arc<Control>) -> Vec<Outcome> {
    let sink = Arc::new(Recording::default());
    let (ended, end) = crossbeam_channel::bounded(1);
    let run_sink = sink.clone();
    std::thread::spawn(move || {
        run(input, options, control, run_sink);
        let _ = ended.send(());
    });
    end.recv_timeout(Duration::from_secs(10))
        .expect("the run ends within 10 s");
    let outcomes = std::mem::take(&mut *sink.outcomes.lock().unwrap());
    outcomes
}

/// The terminal outcome of each leaf that got one, checking that none got
/// two.
fn terminal_by_leaf(outcomes: &[Outcome]) -> HashMap<u32, Outcome> {
    let mut terminal = HashMap::new();
    for outcome in outcomes.iter().filter(|o| o.kind.is_terminal()) {
        let earlier = terminal.insert(outcome.leaf, outcome.clone());
        assert!(
            earlier.is_none(),
            "two outcomes for leaf {}: {earlier:?} and {outcome:?}",
            outcome.leaf
        );
    }
    terminal
}

/// The unit digest the probe gives unit `unit` of shard `leaf`.
fn unit_item(leaf: u64, unit: u64) -> Hash {
    let mut item = [0u8; 32];
    item[..8].copy_from_slice(&leaf.to_le_bytes());
    item[8..16].copy_from_slice(&unit.to_le_bytes());
    item
}

/// The digest of `units` of shard `leaf`: the RFC 6962 tree hash of their
/// unit digests, so pieces at the tree's boundaries recombine.
fn units_digest(leaf: u64, units: std::ops::Range<u64>) -> Hash {
    let items: Vec<Hash> = units.map(|unit| unit_item(leaf, unit)).collect();
    crate::merkle::root_of_leaf_data(&items)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Start(u32),
    End(u32),
}

/// The test executor: records every start and end in one order for all
/// threads, can sleep, fail or panic for chosen leaves, and calls a hook
/// as each shard starts.
#[derive(Default)]
struct Probe {
    events: Mutex<Vec<Event>>,
    /// (leaf, units) of every call.
    calls: Mutex<Vec<(u32, std::ops::Range<u64>)>>,
    sleep_ms: HashMap<u32, u64>,
    sleep_all_ms: u64,
    fail: HashSet<u32>,
    panic: HashSet<u32>,
    splittable: bool,
    blocking: bool,
    /// Called with the leaf (and the number of starts so far, this one
    /// included) before the shard's work.
    on_start: Option<Box<dyn Fn(u32, usize) + Send + Sync>>,
}

impl Probe {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn started(&self) -> Vec<u32> {
        let mut started: Vec<u32> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Start(leaf) => Some(leaf),
                Event::End(_) => None,
            })
            .collect();
        started.sort_unstable();
        started
    }

    /// Where `event` is in the recorded order.
    fn position(&self, event: Event) -> usize {
        self.events()
            .iter()
            .position(|e| *e == event)
            .unwrap_or_else(|| panic!("{event:?} never happened"))
    }
}

impl Executor for Probe {
    fn is_blocking(&self) -> bool {
        self.blocking
    }

    fn is_splittable(&self) -> bool {
        self.splittable
    }

    fn execute(&self, ctx: &crate::exec::ShardContext<'_>) -> Result<Hash, crate::exec::ExecError> {
        let leaf = ctx.leaf_index as u32;
        let starts = {
            let mut events = self.events.lock().unwrap();
            events.push(Event::Start(leaf));
            events
                .iter()
                .filter(|e| matches!(e, Event::Start(_)))
                .count()
        };
        self.calls.lock().unwrap().push((leaf, ctx.units.clone()));
        if let Some(hook) = &self.on_start {
            hook(leaf, starts);
        }
        let sleep_ms = self
            .sleep_ms
            .get(&leaf)
            .copied()
            .unwrap_or(self.sleep_all_ms);
        if sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(sleep_ms));
        }
        self.events.lock().unwrap().push(Event::End(leaf));
        if self.panic.contains(&leaf) {
            panic!("probe panic in leaf {leaf}");
        }
        if self.fail.contains(&leaf) {
            return Err(crate::exec::ExecError::Failed(format!(
                "probe failure in leaf {leaf}"
            )));
        }
        Ok(units_digest(ctx.leaf_index, ctx.units.clone()))
    }
}

fn done(outcome: &Outcome) -> bool {
    matches!(outcome.kind, OutcomeKind::Done(_))
}

#[test]
fn no_shard_below_a_barrier_starts_before_every_shard_above_it_ended() {
    // 4 shards, then 3: the keys differ, so b waits for all of a. a0 is
    // slow, so a b shard started early would show.
    let dag = two_stages(4, 3);
    assert_eq!(dag.stages[1].upstream, vec![(0, Join::Barrier)]);
    let probe = Arc::new(Probe {
        sleep_ms: HashMap::from([(0, 50)]),
        ..Probe::default()
    });
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let outcomes = run_recorded(input, options(4), Control::new());

    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 7);
    assert!(terminal.values().all(done), "{outcomes:?}");
    let last_upstream_end = (0..4).map(|a| probe.position(Event::End(a))).max().unwrap();
    for b in 4..7 {
        assert!(
            probe.position(Event::Start(b)) > last_upstream_end,
            "shard {b} started before stage a ended: {:?}",
            probe.events()
        );
    }
}

#[test]
fn a_pipelined_shard_waits_for_its_own_upstream_shard_only() {
    let dag = two_stages(4, 4);
    assert_eq!(dag.stages[1].upstream, vec![(0, Join::Pipelined)]);
    // a0 holds its thread until b3 has started (or 5 s pass): with a
    // barrier, b3 could not start while a0 runs, and the check below fails.
    let b3_started = Arc::new((Mutex::new(false), Condvar::new()));
    let gate = b3_started.clone();
    let probe = Arc::new(Probe {
        on_start: Some(Box::new(move |leaf, _| {
            let (started, signal) = &*gate;
            if leaf == 7 {
                *started.lock().unwrap() = true;
                signal.notify_all();
            } else if leaf == 0 {
                let guard = started.lock().unwrap();
                let _ = signal
                    .wait_timeout_while(guard, Duration::from_secs(5), |s| !*s)
                    .unwrap();
            }
        })),
        ..Probe::default()
    });
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let outcomes = run_recorded(input, options(4), Control::new());

    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 8);
    assert!(terminal.values().all(done), "{outcomes:?}");
    for k in 0..4 {
        assert!(
            probe.position(Event::Start(4 + k)) > probe.position(Event::End(k)),
            "b{k} started before a{k} ended: {:?}",
            probe.events()
        );
    }
    assert!(
        probe.position(Event::Start(7)) < probe.position(Event::End(0)),
        "b3 waited for a0: {:?}",
        probe.events()
    );
}

#[test]
fn a_failed_shard_blocks_its_downstream_shards_which_never_run() {
    // a (4) -> b (4, pipelined) -> c (2, barrier on b); a1 fails.
    let dag = dag_of(
        r#"{"name": "p", "stages": [
            {"id": "a", "kind": "synthetic"},
            {"id": "b", "kind": "synthetic", "dependencies": ["a"]},
            {"id": "c", "kind": "synthetic", "dependencies": ["b"]}]}"#,
        &[(4, 1), (4, 1), (2, 1)],
    );
    assert_eq!(dag.stages[1].upstream, vec![(0, Join::Pipelined)]);
    assert_eq!(dag.stages[2].upstream, vec![(1, Join::Barrier)]);
    let probe = Arc::new(Probe {
        fail: HashSet::from([1]),
        ..Probe::default()
    });
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let mut options = options(2);
    options.max_attempts = 2;
    let outcomes = run_recorded(input, options, Control::new());

    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 10, "{outcomes:?}");
    assert_eq!(
        terminal[&1].kind,
        OutcomeKind::Failed {
            error: "probe failure in leaf 1".into(),
            aborted: false
        }
    );
    assert_eq!(terminal[&1].attempts, 2);
    for blocked in [5, 8, 9] {
        assert_eq!(
            terminal[&blocked].kind,
            OutcomeKind::Blocked,
            "leaf {blocked}"
        );
    }
    for ok in [0, 2, 3, 4, 6, 7] {
        assert!(done(&terminal[&ok]), "leaf {ok}: {:?}", terminal[&ok]);
    }
    // a1 twice (two attempts), the blocked ones never.
    let calls: Vec<u32> = probe
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(leaf, _)| *leaf)
        .collect();
    assert_eq!(calls.iter().filter(|&&leaf| leaf == 1).count(), 2);
    assert_eq!(probe.started(), vec![0, 1, 1, 2, 3, 4, 6, 7]);
}

#[test]
fn a_panicking_executor_fails_its_shard_with_the_panic_message() {
    let dag = two_stages(3, 3);
    let probe = Arc::new(Probe {
        panic: HashSet::from([1]),
        ..Probe::default()
    });
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let mut options = options(2);
    options.max_attempts = 3;
    let outcomes = run_recorded(input, options, Control::new());

    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(
        terminal[&1].kind,
        OutcomeKind::Failed {
            error: "panicked: probe panic in leaf 1".into(),
            aborted: false
        }
    );
    assert_eq!(
        terminal[&1].attempts, 3,
        "a panic is retried like a failure"
    );
    assert_eq!(terminal[&4].kind, OutcomeKind::Blocked);
    for ok in [0, 2, 3, 5] {
        assert!(done(&terminal[&ok]), "leaf {ok}: {:?}", terminal[&ok]);
    }
}

/// Runs 400 shards of 5 ms on 2 threads, stopping with `reason` as the
/// 10th shard starts. Returns the outcomes, the leaves that started and
/// how long the run took after the stop.
fn stop_mid_run(reason: StopReason) -> (Vec<Outcome>, Vec<u32>, Duration) {
    let dag = one_stage(400, 1);
    let control = Control::new();
    let stopped_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (hook_control, hook_stopped_at) = (control.clone(), stopped_at.clone());
    let probe = Arc::new(Probe {
        sleep_all_ms: 5,
        on_start: Some(Box::new(move |_, starts| {
            if starts == 10 {
                *hook_stopped_at.lock().unwrap() = Some(Instant::now());
                hook_control.stop(reason.clone());
            }
        })),
        ..Probe::default()
    });
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let outcomes = run_recorded(input, options(2), control.clone());
    let after_stop = stopped_at
        .lock()
        .unwrap()
        .expect("the run was stopped")
        .elapsed();
    assert!(control.is_stopped());
    (outcomes, probe.started(), after_stop)
}

#[test]
fn an_interrupt_mid_run_ends_the_run_promptly_with_one_outcome_per_shard() {
    let (outcomes, started, after_stop) = stop_mid_run(StopReason::Interrupted);
    // The other 390 shards would take about a second on two threads.
    assert!(
        after_stop < Duration::from_millis(300),
        "took {after_stop:?} after the stop"
    );
    assert!(
        started.len() >= 10 && started.len() < 50,
        "{} shards started",
        started.len()
    );
    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 400, "every shard gets an outcome");
    for (leaf, outcome) in &terminal {
        if started.contains(leaf) {
            // The probe ignores its cancel token: what started finishes.
            assert!(done(outcome), "{outcome:?}");
        } else {
            assert_eq!(outcome.kind, OutcomeKind::Abandoned, "leaf {leaf}");
            assert_eq!((outcome.attempts, outcome.duration_us), (0, 0));
        }
    }
}

#[test]
fn an_abort_mid_run_fails_the_shards_not_yet_run_as_aborted() {
    let (outcomes, started, after_stop) = stop_mid_run(StopReason::Aborted {
        actor: "test".into(),
    });
    assert!(
        after_stop < Duration::from_millis(300),
        "took {after_stop:?} after the stop"
    );
    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 400);
    let aborted = OutcomeKind::Failed {
        error: "aborted".into(),
        aborted: true,
    };
    for (leaf, outcome) in &terminal {
        if started.contains(leaf) {
            assert!(done(outcome), "{outcome:?}");
        } else {
            assert_eq!(outcome.kind, aborted, "leaf {leaf}");
        }
    }
    assert_eq!(
        terminal.values().filter(|o| o.kind == aborted).count(),
        400 - started.len()
    );
}

#[test]
fn a_timebox_that_runs_out_aborts_the_shards_not_yet_run() {
    let dag = one_stage(400, 1);
    let probe = Arc::new(Probe {
        sleep_all_ms: 5,
        ..Probe::default()
    });
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let mut options = options(2);
    options.timebox = Some(Instant::now() + Duration::from_millis(30));
    let control = Control::new();
    let outcomes = run_recorded(input, options, control.clone());

    assert_eq!(control.stop_reason(), Some(StopReason::Timeboxed));
    let started = probe.started();
    assert!(started.len() < 200, "{} shards started", started.len());
    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 400);
    let timed_out = terminal
        .values()
        .filter(|o| {
            o.kind
                == OutcomeKind::Failed {
                    error: "aborted: plan timebox exceeded".into(),
                    aborted: true,
                }
        })
        .count();
    assert_eq!(timed_out, 400 - started.len());
}

#[test]
fn a_stop_before_the_run_starts_runs_nothing() {
    // a (8) -> b (3, barrier): a's shards are ready at the start, b's are
    // not and only the sweep reaches them.
    let dag = two_stages(8, 3);
    let probe = Arc::new(Probe::default());
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let control = Control::new();
    control.stop(StopReason::Interrupted);
    let outcomes = run_recorded(input, options(2), control.clone());

    assert_eq!(probe.started(), Vec::<u32>::new());
    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 11);
    assert!(
        terminal.values().all(|o| o.kind == OutcomeKind::Abandoned),
        "{outcomes:?}"
    );
    assert_eq!(control.live_counts().1, 0);
}

#[test]
fn after_a_stop_the_sweep_stops_the_shards_no_job_reached() {
    // a (4) -> b (3, barrier); a0 aborts the run. a's other shards get the
    // stop outcome in their jobs; b's barrier never opens, so no job ever
    // holds b's shards: they are still PENDING when the run's jobs are
    // over, and the sweep stops them.
    let dag = two_stages(4, 3);
    let control = Control::new();
    let hook_control = control.clone();
    let probe = Arc::new(Probe {
        on_start: Some(Box::new(move |leaf, _| {
            if leaf == 0 {
                hook_control.stop(StopReason::Aborted {
                    actor: "test".into(),
                });
            }
        })),
        ..Probe::default()
    });
    let input = input_for(&dag, probe.clone(), SchedulerKind::FairRoundRobin);
    let outcomes = run_recorded(input, options(1), control);

    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 7);
    assert!(done(&terminal[&0]));
    let aborted = OutcomeKind::Failed {
        error: "aborted".into(),
        aborted: true,
    };
    for leaf in 1..7 {
        assert_eq!(terminal[&leaf].kind, aborted, "leaf {leaf}");
        assert_eq!(
            (terminal[&leaf].attempts, terminal[&leaf].duration_us),
            (0, 0)
        );
    }
    // The sweep runs last, on the waiting thread: b's outcomes come after
    // every other.
    let order: Vec<u32> = outcomes.iter().map(|o| o.leaf).collect();
    assert!(order.ends_with(&[4, 5, 6]), "{order:?}");
    assert_eq!(probe.started(), vec![0]);
}

#[test]
fn the_sweep_stops_the_pending_and_claimed_shards_and_no_others() {
    // The state a stopped run's jobs may leave behind, once none is left.
    let dag = one_stage(6, 1);
    let sink = Arc::new(Recording::default());
    let control = Control::new();
    let input = input_for(
        &dag,
        Arc::new(Probe::default()),
        SchedulerKind::FairRoundRobin,
    );
    let shared = Shared::new(input, options(1), control.clone(), sink.clone());
    let before = [DONE, FAILED, BLOCKED, STOPPED, CLAIMED, PENDING];
    for (leaf, state) in before.into_iter().enumerate() {
        shared.state[leaf].store(state, Ordering::SeqCst);
    }
    // Six pending at the start, four of them accounted for.
    shared.terminal_left.store(2, Ordering::SeqCst);
    control.stop(StopReason::Timeboxed);
    shared.sweep();

    let timed_out = |leaf| Outcome {
        leaf,
        kind: OutcomeKind::Failed {
            error: "aborted: plan timebox exceeded".into(),
            aborted: true,
        },
        attempts: 0,
        duration_us: 0,
    };
    assert_eq!(
        *sink.outcomes.lock().unwrap(),
        vec![timed_out(4), timed_out(5)]
    );
    let after: Vec<u8> = shared
        .state
        .iter()
        .map(|s| s.load(Ordering::SeqCst))
        .collect();
    assert_eq!(after, [DONE, FAILED, BLOCKED, STOPPED, STOPPED, STOPPED]);
    assert_eq!(shared.terminal_left.load(Ordering::SeqCst), 0);
}

/// The Done digest of each leaf (every terminal outcome must be Done).
fn done_digests(outcomes: &[Outcome]) -> HashMap<u32, Hash> {
    terminal_by_leaf(outcomes)
        .into_iter()
        .map(|(leaf, outcome)| match outcome.kind {
            OutcomeKind::Done(digest) => (leaf, digest),
            other => panic!("leaf {leaf}: {other:?}"),
        })
        .collect()
}

#[test]
fn a_hot_stage_splits_its_shards_and_the_pieces_recombine_to_the_unsplit_digest() {
    // 8 shards of 8 units, 2 ms a call, on one thread (jobs run in spawn
    // order). Once 3 shards are done their p95 (about 2 ms) is over the
    // 1 ms threshold, so every shard that starts from then on is cut into
    // 4 pieces at the unit tree's boundaries.
    let dag = one_stage(8, 8);
    let run_with = |p95_ms: u64| {
        let probe = Arc::new(Probe {
            sleep_all_ms: 2,
            splittable: true,
            ..Probe::default()
        });
        let input = input_for(&dag, probe.clone(), SchedulerKind::HotShardSplitter);
        let mut options = options(1);
        options.autosplit = Autosplit { p95_ms, factor: 4 };
        let outcomes = run_recorded(input, options, Control::new());
        let calls = probe.calls.lock().unwrap().clone();
        (outcomes, calls)
    };
    let (whole, whole_calls) = run_with(NEVER_HOT_MS);
    assert_eq!(whole_calls.len(), 8, "nothing splits below the threshold");
    assert!(whole.iter().all(|o| o.kind.is_terminal()), "{whole:?}");
    let (split, split_calls) = run_with(1);

    assert_eq!(done_digests(&split), done_digests(&whole));
    for leaf in 0..8u32 {
        let of_leaf: Vec<&Outcome> = split.iter().filter(|o| o.leaf == leaf).collect();
        let mut calls: Vec<std::ops::Range<u64>> = split_calls
            .iter()
            .filter(|(l, _)| *l == leaf)
            .map(|(_, units)| units.clone())
            .collect();
        calls.sort_by_key(|units| units.start);
        if leaf < 3 {
            assert_eq!(
                of_leaf.len(),
                1,
                "leaf {leaf} split before the stage was hot"
            );
            assert_eq!(calls, vec![0..8]);
            continue;
        }
        check_split_shard(leaf, &of_leaf, &calls);
    }
}

/// Checks what a shard split into 4 pieces of 2 units made: its `outcomes`
/// are a Split, then one Piece per piece (each the digest of its units),
/// then its Done; the executor was called once per piece (`calls`, sorted).
fn check_split_shard(leaf: u32, outcomes: &[&Outcome], calls: &[std::ops::Range<u64>]) {
    assert_eq!(calls, [0..2, 2..4, 4..6, 6..8], "leaf {leaf}");
    assert_eq!(outcomes.len(), 6, "leaf {leaf}: {outcomes:?}");
    let OutcomeKind::Split { pieces, p95_us } = outcomes[0].kind else {
        panic!("leaf {leaf} did not split: {outcomes:?}");
    };
    assert_eq!(pieces, 4);
    assert!(p95_us > 1000, "p95 {p95_us} µs is not over the threshold");
    let mut pieces_done: Vec<(u32, Hash)> = outcomes[1..5]
        .iter()
        .map(|o| match o.kind {
            OutcomeKind::Piece { piece, digest } => (piece, digest),
            ref other => panic!("leaf {leaf}: {other:?}"),
        })
        .collect();
    pieces_done.sort_unstable();
    let expected: Vec<(u32, Hash)> = (0..4u32)
        .map(|piece| {
            (
                piece,
                units_digest(u64::from(leaf), calls[piece as usize].clone()),
            )
        })
        .collect();
    assert_eq!(pieces_done, expected, "leaf {leaf}");
    assert!(done(outcomes[5]), "leaf {leaf}: {:?}", outcomes[5]);
}

#[test]
fn a_resumed_split_runs_only_the_pieces_not_yet_done() {
    // Shard 2 of 4 was split into 4 pieces before a crash; pieces 0 and 2
    // are in the log. Only pieces 1 and 3 run, and the shard's digest is
    // still the unsplit one.
    let dag = one_stage(4, 8);
    let probe = Arc::new(Probe {
        splittable: true,
        ..Probe::default()
    });
    let mut input = input_for(&dag, probe.clone(), SchedulerKind::HotShardSplitter);
    let piece = |units| Some(units_digest(2, units));
    input.splits = HashMap::from([(2, (4, vec![piece(0..2), None, piece(4..6), None]))]);
    let outcomes = run_recorded(input, options(2), Control::new());

    let digests = done_digests(&outcomes);
    for leaf in 0..4u32 {
        assert_eq!(
            digests[&leaf],
            units_digest(u64::from(leaf), 0..8),
            "leaf {leaf}"
        );
    }
    let mut calls = probe.calls.lock().unwrap().clone();
    calls.sort_by_key(|(leaf, units)| (*leaf, units.start));
    assert_eq!(
        calls,
        vec![(0, 0..8), (1, 0..8), (2, 2..4), (2, 6..8), (3, 0..8)]
    );
    let mut pieces: Vec<u32> = outcomes
        .iter()
        .filter_map(|o| match o.kind {
            OutcomeKind::Piece { piece, .. } => Some(piece),
            OutcomeKind::Split { .. } => panic!("the recorded split is reused: {o:?}"),
            _ => None,
        })
        .collect();
    pieces.sort_unstable();
    assert_eq!(pieces, vec![1, 3]);
}

#[test]
fn live_counts_see_the_running_shard_and_return_to_zero() {
    // a (6, splitting) -> b (6, pipelined) -> c (2, barrier, blocking lane);
    // a1 fails, so b1 and then c are blocked. One thread per lane, so
    // exactly one shard runs at a time.
    let dag = dag_of(
        r#"{"name": "p", "stages": [
            {"id": "a", "kind": "synthetic"},
            {"id": "b", "kind": "synthetic", "dependencies": ["a"]},
            {"id": "c", "kind": "synthetic", "dependencies": ["b"]}]}"#,
        &[(6, 4), (6, 4), (2, 1)],
    );
    let control = Control::new();
    assert_eq!(control.live_counts(), (0, 0));
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let probe = |blocking: bool| {
        let (control, seen) = (control.clone(), seen.clone());
        Arc::new(Probe {
            sleep_all_ms: 2,
            splittable: true,
            blocking,
            fail: HashSet::from([1]),
            on_start: Some(Box::new(move |_, _| {
                seen.lock().unwrap().push(control.live_counts())
            })),
            ..Probe::default()
        })
    };
    let (cpu, io) = (probe(false), probe(true));
    let mut input = input_for(&dag, cpu.clone(), SchedulerKind::HotShardSplitter);
    input.executors[2] = io.clone();
    let mut options = options(1);
    options.autosplit = Autosplit {
        p95_ms: 1,
        factor: 2,
    };
    let outcomes = run_recorded(input, options, control.clone());

    let terminal = terminal_by_leaf(&outcomes);
    assert_eq!(terminal.len(), 14);
    assert!(outcomes
        .iter()
        .any(|o| matches!(o.kind, OutcomeKind::Split { .. })));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 10, "{seen:?}");
    assert!(seen.iter().all(|&(_, running)| running == 1), "{seen:?}");
    assert_eq!(control.live_counts(), (0, 0));
}

/// Set in the child process `a_panic_outside_an_executor_aborts_the_process`
/// starts: "pool" or "waiting", where its sink panics.
const PANIC_CHILD: &str = "HXO_SCHED_TEST_PANIC_CHILD";

/// A sink with a bug: it panics when called on a pool thread (`on_pool`)
/// or on any other (the waiting thread).
struct PanickingSink {
    on_pool: bool,
}

impl OutcomeSink for PanickingSink {
    fn accept(&self, _batch: Vec<Outcome>) {
        let name = std::thread::current().name().unwrap_or("").to_string();
        let on_pool = name.starts_with("hxo-");
        if on_pool == self.on_pool {
            panic!("sink bug on thread {name:?}");
        }
    }
}

#[cfg(unix)]
#[test]
fn a_panic_outside_an_executor_aborts_the_process() {
    use std::os::unix::process::ExitStatusExt;
    if let Some(child) = std::env::var_os(PANIC_CHILD) {
        // SAFETY: setrlimit only reads the struct it is given; no core
        // file for the abort that follows.
        unsafe {
            libc::setrlimit(
                libc::RLIMIT_CORE,
                &libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                },
            );
        }
        let on_pool = child == "pool";
        // a (8) -> b (3, barrier). Stopped before the start, b's shards
        // are swept, so the waiting thread calls the sink.
        let dag = two_stages(8, 3);
        let input = input_for(
            &dag,
            Arc::new(Probe::default()),
            SchedulerKind::FairRoundRobin,
        );
        let control = Control::new();
        if !on_pool {
            control.stop(StopReason::Interrupted);
        }
        run(
            input,
            options(2),
            control,
            Arc::new(PanickingSink { on_pool }),
        );
        // Not reached when the policy holds; exit 0 so that the parent
        // sees the difference.
        std::process::exit(0);
    }
    for (child, expected) in [
        ("pool", "Rayon: detected unexpected panic; aborting"),
        (
            "waiting",
            "hxo: the scheduler panicked while shards were running; aborting",
        ),
    ] {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "sched::tests::a_panic_outside_an_executor_aborts_the_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PANIC_CHILD, child)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "{child}: {:?}\n{stderr}",
            output.status
        );
        assert!(stderr.contains("sink bug on thread"), "{child}: {stderr}");
        assert!(stderr.contains(expected), "{child}: {stderr}");
    }
}
