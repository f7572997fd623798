//! `/metrics` in the Prometheus text format (version 0.0.4), computed from
//! the store on each scrape: the guide's "Metrics to Track" (completion
//! rate, shard time, failed ratio, certification rate, rehydrations) plus
//! shards by state. The shard-duration histogram reads every shard's
//! duration, a pass over all shards per scrape (a few milliseconds per
//! million shards); scrapes are rare, status polls never do this.

use super::App;
use crate::store::SlotState;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Histogram bucket bounds, in seconds.
const BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(app: &App) -> String {
    let mut plans_by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
    for status in [
        "running",
        "created",
        "incomplete",
        "finished",
        "failed",
        "aborted",
    ] {
        plans_by_status.insert(status, 0);
    }
    let (mut pending, mut done, mut failed, mut aborted, mut total) = (0u64, 0u64, 0u64, 0, 0);
    let mut buckets = [0u64; BUCKETS_S.len()];
    let (mut duration_sum_us, mut duration_count) = (0u128, 0u64);
    let (mut certified, mut finished_complete, mut rehydrations) = (0u64, 0u64, 0u64);
    // Taken before any plan's lock, which is never held while taking ours.
    let active: std::collections::HashSet<_> = app.runs.active_plans().into_iter().collect();
    for entry in app.engine.store.plans() {
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        let status = if active.contains(&plan.plan_id) {
            "running"
        } else if app.runs.is_created(&plan.plan_id) {
            "created"
        } else {
            plan.status()
        };
        *plans_by_status.entry(status).or_insert(0) += 1;
        let counts = plan.counts();
        total += plan.shard_count();
        pending += plan.pending_count();
        done += counts.done;
        failed += counts.failed;
        aborted += counts.aborted;
        rehydrations += u64::from(plan.rehydrations);
        if plan.truth_certified() {
            certified += 1;
        }
        if status == "finished" {
            finished_complete += 1;
        }
        for slot in &plan.shards {
            let timed = match slot.state {
                SlotState::Done => !slot.reused,
                SlotState::Failed => slot.attempts > 0,
                SlotState::Pending | SlotState::Aborted => false,
            };
            if !timed {
                continue;
            }
            let seconds = slot.duration_us as f64 / 1e6;
            if let Some(bucket) = BUCKETS_S.iter().position(|&le| seconds <= le) {
                buckets[bucket] += 1;
            }
            duration_sum_us += u128::from(slot.duration_us);
            duration_count += 1;
        }
    }
    let (claimed, running) = app.engine.live_counts();
    let claimed = claimed.min(pending);
    let running = running.min(pending - claimed);

    let mut out = String::with_capacity(4096);
    header(&mut out, "hxo_up", "gauge", "1 while the server runs.");
    out.push_str("hxo_up 1\n");
    header(&mut out, "hxo_enabled", "gauge", "HXO_ENABLED (1 or 0).");
    let _ = writeln!(out, "hxo_enabled {}", u8::from(app.engine.settings.enabled));
    header(
        &mut out,
        "hxo_plans",
        "gauge",
        "Plans in the store by status.",
    );
    for (status, count) in &plans_by_status {
        let _ = writeln!(out, "hxo_plans{{status=\"{status}\"}} {count}");
    }
    header(
        &mut out,
        "hxo_shards",
        "gauge",
        "Shards of all plans by state (claimed and running: plans running here).",
    );
    for (state, count) in [
        ("pending", pending - claimed - running),
        ("claimed", claimed),
        ("running", running),
        ("done", done),
        ("failed", failed),
        ("aborted", aborted),
    ] {
        let _ = writeln!(out, "hxo_shards{{state=\"{state}\"}} {count}");
    }
    header(
        &mut out,
        "hxo_shard_duration_seconds",
        "histogram",
        "Execution time of shards with an outcome (reused results excluded).",
    );
    let mut cumulative = 0;
    for (le, count) in BUCKETS_S.iter().zip(buckets) {
        cumulative += count;
        let _ = writeln!(
            out,
            "hxo_shard_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "hxo_shard_duration_seconds_bucket{{le=\"+Inf\"}} {duration_count}"
    );
    let _ = writeln!(
        out,
        "hxo_shard_duration_seconds_sum {}",
        duration_sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "hxo_shard_duration_seconds_count {duration_count}");
    let with_outcome = done + failed + aborted;
    header(
        &mut out,
        "hxo_shard_completion_ratio",
        "gauge",
        "Done shards over all shards of all plans (guide target > 0.95).",
    );
    let _ = writeln!(
        out,
        "hxo_shard_completion_ratio {}",
        ratio(done, total, 1.0)
    );
    header(
        &mut out,
        "hxo_shard_failed_ratio",
        "gauge",
        "Failed and aborted shards over shards with an outcome (guide target < 0.01).",
    );
    let _ = writeln!(
        out,
        "hxo_shard_failed_ratio {}",
        ratio(failed + aborted, with_outcome, 0.0)
    );
    header(
        &mut out,
        "hxo_plans_certified",
        "gauge",
        "Plans whose latest root is truth-certified.",
    );
    let _ = writeln!(out, "hxo_plans_certified {certified}");
    header(
        &mut out,
        "hxo_certification_ratio",
        "gauge",
        "Certified plans over plans finished with every shard done (guide target 1).",
    );
    let _ = writeln!(
        out,
        "hxo_certification_ratio {}",
        ratio(certified.min(finished_complete), finished_complete, 1.0)
    );
    header(
        &mut out,
        "hxo_rehydrations_total",
        "counter",
        "Plan resumes recorded in the log (hxo resume and server rehydration).",
    );
    let _ = writeln!(out, "hxo_rehydrations_total {rehydrations}");
    header(
        &mut out,
        "hxo_rehydration_failures_total",
        "counter",
        "Plans this server could not rehydrate on start.",
    );
    let _ = writeln!(
        out,
        "hxo_rehydration_failures_total {}",
        app.runs.rehydration_failures.load(Ordering::Relaxed)
    );
    header(
        &mut out,
        "hxo_events_last_seq",
        "gauge",
        "Sequence number of the latest event.",
    );
    let _ = writeln!(out, "hxo_events_last_seq {}", app.engine.bus.last_seq());
    header(
        &mut out,
        "hxo_event_subscribers_dropped_total",
        "counter",
        "Live event subscribers dropped for falling behind.",
    );
    let _ = writeln!(
        out,
        "hxo_event_subscribers_dropped_total {}",
        app.engine.bus.dropped_subscribers()
    );
    header(
        &mut out,
        "hxo_http_requests_total",
        "counter",
        "HTTP requests answered, by status class.",
    );
    for (class, counter) in ["2xx", "3xx", "4xx", "5xx"].iter().zip(&app.requests) {
        let _ = writeln!(
            out,
            "hxo_http_requests_total{{code=\"{class}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    header(
        &mut out,
        "hxo_http_event_streams",
        "gauge",
        "Event streams open now.",
    );
    let _ = writeln!(
        out,
        "hxo_http_event_streams {}",
        app.streams.load(Ordering::Relaxed)
    );
    out
}

fn ratio(part: u64, whole: u64, empty: f64) -> f64 {
    if whole == 0 {
        empty
    } else {
        part as f64 / whole as f64
    }
}
