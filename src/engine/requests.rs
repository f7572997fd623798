//! Requests to the store's owner from other processes: while one process
//! owns a store (its lock), `hxo abort` and `hxo replay` run elsewhere hand
//! their verb to it instead of failing with "locked by pid N".
//!
//! The channel is a spool directory, `requests/` in the store directory.
//! A requester writes `ID.req` (written beside it, then renamed, so the
//! owner never reads half a request) and waits for `ID.ans`. The owner's
//! watcher looks every [`POLL_INTERVAL`] (well inside the 100 ms the
//! design allows), takes each request (removing it first, so it is
//! applied once), applies the verb through the same engine methods as a
//! local call, and writes the answer the same way. A requester finds the
//! owner through the store's list of running plans (`RUNNING`), which is
//! trusted only while its pid holds the lock and is alive: a dead owner is
//! never waited for.
//!
//! An owner that is `hxo run` runs its one plan: it applies an abort of
//! any plan but refuses a replay (run it once that plan ends). `hxo serve`
//! applies both.

use super::lifecycle::AbortOutcome;
use super::{Engine, EngineError};
use crate::ids::plan_id_text;
use crate::settings::Settings;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The spool directory inside the store directory.
pub const REQUESTS_DIR_NAME: &str = "requests";
/// How often the owner looks for requests.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a requester waits for the owner's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// How long an abort waits for the run it stops (as a local abort does).
const ABORT_WAIT: Duration = Duration::from_secs(10);
/// Requests taken per look at most (bounds one pass).
const REQUESTS_PER_POLL_MAX: usize = 64;

/// A verb another process asks the owner to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Abort,
    Replay,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Abort => "abort",
            Request::Replay => "replay",
        }
    }
}

/// The owner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The owner's pid.
    pub owner_pid: u32,
    /// The verb applied.
    pub applied: bool,
    /// What the plan is now (`aborted`, `aborting`, `replaying`), or why
    /// the verb did not apply.
    pub message: String,
}

fn spool(db_path: &Path) -> PathBuf {
    db_path.join(REQUESTS_DIR_NAME)
}

/// Writes `text` to `path` whole: beside it, then renamed over it.
fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let staged = path.with_extension("tmp");
    std::fs::write(&staged, text)?;
    std::fs::rename(&staged, path)
}

/// Asks the live owner of the store at `settings.db_path` to apply
/// `request` to the plan named by `plan_text` (an id or a unique prefix),
/// and waits for its answer. `Ok(None)`: no live process owns the store.
pub fn ask_owner(
    settings: &Settings,
    request: Request,
    plan_text: &str,
    actor: &str,
) -> Result<Option<Answer>, EngineError> {
    let reader = Engine::open_read_only(settings.clone(), false)?;
    let Some(owner_pid) = reader.owner() else {
        return Ok(None);
    };
    // Resolved here, so an unknown plan is this process's error.
    let plan_id = reader.find(plan_text)?;
    let dir = spool(&settings.db_path);
    std::fs::create_dir_all(&dir).map_err(EngineError::Output)?;
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"verb": request.name(), "plan_id": plan_id_text(&plan_id), "actor": actor});
    write_whole(&dir.join(format!("{id}.req")), &body.to_string()).map_err(EngineError::Output)?;
    let answer_path = dir.join(format!("{id}.ans"));
    let deadline = Instant::now() + ANSWER_WAIT;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&answer_path) {
            let _ = std::fs::remove_file(&answer_path);
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Ok(Some(Answer {
                owner_pid,
                applied: value["applied"] == true,
                message: value["message"].as_str().unwrap_or("").to_string(),
            }));
        }
        if !crate::store::process_alive(owner_pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(dir.join(format!("{id}.req")));
    Ok(Some(Answer {
        owner_pid,
        applied: false,
        message: format!("the owner (pid {owner_pid}) did not answer"),
    }))
}

impl Engine {
    /// Starts the owner's watcher of the request spool; it ends when the
    /// engine is closed (which waits for it to answer what it took) or
    /// dropped.
    pub(super) fn watch_requests(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let spawned = std::thread::Builder::new()
            .name("hxo-requests".into())
            .spawn(move || watch(engine, stopped));
        match spawned {
            Ok(thread) => {
                *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some((thread, stop))
            }
            Err(error) => {
                tracing::warn!("cannot watch for requests from other processes: {error}")
            }
        }
    }

    /// Applies one request and says how it went.
    fn answer(self: &Arc<Self>, request: Request, plan_text: &str, actor: &str) -> (bool, String) {
        if request == Request::Replay && self.runs_max.load(Ordering::SeqCst) == usize::MAX {
            let pid = std::process::id();
            return (
                false,
                format!("pid {pid} runs one plan (hxo run); replay once it has ended"),
            );
        }
        let result = self.find(plan_text).and_then(|plan_id| match request {
            Request::Abort => Ok(match self.abort(&plan_id, actor, ABORT_WAIT)? {
                AbortOutcome::Aborted => "aborted".to_string(),
                AbortOutcome::Stopping => "aborting".to_string(),
            }),
            Request::Replay => {
                let (ticket, shards) = self.replay(&plan_id, actor)?;
                self.spawn(ticket)?;
                Ok(format!("replaying {shards} shards"))
            }
        });
        match result {
            Ok(message) => (true, message),
            Err(error) => (false, error.to_string()),
        }
    }
}

/// The watcher: takes each request in the spool, applies it, answers.
fn watch(engine: Weak<Engine>, stopped: crossbeam_channel::Receiver<()>) {
    loop {
        // Ends at once when `close` drops the sender.
        if !matches!(
            stopped.recv_timeout(POLL_INTERVAL),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        ) {
            return;
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if engine.closed.load(Ordering::SeqCst) {
            return;
        }
        let dir = spool(&engine.settings.db_path);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let requests: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "req"))
            .take(REQUESTS_PER_POLL_MAX)
            .collect();
        for path in requests {
            take_and_answer(&engine, &path);
        }
    }
}

fn take_and_answer(engine: &Arc<Engine>, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    // Removed before it is applied: a request is applied at most once.
    if std::fs::remove_file(path).is_err() {
        return;
    }
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let request = match value["verb"].as_str() {
        Some("abort") => Some(Request::Abort),
        Some("replay") => Some(Request::Replay),
        _ => None,
    };
    let plan_text = value["plan_id"].as_str().unwrap_or("");
    let actor = value["actor"].as_str().unwrap_or("");
    let (applied, message) = match request {
        Some(request) => engine.answer(request, plan_text, actor),
        None => (false, "unknown request".to_string()),
    };
    let answer = json!({"applied": applied, "message": message});
    if let Err(error) = write_whole(&path.with_extension("ans"), &answer.to_string()) {
        tracing::warn!("cannot answer a request: {error}");
    }
}
