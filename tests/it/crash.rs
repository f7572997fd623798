//! Kill-and-resume runs of the real binary (rayon-core's
//! `stack_overflow_crash.rs` habit): SIGKILL at random moments, then
//! `hxo resume` until the plan finishes. Every iteration must end with the
//! root of an uninterrupted run, and the log must hold exactly one DONE
//! record per shard.
//!
//! A few iterations run by default; `HXO_SLOW_TESTS=1` (set by
//! `scripts/soak.sh`) runs `HXO_CRASH_ITERATIONS` of them (default 200).

use crate::support::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PLAN: &str = r#"{"name": "crashy", "stages": [
  {"id": "a", "kind": "synthetic", "config": {"shards": 6000, "items": 6000, "work_iters": 300, "seed": 1}},
  {"id": "b", "kind": "synthetic", "dependencies": ["a"], "config": {"shards": 6000, "items": 6000, "work_iters": 300, "seed": 2}},
  {"id": "c", "kind": "synthetic", "dependencies": ["b"], "config": {"shards": 100, "work_iters": 10, "seed": 3}}]}"#;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn uninterrupted_root() -> String {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("crashy.json", PLAN);
    let output = sandbox.run(&["run", "--json", plan.to_str().unwrap()]);
    assert_code(&output, 0);
    json(&output)["merkle_root"].as_str().unwrap().to_string()
}

/// Starts `args`, kills it after `delay`, returns whether it was still
/// running (so the kill landed mid-run).
fn kill_after(sandbox: &Sandbox, args: &[&str], delay: Duration) -> bool {
    let mut child = sandbox
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

/// One DONE record per shard of every plan in the store.
fn assert_recorded_once(sandbox: &Sandbox) {
    let (log, _) = hxo::log::Log::open(&sandbox.db(), hxo::log::LogOptions::default()).unwrap();
    let mut done: HashMap<([u8; 16], u64), u32> = HashMap::new();
    log.for_each_record(&mut |record| {
        if let hxo::log::Record::ShardDone {
            plan_id,
            leaf_index,
            ..
        } = record
        {
            *done.entry((plan_id, leaf_index)).or_default() += 1;
        }
    })
    .unwrap();
    assert_eq!(done.len(), 12_100, "every shard has a DONE record");
    let twice: Vec<_> = done.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "shards recorded more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
}

fn iteration(rng: &mut Rng, expected_root: &str) {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("crashy.json", PLAN);
    let plan = plan.to_str().unwrap().to_string();
    let mut kills = 0;
    let first_delay = Duration::from_millis(100 + rng.next() % 1500);
    if kill_after(&sandbox, &["run", &plan], first_delay) {
        kills += 1;
    }
    // Kill some resumes too, then let one finish.
    for _ in 0..(rng.next() % 3) {
        if kill_after(
            &sandbox,
            &["resume"],
            Duration::from_millis(50 + rng.next() % 800),
        ) {
            kills += 1;
        }
    }
    let resumed = sandbox.run(&["resume", "--json"]);
    let code = code(&resumed);
    let text = stdout(&resumed);
    let root = if text.trim().is_empty() {
        // The first run finished before the kill: read its report.
        let plans = json(&sandbox.run(&["plans", "--json"]));
        plans[0]["merkle_root"].as_str().unwrap().to_string()
    } else {
        assert_eq!(code, 0, "resume failed:\n{text}\n{}", stderr(&resumed));
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(report["truth_certified"], true);
        report["merkle_root"].as_str().unwrap().to_string()
    };
    assert_eq!(root, expected_root, "after {kills} kills");
    assert_recorded_once(&sandbox);
}

#[test]
fn kill_9_at_random_moments_then_resume_gives_the_uninterrupted_root() {
    let expected = uninterrupted_root();
    let slow = std::env::var("HXO_SLOW_TESTS").as_deref() == Ok("1");
    let iterations: u64 = if slow {
        std::env::var("HXO_CRASH_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    } else {
        3
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    for _ in 0..iterations {
        iteration(&mut rng, &expected);
    }
}
