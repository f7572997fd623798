//! Reports: the guide's status fields and metrics, computed from a plan's
//! record in the store. These are wire types shared by the CLI's `--json`
//! output and the HTTP API, so field names are a contract.

use crate::hash::to_hex;
use crate::ids::plan_id_text;
use crate::store::{PlanRecord, SlotState};
use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StageReport {
    pub stage_id: String,
    pub kind: String,
    pub executor: String,
    pub total_shards: u64,
    pub pending_shards: u64,
    pub done_shards: u64,
    pub failed_shards: u64,
    pub reused_shards: u64,
    pub slo_ms: u64,
    pub p50_shard_ms: f64,
    pub p95_shard_ms: f64,
    pub busy_ms: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub plan_id: String,
    pub plan_name: String,
    pub status: String,
    /// The pid of another live process that runs the plan (`running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_pid: Option<u32>,
    pub total_shards: u64,
    pub pending_shards: u64,
    pub claimed_shards: u64,
    pub running_shards: u64,
    pub done_shards: u64,
    pub failed_shards: u64,
    pub aborted_shards: u64,
    pub reused_shards: u64,
    pub merkle_root: Option<String>,
    pub tree_size: u64,
    pub truth_certified: bool,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub eta_seconds: Option<f64>,
    /// Done shards over total.
    pub completion_rate: f64,
    /// Failed (and aborted) shards over those with an outcome.
    pub failed_ratio: f64,
    pub avg_shard_ms: f64,
    pub p50_shard_ms: f64,
    pub p95_shard_ms: f64,
    pub rehydrations: u32,
    pub replays: u32,
    pub stages: Vec<StageReport>,
    /// Up to 20 failed shards with their errors.
    pub failures: Vec<FailureReport>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailureReport {
    pub leaf_index: u64,
    pub stage_id: String,
    pub cas_id: String,
    pub state: String,
    pub attempts: u32,
    pub error: String,
}

/// What only a live run knows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Live {
    pub claimed: u64,
    pub running: u64,
    /// Shards per second recently observed.
    pub rate_per_second: f64,
    pub running_now: bool,
    /// The pid of another live process that runs the plan (seen by a
    /// reader of its store).
    pub owner_pid: Option<u32>,
}

/// p-th percentile (0..=100) of `values`, which it reorders.
pub fn percentile_us(values: &mut [u64], percent: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let (_, value, _) = values.select_nth_unstable(percentile_rank(values.len(), percent));
    *value
}

/// The index of the p-th percentile in `len` sorted values.
fn percentile_rank(len: usize, percent: f64) -> usize {
    ((percent / 100.0) * (len - 1) as f64).round() as usize
}

/// The 50th and 95th percentiles of `values`, which it reorders: selecting
/// the median leaves every larger value to its right, so the 95th is
/// selected among those alone (half the work of a second full selection,
/// over a million durations at the end of a run).
pub fn p50_p95_us(values: &mut [u64]) -> (u64, u64) {
    if values.is_empty() {
        return (0, 0);
    }
    let (r50, r95) = (
        percentile_rank(values.len(), 50.0),
        percentile_rank(values.len(), 95.0),
    );
    let (_, p50, above) = values.select_nth_unstable(r50);
    let p50 = *p50;
    if r95 == r50 {
        return (p50, p50);
    }
    let (_, p95, _) = above.select_nth_unstable(r95 - r50 - 1);
    (p50, *p95)
}

