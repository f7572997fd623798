//! Reading a stage's `config` object: typed accessors that fail with an
//! error naming the key, and path resolution that keeps every path inside
//! the directory it must stay in.
//!
//! Invariant kept by [`resolve`]: a returned path is canonical (absolute,
//! no `.`/`..`, no symlinks) and lies inside the given canonical root. Paths
//! are checked twice: lexically first, so that `../missing` is reported as
//! an escape rather than as missing, then after canonicalizing, which
//! catches symlinks that lead out.

use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use super::PartitionError;

/// The config object a partitioner reads.
pub(crate) type Config = Map<String, Value>;

/// A short, human description of a JSON value for "expected X, got Y".
pub(crate) fn describe(value: &Value) -> String {
    // Long values are cut so that one bad key cannot flood the terminal.
    const SHOWN_CHARS_MAX: usize = 40;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) if text.chars().count() > SHOWN_CHARS_MAX => {
            let head: String = text.chars().take(SHOWN_CHARS_MAX).collect();
            format!("{head:?}...")
        }
        Value::String(text) => format!("{text:?}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

fn wrong_type(key: &str, expected: &str, got: &Value) -> PartitionError {
    PartitionError::config(key, format!("expected {expected}, got {}", describe(got)))
}

/// The error for a required key that is absent.
pub(crate) fn missing(key: &str) -> PartitionError {
    PartitionError::config(key, "required key is missing")
}

/// A non-negative integer, or `None` when the key is absent.
pub(crate) fn optional_u64(config: &Config, key: &str) -> Result<Option<u64>, PartitionError> {
    match config.get(key) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a non-negative integer", value)),
    }
}

/// An integer >= 1, or `None` when the key is absent.
pub(crate) fn optional_positive_u64(
    config: &Config,
    key: &str,
) -> Result<Option<u64>, PartitionError> {
    match config.get(key) {
        None => Ok(None),
        Some(value) => match value.as_u64() {
            Some(number) if number >= 1 => Ok(Some(number)),
            _ => Err(wrong_type(key, "an integer >= 1", value)),
        },
    }
}

/// A finite number > 0 (integer or fraction), or `None` when absent.
pub(crate) fn optional_positive_f64(
    config: &Config,
    key: &str,
) -> Result<Option<f64>, PartitionError> {
    match config.get(key) {
        None => Ok(None),
        Some(value) => match value.as_f64() {
            Some(number) if number.is_finite() && number > 0.0 => Ok(Some(number)),
            _ => Err(wrong_type(key, "a number > 0", value)),
        },
    }
}

/// A string, or `None` when absent.
pub(crate) fn optional_str<'c>(
    config: &'c Config,
    key: &str,
) -> Result<Option<&'c str>, PartitionError> {
    match config.get(key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(value) => Err(wrong_type(key, "a string", value)),
    }
}

/// An array of strings; `key` names the array, elements are named `key[i]`.
pub(crate) fn str_list<'v>(key: &str, value: &'v Value) -> Result<Vec<&'v str>, PartitionError> {
    let Value::Array(items) = value else {
        return Err(wrong_type(key, "an array of strings", value));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(text) => Ok(text.as_str()),
            other => Err(wrong_type(&format!("{key}[{index}]"), "a string", other)),
        })
        .collect()
}

/// What [`resolve`] expects to find at the end of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    Directory,
    File,
}

impl Want {
    fn noun(self) -> &'static str {
        match self {
            Want::Directory => "directory",
            Want::File => "file",
        }
    }
}

/// Canonicalizes the plan's base directory; errors are reported against
/// `key`, the first key that needed it.
pub(crate) fn canonical_base(key: &str, base_dir: &Path) -> Result<PathBuf, PartitionError> {
    base_dir
        .canonicalize()
        .map_err(|source| PartitionError::io(key, base_dir, source))
}

/// Drops `.` and applies `..` without touching the file system. `..` at the
/// file-system root stays at the root, as the OS does.
pub(crate) fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Resolves `given` (relative to `root`, or absolute) to a canonical path
/// inside `root` (itself canonical) holding a `want`.
///
/// Errors name `key`: an empty path, an escape (lexical or through a
/// symlink), a missing path, or a path of the wrong kind.
pub(crate) fn resolve(
    key: &str,
    given: &str,
    root: &Path,
    want: Want,
) -> Result<PathBuf, PartitionError> {
    if given.is_empty() {
        return Err(PartitionError::config(
            key,
            "path is empty (use \".\" for the plan's directory)",
        ));
    }
    let escapes = |resolved: PathBuf| PartitionError::EscapesRoot {
        key: key.to_owned(),
        given: given.to_owned(),
        resolved,
        root: root.to_owned(),
    };
    let lexical = normalize_lexically(&root.join(given));
    if !lexical.starts_with(root) {
        return Err(escapes(lexical));
    }
    let canonical = match lexical.canonicalize() {
        Ok(path) => path,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(PartitionError::config(
                key,
                format!(
                    "{} {given:?} does not exist (resolved to {})",
                    want.noun(),
                    lexical.display()
                ),
            ));
        }
        Err(source) => return Err(PartitionError::io(key, lexical, source)),
    };
    if !canonical.starts_with(root) {
        return Err(escapes(canonical));
    }
    let is_wanted = match want {
        Want::Directory => canonical.is_dir(),
        Want::File => canonical.is_file(),
    };
    if !is_wanted {
        return Err(PartitionError::config(
            key,
            format!(
                "{given:?} is not a {} (resolved to {})",
                want.noun(),
                canonical.display()
            ),
        ));
    }
    Ok(canonical)
}

