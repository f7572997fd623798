//! `docs_index` (kind `docs.index`): builds an inverted index of a shard's
//! Markdown files, stored content-addressed.
//!
//! What it computes, for the files of `ctx.units` (in `rel_path` order):
//! - Markdown files are those whose name ends in `.md` or `.markdown`
//!   (case-insensitive). Other files are skipped: not read, not indexed.
//! - Tokens: the file is decoded as UTF-8 (invalid sequences become U+FFFD);
//!   lines inside fenced code blocks (```` ``` ```` or `~~~` fences, the fence
//!   lines included, an unclosed fence running to the end of the file) are
//!   skipped, because code would flood the index with identifiers and
//!   punctuation-split fragments that readers do not search for; inline
//!   code and indented blocks are kept (indentation is ambiguous with lists).
//!   A term is a maximal run of Unicode alphanumeric characters
//!   (`char::is_alphanumeric`), lowercased with `char::to_lowercase`; runs
//!   over 64 characters (hashes, base64) are dropped.
//! - The index `{"version":1,"documents":[path...],"terms":{term:[[path,count]...]}}`
//!   with terms sorted by UTF-8 bytes and each posting list sorted by path,
//!   stored at `<artifacts_dir>/docs/<sha256 of index, hex>.json`.
//! - The output digest: the RFC 6962 tree hash of the unit digests. For a
//!   Markdown file the unit digest is the framed SHA-256 (see
//!   `support::UnitHasher`) of domain `hxo.docs_index.doc.v1`, the path, the
//!   number of distinct terms, then each term and its count in term order;
//!   for a skipped file it is that of domain `hxo.docs_index.skipped.v1` and
//!   the path, so units stay aligned with the file list.
//!
//! The tokenizer follows the Unicode tables of the Rust toolchain that built
//! the binary; ASCII text indexes identically on every toolchain.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::support::{check_cancel, file_units, read_verified, write_artifact, UnitHasher};
use crate::exec::ExecError;
use crate::exec::Executor;
use crate::exec::ShardContext;
use crate::hash::Hash;
use crate::merkle::root_of_leaf_data;

const NAME: &str = "docs_index";

/// Subdirectory of the artifacts directory that holds indexes.
pub const ARTIFACT_KIND: &str = "docs";

/// Largest Markdown file indexed; a larger one fails the shard.
pub const FILE_SIZE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Longest term kept, in characters.
pub const TERM_LEN_MAX_CHARS: usize = 64;

/// Builds a content-addressed inverted index of a shard's Markdown files.
#[derive(Debug, Clone, Default)]
pub struct DocsIndex {}

/// True for `.md` and `.markdown` files (case-insensitive).
pub fn is_markdown(path: &str) -> bool {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    match file_name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => {
            ext.eq_ignore_ascii_case("md") || ext.eq_ignore_ascii_case("markdown")
        }
        _ => false,
    }
}

/// The opening fence of a line (its character and run length), if any.
fn fence_of(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start();
    let first = trimmed.chars().next()?;
    if first != '`' && first != '~' {
        return None;
    }
    let run = trimmed.chars().take_while(|&c| c == first).count();
    (run >= 3).then_some((first, run))
}

/// Term counts of a Markdown text, fenced code excluded.
pub fn term_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let mut open_fence: Option<(char, usize)> = None;
    for line in text.lines() {
        if let Some((fence_char, fence_len)) = open_fence {
            let trimmed = line.trim();
            let run = trimmed.chars().take_while(|&c| c == fence_char).count();
            if run >= fence_len && run == trimmed.chars().count() {
                open_fence = None;
            }
            continue;
        }
        if let Some(fence) = fence_of(line) {
            open_fence = Some(fence);
            continue;
        }
        count_words(line, &mut counts);
    }
    counts
}

fn count_words(line: &str, counts: &mut BTreeMap<String, u64>) {
    let mut word = String::new();
    let mut chars = 0usize;
    let mut flush = |word: &mut String, chars: &mut usize| {
        if !word.is_empty() && *chars <= TERM_LEN_MAX_CHARS {
            *counts.entry(std::mem::take(word)).or_insert(0) += 1;
        }
        word.clear();
        *chars = 0;
    };
    for c in line.chars() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
            chars += 1;
        } else {
            flush(&mut word, &mut chars);
        }
    }
    flush(&mut word, &mut chars);
}

fn doc_digest(path: &str, counts: &BTreeMap<String, u64>) -> Hash {
    let mut h = UnitHasher::new("hxo.docs_index.doc.v1");
    h.bytes(path.as_bytes()).u64(counts.len() as u64);
    for (term, count) in counts {
        h.bytes(term.as_bytes()).u64(*count);
    }
    h.finish()
}

fn skipped_digest(path: &str) -> Hash {
    UnitHasher::new("hxo.docs_index.skipped.v1")
        .bytes(path.as_bytes())
        .finish()
}

