//! Stopping and tidying: Ctrl-C (exit 130, resumable), timebox (exit 4),
//! SLO alerts, abort of an incomplete plan, `gc`, and a damaged log.

use crate::support::*;
use std::time::{Duration, Instant};

const SLOW: &str = r#"{"name": "slow", "stages": [{"id": "s", "kind": "synthetic",
    "config": {"shards": 40, "sleep_ms": 60, "seed": 2}}]}"#;

fn wait_for_lock(sandbox: &Sandbox) {
    let lock = sandbox.db().join("LOCK");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(400));
}

#[test]
fn ctrl_c_exits_130_and_the_run_resumes_to_the_same_root() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("slow.json", SLOW);
    let child = sandbox
        .command(&["run", "--json", plan.to_str().unwrap()])
        .env("HXO_THREADS", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&sandbox);
    send_signal(child.id(), "INT");
    let output = child.wait_with_output().unwrap();
    assert_code(&output, 130);
    assert!(
        stderr(&output).contains("hxo resume"),
        "{}",
        stderr(&output)
    );
    let interrupted = json(&output);
    assert!(interrupted["done_shards"].as_u64().unwrap() < 40);

    let resumed = sandbox.run_env(&["resume", "--json"], &[("HXO_THREADS", "4")]);
    assert_code(&resumed, 0);
    let resumed = json(&resumed)["resumed"][0].clone();
    assert_eq!(resumed["done_shards"], 40);
    assert_eq!(resumed["rehydrations"], 1);
    let clean = Sandbox::new();
    let plan = clean.plan("slow.json", SLOW);
    let reference = json(&clean.run(&["run", "--json", plan.to_str().unwrap()]));
    assert_eq!(resumed["merkle_root"], reference["merkle_root"]);
}

/// Sends `signal` (a name such as "INT") to a child, with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_timeboxed_plan_aborts_with_exit_4_and_keeps_its_done_shards() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "boxed.json",
        r#"{"name": "boxed", "stages": [{"id": "s", "kind": "synthetic",
            "config": {"shards": 40, "sleep_ms": 100}}], "constraints": {"timebox_ms": 500}}"#,
    );
    let started = Instant::now();
    let output = sandbox.run_env(
        &["run", "--json", plan.to_str().unwrap()],
        &[("HXO_THREADS", "2")],
    );
    assert_code(&output, 4);
    assert!(started.elapsed() < Duration::from_secs(15));
    let report = json(&output);
    assert_eq!(report["status"], "aborted");
    let done = report["done_shards"].as_u64().unwrap();
    assert!(done > 0 && done < 40, "{report}");
    assert_eq!(report["aborted_shards"].as_u64().unwrap(), 40 - done);
    // An aborted plan is complete: nothing to resume.
    let resume = sandbox.run(&["resume"]);
    assert_code(&resume, 0);
    assert!(stderr(&resume).contains("no incomplete plans"));
}

#[test]
fn a_stage_over_its_slo_raises_an_alert() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan(
        "late.json",
        r#"{"name": "late", "stages": [{"id": "s", "kind": "synthetic", "slo_ms": 100,
            "config": {"shards": 8, "sleep_ms": 100}}]}"#,
    );
    let output = sandbox.run_env(&["run", plan.to_str().unwrap()], &[("HXO_THREADS", "2")]);
    assert_code(&output, 0);
    let events = sandbox.run(&["events", "--json", "--topic", "hxo.alert"]);
    let alert = json(&events)["events"][0].clone();
    assert!(alert.is_object(), "no alert: {}", stdout(&events));
    assert_eq!(alert["alert"], "slo_overrun");
    assert_eq!(alert["stage_id"], "s");
    assert_eq!(alert["slo_ms"], 100);
}

#[test]
fn abort_of_an_interrupted_plan_keeps_done_shards_and_replay_finishes_it() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("slow.json", SLOW);
    let mut child = sandbox
        .command(&["run", plan.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lock(&sandbox);
    child.kill().unwrap();
    child.wait().unwrap();
    let plans = json(&sandbox.run(&["plans", "--json"]));
    let plan_id = plans["plans"][0]["plan_id"].as_str().unwrap().to_string();
    let done_before = plans["plans"][0]["done_shards"].as_u64().unwrap();
    let aborted = sandbox.run(&["abort", "--json", &plan_id]);
    assert_code(&aborted, 0);
    assert_eq!(json(&aborted)["status"], "aborted");
    let status = json(&sandbox.run(&["status", "--json", &plan_id]));
    assert_eq!(status["status"], "aborted");
    assert_eq!(status["done_shards"].as_u64().unwrap(), done_before);
    assert_eq!(status["failed_shards"].as_u64().unwrap(), 40 - done_before);
    // Aborting again is refused: the plan is complete.
    assert_code(&sandbox.run(&["abort", &plan_id]), 2);
    let events = json(&sandbox.run(&["events", "--json", "--topic", "hxo.audit"]));
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["action"] == "abort"),
        "{events}"
    );
    let replayed = sandbox.run(&["replay", "--json", &plan_id]);
    assert_code(&replayed, 0);
    assert_eq!(json(&replayed)["truth_certified"], true);
}

