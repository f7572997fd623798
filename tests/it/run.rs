//! End-to-end runs of the `hxo` binary: exit codes, failure semantics,
//! reuse, the after-the-fact commands, and an independent RFC 6962 check
//! of the root from `hxo export`.

use crate::support::*;
use serde_json::Value;

const FLAKY_DOWNSTREAM: &str = r#"{"name": "failing", "stages": [
  {"id": "a", "kind": "synthetic", "config": {"shards": 20, "fail_rate": 0.25, "seed": 3}},
  {"id": "b", "kind": "synthetic", "dependencies": ["a"], "config": {"shards": 20, "seed": 4}},
  {"id": "c", "kind": "synthetic", "partitioner": "by_range", "dependencies": ["b"], "config": {"shards": 5, "seed": 5}}]}"#;

fn export_lines(sandbox: &Sandbox, plan_id: &str) -> Vec<Value> {
    let output = sandbox.run(&["export", plan_id]);
    assert_code(&output, 0);
    stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("export line is JSON"))
        .collect()
}

#[test]
fn failed_shards_block_downstream_exit_3_and_replay_finishes_the_subtree() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("failing.json", FLAKY_DOWNSTREAM);
    let plan = plan.to_str().unwrap();
    // One attempt: fail_rate draws per attempt, so some shards fail for good.
    let output = sandbox.run_env(&["run", "--json", plan], &[("HXO_MAX_ATTEMPTS", "1")]);
    assert_code(&output, 3);
    let report = json(&output);
    let failed = report["failed_shards"].as_u64().unwrap();
    assert!(failed > 0 && failed < 20, "{report}");
    assert_eq!(report["truth_certified"], false);
    let plan_id = report["plan_id"].as_str().unwrap().to_string();
    // Pipelined: b's shard k ran iff a's shard k succeeded; c is behind a
    // barrier on b, so none of it ran.
    let lines = export_lines(&sandbox, &plan_id);
    assert_eq!(lines.len(), 45);
    for k in 0..20 {
        let upstream = lines[k]["state"].as_str().unwrap();
        let downstream = lines[20 + k]["state"].as_str().unwrap();
        if upstream == "failed" {
            assert_eq!(downstream, "pending", "shard {k} ran after a failure");
        } else {
            assert_eq!(downstream, "done");
        }
    }
    assert!(lines[40..].iter().all(|l| l["state"] == "pending"));
    // Shards that never ran have no cas_id in the log, and export says so
    // rather than printing zeros; failed ones carry theirs.
    for line in &lines {
        match line["state"].as_str().unwrap() {
            "pending" => assert!(line["cas_id"].is_null(), "{line}"),
            _ => assert_eq!(line["cas_id"].as_str().unwrap().len(), 64, "{line}"),
        }
    }
    let done_before: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["state"] == "done")
        .map(|l| {
            (
                l["cas_id"].as_str().unwrap().into(),
                l["output_digest"].as_str().unwrap().into(),
            )
        })
        .collect();

    // Replay with retries: the failed subtree runs, nothing else.
    let replay = sandbox.run_env(
        &["replay", "--json", &plan_id],
        &[("HXO_MAX_ATTEMPTS", "10")],
    );
    assert_code(&replay, 0);
    let replayed = json(&replay);
    assert_eq!(replayed["done_shards"], 45);
    assert_eq!(replayed["truth_certified"], true);
    assert_eq!(replayed["replays"], 1);
    let after = export_lines(&sandbox, &plan_id);
    for (cas, digest) in &done_before {
        let line = after.iter().find(|l| l["cas_id"] == cas.as_str()).unwrap();
        assert_eq!(line["output_digest"], digest.as_str());
        // Shards done before the replay kept their single attempt record.
        assert_ne!(line["attempts"], 0);
    }
    // The same plan run cleanly in a fresh store gives the same root.
    let fresh = Sandbox::new();
    let plan = fresh.plan("failing.json", FLAKY_DOWNSTREAM);
    let clean = fresh.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[("HXO_MAX_ATTEMPTS", "10")],
    );
    assert_code(&clean, 0);
    assert_eq!(json(&clean)["merkle_root"], replayed["merkle_root"]);
}

