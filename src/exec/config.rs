//! Executor configuration errors and the small typed readers the guide
//! executors use to validate their keys of a stage's `config` object.
//!
//! A stage's `config` holds the keys of its partitioner *and* of its
//! executor, so an executor ignores keys it does not own; rejecting unknown
//! keys is the plan layer's job, using the union of the partitioner's keys
//! and the executor's `CONFIG_KEYS`. Every error names the offending key; the
//! plan layer prefixes the stage's JSON path (`stages[2].config.sql: ...`).

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

/// A stage config that an executor cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config.{key}: missing required key")]
    Missing { key: &'static str },
    #[error("config.{key}: expected {expected}, got {got}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    #[error("config.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("config.{key}: path {path:?} escapes the plan directory")]
    PathEscapes { key: &'static str, path: String },
}

impl ConfigError {
    /// The config key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::Missing { key }
            | ConfigError::WrongType { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::PathEscapes { key, .. } => key,
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The string at `key`, or `None` when absent.
pub fn optional_str<'a>(
    config: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a str>, ConfigError> {
    match config.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ConfigError::WrongType {
            key,
            expected: "a string",
            got: type_name(other),
        }),
    }
}

/// The non-negative number at `key`, or `default` when absent.
pub fn optional_f64(
    config: &Map<String, Value>,
    key: &'static str,
    default: f64,
) -> Result<f64, ConfigError> {
    match config.get(key) {
        None => Ok(default),
        Some(value) => value
            .as_f64()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| ConfigError::Invalid {
                key,
                reason: format!("expected a non-negative number, got {value}"),
            }),
    }
}

/// The non-negative whole number at `key`, or `default` when absent.
pub fn optional_u64(
    config: &Map<String, Value>,
    key: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match config.get(key) {
        None => Ok(default),
        Some(value) => value.as_u64().ok_or_else(|| ConfigError::Invalid {
            key,
            reason: format!("expected a non-negative whole number, got {value}"),
        }),
    }
}

/// The non-empty string at `key`.
pub fn required_str<'a>(
    config: &'a Map<String, Value>,
    key: &'static str,
) -> Result<&'a str, ConfigError> {
    let s = optional_str(config, key)?.ok_or(ConfigError::Missing { key })?;
    if s.trim().is_empty() {
        return Err(ConfigError::Invalid {
            key,
            reason: "must not be empty".to_owned(),
        });
    }
    Ok(s)
}

/// Resolves the path at `key` against `base_dir`, the plan file's directory.
///
/// The check is lexical: an absolute path must lie under `base_dir`, and `..`
/// may not climb above it. Symlinks are not followed (the file may not exist
/// yet when a plan is validated).
pub fn required_path_under(
    config: &Map<String, Value>,
    key: &'static str,
    base_dir: &Path,
) -> Result<PathBuf, ConfigError> {
    let raw = required_str(config, key)?;
    let escapes = || ConfigError::PathEscapes {
        key,
        path: raw.to_owned(),
    };
    let given = Path::new(raw);
    let relative = if given.is_absolute() {
        given.strip_prefix(base_dir).map_err(|_| escapes())?
    } else {
        given
    };
    let mut resolved = base_dir.to_path_buf();
    let mut depth = 0u32;
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                resolved.push(part);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(escapes());
                }
                resolved.pop();
                depth -= 1;
            }
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    if depth == 0 {
        return Err(ConfigError::Invalid {
            key,
            reason: "must name a file, not the plan directory".to_owned(),
        });
    }
    // The lexical check cannot see symlinks: where the file exists, its real
    // location must be under the plan directory's real location too.
    if let (Ok(real), Ok(real_base)) = (resolved.canonicalize(), base_dir.canonicalize()) {
        if !real.starts_with(&real_base) {
            return Err(escapes());
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test configs are objects"),
        }
    }

    #[test]
    fn paths_resolve_under_base_and_never_escape() {
        let base = Path::new("/plans/p");
        let ok = config(json!({ "database": "db/../app.db" }));
        assert_eq!(
            required_path_under(&ok, "database", base).unwrap(),
            Path::new("/plans/p/app.db")
        );
        let abs = config(json!({ "database": "/plans/p/x.db" }));
        assert!(required_path_under(&abs, "database", base).is_ok());
        for bad in ["../x.db", "/etc/x.db", "a/../../x.db"] {
            let c = config(json!({ "database": bad }));
            let err = required_path_under(&c, "database", base).unwrap_err();
            assert_eq!(err.key(), "database");
            assert!(err.to_string().contains("escapes"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let c = config(json!({ "sql": 3 }));
        let err = required_str(&c, "sql").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.sql: expected a string, got a number"
        );
        let err = required_str(&c, "table").unwrap_err();
        assert_eq!(err.to_string(), "config.table: missing required key");
    }
}
