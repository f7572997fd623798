//! `warm_registry` (kind `deploy.prime`): builds the symbol registry of one
//! module (the files of one `by_module` shard), stored content-addressed.
//!
//! This is a line-pattern scanner, not a parser; see [`WarmRegistry`] for
//! exactly what it matches.

use serde_json::json;

use super::support::{check_cancel, file_units, read_verified, write_artifact, UnitHasher};
use crate::exec::ExecError;
use crate::exec::Executor;
use crate::exec::ShardContext;
use crate::hash::Hash;
use crate::merkle::root_of_leaf_data;

const NAME: &str = "warm_registry";

/// Subdirectory of the artifacts directory that holds registries.
pub const ARTIFACT_KIND: &str = "registry";

/// Largest source file scanned; a larger one fails the shard.
pub const FILE_SIZE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Builds a module's symbol registry from simple line patterns.
///
/// For the files of `ctx.units` (in `rel_path` order), the language is
/// chosen by extension: `.rs` Rust; `.py`, `.pyi` Python; `.js`, `.mjs`,
/// `.cjs`, `.jsx` JavaScript; `.ts`, `.mts`, `.cts`, `.tsx` TypeScript. Other
/// files are not read and declare nothing. A source file is decoded as UTF-8
/// (invalid sequences become U+FFFD) and each line, leading whitespace
/// removed, is matched against:
///
/// - Rust (lines starting with `//` are skipped): optional visibility `pub`
///   or `pub(...)`, then any of the qualifiers `const`, `async`, `unsafe`,
///   `extern`, `extern "ABI"`, `default`, `auto`, then one of the keywords
///   `fn`, `struct`, `enum`, `trait`, then the name (`r#` prefix dropped).
///   Exported means the line had a visibility.
/// - Python: `def NAME`, `async def NAME` (kind `def`) or `class NAME` (kind
///   `class`), at any indentation. Exported means at column 0 and the name
///   does not start with `_`.
/// - JavaScript and TypeScript (lines starting with `//` are skipped):
///   `[export] [default] [async] function[*] NAME` (kind `function`),
///   `[export] [default] class NAME` (kind `class`), and `export const NAME`
///   (kind `const`; a non-exported `const` is a local, not a symbol).
///   Exported means the line starts with `export`.
///
/// A name is a maximal run of alphanumeric characters, `_` (and `$` in
/// JavaScript); a keyword with no name after it (`export default function(`)
/// declares nothing. Block comments and string literals are not recognised,
/// so a matching line inside one is reported too.
///
/// It writes `{"version":1,"symbols":[{"path","line","kind","name","exported"}...]}`
/// (files in path order, lines ascending, `line` 1-based) to
/// `<artifacts_dir>/registry/<sha256 of registry, hex>.json`. The output
/// digest is the RFC 6962 tree hash of the unit digests; a unit digest is the
/// framed SHA-256 (`support::UnitHasher`) of domain
/// `hxo.warm_registry.file.v1`, the path, the language (`none` for other
/// files), the symbol count, then each symbol's line, kind, name and
/// exported flag (0 or 1).
#[derive(Debug, Clone, Default)]
pub struct WarmRegistry {}

/// A source language the scanner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
    TypeScript,
}

impl Language {
    pub fn of_path(path: &str) -> Option<Self> {
        let file_name = path.rsplit('/').next().unwrap_or(path);
        let (stem, ext) = file_name.rsplit_once('.')?;
        if stem.is_empty() {
            return None;
        }
        match ext {
            "rs" => Some(Self::Rust),
            "py" | "pyi" => Some(Self::Python),
            "js" | "mjs" | "cjs" | "jsx" => Some(Self::JavaScript),
            "ts" | "mts" | "cts" | "tsx" => Some(Self::TypeScript),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Python => "python",
            Self::JavaScript => "javascript",
            Self::TypeScript => "typescript",
        }
    }
}

/// One declared symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// 1-based line number.
    pub line: u64,
    pub kind: &'static str,
    pub name: String,
    pub exported: bool,
}

/// Strips `word` and the whitespace after it; the word must end there.
fn strip_word<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(word)?;
    let after = rest.trim_start();
    (after.len() < rest.len()).then_some(after)
}

fn take_name(s: &str, extra: char) -> Option<String> {
    let s = s.strip_prefix("r#").unwrap_or(s);
    let name: String = s
        .chars()
        .take_while(|&c| c.is_alphanumeric() || c == '_' || c == extra)
        .collect();
    let starts_ok = name.chars().next().is_some_and(|c| !c.is_ascii_digit());
    (starts_ok && !name.is_empty()).then_some(name)
}