#[test]
fn a_panicking_executor_fails_its_shard_not_the_run() {
    let sandbox = Sandbox::new();
    let output = sandbox.run_single_attempts(
        "panics.json",
        r#"{"name": "panics", "stages": [{"id": "p", "kind": "synthetic", "config": {"shards": 30, "panic_rate": 0.3, "seed": 9}}]}"#,
    );
    assert_code(&output, 3);
    let report = json(&output);
    assert_eq!(
        report["done_shards"].as_u64().unwrap() + report["failed_shards"].as_u64().unwrap(),
        30
    );
    let failure = &report["failures"][0]["error"];
    assert!(
        failure
            .as_str()
            .unwrap()
            .starts_with("panicked: synthetic panic"),
        "{failure}"
    );
    assert!(
        !stderr(&output).contains("panicked at"),
        "shard panics are not printed"
    );
}

#[test]
fn rerunning_a_plan_reuses_every_done_shard_and_gives_the_same_root() {
    let sandbox = Sandbox::new();
    let plan = crate::support::fixture("plans/valid/synthetic.json");
    let plan = plan.to_str().unwrap();
    let first = json(&sandbox.run(&["run", "--json", plan]));
    let second_output = sandbox.run(&["run", "--json", plan]);
    assert_code(&second_output, 0);
    let second = json(&second_output);
    assert_ne!(first["plan_id"], second["plan_id"]);
    assert_eq!(first["reused_shards"], 0);
    assert_eq!(second["reused_shards"], second["total_shards"]);
    assert_eq!(first["merkle_root"], second["merkle_root"]);
    assert_eq!(second["truth_certified"], true);
}

#[test]
fn status_report_proof_verify_and_plans_read_the_store() {
    let sandbox = Sandbox::new();
    let plan = crate::support::fixture("plans/valid/pipeline.json");
    let run = json(&sandbox.run(&["run", "--json", plan.to_str().unwrap()]));
    let plan_id = run["plan_id"].as_str().unwrap();
    for field in [
        "plan_id",
        "plan_name",
        "total_shards",
        "pending_shards",
        "claimed_shards",
        "running_shards",
        "done_shards",
        "failed_shards",
        "merkle_root",
        "truth_certified",
        "started_at",
        "finished_at",
        "eta_seconds",
        "completion_rate",
        "failed_ratio",
        "avg_shard_ms",
        "p95_shard_ms",
        "reused_shards",
        "rehydrations",
        "stages",
    ] {
        assert!(run.get(field).is_some(), "report lacks {field}");
    }
    let status = json(&sandbox.run(&["status", "--json", plan_id]));
    assert_eq!(status["done_shards"], 136);
    assert_eq!(status["pending_shards"], 0);
    assert_eq!(status["merkle_root"], run["merkle_root"]);
    // A unique prefix of the id is enough.
    let short = json(&sandbox.run(&["report", "--json", &plan_id[..8]]));
    assert_eq!(short["plan_id"], plan_id);

    let lines = export_lines(&sandbox, plan_id);
    let cas = lines[77]["cas_id"].as_str().unwrap();
    let proof = json(&sandbox.run(&["proof", "--json", plan_id, cas]));
    assert_eq!(proof["leaf_index"], 77);
    assert_eq!(proof["tree_size"], 136);
    assert_eq!(proof["root"], run["merkle_root"]);
    assert_eq!(proof["output_digest"], lines[77]["output_digest"]);

    let verify = sandbox.run(&["verify", "--json", plan_id]);
    assert_code(&verify, 0);
    assert_eq!(json(&verify)["ok"], true);

    let plans = json(&sandbox.run(&["plans", "--json"]));
    assert_eq!(plans["plans"].as_array().unwrap().len(), 1);

    let unknown = sandbox.run(&["status", "00000000-0000-0000-0000-000000000000"]);
    assert_code(&unknown, 2);
    assert!(stderr(&unknown).contains("not found"));
    let bad_cas = sandbox.run(&["proof", plan_id, "zz"]);
    assert_code(&bad_cas, 2);
}