impl Executor for DocsIndex {
    /// The digest is the tree hash of per-unit digests of `ctx.units`.
    fn is_splittable(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        let (root, files) = file_units(ctx, NAME)?;
        let mut documents: Vec<&str> = Vec::new();
        let mut postings: BTreeMap<String, Vec<(&str, u64)>> = BTreeMap::new();
        let mut unit_digests = Vec::with_capacity(files.len());
        for entry in files {
            check_cancel(ctx)?;
            let path = entry.rel_path.as_str();
            if !is_markdown(path) {
                unit_digests.push(skipped_digest(path));
                continue;
            }
            let bytes = read_verified(root, entry, FILE_SIZE_MAX_BYTES, NAME)?;
            let counts = term_counts(&String::from_utf8_lossy(&bytes));
            unit_digests.push(doc_digest(path, &counts));
            documents.push(path);
            for (term, count) in counts {
                postings.entry(term).or_default().push((path, count));
            }
        }
        check_cancel(ctx)?;
        // Units come sorted by path; sorting again keeps the artifact
        // canonical even if a hand-made input is not.
        documents.sort_unstable();
        let terms: Map<String, Value> = postings
            .into_iter()
            .map(|(term, mut list)| {
                list.sort_unstable();
                let list = list.into_iter().map(|(p, c)| json!([p, c])).collect();
                (term, Value::Array(list))
            })
            .collect();
        let index = json!({ "version": 1, "documents": documents, "terms": terms });
        let bytes = serde_json::to_vec(&index)
            .map_err(|e| ExecError::Failed(format!("encoding docs index: {e}")))?;
        let path = write_artifact(ctx.artifacts_dir, ARTIFACT_KIND, "json", &bytes)?;
        tracing::debug!(stage_id = ctx.stage_id, index = %path.display(), "indexed docs");
        Ok(root_of_leaf_data(&unit_digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::support::testing::{assert_cancels, assert_split_recombines, Fixture};
    use crate::partition::PartitionInput;

    const GUIDE: &[u8] = b"# Guide\n\nRun the engine. The engine runs shards.\n\n```rust\nfn secret_code() {}\n```\n\nCaf\xc3\xa9 CAF\xc3\x89 done.\n";

    fn sample(fx: &Fixture) -> PartitionInput {
        fx.files(&[
            ("guide.md", GUIDE),
            ("api/README.MD", b"Engine API\n~~~~\nhidden\n~~~~\nshown\n"),
            ("logo.png", b"\x89PNG"),
            ("notes.markdown", b"engine"),
            ("z.txt", b"engine"),
        ])
    }

    fn exec() -> DocsIndex {
        DocsIndex::default()
    }

    #[test]
    fn tokenizer_lowercases_and_skips_fences() {
        let counts = term_counts(&String::from_utf8_lossy(GUIDE));
        assert_eq!(counts["engine"], 2);
        assert_eq!(counts["the"], 2);
        assert_eq!(counts["café"], 2);
        assert!(!counts.contains_key("secret_code"));
        assert!(!counts.contains_key("secret"));
        assert!(!counts.contains_key("rust"));
        let long = "a".repeat(TERM_LEN_MAX_CHARS + 1);
        assert!(term_counts(&long).is_empty());
        // An unclosed fence hides the rest of the file.
        assert!(term_counts("```\nword\n").is_empty());
    }

    #[test]
    fn index_is_deterministic_and_skips_non_markdown() {
        let fx = Fixture::new();
        let input = sample(&fx);
        let first = fx.run_all(&exec(), &input).unwrap();
        assert_eq!(first, fx.run_all(&exec(), &input).unwrap());
        let indexes = fx.artifact_files(ARTIFACT_KIND);
        assert_eq!(indexes.len(), 1);
        let index: Value = serde_json::from_slice(&std::fs::read(&indexes[0]).unwrap()).unwrap();
        assert_eq!(
            index["documents"],
            json!(["api/README.MD", "guide.md", "notes.markdown"])
        );
        assert_eq!(
            index["terms"]["engine"],
            json!([["api/README.MD", 1], ["guide.md", 2], ["notes.markdown", 1]])
        );
        assert!(index["terms"].get("hidden").is_none());
        assert_eq!(index["terms"]["shown"], json!([["api/README.MD", 1]]));
        let terms: Vec<&String> = index["terms"].as_object().unwrap().keys().collect();
        let mut sorted = terms.clone();
        sorted.sort();
        assert_eq!(terms, sorted);
    }

    #[test]
    fn skipped_files_are_not_read_but_keep_units_aligned() {
        let fx = Fixture::new();
        let input = sample(&fx);
        let before = fx.run_all(&exec(), &input).unwrap();
        // A non-Markdown file is never read, so changing it is not noticed
        // here (its fingerprint is part of the cas_id instead).
        std::fs::write(fx.root().join("z.txt"), b"other").unwrap();
        assert_eq!(fx.run_all(&exec(), &input).unwrap(), before);
        // Renaming a skipped file does change the digest.
        let renamed = fx.files(&[
            ("guide.md", GUIDE),
            ("api/README.MD", b"Engine API\n~~~~\nhidden\n~~~~\nshown\n"),
            ("logo2.png", b"\x89PNG"),
            ("notes.markdown", b"engine"),
            ("z.txt", b"engine"),
        ]);
        assert_ne!(fx.run_all(&exec(), &renamed).unwrap(), before);
    }

    #[test]
    fn split_recombines_and_cancel_stops() {
        let fx = Fixture::new();
        let input = sample(&fx);
        assert_split_recombines(&fx, &exec(), &input);
        assert_cancels(&fx, &exec(), &input);
    }
}
