//! `/metrics` in the Prometheus text format (version 0.0.4), computed from
//! the store on each scrape: the guide's "Metrics to Track" (completion
//! rate, shard time, failed ratio, certification rate, rehydrations) plus
//! shards by state. The shard-duration histogram reads every shard's
//! duration, a pass over all shards per scrape (a few milliseconds per
//! million shards); scrapes are rare, status polls never do this.

use super::App;
use crate::engine::PlanStatus;
use crate::report::DURATION_BUCKETS_S;
use std::fmt::Write;
use std::sync::atomic::Ordering;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(app: &App) -> String {
    let metrics = app.engine.metrics();
    let mut plans_by_status = metrics.plans_by_status.clone();
    for status in PlanStatus::ALL {
        plans_by_status
            .entry(status.name().to_string())
            .or_insert(0);
    }
    let (pending, claimed, running) = (metrics.pending, metrics.claimed, metrics.running);
    let (done, failed, aborted, total) =
        (metrics.done, metrics.failed, metrics.aborted, metrics.total);
    let buckets = metrics.duration_buckets;
    let (duration_sum_us, duration_count) = (metrics.duration_sum_us, metrics.duration_count);
    let (certified, finished_complete, rehydrations) = (
        metrics.certified,
        metrics.finished_complete,
        metrics.rehydrations,
    );

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
    for (le, count) in DURATION_BUCKETS_S.iter().zip(buckets) {
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
        app.rehydration_failures.load(Ordering::Relaxed)
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
