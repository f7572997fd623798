//! Plan fixtures: every `fixtures/plans/invalid/*.json` snapshots its error
//! (`.expected` holds a fragment of the message) and exits 2 without a
//! panic; every `fixtures/plans/valid/*.json` snapshots its DAG summary and
//! Merkle root in `*.snapshot.json`. Set `HXO_UPDATE_SNAPSHOTS=1` to
//! rewrite the valid snapshots after an intended change.

use crate::support::*;
use serde_json::{json, Value};

fn fixture_files(kind: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixture(&format!("plans/{kind}")))
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().ends_with(".snapshot.json")
        })
        .collect();
    files.sort();
    files
}

/// Runs `hxo plan validate` and `hxo run` on an invalid plan: both exit 2
/// and say what and where.
fn check_invalid(sandbox: &Sandbox, plan: &std::path::Path) {
    let expected = std::fs::read_to_string(plan.with_extension("expected"))
        .unwrap_or_else(|_| panic!("{} has no .expected file", plan.display()));
    let expected = expected.trim();
    for args in [vec!["plan", "validate"], vec!["run"]] {
        let mut full = args.clone();
        let plan_text = plan.to_string_lossy().to_string();
        full.push(&plan_text);
        let output = sandbox.run(&full);
        let err = stderr(&output);
        assert_eq!(
            code(&output),
            2,
            "{}: {:?} exit code; stderr:\n{err}",
            plan.display(),
            args
        );
        assert!(
            err.contains(expected),
            "{}: stderr lacks {expected:?}:\n{err}",
            plan.display()
        );
        assert!(
            !err.contains("panicked"),
            "{}: panicked:\n{err}",
            plan.display()
        );
    }
}

#[test]
fn every_invalid_fixture_exits_2_naming_its_json_path() {
    let sandbox = Sandbox::new();
    let files = fixture_files("invalid");
    assert!(
        files.len() >= 20,
        "expected the invalid fixture set, found {}",
        files.len()
    );
    for plan in files {
        check_invalid(&sandbox, &plan);
    }
}

/// The DAG summary and root of a valid plan, as snapshotted.
fn summary(sandbox: &Sandbox, plan: &std::path::Path, threads: &str) -> Value {
    let plan_text = plan.to_string_lossy().to_string();
    let explain = sandbox.run(&["plan", "explain", "--json", &plan_text]);
    assert_code(&explain, 0);
    let explain = json(&explain);
    let run = sandbox.run_env(&["run", "--json", &plan_text], &[("HXO_THREADS", threads)]);
    assert_code(&run, 0);
    let report = json(&run);
    let stages: Vec<Value> = explain["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!({"id": s["id"], "shards": s["shards"], "upstream": s["upstream"], "sample_cas_ids": s["sample_cas_ids"]}))
        .collect();
    json!({
        "total_shards": explain["total_shards"],
        "shard_edges": explain["shard_edges"],
        "dag_digest": explain["dag_digest"],
        "stages": stages,
        "merkle_root": report["merkle_root"],
        "truth_certified": report["truth_certified"],
    })
}

#[test]
fn every_valid_fixture_matches_its_snapshot_with_one_thread_and_many() {
    let files = fixture_files("valid");
    assert!(files.len() >= 3);
    for plan in files {
        let one = summary(&Sandbox::new(), &plan, "1");
        let many = summary(&Sandbox::new(), &plan, "4");
        assert_eq!(
            one,
            many,
            "{}: thread count changed the result",
            plan.display()
        );
        assert_eq!(one["truth_certified"], true, "{}", plan.display());
        let snapshot_path = plan.with_extension("snapshot.json");
        let text = serde_json::to_string_pretty(&one).unwrap() + "\n";
        if std::env::var("HXO_UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
            std::fs::write(&snapshot_path, &text).unwrap();
            continue;
        }
        let snapshot = std::fs::read_to_string(&snapshot_path).unwrap_or_else(|_| {
            panic!(
                "{} has no snapshot; run with HXO_UPDATE_SNAPSHOTS=1",
                plan.display()
            )
        });
        assert_eq!(text, snapshot, "{}: snapshot differs", plan.display());
    }
}
