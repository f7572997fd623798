//! Effective settings: command-line flags beat `HXO_*` variables, which beat
//! defaults (the README lists every variable).
//!
//! Settings are read once, validated (a zero concurrency or a split factor
//! below 2 is a usage error, not a surprise at run time) and then passed
//! down by reference; nothing below the front-ends reads the environment.

use std::path::PathBuf;

/// Where a setting's value came from, for `hxo config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    Environment,
    Flag,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::Environment => "env",
            Source::Flag => "flag",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// The engine's knobs, resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    pub enabled: bool,
    pub genesis_enabled: bool,
    pub db_path: PathBuf,
    pub artifacts_dir: PathBuf,
    pub threads: usize,
    pub max_concurrency: usize,
    pub shard_timeout_ms: u64,
    pub default_slo_ms: u64,
    pub max_shards: u64,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    pub autosplit_p95_ms: u64,
    pub autosplit_factor: u32,
    pub allow_captain_view: bool,
    pub admiral_token: Option<String>,
    pub captain_token: Option<String>,
    /// Sync the log at every group commit (default). `--no-sync` turns it
    /// off for benchmarks and scratch runs: see `LogOptions::sync_commits`.
    pub sync_commits: bool,
    /// Name and source of every setting, for `hxo config`.
    pub sources: Vec<(&'static str, String, Source)>,
}

/// Values given as command-line flags; `None` means "not given".
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub db_path: Option<PathBuf>,
    pub artifacts_dir: Option<PathBuf>,
    pub threads: Option<String>,
    pub max_concurrency: Option<String>,
    pub shard_timeout_ms: Option<String>,
    pub max_attempts: Option<String>,
    pub no_sync: bool,
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    sources: Vec<(&'static str, String, Source)>,
}