/// Reads the required string `key` as a path and resolves it inside the
/// canonical `base`.
pub(crate) fn required_path(
    config: &Config,
    key: &str,
    base: &Path,
    want: Want,
) -> Result<PathBuf, PartitionError> {
    let given = optional_str(config, key)?.ok_or_else(|| missing(key))?;
    resolve(key, given, base, want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: Value) -> Config {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test configs are objects"),
        }
    }

    #[test]
    fn integers_reject_wrong_types() {
        let config = config(json!({"a": 3, "b": -1, "c": 1.5, "d": "7", "e": 0}));
        assert_eq!(optional_u64(&config, "a").unwrap(), Some(3));
        assert_eq!(optional_u64(&config, "missing").unwrap(), None);
        for key in ["b", "c", "d"] {
            let error = optional_u64(&config, key).unwrap_err();
            assert_eq!(error.key(), key);
        }
        assert_eq!(
            optional_positive_u64(&config, "e").unwrap_err().to_string(),
            "e: expected an integer >= 1, got 0"
        );
    }

    #[test]
    fn floats_must_be_positive() {
        let config = config(json!({"a": 0.5, "b": 0, "c": -2, "d": "1"}));
        assert_eq!(optional_positive_f64(&config, "a").unwrap(), Some(0.5));
        for key in ["b", "c", "d"] {
            assert_eq!(optional_positive_f64(&config, key).unwrap_err().key(), key);
        }
    }

    #[test]
    fn long_strings_are_cut_in_messages() {
        let long = "x".repeat(100);
        let shown = describe(&Value::String(long));
        assert!(shown.len() < 50, "{shown}");
        assert!(shown.ends_with("..."));
    }

    #[test]
    fn lexical_normalization() {
        assert_eq!(
            normalize_lexically(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize_lexically(Path::new("/../..")), PathBuf::from("/"));
    }

    #[test]
    fn resolve_accepts_inside_and_rejects_outside() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("plan/src")).unwrap();
        std::fs::write(base.join("plan/file.txt"), b"x").unwrap();
        let plan = base.join("plan");

        assert_eq!(
            resolve("root", "src", &plan, Want::Directory).unwrap(),
            plan.join("src")
        );
        assert_eq!(
            resolve("root", "./src/../src", &plan, Want::Directory).unwrap(),
            plan.join("src")
        );
        let absolute = plan.join("src");
        assert_eq!(
            resolve("root", absolute.to_str().unwrap(), &plan, Want::Directory).unwrap(),
            absolute
        );
        assert!(matches!(
            resolve("root", "..", &plan, Want::Directory),
            Err(PartitionError::EscapesRoot { .. })
        ));
        assert!(matches!(
            resolve("root", "/", &plan, Want::Directory),
            Err(PartitionError::EscapesRoot { .. })
        ));
        // A missing path outside is an escape, not "does not exist".
        assert!(matches!(
            resolve("root", "../nowhere", &plan, Want::Directory),
            Err(PartitionError::EscapesRoot { .. })
        ));
        let error = resolve("root", "nowhere", &plan, Want::Directory).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "root: directory \"nowhere\" does not exist (resolved to {})",
                plan.join("nowhere").display()
            )
        );
        let error = resolve("root", "file.txt", &plan, Want::Directory).unwrap_err();
        assert!(error.to_string().contains("is not a directory"), "{error}");
        let error = resolve("database", "src", &plan, Want::File).unwrap_err();
        assert!(error.to_string().contains("is not a file"), "{error}");
        let error = resolve("root", "", &plan, Want::Directory).unwrap_err();
        assert_eq!(error.key(), "root");
    }

    #[cfg(unix)]
    #[test]
    fn resolve_rejects_symlink_escape() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("plan")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::os::unix::fs::symlink(base.join("outside"), base.join("plan/link")).unwrap();
        let error = resolve("root", "link", &base.join("plan"), Want::Directory).unwrap_err();
        match error {
            PartitionError::EscapesRoot { key, resolved, .. } => {
                assert_eq!(key, "root");
                assert_eq!(resolved, base.join("outside"));
            }
            other => panic!("expected an escape, got {other:?}"),
        }
    }
}
