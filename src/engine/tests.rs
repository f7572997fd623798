//! The engine's verbs end to end in one process: a store in a temporary
//! directory, small synthetic plans, no binary spawned. What each verb
//! does to a plan's status, what it refuses, and that a refusal changes
//! nothing durable.

use super::lifecycle::AbortOutcome;
use super::*;
use crate::plan::PlanSpec;
use crate::settings::Overrides;
use std::path::Path;
use std::time::Duration;

fn settings(dir: &Path, extra: &[(&str, &str)]) -> Settings {
    let db = dir.join("checkpoints").display().to_string();
    let artifacts = dir.join("artifacts").display().to_string();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::resolve(
        &|name| match name {
            "HXO_DB_PATH" => Some(db.clone()),
            "HXO_ARTIFACTS_DIR" => Some(artifacts.clone()),
            "HXO_THREADS" => Some("2".into()),
            "HXO_RETRY_BACKOFF_MS" => Some("1".into()),
            other => extra
                .iter()
                .find(|(k, _)| k == other)
                .map(|(_, v)| v.clone()),
        },
        Overrides::default(),
    )
    .unwrap()
}

fn synthetic(shards: u64, extra: &str) -> PlanSpec {
    PlanSpec::from_json(&format!(
        r#"{{"name": "t", "stages": [{{"id": "a", "kind": "synthetic",
             "config": {{"shards": {shards}, "seed": 3 {extra}}}}}]}}"#
    ))
    .unwrap()
}

fn open(dir: &Path, extra: &[(&str, &str)]) -> Arc<Engine> {
    Engine::open(settings(dir, extra), false).unwrap()
}

/// Runs a fresh plan to its end in this thread.
fn run_new(engine: &Arc<Engine>, spec: PlanSpec) -> (PlanId, RunSummary) {
    let compiled = engine.compile(spec, Path::new(".")).unwrap();
    let ticket = engine.start_new(compiled, "test", false).unwrap();
    let plan_id = *ticket.plan_id();
    (plan_id, engine.run(ticket, None).unwrap())
}

fn status(engine: &Engine, plan_id: &PlanId) -> PlanStatus {
    engine.plan_status(plan_id).unwrap()
}

fn wrong_state(result: Result<impl Sized, EngineError>) -> (PlanStatus, Verb) {
    match result {
        Err(EngineError::WrongState { status, action, .. }) => (status, action),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the verb applied"),
    }
}

#[test]
fn a_finished_plan_refuses_every_verb_and_keeps_its_certified_root() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[]);
    let (plan_id, summary) = run_new(&engine, synthetic(6, ""));
    assert_eq!(summary.end, RunEnd::Succeeded);
    assert!(summary.report.truth_certified);
    let root = summary.report.merkle_root.clone();
    assert_eq!(status(&engine, &plan_id), PlanStatus::Finished);
    assert_eq!(
        wrong_state(engine.replay(&plan_id, "t")),
        (PlanStatus::Finished, Verb::Replay)
    );
    assert_eq!(
        wrong_state(engine.abort(&plan_id, "t", Duration::ZERO)),
        (PlanStatus::Finished, Verb::Abort)
    );
    assert_eq!(
        wrong_state(engine.resume(&plan_id)),
        (PlanStatus::Finished, Verb::Resume)
    );
    assert_eq!(
        wrong_state(engine.submit(&plan_id, "t")),
        (PlanStatus::Finished, Verb::Submit)
    );
    let report = engine.report(&plan_id).unwrap();
    assert_eq!(report.status, "finished");
    assert!(report.truth_certified);
    assert_eq!(report.merkle_root, root);
    assert_eq!(report.replays, 0, "a refused replay logged nothing");
    engine.close().unwrap();
    // The same, read back from the log alone.
    let reopened = open(dir.path(), &[]);
    assert_eq!(status(&reopened, &plan_id), PlanStatus::Finished);
    assert!(reopened.verify(&plan_id).unwrap().ok);
    reopened.close().unwrap();
}