#[test]
fn the_root_recomputed_from_export_by_ct_merkle_matches() {
    let sandbox = Sandbox::new();
    let plan = crate::support::fixture("plans/valid/pipeline.json");
    let run = json(&sandbox.run(&["run", "--json", plan.to_str().unwrap()]));
    let lines = export_lines(&sandbox, run["plan_id"].as_str().unwrap());
    // ct-merkle hashes a leaf's raw bytes as RFC 6962 leaf data.
    let mut tree = ct_merkle::CtMerkleTree::<sha2::Sha256, Vec<u8>>::new();
    for line in &lines {
        let mut leaf = hex_bytes(line["cas_id"].as_str().unwrap());
        leaf.extend(hex_bytes(line["output_digest"].as_str().unwrap()));
        tree.push(leaf);
    }
    let root = tree.root();
    let root_hex: String = root.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(root_hex, run["merkle_root"].as_str().unwrap());
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_hanging_command_dies_at_its_timeout() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "hang.json",
        r#"{"name": "hang", "stages": [{"id": "h", "kind": "exec", "config": {"shards": 2, "command": "sleep 60"}}]}"#,
    );
    let started = std::time::Instant::now();
    let output = sandbox.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[("HXO_SHARD_TIMEOUT_MS", "300"), ("HXO_MAX_ATTEMPTS", "2")],
    );
    assert_code(&output, 3);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let report = json(&output);
    assert_eq!(report["failed_shards"], 2);
    assert_eq!(report["failures"][0]["error"], "timed out after 300 ms");
    assert_eq!(report["failures"][0]["attempts"], 2);
}

const FLAKY: &str = r#"{"name": "flaky", "stages": [{"id": "f", "kind": "synthetic", "config": {"shards": 10, "flaky_attempts": 2}}]}"#;

#[test]
fn flaky_shards_are_retried_until_they_succeed() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("flaky.json", FLAKY);
    let output = sandbox.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[("HXO_MAX_ATTEMPTS", "3")],
    );
    assert_code(&output, 0);
    let lines = export_lines(&sandbox, json(&output)["plan_id"].as_str().unwrap());
    assert!(
        lines.iter().all(|l| l["attempts"] == 3),
        "every shard took three attempts"
    );
    // In a fresh store (the first store would reuse the results), two
    // attempts are not enough.
    let fresh = Sandbox::new();
    let plan = fresh.plan("flaky.json", FLAKY);
    let too_few = fresh.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[("HXO_MAX_ATTEMPTS", "2")],
    );
    assert_code(&too_few, 3);
}