fn rust_symbol(line: &str) -> Option<(&'static str, String, bool)> {
    if line.starts_with("//") {
        return None;
    }
    let mut rest = line;
    let mut exported = false;
    if let Some(after) = rest.strip_prefix("pub") {
        if let Some(scoped) = after.strip_prefix('(') {
            let close = scoped.find(')')?;
            rest = scoped[close + 1..].trim_start();
            exported = true;
        } else if let Some(after) = strip_word(rest, "pub") {
            rest = after;
            exported = true;
        }
    }
    'qualifiers: loop {
        for q in ["const", "async", "unsafe", "default", "auto"] {
            if let Some(after) = strip_word(rest, q) {
                rest = after;
                continue 'qualifiers;
            }
        }
        if let Some(after) = rest.strip_prefix("extern") {
            let after = after.trim_start();
            rest = match after.strip_prefix('"') {
                Some(abi) => abi.split_once('"')?.1.trim_start(),
                None if after.len() < rest.len() - "extern".len() => after,
                None => return None,
            };
            continue;
        }
        break;
    }
    for kind in ["fn", "struct", "enum", "trait"] {
        if let Some(after) = strip_word(rest, kind) {
            return take_name(after, '_').map(|name| (kind, name, exported));
        }
    }
    None
}

fn python_symbol(raw_line: &str) -> Option<(&'static str, String, bool)> {
    let line = raw_line.trim_start();
    let top_level = line.len() == raw_line.len();
    let (kind, rest) = if let Some(rest) = strip_word(line, "class") {
        ("class", rest)
    } else {
        let rest = strip_word(line, "async").unwrap_or(line);
        ("def", strip_word(rest, "def")?)
    };
    let name = take_name(rest, '_')?;
    let exported = top_level && !name.starts_with('_');
    Some((kind, name, exported))
}

fn js_symbol(line: &str) -> Option<(&'static str, String, bool)> {
    if line.starts_with("//") {
        return None;
    }
    let mut rest = line;
    let exported = match strip_word(rest, "export") {
        Some(after) => {
            rest = strip_word(after, "default").unwrap_or(after);
            true
        }
        None => false,
    };
    if let Some(after) = strip_word(rest, "class") {
        return take_name(after, '$').map(|n| ("class", n, exported));
    }
    if exported {
        if let Some(after) = strip_word(rest, "const") {
            return take_name(after, '$').map(|n| ("const", n, exported));
        }
    }
    let rest = strip_word(rest, "async").unwrap_or(rest);
    let after = rest.strip_prefix("function")?;
    let after = after.trim_start();
    let after = after.strip_prefix('*').unwrap_or(after).trim_start();
    // `functionName(` is a call, not a declaration.
    if after.len() == rest.len() - "function".len() {
        return None;
    }
    take_name(after, '$').map(|n| ("function", n, exported))
}

/// The symbols declared in `text`, in line order.
pub fn scan(language: Language, text: &str) -> Vec<Symbol> {
    let mut symbols = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line = raw_line.trim_start();
        let found = match language {
            Language::Rust => rust_symbol(line),
            Language::Python => python_symbol(raw_line),
            Language::JavaScript | Language::TypeScript => js_symbol(line),
        };
        if let Some((kind, name, exported)) = found {
            symbols.push(Symbol {
                line: index as u64 + 1,
                kind,
                name,
                exported,
            });
        }
    }
    symbols
}

fn unit_digest(path: &str, language: Option<Language>, symbols: &[Symbol]) -> Hash {
    let mut h = UnitHasher::new("hxo.warm_registry.file.v1");
    h.bytes(path.as_bytes())
        .bytes(language.map_or("none", Language::name).as_bytes())
        .u64(symbols.len() as u64);
    for s in symbols {
        h.u64(s.line)
            .bytes(s.kind.as_bytes())
            .bytes(s.name.as_bytes())
            .u64(u64::from(s.exported));
    }
    h.finish()
}