/// RFC 3339 UTC time of a Unix time in milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The report of a plan whose lifecycle status is `status`.
pub fn build(plan: &PlanRecord, live: Live, status: &str) -> Report {
    let counts = plan.counts();
    // Durations of the shards that ran, in leaf order; stages are
    // contiguous leaf ranges, so each stage's are a slice of them.
    let mut all_durations: Vec<u64> = Vec::with_capacity((counts.done - counts.reused) as usize);
    let mut stages = Vec::with_capacity(plan.manifest.stages.len());
    // (p50, p95) in µs of the last stage: a one-stage plan's are the plan's.
    let mut stage_percentiles_us = (0, 0);
    for stage in &plan.manifest.stages {
        let range = stage.first_leaf as usize..(stage.first_leaf + stage.shard_count) as usize;
        let slots = plan.shards.get(range).unwrap_or(&[]);
        let (mut done, mut failed, mut reused) = (0, 0, 0);
        let first = all_durations.len();
        for slot in slots {
            match slot.state {
                SlotState::Done => {
                    done += 1;
                    if slot.reused {
                        reused += 1;
                    } else {
                        all_durations.push(slot.duration_us);
                    }
                }
                SlotState::Failed | SlotState::Aborted => failed += 1,
                SlotState::Pending => {}
            }
        }
        let durations = &mut all_durations[first..];
        let busy_us: u64 = durations.iter().sum();
        stage_percentiles_us = p50_p95_us(durations);
        stages.push(StageReport {
            stage_id: stage.id.clone(),
            kind: stage.kind.clone(),
            executor: stage.executor.clone(),
            total_shards: stage.shard_count,
            pending_shards: stage.shard_count - done - failed,
            done_shards: done,
            failed_shards: failed,
            reused_shards: reused,
            slo_ms: stage.slo_ms,
            p50_shard_ms: ms(stage_percentiles_us.0),
            p95_shard_ms: ms(stage_percentiles_us.1),
            busy_ms: ms(busy_us),
        });
    }
    let total = plan.shard_count();
    let with_outcome = counts.done + counts.failed + counts.aborted;
    let pending_all = total - with_outcome;
    let avg_us = if all_durations.is_empty() {
        0
    } else {
        all_durations.iter().sum::<u64>() / all_durations.len() as u64
    };
    let (p50, p95) = if stages.len() == 1 {
        stage_percentiles_us
    } else {
        p50_p95_us(&mut all_durations)
    };
    let eta_seconds = if pending_all == 0 {
        Some(0.0)
    } else if live.running_now && live.rate_per_second > 0.0 {
        Some(((pending_all as f64 / live.rate_per_second) * 10.0).round() / 10.0)
    } else {
        None
    };
    let mut failures: Vec<FailureReport> = Vec::new();
    let mut failed_leaves: Vec<&u64> = plan.errors.keys().collect();
    failed_leaves.sort_unstable();
    for &leaf in failed_leaves.into_iter().take(20) {
        let slot = &plan.shards[leaf as usize];
        failures.push(FailureReport {
            leaf_index: leaf,
            stage_id: plan
                .manifest
                .stage_of(leaf)
                .map_or_else(String::new, |s| s.id.clone()),
            cas_id: to_hex(&slot.cas_id),
            state: slot.state.name().to_string(),
            attempts: slot.attempts,
            error: plan.errors[&leaf].clone(),
        });
    }
    let status = status.to_string();
    let claimed = live.claimed.min(pending_all);
    let running = live.running.min(pending_all - claimed);
    Report {
        plan_id: plan_id_text(&plan.plan_id),
        plan_name: plan.manifest.spec.name.clone(),
        status,
        owner_pid: live.owner_pid,
        total_shards: total,
        pending_shards: pending_all - claimed - running,
        claimed_shards: claimed,
        running_shards: running,
        done_shards: counts.done,
        failed_shards: counts.failed + counts.aborted,
        aborted_shards: counts.aborted,
        reused_shards: counts.reused,
        merkle_root: plan.recorded_root().map(|f| to_hex(&f.root)),
        tree_size: plan.recorded_root().map_or(0, |f| f.tree_size),
        truth_certified: plan.truth_certified(),
        started_at: rfc3339(plan.accepted_at_ms),
        finished_at: plan.finished.as_ref().map(|f| rfc3339(f.at_ms)),
        eta_seconds,
        completion_rate: if total == 0 {
            1.0
        } else {
            counts.done as f64 / total as f64
        },
        failed_ratio: if with_outcome == 0 {
            0.0
        } else {
            (counts.failed + counts.aborted) as f64 / with_outcome as f64
        },
        avg_shard_ms: ms(avg_us),
        p50_shard_ms: ms(p50),
        p95_shard_ms: ms(p95),
        rehydrations: plan.rehydrations,
        replays: plan.replays,
        stages,
        failures,
    }
}

/// The guide's status fields (`GET /api/hxo/status/{plan_id}`), plus
/// `status`: what [`build`] gives for them, without its per-shard pass, so
/// that polling a plan of a million shards stays cheap.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    pub plan_id: String,
    pub plan_name: String,
    pub status: String,
    /// The pid of another live process that runs the plan (`running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_pid: Option<u32>,
    pub total_shards: u64,
    pub pending_shards: u64,
    pub claimed_shards: u64,
    pub running_shards: u64,
    pub done_shards: u64,
    pub failed_shards: u64,
    pub merkle_root: Option<String>,
    pub truth_certified: bool,
    pub eta_seconds: Option<f64>,
}

/// The status fields of a plan whose lifecycle status is `status`.
pub fn status(plan: &PlanRecord, live: Live, status: &str) -> Status {
    let counts = plan.counts();
    let total = plan.shard_count();
    let pending_all = plan.pending_count();
    let eta_seconds = if pending_all == 0 {
        Some(0.0)
    } else if live.running_now && live.rate_per_second > 0.0 {
        Some(((pending_all as f64 / live.rate_per_second) * 10.0).round() / 10.0)
    } else {
        None
    };
    let claimed = live.claimed.min(pending_all);
    let running = live.running.min(pending_all - claimed);
    Status {
        plan_id: plan_id_text(&plan.plan_id),
        plan_name: plan.manifest.spec.name.clone(),
        status: status.to_string(),
        owner_pid: live.owner_pid,
        total_shards: total,
        pending_shards: pending_all - claimed - running,
        claimed_shards: claimed,
        running_shards: running,
        done_shards: counts.done,
        failed_shards: counts.failed + counts.aborted,
        merkle_root: plan.recorded_root().map(|f| to_hex(&f.root)),
        truth_certified: plan.truth_certified(),
        eta_seconds,
    }
}