#[test]
fn a_second_process_on_the_store_fails_at_once_with_the_owner_pid() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "slow.json",
        r#"{"name": "slow", "stages": [{"id": "s", "kind": "synthetic", "config": {"shards": 4, "sleep_ms": 3000}}]}"#,
    );
    let mut first = sandbox
        .command(&["run", plan.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Wait until the first process holds the lock.
    let lock = sandbox.db().join("LOCK");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let second = sandbox.run(&["run", plan.to_str().unwrap()]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the second process waited"
    );
    assert_code(&second, 1);
    let message = stderr(&second);
    assert!(
        message.contains(&format!("locked by pid {}", first.id())),
        "{message}"
    );
    // Reading commands still work beside the running plan.
    assert_code(&sandbox.run(&["plans"]), 0);
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn bad_settings_and_flags_are_usage_errors() {
    let sandbox = Sandbox::new();
    let plan = crate::support::fixture("plans/valid/synthetic.json");
    let plan = plan.to_str().unwrap();
    for (name, value) in [
        ("HXO_MAX_CONCURRENCY", "0"),
        ("HXO_AUTOSPLIT_FACTOR", "1"),
        ("HXO_THREADS", "x"),
    ] {
        let output = sandbox.run_env(&["run", plan], &[(name, value)]);
        assert_code(&output, 2);
        assert!(stderr(&output).contains(name));
    }
    assert_code(&sandbox.run(&["run", "--threads", "0", plan]), 2);
    assert_code(&sandbox.run(&["frobnicate"]), 2);
    assert_code(&sandbox.run(&["run", "/no/such/plan.json"]), 2);
    assert_code(&sandbox.run(&["--help"]), 0);
}

#[test]
fn hot_shards_split_and_the_root_does_not_change() {
    const PLAN: &str = r#"{"name": "hot", "stages": [{"id": "h", "kind": "synthetic",
        "scheduler": "hot_shard_splitter",
        "config": {"shards": 10, "items": 80, "sleep_ms": 12, "work_iters": 5, "seed": 8}}]}"#;
    let plain = Sandbox::new();
    let plan = plain.plan("hot.json", PLAN);
    // A threshold no shard reaches: nothing splits.
    let unsplit = plain.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[("HXO_AUTOSPLIT_P95_MS", "100000")],
    );
    assert_code(&unsplit, 0);
    let split_sandbox = Sandbox::new();
    let plan = split_sandbox.plan("hot.json", PLAN);
    let split = split_sandbox.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[
            ("HXO_AUTOSPLIT_P95_MS", "20"),
            ("HXO_AUTOSPLIT_FACTOR", "4"),
            ("HXO_THREADS", "2"),
        ],
    );
    assert_code(&split, 0);
    assert_eq!(json(&split)["merkle_root"], json(&unsplit)["merkle_root"]);
    assert_eq!(json(&split)["truth_certified"], true);
    let events = split_sandbox.run(&["events", "--json", "--topic", "hxo.autotune.signal"]);
    assert_code(&events, 0);
    let signal = json(&events)["events"][0].clone();
    assert!(
        signal.is_object(),
        "no autotune signal: {}",
        stdout(&events)
    );
    assert_eq!(signal["action"], "split");
    assert_eq!(signal["stage_id"], "h");
    assert!(signal["p95_ms"].as_f64().unwrap() > 20.0);
    // The splits are in the log.
    let (mut log, _) =
        hxo::log::Log::open(&split_sandbox.db(), hxo::log::LogOptions::default()).unwrap();
    let mut splits = 0;
    let mut pieces = 0;
    log.for_each_record(&mut |record| match record {
        hxo::log::Record::ShardSplit { pieces: p, .. } => {
            splits += 1;
            assert_eq!(p, 4);
        }
        hxo::log::Record::SubShardDone { .. } => pieces += 1,
        _ => {}
    })
    .unwrap();
    assert!(splits > 0, "no shard split");
    assert_eq!(pieces, splits * 4);
}

#[test]
fn with_genesis_disabled_nothing_is_published_but_roots_are_still_certified() {
    let sandbox = Sandbox::new();
    let plan = crate::support::fixture("plans/valid/pipeline.json");
    let output = sandbox.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[("GENESIS_MODE", "disabled")],
    );
    assert_code(&output, 0);
    let report = json(&output);
    assert_eq!(report["truth_certified"], true);
    let status = json(&sandbox.run(&["status", "--json", report["plan_id"].as_str().unwrap()]));
    assert_eq!(status["truth_certified"], true);
    // Only the certification record reached the log; no plan events.
    let events = json(&sandbox.run(&["events", "--json"]));
    let topics: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["topic"].as_str().unwrap())
        .collect();
    assert!(!topics.contains(&"hxo.plan"), "{events}");
}

