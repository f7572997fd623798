//! The CLI's own conventions: under `--json` stdout is exactly one JSON
//! document (errors too, the demo's two runs too); `plans` and `events`
//! print the REST routes' objects; `--topic` takes a list; `proof` takes
//! a cas_id prefix; `hxo man` prints the man page.

use crate::support::*;
use serde_json::{json, Value};

/// A small plan that runs in milliseconds.
const PLAN: &str =
    r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic", "config": {"shards": 4}}]}"#;

/// A plan whose kind does not exist: invalid at `stages[0].kind`.
const BAD_PLAN: &str = r#"{"name": "x", "stages": [{"id": "a", "kind": "synthetic.nope"}]}"#;

/// Parses stdout as exactly one JSON object (trailing output fails).
#[track_caller]
fn object(output: &std::process::Output) -> serde_json::Map<String, Value> {
    match json(output) {
        Value::Object(map) => map,
        other => panic!("stdout is not one JSON object: {other}"),
    }
}

#[test]
fn errors_under_json_are_one_object_on_stdout_with_the_exit_code() {
    let sandbox = Sandbox::new();
    let bad = sandbox.plan("bad.json", BAD_PLAN);
    let bad = bad.to_str().unwrap();

    let output = sandbox.run(&["run", "--json", bad]);
    assert_code(&output, 2);
    let error = object(&output);
    assert_eq!(error["path"], "stages[0].kind", "{error:?}");
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("unknown kind \"synthetic.nope\""),
        "{message}"
    );
    assert_eq!(error.len(), 2, "{error:?}");
    // The human form still goes to stderr; without --json stdout is empty.
    assert!(stderr(&output).contains("unknown kind"));
    let human = sandbox.run(&["run", bad]);
    assert_code(&human, 2);
    assert_eq!(stdout(&human), "");

    // An error that is not about a plan's JSON has no path.
    let plan = sandbox.plan("x.json", PLAN);
    assert_code(&sandbox.run(&["run", plan.to_str().unwrap()]), 0);
    let unknown = sandbox.run(&["status", "--json", "00000000-0000-0000-0000-000000000000"]);
    assert_code(&unknown, 2);
    let error = object(&unknown);
    assert!(
        error["error"].as_str().unwrap().contains("not found"),
        "{error:?}"
    );
    assert!(!error.contains_key("path"), "{error:?}");

    // Causes are joined into the one message, as stderr lists them.
    let file = sandbox.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let output = sandbox.run(&[
        "--db",
        file.to_str().unwrap(),
        "run",
        "--json",
        &plan.to_string_lossy(),
    ]);
    assert_code(&output, 1);
    let message = object(&output)["error"].as_str().unwrap().to_string();
    let causes = stderr(&output);
    let cause = causes
        .lines()
        .find_map(|line| line.trim().strip_prefix("caused by: "))
        .unwrap_or_else(|| panic!("no cause on stderr:\n{causes}"));
    assert!(
        message.ends_with(&format!(": {cause}")),
        "{message} / {causes}"
    );
}

#[test]
fn plan_validate_json_answers_valid_false_with_the_path() {
    let sandbox = Sandbox::new();
    let bad = sandbox.plan("bad.json", BAD_PLAN);
    let output = sandbox.run(&["plan", "validate", "--json", bad.to_str().unwrap()]);
    assert_code(&output, 2);
    let answer = object(&output);
    assert_eq!(answer["valid"], false, "{answer:?}");
    assert_eq!(answer["path"], "stages[0].kind");
    assert!(answer["error"].as_str().unwrap().contains("unknown kind"));

    let missing = sandbox.path().join("missing.json");
    let output = sandbox.run(&["plan", "validate", "--json", missing.to_str().unwrap()]);
    assert_code(&output, 2);
    let answer = object(&output);
    assert_eq!(answer["valid"], false);
    assert!(answer["error"].as_str().unwrap().contains("missing.json"));

    let good = sandbox.plan("x.json", PLAN);
    let output = sandbox.run(&["plan", "validate", "--json", good.to_str().unwrap()]);
    assert_code(&output, 0);
    assert_eq!(
        Value::Object(object(&output)),
        json!({"valid": true, "name": "x", "total_shards": 4})
    );
}