impl Report {
    /// The human report printed at the end of a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "plan      {} ({})\n",
            self.plan_name, self.plan_id
        ));
        match self.owner_pid {
            Some(pid) => out.push_str(&format!("status    {} (pid {pid})\n", self.status)),
            None => out.push_str(&format!("status    {}\n", self.status)),
        }
        out.push_str(&format!(
            "shards    {} total, {} done ({} reused), {} failed, {} pending\n",
            self.total_shards,
            self.done_shards,
            self.reused_shards,
            self.failed_shards,
            self.pending_shards + self.claimed_shards + self.running_shards
        ));
        for stage in &self.stages {
            out.push_str(&format!(
                "  {:<24} {:>9} done {:>7} failed {:>9} pending  p50 {:>8.2} ms  p95 {:>8.2} ms\n",
                stage.stage_id,
                stage.done_shards,
                stage.failed_shards,
                stage.pending_shards,
                stage.p50_shard_ms,
                stage.p95_shard_ms
            ));
        }
        match &self.merkle_root {
            Some(root) => out.push_str(&format!(
                "root      {root} (tree size {}, {})\n",
                self.tree_size,
                if self.truth_certified {
                    "certified"
                } else {
                    "not certified"
                }
            )),
            None => out.push_str("root      (none yet)\n"),
        }
        out.push_str(&format!(
            "timing    started {}, finished {}, shard p50 {:.3} ms, p95 {:.3} ms\n",
            self.started_at,
            self.finished_at.as_deref().unwrap_or("-"),
            self.p50_shard_ms,
            self.p95_shard_ms
        ));
        for failure in &self.failures {
            out.push_str(&format!(
                "failed    #{} {} {} after {} attempt(s): {}\n",
                failure.leaf_index,
                failure.stage_id,
                &failure.cas_id[..12],
                failure.attempts,
                failure.error
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_us(&mut values, 50.0), 51);
        assert_eq!(percentile_us(&mut values, 95.0), 95);
        assert_eq!(percentile_us(&mut [], 95.0), 0);
    }

    #[test]
    fn p50_and_p95_together_agree_with_two_selections() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in [0, 1, 2, 3, 19, 20, 21, 100, 1001] {
            for _ in 0..5 {
                let values: Vec<u64> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed % 50 // many ties
                    })
                    .collect();
                let (mut a, mut b) = (values.clone(), values.clone());
                let want = (percentile_us(&mut a, 50.0), percentile_us(&mut b, 95.0));
                let mut c = values.clone();
                assert_eq!(p50_p95_us(&mut c), want, "{values:?}");
            }
        }
    }
}

/// Histogram bucket bounds of shard durations, in seconds.
pub const DURATION_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// What `/metrics` shows of the store: plans by status, shards by state,
/// shard durations, certifications and rehydrations. Gathered by a pass
/// over every shard (scrapes are rare; status polls never do this).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Plans by status name.
    pub plans_by_status: std::collections::BTreeMap<String, u64>,
    pub total: u64,
    pub pending: u64,
    pub claimed: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub aborted: u64,
    /// Shards with an outcome per bucket of [`DURATION_BUCKETS_S`] (not
    /// cumulative).
    pub duration_buckets: [u64; DURATION_BUCKETS_S.len()],
    pub duration_sum_us: u128,
    pub duration_count: u64,
    /// Plans whose latest root is certified.
    pub certified: u64,
    /// Plans finished with every shard done.
    pub finished_complete: u64,
    pub rehydrations: u64,
}

impl Metrics {
    /// Adds one plan, whose lifecycle status is `status`.
    pub fn add(&mut self, plan: &PlanRecord, status: &str) {
        *self.plans_by_status.entry(status.to_string()).or_insert(0) += 1;
        let counts = plan.counts();
        self.total += plan.shard_count();
        self.pending += plan.pending_count();
        self.done += counts.done;
        self.failed += counts.failed;
        self.aborted += counts.aborted;
        self.rehydrations += u64::from(plan.rehydrations);
        if plan.truth_certified() {
            self.certified += 1;
        }
        if plan.finished.is_some() && counts.done == plan.shard_count() {
            self.finished_complete += 1;
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
            if let Some(bucket) = DURATION_BUCKETS_S.iter().position(|&le| seconds <= le) {
                self.duration_buckets[bucket] += 1;
            }
            self.duration_sum_us += u128::from(slot.duration_us);
            self.duration_count += 1;
        }
    }

    /// Claimed and running shards of the plans running in this process,
    /// bounded by the pending ones (a shard claimed just now may already
    /// be durable).
    pub fn set_live(&mut self, claimed: u64, running: u64) {
        self.claimed = claimed.min(self.pending);
        self.running = running.min(self.pending - self.claimed);
    }
}
