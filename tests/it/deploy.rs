//! The guide's deploy plan against the fixture project, for real: stable
//! roots across runs and thread counts, byte-identical pack archives,
//! migrations applied exactly once (across kill -9 and resume, and across
//! fresh stores), and dry runs that leave the database untouched.

use crate::support::*;
use std::path::Path;
use std::time::Duration;

fn project(sandbox: &Sandbox) -> std::path::PathBuf {
    let dir = sandbox.path().join("project");
    hxo::demo::prepare(&dir).expect("demo project");
    dir
}

fn accounts(dir: &Path) -> (i64, i64, i64) {
    let connection = rusqlite::Connection::open(dir.join("data/app.sqlite")).unwrap();
    connection
        .query_row(
            "SELECT count(*), sum(migrated), sum(balance_cents) FROM accounts",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap()
}

fn run_plan(sandbox: &Sandbox, plan: &Path, args: &[&str], threads: &str) -> serde_json::Value {
    let mut full = vec!["run", "--json"];
    full.extend_from_slice(args);
    let plan_text = plan.to_string_lossy().to_string();
    full.push(&plan_text);
    let output = sandbox.run_env(&full, &[("HXO_THREADS", threads)]);
    assert_code(&output, 0);
    json(&output)
}

#[test]
fn migrations_need_a_dry_run_which_changes_nothing_then_apply_exactly_once() {
    let sandbox = Sandbox::new();
    let dir = project(&sandbox);
    let plan = dir.join("deploy_full_stack.json");
    let before = accounts(&dir);
    assert_eq!(before.1, 0);

    // Without a dry run the kind refuses to apply.
    let refused = sandbox.run(&["run", "--json", plan.to_str().unwrap()]);
    assert_code(&refused, 3);
    let report = json(&refused);
    assert!(
        report["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no successful dry run"),
        "{report}"
    );
    assert_eq!(accounts(&dir), before, "a refused batch changed rows");

    let dry = run_plan(&sandbox, &plan, &["--dry-run"], "2");
    assert_eq!(dry["truth_certified"], true);
    assert_eq!(accounts(&dir), before, "the dry run changed rows");

    let real = run_plan(&sandbox, &plan, &[], "2");
    let after = accounts(&dir);
    assert_eq!(after.0, before.0);
    assert_eq!(after.1, before.0, "every row migrated");
    assert_eq!(after.2, before.2 * 100, "balances converted exactly once");

    // A later run in a fresh store does not apply anything twice.
    let fresh = Sandbox::new();
    let again = run_plan(&fresh, &plan, &["--dry-run"], "1");
    assert_eq!(again["done_shards"], dry["done_shards"]);
    let again = run_plan(&fresh, &plan, &[], "1");
    assert_eq!(accounts(&dir), after, "a fresh store re-applied batches");
    assert_eq!(
        again["merkle_root"], real["merkle_root"],
        "root differs across stores and threads"
    );
}

#[test]
fn the_guide_plan_gives_the_same_root_every_time_and_pack_archives_are_identical() {
    let first = Sandbox::new();
    let second = Sandbox::new();
    let mut roots = Vec::new();
    for (sandbox, threads) in [(&first, "1"), (&second, "4")] {
        let dir = project(sandbox);
        let plan = dir.join("full_project.json");
        run_plan(sandbox, &plan, &["--dry-run"], threads);
        let report = run_plan(sandbox, &plan, &[], threads);
        assert_eq!(report["truth_certified"], true);
        roots.push(report["merkle_root"].clone());
    }
    assert_eq!(roots[0], roots[1]);
    let packs = |sandbox: &Sandbox| {
        let mut entries: Vec<(String, Vec<u8>)> =
            std::fs::read_dir(sandbox.path().join("artifacts/packs"))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
        entries.sort();
        entries
    };
    let (a, b) = (packs(&first), packs(&second));
    assert!(!a.is_empty());
    assert_eq!(a, b, "pack archives differ between runs");
    for kind in ["registry", "cache", "assets", "docs"] {
        let count = std::fs::read_dir(first.path().join("artifacts").join(kind))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(count > 0, "no {kind} artifacts");
    }
}

#[test]
fn a_migration_killed_mid_run_resumes_without_applying_any_batch_twice() {
    let sandbox = Sandbox::new();
    let dir = project(&sandbox);
    let plan = sandbox.plan(
        "migrate.json",
        &format!(
            r#"{{"name": "slow_migration", "stages": [{{"id": "m", "kind": "deploy.migrate",
               "config": {{"database": "{}", "batch_size": 500}}}}]}}"#,
            dir.join("data/app.sqlite").display()
        ),
    );
    let plan = plan.to_str().unwrap();
    let before = accounts(&dir);
    let dry = sandbox.run(&["run", "--dry-run", plan]);
    assert_code(&dry, 0);
    for (round, delay_ms) in [(1usize, 100u64), (2, 600)] {
        let mut child = sandbox
            .command(&["run", plan])
            .env("HXO_MAX_CONCURRENCY", "2")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill only once the plan is accepted (so there is something to
        // resume), at some point of its batches.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            let plans = sandbox.run(&["plans", "--json"]);
            if code(&plans) == 0
                && json(&plans)["plans"]
                    .as_array()
                    .is_some_and(|p| p.len() > round)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        let resumed = sandbox.run(&["resume", "--json"]);
        assert_code(&resumed, 0);
        let after = accounts(&dir);
        assert_eq!(after.1, before.0, "every row migrated once resumed");
        assert_eq!(after.2, before.2 * 100, "a batch was applied twice");
        // Later iterations see a migrated database: nothing changes again.
    }
}

#[test]
fn hxo_deploy_builds_the_guide_plan_from_stage_names() {
    let sandbox = Sandbox::new();
    let dir = project(&sandbox);
    let root = dir.to_str().unwrap();
    let output = sandbox.run(&["deploy", "--json", "--stages", "pack,prime", "--root", root]);
    assert_code(&output, 0);
    let report = json(&output);
    assert_eq!(report["plan_name"], "deploy_full_stack");
    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage_id"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["pack_backend", "prime_registry"]);
    assert_eq!(report["truth_certified"], true);
    // The migration stage obeys its kind's dry-run policy here too.
    let dry = sandbox.run(&["deploy", "--dry-run", "--stages", "migrate", "--root", root]);
    assert_code(&dry, 0);
    let real = sandbox.run(&["deploy", "--stages", "migrate", "--root", root]);
    assert_code(&real, 0);
    assert_eq!(accounts(&dir).1, 100_000);
    let unknown = sandbox.run(&["deploy", "--stages", "pack,ship", "--root", root]);
    assert_code(&unknown, 2);
    assert!(stderr(&unknown).contains("unknown stage \"ship\""));
}