#[test]
fn a_created_plan_waits_for_submit_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[]);
    let compiled = engine.compile(synthetic(3, ""), Path::new(".")).unwrap();
    let plan_id = engine.create(&compiled, "t", false).unwrap();
    assert_eq!(status(&engine, &plan_id), PlanStatus::Created);
    assert_eq!(
        wrong_state(engine.resume(&plan_id)),
        (PlanStatus::Created, Verb::Resume)
    );
    assert!(
        engine.resumable_plans().is_empty(),
        "a created plan is not resumed"
    );
    engine.close().unwrap();
    let engine = open(dir.path(), &[]);
    assert_eq!(status(&engine, &plan_id), PlanStatus::Created);
    let ticket = engine.submit(&plan_id, "t").unwrap();
    assert_eq!(status(&engine, &plan_id), PlanStatus::Running);
    assert!(matches!(
        engine.submit(&plan_id, "t"),
        Err(EngineError::WrongState { .. })
    ));
    let summary = engine.run(ticket, None).unwrap();
    assert_eq!(summary.end, RunEnd::Succeeded);
    assert_eq!(status(&engine, &plan_id), PlanStatus::Finished);
    engine.close().unwrap();
}

#[test]
fn abort_of_a_plan_not_running_fails_its_pending_shards_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[]);
    let compiled = engine.compile(synthetic(4, ""), Path::new(".")).unwrap();
    let plan_id = engine.create(&compiled, "t", false).unwrap();
    assert_eq!(
        engine.abort(&plan_id, "t", Duration::ZERO).unwrap(),
        AbortOutcome::Aborted
    );
    assert_eq!(status(&engine, &plan_id), PlanStatus::Aborted);
    let report = engine.report(&plan_id).unwrap();
    assert_eq!(report.aborted_shards, 4);
    assert_eq!(
        wrong_state(engine.abort(&plan_id, "t", Duration::ZERO)),
        (PlanStatus::Aborted, Verb::Abort)
    );
    // An aborted plan can be replayed: its aborted shards run again.
    let (ticket, to_run) = engine.replay(&plan_id, "t").unwrap();
    assert_eq!(to_run, 4);
    assert_eq!(engine.run(ticket, None).unwrap().end, RunEnd::Succeeded);
    assert_eq!(status(&engine, &plan_id), PlanStatus::Finished);
    engine.close().unwrap();
}

#[test]
fn replay_runs_only_the_failed_shards() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[("HXO_MAX_ATTEMPTS", "1")]);
    let (plan_id, summary) = run_new(&engine, synthetic(20, r#", "fail_rate": 0.3"#));
    assert_eq!(summary.end, RunEnd::Failed);
    assert_eq!(status(&engine, &plan_id), PlanStatus::Failed);
    let failed = summary.report.failed_shards;
    assert!(failed > 0 && failed < 20, "{failed} failed");
    let (ticket, to_run) = engine.replay(&plan_id, "t").unwrap();
    assert_eq!(to_run, failed);
    // The same seed fails the same shards again: still failed, replayable.
    engine.run(ticket, None).unwrap();
    assert_eq!(status(&engine, &plan_id), PlanStatus::Failed);
    assert_eq!(engine.report(&plan_id).unwrap().replays, 1);
    engine.close().unwrap();
}

#[test]
fn the_run_limit_refuses_a_start_before_anything_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[]);
    engine.set_runs_max(1);
    let compiled = engine.compile(synthetic(2, ""), Path::new(".")).unwrap();
    let first = engine.start_new(compiled, "t", false).unwrap();
    let compiled = engine.compile(synthetic(2, ""), Path::new(".")).unwrap();
    assert!(matches!(
        engine.start_new(compiled, "t", false),
        Err(EngineError::AtCapacity { runs_max: 1 })
    ));
    assert_eq!(
        engine.plan_ids().len(),
        1,
        "the refused plan was not accepted"
    );
    drop(first);
    // The slot is free again once the ticket is gone; the plan it held was
    // accepted and never started.
    let only = engine.plan_ids()[0];
    assert_eq!(status(&engine, &only), PlanStatus::Submitted);
    assert_eq!(engine.resumable_plans(), vec![only]);
    let ticket = engine.resume(&only).unwrap();
    assert_eq!(engine.run(ticket, None).unwrap().end, RunEnd::Succeeded);
    engine.close().unwrap();
}

