//! Helpers shared by the integration tests: a scratch state directory per
//! test and a way to run the real `hxo` binary against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(relative: &str) -> PathBuf {
    repo_root().join("fixtures").join(relative)
}

/// A temporary state directory (`.hxo` equivalent) for one test.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("checkpoints")
    }

    /// `hxo ARGS` with this sandbox's store and artifacts, no inherited
    /// `HXO_*` settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hxo"));
        for (name, _) in std::env::vars() {
            if name.starts_with("HXO_")
                || matches!(
                    name.as_str(),
                    "GENESIS_MODE"
                        | "JOB_COMPLETION_INDEX"
                        | "SLURM_ARRAY_TASK_ID"
                        | "AWS_BATCH_JOB_ARRAY_INDEX"
                )
            {
                command.env_remove(name);
            }
        }
        command
            .env("HXO_DB_PATH", self.db())
            .env("HXO_ARTIFACTS_DIR", self.path().join("artifacts"))
            .env("HXO_RETRY_BACKOFF_MS", "1")
            .args(args)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running hxo")
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().expect("running hxo")
    }

    /// Writes a plan file into the sandbox and returns its path.
    pub fn plan(&self, name: &str, json: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, json).expect("writing plan");
        path
    }

    /// `hxo ARGS` started in the background, its output discarded.
    pub fn spawn_quiet(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        let mut command = self.command(args);
        for (k, v) in env {
            command.env(k, v);
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting hxo")
    }

    /// Waits (20 s at most) until a run started in the background has
    /// opened the store: its first segment exists.
    pub fn wait_for_store(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !self.db().join("00000000.seg").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the run never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Polls `hxo plans --json` (20 s at most) until the store's first plan
    /// is running here or elsewhere with at least one outcome; returns its
    /// row.
    pub fn wait_running(&self) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "never seen running");
            let plans = self.run(&["plans", "--json"]);
            if code(&plans) == 0 {
                let row = json(&plans)["plans"][0].clone();
                if row["status"] == "running" && row["done_shards"].as_u64() > Some(0) {
                    return row;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `hxo run --json` of the plan `json` (written as `name`), each shard
    /// tried once, so that a synthetic failure or panic rate shows.
    pub fn run_single_attempts(&self, name: &str, json: &str) -> Output {
        let plan = self.plan(name, json);
        self.run_env(
            &["run", "--json", plan.to_str().unwrap()],
            &[("HXO_MAX_ATTEMPTS", "1")],
        )
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

/// Parses `--json` output.
pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            stdout(output),
            stderr(output)
        )
    })
}

/// Asserts the exit code, showing both streams when it differs.
#[track_caller]
pub fn assert_code(output: &Output, expected: i32) {
    assert_eq!(
        code(output),
        expected,
        "exit code\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}