/// A closed stderr and stdout (`hxo run PLAN 2>&1 | head -c 20`) cannot
/// hurt the run: messages and logs to them are dropped, the plan ends
/// finished and certified, and nothing panics. Logs written into a pipe
/// carry no ANSI colour.
#[test]
fn closed_output_streams_do_not_stop_a_run() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "closed.json",
        r#"{"name": "closed", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 2000}}]}"#,
    );
    let plan_text = plan.to_string_lossy().to_string();
    let mut child = sandbox
        .command(&["run", &plan_text])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both read ends closed at once: every write the run makes to them
    // fails with EPIPE.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let plans = json(&sandbox.run(&["plans", "--json"]));
    let row = &plans["plans"][0];
    assert_eq!(row["status"], "finished", "{row}");
    assert_eq!(row["truth_certified"], true, "{row}");

    let logged = sandbox.run_env(&["run", &plan_text], &[("RUST_LOG", "info")]);
    assert_code(&logged, 0);
    let err = stderr(&logged);
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escapes in a pipe: {err:?}");
}

/// A CPU-bound shard that would run for hours fails as timed out soon
/// after its timeout (it looks at its cancel token every millisecond or
/// so of work), and is never recorded done.
#[test]
fn a_cpu_bound_shard_past_its_timeout_fails_as_timed_out() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "spin.json",
        r#"{"name": "spin", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 1, "work_iters": 1000000000000}}]}"#,
    );
    let started = std::time::Instant::now();
    let output = sandbox.run_env(
        &["run", "--json", &plan.to_string_lossy()],
        &[("HXO_SHARD_TIMEOUT_MS", "300"), ("HXO_MAX_ATTEMPTS", "1")],
    );
    let elapsed = started.elapsed();
    assert_code(&output, 3);
    let report = json(&output);
    assert_eq!(report["failed_shards"], 1, "{report}");
    assert_eq!(report["done_shards"], 0, "{report}");
    let error = report["failures"][0]["error"].as_str().unwrap();
    assert!(error.contains("timed out after 300 ms"), "{error}");
    // Not a timing assertion on speed, a bound on a hang: without the
    // checks this shard runs for hours.
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}

/// SIGTERM stops a run of CPU-bound shards promptly as interrupted
/// (exit 130), and the plan resumes.
#[test]
fn sigterm_stops_a_cpu_bound_run_as_interrupted() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "spin.json",
        r#"{"name": "spin", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 4, "work_iters": 1000000000000}}]}"#,
    );
    let mut child = sandbox.spawn_quiet(
        &["run", &plan.to_string_lossy()],
        &[("HXO_SHARD_TIMEOUT_MS", "600000")],
    );
    // Wait until the run has opened the store, then stop it.
    sandbox.wait_for_store();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: kill(2) on the pid of a child we spawned and have not
    // reaped; it only sends a signal.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let stop_deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > stop_deadline {
            let _ = child.kill();
            panic!("a CPU-bound run ignored SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    let plans = json(&sandbox.run(&["plans", "--json"]));
    assert_eq!(plans["plans"][0]["status"], "interrupted", "{plans}");
}

/// Shard failures are logged at debug level with their error, but a plan
/// of many failures logs a few lines a second and a count, not a line per
/// shard.
#[test]
fn shard_failures_are_logged_at_debug_and_rate_limited() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "failing.json",
        r#"{"name": "failing", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 2000, "fail_rate": 1.0}}]}"#,
    );
    let output = sandbox.run_env(
        &["run", &plan.to_string_lossy()],
        &[("RUST_LOG", "hxo=debug"), ("HXO_MAX_ATTEMPTS", "1")],
    );
    assert_code(&output, 3);
    let err = stderr(&output);
    let lines = err.lines().filter(|l| l.contains("shard failed")).count();
    assert!(lines >= 1, "no failure logged:\n{err}");
    assert!(lines <= 40, "{lines} failure lines for 2000 failures");
    assert!(
        err.contains("synthetic failure"),
        "the error is logged:\n{err}"
    );
}