#[test]
fn an_interrupted_run_reads_back_interrupted_and_resumes_as_a_rehydration() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[]);
    let compiled = engine
        .compile(synthetic(40, r#", "sleep_ms": 20"#), Path::new("."))
        .unwrap();
    let ticket = engine.start_new(compiled, "t", false).unwrap();
    let plan_id = *ticket.plan_id();
    let stopper = engine.clone();
    let interrupter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stopper.interrupt_all();
    });
    let summary = engine.run(ticket, None).unwrap();
    interrupter.join().unwrap();
    assert_eq!(summary.end, RunEnd::Interrupted);
    assert_eq!(status(&engine, &plan_id), PlanStatus::Interrupted);
    // Interrupted with no failed shard: a replay has nothing to do.
    assert!(matches!(
        engine.replay(&plan_id, "t"),
        Err(EngineError::NothingToReplay { .. })
    ));
    assert_eq!(engine.report(&plan_id).unwrap().replays, 0);
    engine.close().unwrap();
    let engine = open(dir.path(), &[]);
    assert_eq!(status(&engine, &plan_id), PlanStatus::Interrupted);
    assert_eq!(engine.resumable_plans(), vec![plan_id]);
    let ticket = engine.resume(&plan_id).unwrap();
    let summary = engine.run(ticket, None).unwrap();
    assert_eq!(summary.end, RunEnd::Succeeded);
    assert_eq!(summary.report.rehydrations, 1);
    assert!(summary.report.truth_certified);
    engine.close().unwrap();
}

/// An abort that races the end of a run either aborts the plan or is
/// refused: a plan never ends both finished (certified, with a root) and
/// aborted. Every shard is reused, so each run ends within moments of
/// starting, while another thread aborts it as fast as it can.
#[test]
fn an_abort_racing_the_end_of_a_run_never_aborts_a_finished_plan() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[]);
    run_new(&engine, synthetic(8, ""));
    for _ in 0..150 {
        let compiled = engine.compile(synthetic(8, ""), Path::new(".")).unwrap();
        let ticket = engine.start_new(compiled, "t", false).unwrap();
        let plan_id = *ticket.plan_id();
        let aborter = engine.clone();
        let racing = std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            for _ in 0..200 {
                outcomes.push(aborter.abort(&plan_id, "t", Duration::ZERO).ok());
            }
            outcomes
        });
        let end = engine.run(ticket, None).unwrap().end;
        let accepted = racing.join().unwrap().into_iter().flatten().count();
        let report = engine.report(&plan_id).unwrap();
        match end {
            RunEnd::Succeeded => {
                assert_eq!(report.status, "finished", "{end:?}");
                assert!(report.truth_certified);
                // An abort that was still stopping when the run ended
                // finished is the only one that may have said so.
                let _ = accepted;
            }
            RunEnd::Aborted => {
                assert_eq!(report.status, "aborted");
                assert!(report.merkle_root.is_none());
                assert!(!report.truth_certified);
                assert!(accepted >= 1);
            }
            other => panic!("{other:?}"),
        }
    }
    engine.close().unwrap();
}

#[test]
fn a_replayed_plan_is_submitted_whatever_it_was_before() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[]);
    let compiled = engine
        .compile(synthetic(30, r#", "sleep_ms": 20"#), Path::new("."))
        .unwrap();
    let plan_id = engine.create(&compiled, "t", false).unwrap();
    engine.abort(&plan_id, "t", Duration::ZERO).unwrap();
    let (ticket, _) = engine.replay(&plan_id, "t").unwrap();
    let stopper = engine.clone();
    let interrupter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(80));
        stopper.interrupt_all();
    });
    assert_eq!(engine.run(ticket, None).unwrap().end, RunEnd::Interrupted);
    interrupter.join().unwrap();
    assert_eq!(status(&engine, &plan_id), PlanStatus::Interrupted);
    assert_eq!(engine.resumable_plans(), vec![plan_id]);
    engine.close().unwrap();
}

#[test]
fn a_worker_slice_reads_back_finished_or_failed_never_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), &[("HXO_MAX_ATTEMPTS", "1")]);
    let slice = crate::plan::WorkerSlice { index: 0, count: 2 };
    for (extra, end, expected) in [
        ("", RunEnd::Succeeded, PlanStatus::SliceFinished),
        (r#", "fail_rate": 1.0"#, RunEnd::Failed, PlanStatus::Failed),
    ] {
        let mut compiled = engine.compile(synthetic(6, extra), Path::new(".")).unwrap();
        compiled.worker = Some(slice);
        let ticket = engine.start_new(compiled, "t", false).unwrap();
        let plan_id = *ticket.plan_id();
        let summary = engine.run(ticket, None).unwrap();
        assert_eq!(summary.end, end);
        assert_eq!(status(&engine, &plan_id), expected);
        assert!(summary.report.merkle_root.is_none(), "a slice has no root");
        assert!(!engine.resumable_plans().contains(&plan_id));
        assert!(matches!(
            engine.verify(&plan_id),
            Err(EngineError::NoRoot { .. })
        ));
    }
    engine.close().unwrap();
}
