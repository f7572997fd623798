//! Beyond one machine (DESIGN section 10): the workers of an indexed job
//! each run their slice into their own store; `hxo merge` unions the stores
//! and certifies the root a single machine would have computed.

use crate::support::*;

/// Two pipelined stages and an independent one: every worker can run its
/// slice without the others.
const SLICEABLE: &str = r#"{"name": "sliced", "stages": [
  {"id": "extract", "kind": "synthetic", "config": {"shards": 64, "items": 4096, "work_iters": 8, "seed": 7}},
  {"id": "transform", "kind": "synthetic", "dependencies": ["extract"],
   "config": {"shards": 64, "items": 4096, "work_iters": 16, "seed": 11}},
  {"id": "report", "kind": "synthetic", "config": {"shards": 8, "items": 64, "seed": 13}}]}"#;

#[test]
fn three_workers_merged_give_the_single_machine_root() {
    let single = Sandbox::new();
    let plan = single.plan("sliced.json", SLICEABLE);
    let plan = plan.to_str().unwrap();
    let expected = json(&single.run(&["run", "--json", plan]));

    let workers: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let mut done = 0;
    for (index, worker) in workers.iter().enumerate() {
        // Worker 2 takes its index from the job engine, like a Kubernetes
        // Indexed Job's pod.
        let output = if index == 2 {
            worker.run_env(
                &["run", "--json", "--worker-count", "3", plan],
                &[("JOB_COMPLETION_INDEX", "2")],
            )
        } else {
            worker.run(&[
                "run",
                "--json",
                "--worker-count",
                "3",
                "--worker-index",
                &index.to_string(),
                plan,
            ])
        };
        assert_code(&output, 0);
        let report = json(&output);
        let worker_done = report["done_shards"].as_u64().unwrap();
        assert!(
            worker_done > 0 && worker_done < 136,
            "worker {index} ran {worker_done}"
        );
        assert_eq!(
            report["merkle_root"],
            serde_json::Value::Null,
            "a slice has no root"
        );
        assert_eq!(report["status"], "slice_finished");
        // A finished slice is complete: nothing to resume in its store.
        let resume = worker.run(&["resume"]);
        assert_code(&resume, 0);
        assert!(stderr(&resume).contains("no incomplete plans"));
        done += worker_done;
    }
    assert_eq!(done, 136, "the slices cover the plan exactly once");

    let dirs: Vec<String> = workers
        .iter()
        .map(|w| w.db().to_string_lossy().into_owned())
        .collect();
    let merger = Sandbox::new();
    let mut args = vec!["merge", "--json"];
    args.extend(dirs.iter().map(String::as_str));
    let merged = merger.run(&args);
    assert_code(&merged, 0);
    let merged = json(&merged);
    assert_eq!(merged["merkle_root"], expected["merkle_root"]);
    assert_eq!(merged["truth_certified"], true);
    assert_eq!(merged["done_shards"], 136);
    let verify = merger.run(&["verify", merged["plan_id"].as_str().unwrap()]);
    assert_code(&verify, 0);
    // Merging again gives back the same plan, not a second one.
    let again = json(&merger.run(&args));
    assert_eq!(again["plan_id"], merged["plan_id"]);
    assert_eq!(
        json(&merger.run(&["plans", "--json"]))["plans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A missing worker is a clear error, and nothing is recorded.
    let partial = Sandbox::new().run(&["merge", &dirs[0], &dirs[1]]);
    assert_code(&partial, 2);
    assert!(
        stderr(&partial).contains("have no result"),
        "{}",
        stderr(&partial)
    );

    // A dry run's results never mix with a real run's.
    let dry = Sandbox::new();
    let output = dry.run(&[
        "run",
        "--dry-run",
        "--worker-count",
        "3",
        "--worker-index",
        "2",
        plan,
    ]);
    assert_code(&output, 0);
    let dry_dir = dry.db().to_string_lossy().into_owned();
    let mixed = Sandbox::new().run(&["merge", &dirs[0], &dirs[1], &dry_dir]);
    assert_code(&mixed, 2);
    assert!(
        stderr(&mixed).contains("a dry run, the others are real runs"),
        "{}",
        stderr(&mixed)
    );
}

#[test]
fn worker_flags_are_checked_and_barriers_are_refused() {
    let sandbox = Sandbox::new();
    // pipeline.json's last stage waits at a barrier for all of the one
    // before: a worker could not run it alone.
    let barrier = fixture("plans/valid/pipeline.json");
    let refused = sandbox.run(&[
        "run",
        "--worker-count",
        "2",
        "--worker-index",
        "0",
        barrier.to_str().unwrap(),
    ]);
    assert_code(&refused, 2);
    assert!(
        stderr(&refused)
            .contains("stages[2].dependencies: stage load waits for all of stage transform"),
        "{}",
        stderr(&refused)
    );
    let plan = sandbox.plan("sliced.json", SLICEABLE);
    let plan = plan.to_str().unwrap();
    let out_of_range = sandbox.run(&["run", "--worker-count", "3", "--worker-index", "3", plan]);
    assert_code(&out_of_range, 2);
    assert!(stderr(&out_of_range).contains("not below the worker count"));
    let no_index = sandbox.run(&["run", "--worker-count", "3", plan]);
    assert_code(&no_index, 2);
    assert!(stderr(&no_index).contains("JOB_COMPLETION_INDEX"));
    let bad_env = sandbox.run_env(
        &["run", "--worker-count", "3", plan],
        &[("SLURM_ARRAY_TASK_ID", "two")],
    );
    assert_code(&bad_env, 2);
}

#[test]
fn workers_of_different_plans_are_not_merged() {
    // Two workers of one plan, one of a plan that differs only in a seed
    // (same shape, other cas_ids), one of a plan with more shards.
    let small = |seed: u32, shards: u32| {
        format!(
            r#"{{"name": "small", "stages": [{{"id": "s", "kind": "synthetic", "config": {{"shards": {shards}, "seed": {seed}}}}}]}}"#
        )
    };
    let run_worker = |plan_text: &str, index: &str| -> Sandbox {
        let worker = Sandbox::new();
        let plan = worker.plan("small.json", plan_text);
        let output = worker.run(&[
            "run",
            "--worker-count",
            "2",
            "--worker-index",
            index,
            plan.to_str().unwrap(),
        ]);
        assert_code(&output, 0);
        worker
    };
    let workers = [
        run_worker(&small(1, 6), "0"),
        run_worker(&small(1, 6), "1"),
        run_worker(&small(2, 6), "1"),
        run_worker(&small(1, 8), "1"),
    ];
    let [first, second, other_seed, more_shards] = workers
        .each_ref()
        .map(|w| w.db().to_string_lossy().into_owned());

    let merged = Sandbox::new().run(&["merge", "--json", &first, &second]);
    assert_code(&merged, 0);
    assert_eq!(json(&merged)["truth_certified"], true);
    for (other, why) in [
        (&other_seed, "a different plan (its DAG digest"),
        (&more_shards, "a different plan (8 shards, not 6)"),
    ] {
        let refused = Sandbox::new().run(&["merge", &first, other]);
        assert_code(&refused, 2);
        assert!(stderr(&refused).contains(why), "{}", stderr(&refused));
    }
}