#[test]
fn the_demo_run_under_json_prints_one_document_with_both_reports() {
    let sandbox = Sandbox::new();
    let output = sandbox.run(&["run", "--json"]);
    assert_code(&output, 0);
    let reports = object(&output);
    let keys: Vec<&str> = reports.keys().map(String::as_str).collect();
    assert_eq!(keys, ["dry_run", "run"]);
    let (dry_run, run) = (&reports["dry_run"], &reports["run"]);
    for report in [dry_run, run] {
        assert_eq!(report["plan_name"], "deploy_full_stack", "{report}");
        assert_eq!(report["truth_certified"], true, "{report}");
    }
    assert_ne!(dry_run["plan_id"], run["plan_id"]);

    // The dry run alone: no real run, and `run` says so.
    let output = sandbox.run(&["run", "--json", "--dry-run"]);
    assert_code(&output, 0);
    let reports = object(&output);
    assert_eq!(reports["dry_run"]["truth_certified"], true);
    assert_eq!(reports["run"], Value::Null);

    // The human form is the rendered report, not JSON.
    let output = sandbox.run(&["run", "--dry-run"]);
    assert_code(&output, 0);
    let text = stdout(&output);
    assert!(text.starts_with("plan      deploy_full_stack ("), "{text}");
}

#[test]
fn resume_under_json_prints_one_document_however_many_plans_it_resumes() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("x.json", PLAN);
    assert_code(&sandbox.run(&["run", plan.to_str().unwrap()]), 0);
    let output = sandbox.run(&["resume", "--json"]);
    assert_code(&output, 0);
    assert_eq!(Value::Object(object(&output)), json!({"resumed": []}));
}

/// The keys of a JSON object, in order.
fn keys(object: &serde_json::Map<String, Value>) -> Vec<&str> {
    object.keys().map(String::as_str).collect()
}

#[test]
fn plans_and_events_under_json_have_the_rest_routes_shapes() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("x.json", PLAN);
    let run = json(&sandbox.run(&["run", "--json", plan.to_str().unwrap()]));
    let plan_id = run["plan_id"].as_str().unwrap();

    // GET /api/hxo/plans: {"plans": [row]}, a row being status fields and
    // started_at.
    let plans = object(&sandbox.run(&["plans", "--json"]));
    assert_eq!(keys(&plans), ["plans"]);
    let rows = plans["plans"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["plan_id"], plan_id);
    assert_eq!(rows[0]["merkle_root"], run["merkle_root"]);
    assert!(rows[0]["started_at"].is_string(), "{}", rows[0]);

    // GET /api/genesis/events: {"events": [...], "last_seq": N}.
    let all = object(&sandbox.run(&["events", "--json"]));
    assert_eq!(keys(&all), ["events", "last_seq"]);
    let events = all["events"].as_array().unwrap();
    assert!(!events.is_empty());
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let last_seq = all["last_seq"].as_u64().unwrap();
    assert!(last_seq >= *seqs.last().unwrap(), "{all:?}");
    assert!(events
        .iter()
        .all(|e| e["plan_id"] == plan_id && e["topic"].is_string()));

    // A filter narrows the events, not last_seq (the cursor `since` takes).
    let audit = object(&sandbox.run(&[
        "events",
        "--json",
        "--topic",
        "hxo.audit",
        "--plan",
        plan_id,
    ]));
    let audit_events = audit["events"].as_array().unwrap();
    assert!(!audit_events.is_empty());
    assert!(audit_events.len() < events.len());
    assert!(audit_events.iter().all(|e| e["topic"] == "hxo.audit"));
    assert_eq!(audit["last_seq"], all["last_seq"]);
}