impl Executor for WarmRegistry {
    /// The digest is the tree hash of per-unit digests of `ctx.units`.
    fn is_splittable(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        let (root, files) = file_units(ctx, NAME)?;
        let mut records = Vec::new();
        let mut unit_digests = Vec::with_capacity(files.len());
        for entry in files {
            check_cancel(ctx)?;
            let path = entry.rel_path.as_str();
            let language = Language::of_path(path);
            let symbols = match language {
                Some(language) => {
                    let bytes = read_verified(root, entry, FILE_SIZE_MAX_BYTES, NAME)?;
                    scan(language, &String::from_utf8_lossy(&bytes))
                }
                None => Vec::new(),
            };
            unit_digests.push(unit_digest(path, language, &symbols));
            records.extend(symbols.into_iter().map(|s| {
                json!({
                    "path": path, "line": s.line, "kind": s.kind,
                    "name": s.name, "exported": s.exported,
                })
            }));
        }
        check_cancel(ctx)?;
        let registry = json!({ "version": 1, "symbols": records });
        let bytes = serde_json::to_vec(&registry)
            .map_err(|e| ExecError::Failed(format!("encoding registry: {e}")))?;
        let path = write_artifact(ctx.artifacts_dir, ARTIFACT_KIND, "json", &bytes)?;
        tracing::debug!(stage_id = ctx.stage_id, registry = %path.display(), "warmed registry");
        Ok(root_of_leaf_data(&unit_digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::support::testing::{assert_cancels, assert_split_recombines, Fixture};
    use crate::partition::PartitionInput;

    const RUST: &str = "\
pub fn open() {}
fn helper() {}
pub(crate) struct Store;
// fn commented() {}
pub const unsafe extern \"C\" fn ffi() {}
enum Mode { A }
pub trait Run {}
const LIMIT: u32 = 3;
    async fn r#match() {}
let fnord = 1;
";

    const PY: &str = "\
class Engine:
    def run(self):
        pass
async def main():
def _private():
";

    const JS: &str = "\
export function start() {}
function* gen() {}
export default class App {}
export const LIMIT = 3;
const local = 1;
// function hidden() {}
functionCall();
export default function() {}
async function load() {}
export class $Store {}
";

    fn names(symbols: &[Symbol]) -> Vec<(u64, &str, &str, bool)> {
        symbols
            .iter()
            .map(|s| (s.line, s.kind, s.name.as_str(), s.exported))
            .collect()
    }

    #[test]
    fn rust_patterns() {
        assert_eq!(
            names(&scan(Language::Rust, RUST)),
            [
                (1, "fn", "open", true),
                (2, "fn", "helper", false),
                (3, "struct", "Store", true),
                (5, "fn", "ffi", true),
                (6, "enum", "Mode", false),
                (7, "trait", "Run", true),
                (9, "fn", "match", false),
            ]
        );
    }

    #[test]
    fn python_patterns() {
        assert_eq!(
            names(&scan(Language::Python, PY)),
            [
                (1, "class", "Engine", true),
                (2, "def", "run", false),
                (4, "def", "main", true),
                (5, "def", "_private", false),
            ]
        );
    }

    #[test]
    fn js_patterns() {
        assert_eq!(
            names(&scan(Language::JavaScript, JS)),
            [
                (1, "function", "start", true),
                (2, "function", "gen", false),
                (3, "class", "App", true),
                (4, "const", "LIMIT", true),
                (9, "function", "load", false),
                (10, "class", "$Store", true),
            ]
        );
    }

    fn sample(fx: &Fixture) -> PartitionInput {
        fx.files(&[
            ("src/lib.rs", RUST.as_bytes()),
            ("py/engine.py", PY.as_bytes()),
            ("web/app.ts", JS.as_bytes()),
            ("README.md", b"fn not_code() {}"),
        ])
    }

    fn exec() -> WarmRegistry {
        WarmRegistry::default()
    }

    #[test]
    fn registry_is_deterministic() {
        let fx = Fixture::new();
        let input = sample(&fx);
        let first = fx.run_all(&exec(), &input).unwrap();
        assert_eq!(first, fx.run_all(&exec(), &input).unwrap());
        let files = fx.artifact_files(ARTIFACT_KIND);
        assert_eq!(files.len(), 1);
        let registry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        let symbols = registry["symbols"].as_array().unwrap();
        assert_eq!(symbols.len(), 4 + 7 + 6);
        assert_eq!(
            symbols[0],
            json!({"path": "py/engine.py", "line": 1, "kind": "class", "name": "Engine", "exported": true})
        );
        assert!(symbols.iter().all(|s| s["path"] != "README.md"));
    }

    #[test]
    fn split_recombines_and_cancel_stops() {
        let fx = Fixture::new();
        let input = sample(&fx);
        assert_split_recombines(&fx, &exec(), &input);
        assert_cancels(&fx, &exec(), &input);
    }
}