impl Reader<'_> {
    /// The raw text of `name`: the flag if given, else the variable, else
    /// `default`; recorded with its source.
    fn text(&mut self, name: &'static str, flag: Option<String>, default: &str) -> String {
        let (value, source) = match flag {
            Some(value) => (value, Source::Flag),
            None => match (self.lookup)(name).filter(|v| !v.is_empty()) {
                Some(value) => (value, Source::Environment),
                None => (default.to_string(), Source::Default),
            },
        };
        self.sources.push((name, value.clone(), source));
        value
    }

    fn number(
        &mut self,
        name: &'static str,
        flag: Option<String>,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, SettingsError> {
        let text = self.text(name, flag, &default.to_string());
        let invalid = |reason: String| SettingsError::Invalid {
            name,
            value: text.clone(),
            reason,
        };
        let value: u64 = text
            .trim()
            .parse()
            .map_err(|_| invalid("expected a whole number".into()))?;
        if value < min || value > max {
            return Err(invalid(format!("must be between {min} and {max}")));
        }
        Ok(value)
    }

    fn boolean(&mut self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        let text = self.text(name, None, if default { "true" } else { "false" });
        parse_bool(&text).ok_or_else(|| SettingsError::Invalid {
            name,
            value: text.clone(),
            reason: "expected true or false".into(),
        })
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "enabled" => Some(true),
        "false" | "0" | "no" | "off" | "disabled" => Some(false),
        _ => None,
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env(overrides: Overrides) -> Result<Self, SettingsError> {
        Self::resolve(&|name| std::env::var(name).ok(), overrides)
    }

    /// Resolves settings from `lookup` (the environment, or a map in tests).
    pub fn resolve(
        lookup: &dyn Fn(&str) -> Option<String>,
        overrides: Overrides,
    ) -> Result<Self, SettingsError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mut reader = Reader {
            lookup,
            sources: Vec::new(),
        };
        let enabled = reader.boolean("HXO_ENABLED", true)?;
        let genesis_text = reader.text("GENESIS_MODE", None, "enabled");
        let genesis_enabled = parse_bool(&genesis_text).ok_or(SettingsError::Invalid {
            name: "GENESIS_MODE",
            value: genesis_text.clone(),
            reason: "expected enabled or disabled".into(),
        })?;
        let db_path = PathBuf::from(reader.text(
            "HXO_DB_PATH",
            overrides.db_path.map(|p| p.display().to_string()),
            ".hxo/checkpoints",
        ));
        let artifacts_dir = PathBuf::from(reader.text(
            "HXO_ARTIFACTS_DIR",
            overrides.artifacts_dir.map(|p| p.display().to_string()),
            ".hxo/artifacts",
        ));
        let threads = reader.number("HXO_THREADS", overrides.threads, cores, 1, 4096)? as usize;
        let max_concurrency = reader.number(
            "HXO_MAX_CONCURRENCY",
            overrides.max_concurrency,
            64,
            1,
            4096,
        )? as usize;
        let shard_timeout_ms = reader.number(
            "HXO_SHARD_TIMEOUT_MS",
            overrides.shard_timeout_ms,
            15_000,
            1,
            u32::MAX as u64,
        )?;
        let default_slo_ms =
            reader.number("HXO_DEFAULT_SLO_MS", None, 120_000, 1, u32::MAX as u64)?;
        let max_shards = reader.number(
            "HXO_MAX_SHARDS",
            None,
            1_000_000,
            1,
            crate::limits::SHARDS_MAX_CEILING,
        )?;
        let max_attempts =
            reader.number("HXO_MAX_ATTEMPTS", overrides.max_attempts, 3, 1, 100)? as u32;
        let retry_backoff_ms = reader.number(
            "HXO_RETRY_BACKOFF_MS",
            None,
            100,
            0,
            crate::limits::RETRY_BACKOFF_MAX_MS,
        )?;
        let autosplit_p95_ms =
            reader.number("HXO_AUTOSPLIT_P95_MS", None, 8000, 1, u32::MAX as u64)?;
        let autosplit_factor = reader.number("HXO_AUTOSPLIT_FACTOR", None, 4, 2, 1024)? as u32;
        let allow_captain_view = reader.boolean("HXO_ALLOW_CAPTAIN_VIEW", true)?;
        let admiral_token = lookup("HXO_ADMIRAL_TOKEN").filter(|t| !t.is_empty());
        let captain_token = lookup("HXO_CAPTAIN_TOKEN").filter(|t| !t.is_empty());
        for (name, token) in [
            ("HXO_ADMIRAL_TOKEN", &admiral_token),
            ("HXO_CAPTAIN_TOKEN", &captain_token),
        ] {
            let shown = if token.is_some() { "(set)" } else { "(unset)" };
            let source = if token.is_some() {
                Source::Environment
            } else {
                Source::Default
            };
            reader.sources.push((name, shown.to_string(), source));
        }
        Ok(Settings {
            enabled,
            genesis_enabled,
            db_path,
            artifacts_dir,
            threads,
            max_concurrency,
            shard_timeout_ms,
            default_slo_ms,
            max_shards,
            max_attempts,
            retry_backoff_ms,
            autosplit_p95_ms,
            autosplit_factor,
            allow_captain_view,
            admiral_token,
            captain_token,
            sync_commits: !overrides.no_sync,
            sources: reader.sources,
        })
    }

    /// The directory that holds the log, artifacts and tokens: the parent of
    /// the checkpoint directory (`.hxo` by default).
    pub fn state_dir(&self) -> PathBuf {
        match self.db_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)], overrides: Overrides) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(&|name| map.get(name).cloned(), overrides)
    }

    #[test]
    fn defaults_match_the_design() {
        let settings = resolve(&[], Overrides::default()).unwrap();
        assert!(settings.enabled && settings.genesis_enabled);
        assert_eq!(settings.max_concurrency, 64);
        assert_eq!(settings.shard_timeout_ms, 15_000);
        assert_eq!(settings.max_shards, 1_000_000);
        assert_eq!(settings.max_attempts, 3);
        assert_eq!(settings.retry_backoff_ms, 100);
        assert_eq!(settings.autosplit_p95_ms, 8000);
        assert_eq!(settings.autosplit_factor, 4);
        assert_eq!(settings.db_path, PathBuf::from(".hxo/checkpoints"));
        assert_eq!(settings.state_dir(), PathBuf::from(".hxo"));
    }

    #[test]
    fn flags_beat_variables_which_beat_defaults() {
        let settings = resolve(
            &[("HXO_THREADS", "3"), ("HXO_MAX_ATTEMPTS", "5")],
            Overrides {
                threads: Some("7".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(settings.threads, 7);
        assert_eq!(settings.max_attempts, 5);
        let source = |name| settings.sources.iter().find(|s| s.0 == name).unwrap().2;
        assert_eq!(source("HXO_THREADS"), Source::Flag);
        assert_eq!(source("HXO_MAX_ATTEMPTS"), Source::Environment);
        assert_eq!(source("HXO_RETRY_BACKOFF_MS"), Source::Default);
    }

    #[test]
    fn bad_values_are_rejected_with_their_name() {
        for (name, value) in [
            ("HXO_MAX_CONCURRENCY", "0"),
            ("HXO_AUTOSPLIT_FACTOR", "1"),
            ("HXO_THREADS", "many"),
            ("HXO_ENABLED", "perhaps"),
            ("GENESIS_MODE", "sometimes"),
        ] {
            let error = resolve(&[(name, value)], Overrides::default()).unwrap_err();
            assert!(error.to_string().starts_with(name), "{error}");
        }
        let disabled = resolve(&[("GENESIS_MODE", "disabled")], Overrides::default()).unwrap();
        assert!(!disabled.genesis_enabled);
    }
}
