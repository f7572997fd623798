//! The engine-level golden store of log format 1 (`fixtures/stores/v1`,
//! see its README): this build reads every lifecycle fact that version
//! kept as JSON events (created, submitted, run, rehydrated, certified)
//! back as the same plan states, its certified roots still verify from the
//! log files, and a resume of it runs exactly the plan that was submitted
//! and never run.

use crate::support::*;
use serde_json::Value;

/// A sandbox whose store is a copy of the golden v1 store.
fn golden_sandbox() -> Sandbox {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.db()).unwrap();
    for entry in std::fs::read_dir(fixture("stores/v1")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            std::fs::copy(&path, sandbox.db().join(path.file_name().unwrap())).unwrap();
        }
    }
    sandbox
}

/// Plan name -> its `plans --json` row.
fn plans_by_name(sandbox: &Sandbox) -> std::collections::HashMap<String, Value> {
    let plans = json(&sandbox.run(&["plans", "--json"]));
    plans["plans"]
        .as_array()
        .expect("an array of plans")
        .iter()
        .map(|row| (row["plan_name"].as_str().unwrap().to_string(), row.clone()))
        .collect()
}

#[test]
fn the_v1_store_reads_back_every_lifecycle_state() {
    let sandbox = golden_sandbox();
    let plans = plans_by_name(&sandbox);
    let expect = [
        ("golden_finished", "finished", true),
        ("golden_failed", "failed", false),
        ("golden_created", "created", false),
        ("golden_submitted", "finished", true),
        ("golden_rehydrated", "finished", true),
        ("golden_aborted", "aborted", false),
        ("golden_pending", "submitted", false),
    ];
    assert_eq!(plans.len(), expect.len(), "{plans:?}");
    for (name, status, certified) in expect {
        let row = &plans[name];
        assert_eq!(row["status"], status, "{name}: {row}");
        assert_eq!(row["truth_certified"], certified, "{name}: {row}");
    }
    let roots = [
        (
            "golden_finished",
            "68609778f07538ae32af99931593c289d679b43304fa0c56e21db262e8472740",
        ),
        (
            "golden_submitted",
            "888e7505ea2d032da641d5416203e4856c2eed86609da30c42371157e6209f71",
        ),
        (
            "golden_rehydrated",
            "9fce143760b6c56054024d7b80f92de6065e94a7ddbee16124c55be4926d883c",
        ),
    ];
    for (name, root) in roots {
        assert_eq!(plans[name]["merkle_root"], root, "{name}");
        let id = plans[name]["plan_id"].as_str().unwrap();
        assert_code(&sandbox.run(&["verify", id]), 0);
    }
    let rehydrated = plans["golden_rehydrated"]["plan_id"].as_str().unwrap();
    let report = json(&sandbox.run(&["report", "--json", rehydrated]));
    assert_eq!(report["rehydrations"], 1, "{report}");
    let finished = plans["golden_finished"]["plan_id"].as_str().unwrap();
    let report = json(&sandbox.run(&["report", "--json", finished]));
    assert_eq!(report["rehydrations"], 0, "{report}");
}

#[test]
fn a_resume_of_the_v1_store_runs_only_the_submitted_plan_and_appends_v2() {
    let sandbox = golden_sandbox();
    let resume = sandbox.run(&["resume"]);
    assert_code(&resume, 0);
    let err = stderr(&resume);
    assert_eq!(err.matches("resuming plan").count(), 1, "{err}");
    let plans = plans_by_name(&sandbox);
    let pending = &plans["golden_pending"];
    assert_eq!(pending["status"], "finished", "{pending}");
    assert_eq!(pending["truth_certified"], true, "{pending}");
    assert_eq!(plans["golden_created"]["status"], "created");
    assert_eq!(plans["golden_finished"]["truth_certified"], true);
    // The old segment is kept as it was; what this build wrote went into
    // a segment of its own.
    let original = std::fs::read(fixture("stores/v1/00000000.seg")).unwrap();
    let kept = std::fs::read(sandbox.db().join("00000000.seg")).unwrap();
    assert!(kept == original, "the version-1 segment was rewritten");
    assert!(sandbox.db().join("00000001.seg").exists());
}
