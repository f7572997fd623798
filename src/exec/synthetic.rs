//! The `synthetic` executor: configurable CPU work, sleeps and failures, for
//! benchmarks and fault tests.
//!
//! Config keys: `work_iters` (SHA-256 iterations per unit, default 0),
//! `sleep_ms` (per unit, default 0), `fail_rate` and `panic_rate` (0..1,
//! drawn per attempt from a hash of seed, cas_id and attempt, so a retry can
//! succeed and every run draws the same), `seed` (default 0) and
//! `flaky_attempts` (the first N attempts of every shard fail).
//!
//! The output digest is the tree hash over unit digests, where a unit's
//! digest is its 32-byte seed block (seed and unit identity) hashed
//! `work_iters` times: a deterministic function of the shard, so results are
//! reproducible and splittable. With no work, the unit digest is the seed
//! block itself, which keeps a no-op shard down to the tree's leaf hash.

use super::config::{optional_f64, optional_u64};
use super::{ConfigError, ExecError, Executor, ShardContext};
use crate::hash::{sha256, Hash};
use crate::partition::PartitionInput;
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Synthetic {
    pub work_iters: u64,
    pub sleep_ms: u64,
    pub fail_rate: f64,
    pub panic_rate: f64,
    pub seed: u64,
    pub flaky_attempts: u64,
}

impl Synthetic {
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, ConfigError> {
        let rate = |key: &'static str| -> Result<f64, ConfigError> {
            let value = optional_f64(config, key, 0.0)?;
            if value > 1.0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be between 0 and 1, got {value}"),
                });
            }
            Ok(value)
        };
        Ok(Synthetic {
            work_iters: optional_u64(config, "work_iters", 0)?,
            sleep_ms: optional_u64(config, "sleep_ms", 0)?,
            fail_rate: rate("fail_rate")?,
            panic_rate: rate("panic_rate")?,
            seed: optional_u64(config, "seed", 0)?,
            flaky_attempts: optional_u64(config, "flaky_attempts", 0)?,
        })
    }

    /// A uniform draw in [0, 1) for this shard, attempt and purpose.
    fn draw(&self, ctx: &ShardContext<'_>, purpose: u8) -> f64 {
        let mut block = [0u8; 32 + 8 + 4 + 1];
        block[..32].copy_from_slice(ctx.cas_id);
        block[32..40].copy_from_slice(&self.seed.to_le_bytes());
        block[40..44].copy_from_slice(&ctx.attempt.to_le_bytes());
        block[44] = purpose;
        let digest = sha256(&block);
        let bits = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A unit's digest: its seed block hashed `work_iters` times, looking
    /// at the cancel token every `CANCEL_CHECK_EVERY` iterations.
    #[inline]
    fn unit_digest(&self, ctx: &ShardContext<'_>, unit: u64) -> Result<Hash, ExecError> {
        let mut digest = self.unit_seed(ctx.input, unit);
        for iteration in 1..=self.work_iters {
            digest = sha256(&digest);
            if iteration % CANCEL_CHECK_EVERY == 0 {
                check_cancel(ctx)?;
            }
        }
        Ok(digest)
    }

    /// A unit's 32-byte seed block: the seed and the unit's identity.
    #[inline]
    fn unit_seed(&self, input: &PartitionInput, unit: u64) -> Hash {
        let mut block = [0u8; 32];
        block[..8].copy_from_slice(&self.seed.to_le_bytes());
        match input {
            PartitionInput::Range { start, .. } => {
                block[8] = 1;
                block[16..24].copy_from_slice(&(start + unit).to_le_bytes());
            }
            PartitionInput::Files { files, .. } => {
                let file = &files[unit as usize];
                block[8] = 2;
                block[16..].copy_from_slice(&file.content_sha256[..16]);
            }
            PartitionInput::Nodes { nodes, .. } => {
                block[8] = 3;
                block[16..].copy_from_slice(&sha256(nodes[unit as usize].as_bytes())[..16]);
            }
        }
        block
    }
}

/// SHA-256 iterations, or units, between two looks at the cancel token: a
/// SHA-256 of 32 bytes takes well under a microsecond, so this is about a
/// millisecond of work, inside the few milliseconds `Executor` asks for.
const CANCEL_CHECK_EVERY: u64 = 2048;

/// `Err` once the shard is cancelled: timed out, or the run stopped.
#[inline]
fn check_cancel(ctx: &ShardContext<'_>) -> Result<(), ExecError> {
    if !ctx.cancel.is_cancelled() {
        return Ok(());
    }
    Err(if ctx.cancel.timed_out() {
        ExecError::TimedOut
    } else {
        ExecError::Cancelled
    })
}

/// Sleeps `duration` in slices, giving up early when cancelled.
pub(crate) fn sleep_cancellable(
    ctx: &ShardContext<'_>,
    duration: Duration,
) -> Result<(), ExecError> {
    let until = Instant::now() + duration;
    loop {
        check_cancel(ctx)?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(10)));
    }
}