#[test]
fn events_topic_takes_a_comma_separated_list_and_checks_every_name() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("x.json", PLAN);
    assert_code(&sandbox.run(&["run", plan.to_str().unwrap()]), 0);
    let topics_of = |args: &[&str]| -> Vec<String> {
        let output = sandbox.run(args);
        assert_code(&output, 0);
        let mut topics: Vec<String> = json(&output)["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["topic"].as_str().unwrap().to_string())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    };
    let both = ["hxo.audit", "hxo.plan"];
    assert_eq!(
        topics_of(&["events", "--json", "--topic", "hxo.plan,hxo.audit"]),
        both
    );
    assert_eq!(
        topics_of(&[
            "events",
            "--json",
            "--topic",
            "hxo.plan",
            "--topic",
            "hxo.audit"
        ]),
        both
    );
    assert_eq!(
        topics_of(&["events", "--json", "--topic", "hxo.audit"]),
        ["hxo.audit"]
    );
    assert!(topics_of(&["events", "--json"]).len() > 2);

    // Every name is checked, not just the first; the error names it.
    for list in ["hxo.plan,hxo.nope", "hxo.nope,hxo.plan"] {
        let output = sandbox.run(&["events", "--json", "--topic", list]);
        assert_code(&output, 2);
        let error = object(&output);
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("unknown topic \"hxo.nope\""),
            "{error:?}"
        );
        assert!(stderr(&output).contains("hxo.nope"));
    }
}

#[test]
fn proof_takes_a_cas_id_prefix_of_at_least_8_hex_digits() {
    let sandbox = Sandbox::new();
    let plan = sandbox.plan("x.json", PLAN);
    let run = json(&sandbox.run(&["run", "--json", plan.to_str().unwrap()]));
    let plan_id = run["plan_id"].as_str().unwrap();
    let export = sandbox.run(&["export", plan_id]);
    assert_code(&export, 0);
    let cas_ids: Vec<String> = stdout(&export)
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            line["cas_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(cas_ids.len(), 4);

    let full = sandbox.run(&["proof", plan_id, &cas_ids[2]]);
    assert_code(&full, 0);
    for prefix in [
        &cas_ids[2][..8],
        &cas_ids[2][..8].to_uppercase(),
        &cas_ids[2][..20],
    ] {
        let output = sandbox.run(&["proof", plan_id, prefix]);
        assert_code(&output, 0);
        assert_eq!(json(&output), json(&full), "prefix {prefix}");
    }
    assert_eq!(json(&full)["leaf_index"], 2);
    assert_eq!(json(&full)["root"], run["merkle_root"]);

    let short = sandbox.run(&["proof", plan_id, &cas_ids[2][..7]]);
    assert_code(&short, 2);
    assert!(stderr(&short).contains("at least 8"), "{}", stderr(&short));
    // Eight hex digits that begin no shard's cas_id.
    let unknown = (0u32..)
        .map(|n| format!("{n:08x}"))
        .find(|prefix| !cas_ids.iter().any(|c| c.starts_with(prefix.as_str())))
        .unwrap();
    let output = sandbox.run(&["proof", "--json", plan_id, &unknown]);
    assert_code(&output, 2);
    let error = object(&output);
    assert!(
        error["error"].as_str().unwrap().contains("no done shard"),
        "{error:?}"
    );
}

#[test]
fn hxo_man_prints_a_roff_page_naming_the_subcommands() {
    let output = Sandbox::new().run(&["man"]);
    assert_code(&output, 0);
    let page = stdout(&output);
    assert!(page.contains(".TH hxo"), "{page}");
    // roff escapes the dash: subcommands appear as `hxo\-run(1)`.
    for name in ["run", "proof", "events", "plans", "completions", "man"] {
        assert!(
            page.contains(&format!("hxo\\-{name}(1)")),
            "no {name} in:\n{page}"
        );
    }
}
