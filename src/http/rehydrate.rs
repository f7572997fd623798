//! Rehydration: on start, the server resumes every plan of the store that
//! was submitted and has not ended (submitted but never started, or
//! interrupted). A plan created by `POST /api/hxo/plan` and never
//! submitted stays as it is. Plans beyond the run limit wait for a free
//! slot, so every acknowledged plan is started again, however many there
//! are. A plan that cannot be resumed (its inputs changed) is counted as a
//! failed rehydration and left alone.

use super::App;
use crate::engine::EngineError;
use crate::ids::{plan_id_text, PlanId};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long the rehydrator waits for a run slot before it tries again.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Resumes the plans of `queue`, in order, as slots free up, until all
/// started or the service stops.
pub(super) fn run(app: &App, mut queue: Vec<PlanId>) {
    queue.reverse();
    while let Some(plan_id) = queue.pop() {
        if app.stopping.load(Ordering::SeqCst) {
            return;
        }
        let text = plan_id_text(&plan_id);
        let started = app
            .engine
            .resume(&plan_id)
            .and_then(|ticket| app.engine.spawn(ticket));
        match started {
            Ok(()) => crate::note!("hxo: rehydrating plan {text}"),
            Err(EngineError::AtCapacity { .. }) => {
                queue.push(plan_id);
                std::thread::sleep(RETRY_INTERVAL);
            }
            // Resumed by someone else meanwhile (a submit, a replay).
            Err(EngineError::Running(_) | EngineError::WrongState { .. }) => {}
            Err(error) => {
                app.rehydration_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plan_id = %text, "cannot rehydrate: {error}");
                crate::note!("hxo: cannot rehydrate plan {text}: {error}");
            }
        }
    }
}