impl Executor for Synthetic {
    fn is_splittable(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        if (ctx.attempt as u64) <= self.flaky_attempts {
            return Err(ExecError::Failed(format!(
                "synthetic flaky failure on attempt {} (flaky_attempts = {})",
                ctx.attempt, self.flaky_attempts
            )));
        }
        if self.panic_rate > 0.0 && self.draw(ctx, b'p') < self.panic_rate {
            panic!("synthetic panic (panic_rate = {})", self.panic_rate);
        }
        if self.fail_rate > 0.0 && self.draw(ctx, b'f') < self.fail_rate {
            return Err(ExecError::Failed(format!(
                "synthetic failure (fail_rate = {})",
                self.fail_rate
            )));
        }
        let unit_count = ctx.units.end - ctx.units.start;
        if self.sleep_ms > 0 {
            sleep_cancellable(
                ctx,
                Duration::from_millis(self.sleep_ms.saturating_mul(unit_count)),
            )?;
        }
        if unit_count == 1 && self.work_iters == 0 {
            // The common no-op case: nothing to cancel, no allocation.
            return Ok(crate::merkle::leaf_hash(
                &self.unit_seed(ctx.input, ctx.units.start),
            ));
        }
        if unit_count == 1 {
            return Ok(crate::merkle::leaf_hash(
                &self.unit_digest(ctx, ctx.units.start)?,
            ));
        }
        // Grown as units are computed: a count the plan declares is not
        // memory to take up front.
        let mut digests = Vec::with_capacity(unit_count.min(CANCEL_CHECK_EVERY) as usize);
        for unit in ctx.units.clone() {
            if self.work_iters > 0 || unit % CANCEL_CHECK_EVERY == 0 {
                check_cancel(ctx)?;
            }
            digests.push(self.unit_digest(ctx, unit)?);
        }
        Ok(crate::merkle::root_of_leaf_data(&digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::CancelToken;

    fn run(
        executor: &Synthetic,
        units: std::ops::Range<u64>,
        attempt: u32,
    ) -> Result<Hash, ExecError> {
        let cancel = CancelToken::new();
        let input = PartitionInput::Range {
            start: 100,
            end: 108,
        };
        let cas = [9u8; 32];
        let ctx = ShardContext {
            plan_id: "p",
            stage_id: "s",
            leaf_index: 0,
            cas_id: &cas,
            input: &input,
            units,
            attempt,
            artifacts_dir: Path::new("/nonexistent"),
            cancel: &cancel,
            dry_run: false,
        };
        executor.execute(&ctx)
    }
    use std::path::Path;

    fn synthetic(json: &str) -> Synthetic {
        let Value::Object(map) = serde_json::from_str(json).unwrap() else {
            panic!()
        };
        Synthetic::from_config(&map).unwrap()
    }

    #[test]
    fn digest_is_deterministic_and_depends_on_seed_and_work() {
        let a = synthetic(r#"{"seed": 1, "work_iters": 3}"#);
        let b = synthetic(r#"{"seed": 2, "work_iters": 3}"#);
        let c = synthetic(r#"{"seed": 1, "work_iters": 4}"#);
        assert_eq!(run(&a, 0..8, 1), run(&a, 0..8, 1));
        assert_ne!(run(&a, 0..8, 1), run(&b, 0..8, 1));
        assert_ne!(run(&a, 0..8, 1), run(&c, 0..8, 1));
    }

    #[test]
    fn split_halves_recombine_to_the_whole() {
        let a = synthetic(r#"{"seed": 5, "work_iters": 1}"#);
        let whole = run(&a, 0..8, 1).unwrap();
        let left = run(&a, 0..4, 1).unwrap();
        let right = run(&a, 4..8, 1).unwrap();
        assert_eq!(crate::merkle::node_hash(&left, &right), whole);
    }

    #[test]
    fn flaky_attempts_fail_then_succeed_and_rates_are_validated() {
        let flaky = synthetic(r#"{"flaky_attempts": 2}"#);
        assert!(matches!(run(&flaky, 0..1, 1), Err(ExecError::Failed(_))));
        assert!(matches!(run(&flaky, 0..1, 2), Err(ExecError::Failed(_))));
        assert!(run(&flaky, 0..1, 3).is_ok());
        let always = synthetic(r#"{"fail_rate": 1.0}"#);
        assert!(matches!(run(&always, 0..1, 1), Err(ExecError::Failed(_))));
        let Value::Object(bad) = serde_json::from_str(r#"{"fail_rate": 1.5}"#).unwrap() else {
            panic!()
        };
        assert_eq!(Synthetic::from_config(&bad).unwrap_err().key(), "fail_rate");
    }
}