#[test]
fn gc_keeps_the_latest_outcomes_and_the_root() {
    let sandbox = Sandbox::new();
    let first = sandbox.run_single_attempts(
        "failing.json",
        r#"{"name": "f", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 50, "fail_rate": 0.3, "seed": 1}}]}"#,
    );
    assert_code(&first, 3);
    let plan_id = json(&first)["plan_id"].as_str().unwrap().to_string();
    let replay = sandbox.run_env(
        &["replay", "--json", &plan_id],
        &[("HXO_MAX_ATTEMPTS", "20")],
    );
    assert_code(&replay, 0);
    let root = json(&replay)["merkle_root"].clone();
    let gc = sandbox.run(&["gc", "--json"]);
    assert_code(&gc, 0);
    let gc = json(&gc);
    assert!(
        gc["records_after"].as_u64().unwrap() < gc["records_before"].as_u64().unwrap(),
        "{gc}"
    );
    let verify = sandbox.run(&["verify", "--json", &plan_id]);
    assert_code(&verify, 0);
    assert_eq!(json(&verify)["recorded_root"], root);
}

#[test]
fn a_damaged_log_is_reported_with_its_place_and_salvage_goes_on() {
    let sandbox = Sandbox::new();
    let plan = crate::support::fixture("plans/valid/synthetic.json");
    assert_code(&sandbox.run(&["run", plan.to_str().unwrap()]), 0);
    assert_code(&sandbox.run(&["run", plan.to_str().unwrap()]), 0);
    // Flip one bit in the middle of the first segment's records.
    let segment = sandbox.db().join("00000000.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap();
    bytes[end / 2] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    for args in [
        vec!["status", "--json", "x"],
        vec!["run", plan.to_str().unwrap()],
    ] {
        let output = sandbox.run(&args);
        assert_code(&output, 1);
        let message = stderr(&output);
        assert!(
            message.contains("segment 0") && message.contains("offset"),
            "{message}"
        );
        assert!(!message.contains("panicked"));
    }
    // The damaged store was not rewritten.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
    let salvaged = sandbox.run(&["--salvage", "run", "--json", plan.to_str().unwrap()]);
    assert_code(&salvaged, 0);
    assert_eq!(json(&salvaged)["truth_certified"], true);
}

#[test]
fn verify_exits_5_when_the_log_no_longer_gives_the_recorded_root() {
    let sandbox = Sandbox::new();
    let plan = crate::support::fixture("plans/valid/synthetic.json");
    let run = json(&sandbox.run(&["run", "--json", plan.to_str().unwrap()]));
    let plan_id = run["plan_id"].as_str().unwrap().to_string();
    assert_code(&sandbox.run(&["verify", &plan_id]), 0);
    // Append, with valid framing, a different result for shard 7: the kind
    // of change a buggy or tampered writer would make.
    let lines = stdout(&sandbox.run(&["export", &plan_id]));
    let line: serde_json::Value = serde_json::from_str(lines.lines().nth(7).unwrap()).unwrap();
    let cas_id = hxo::hash::from_hex(line["cas_id"].as_str().unwrap()).unwrap();
    {
        let (mut log, _) =
            hxo::log::Log::open(&sandbox.db(), hxo::log::LogOptions::default()).unwrap();
        log.append(&hxo::log::Record::ShardDone {
            plan_id: *uuid::Uuid::parse_str(&plan_id).unwrap().as_bytes(),
            leaf_index: 7,
            cas_id,
            output_digest: [0xab; 32],
            attempts: 1,
            duration_us: 1,
        })
        .unwrap();
        log.commit().unwrap();
    }
    let verify = sandbox.run(&["verify", "--json", &plan_id]);
    assert_code(&verify, 5);
    let report = json(&verify);
    assert_eq!(report["ok"], false);
    assert_ne!(report["recomputed_root"], report["recorded_root"]);
}

#[test]
fn verify_of_a_plan_with_failed_shards_says_it_is_incomplete() {
    let sandbox = Sandbox::new();
    let run = sandbox.run_single_attempts(
        "failing.json",
        r#"{"name": "f", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 40, "fail_rate": 0.3, "seed": 1}}]}"#,
    );
    assert_code(&run, 3);
    let plan_id = json(&run)["plan_id"].as_str().unwrap().to_string();
    let verify = sandbox.run(&["verify", &plan_id]);
    assert_code(&verify, 5);
    let message = stderr(&verify);
    assert!(message.contains("not every shard is done"), "{message}");
    assert!(!message.contains("does not reproduce"), "{message}");
}
