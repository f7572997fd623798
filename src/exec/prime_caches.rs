//! `prime_caches` (kind `deploy.prime`): writes a cache file describing a
//! shard's files (one module of `by_module`) or the graph nodes of one depth
//! (`by_dag_depth`), stored content-addressed.
//!
//! See [`PrimeCaches`] for exactly what it computes.

use serde_json::{json, Value};

use super::support::{
    check_cancel, file_units, stream_verified, unit_indices, write_artifact, wrong_input,
    UnitHasher,
};
use crate::exec::ExecError;
use crate::exec::Executor;
use crate::exec::ShardContext;
use crate::hash::sha256;
use crate::hash::to_hex;
use crate::hash::Hash;
use crate::merkle::root_of_leaf_data;
use crate::partition::FileEntry;
use crate::partition::PartitionInput;

const NAME: &str = "prime_caches";

/// Subdirectory of the artifacts directory that holds cache files.
pub const ARTIFACT_KIND: &str = "cache";

/// Longest summary kept, in characters.
pub const SUMMARY_LEN_MAX_CHARS: usize = 120;

/// How much of a file's start is inspected for its first line and for NUL
/// bytes (the binary-file test).
const HEAD_CAPTURE_BYTES: usize = 8 * 1024;

/// Writes a per-shard cache file.
///
/// For a Files input, for each file of `ctx.units` (in `rel_path` order) the
/// file is streamed once (any size; never held in memory) and checked against
/// its compile-time fingerprint, and the cache records:
/// - `sha256`: the content digest (hex) and `size_bytes`;
/// - `line_count`: the number of `\n` bytes, plus one when the file is not
///   empty and does not end in `\n` (so `"a\nb"` has 2 lines, `""` has 0);
/// - `summary`: the first line (up to the first `\n`, a trailing `\r`
///   dropped), decoded as UTF-8 with invalid sequences as U+FFFD, whitespace
///   trimmed, cut to 120 characters; `null` when the first 8 KiB contain a
///   NUL byte (a binary file).
///
/// The unit digest of a file is the framed SHA-256 (`support::UnitHasher`)
/// of domain `hxo.prime_caches.file.v1`, the path, the content digest, the
/// size, the line count, 0 or 1 for whether a summary exists, and the
/// summary.
///
/// For a Nodes input (`by_dag_depth`), the cache records the depth and the
/// nodes of `ctx.units` primed at it; the unit digest of a node is
/// `SHA-256(node name bytes)`. Nothing else is done for a node: the cache
/// says which nodes were primed, at which depth.
///
/// The cache, `{"version":1,"input":"files","files":[{"path","sha256",
/// "size_bytes","line_count","summary"}...]}` or `{"version":1,
/// "input":"nodes","depth":D,"nodes":[...]}`, is written to
/// `<artifacts_dir>/cache/<sha256 of cache file, hex>.json`. The output
/// digest is the RFC 6962 tree hash of the unit digests.
#[derive(Debug, Clone, Default)]
pub struct PrimeCaches {}

/// What the cache records about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub line_count: u64,
    pub summary: Option<String>,
}

/// Accumulates [`FileFacts`] over a file's chunks.
#[derive(Debug, Default)]
struct FactsBuilder {
    newlines: u64,
    last_byte: Option<u8>,
    head: Vec<u8>,
}

impl FactsBuilder {
    fn feed(&mut self, chunk: &[u8]) {
        self.newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(&last) = chunk.last() {
            self.last_byte = Some(last);
        }
        let room = HEAD_CAPTURE_BYTES - self.head.len();
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    fn finish(self) -> FileFacts {
        let partial_last_line = matches!(self.last_byte, Some(b) if b != b'\n');
        let line_count = self.newlines + u64::from(partial_last_line);
        let summary = if self.head.contains(&0) {
            None
        } else {
            let first = self.head.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let first = first.strip_suffix(b"\r").unwrap_or(first);
            let text = String::from_utf8_lossy(first);
            Some(
                text.trim()
                    .chars()
                    .take(SUMMARY_LEN_MAX_CHARS)
                    .collect::<String>()
                    .trim_end()
                    .to_owned(),
            )
        };
        FileFacts {
            line_count,
            summary,
        }
    }
}

/// Facts of an in-memory file (the streaming path gives the same answer).
pub fn facts_of(bytes: &[u8]) -> FileFacts {
    let mut b = FactsBuilder::default();
    b.feed(bytes);
    b.finish()
}

fn file_digest(entry: &FileEntry, facts: &FileFacts) -> Hash {
    let mut h = UnitHasher::new("hxo.prime_caches.file.v1");
    h.bytes(entry.rel_path.as_bytes())
        .hash(&entry.content_sha256)
        .u64(entry.size_bytes)
        .u64(facts.line_count)
        .u64(u64::from(facts.summary.is_some()))
        .bytes(facts.summary.as_deref().unwrap_or("").as_bytes());
    h.finish()
}

impl PrimeCaches {
    fn prime_files(&self, ctx: &ShardContext<'_>) -> Result<(Value, Vec<Hash>), ExecError> {
        let (root, files) = file_units(ctx, NAME)?;
        let mut records = Vec::with_capacity(files.len());
        let mut unit_digests = Vec::with_capacity(files.len());
        for entry in files {
            check_cancel(ctx)?;
            let mut builder = FactsBuilder::default();
            stream_verified(root, entry, |chunk| builder.feed(chunk))?;
            let facts = builder.finish();
            unit_digests.push(file_digest(entry, &facts));
            records.push(json!({
                "path": entry.rel_path,
                "sha256": to_hex(&entry.content_sha256),
                "size_bytes": entry.size_bytes,
                "line_count": facts.line_count,
                "summary": facts.summary,
            }));
        }
        Ok((
            json!({ "version": 1, "input": "files", "files": records }),
            unit_digests,
        ))
    }

    fn prime_nodes(
        &self,
        ctx: &ShardContext<'_>,
        depth: u32,
        nodes: &[String],
    ) -> Result<(Value, Vec<Hash>), ExecError> {
        let nodes = &nodes[unit_indices(ctx)?];
        let mut unit_digests = Vec::with_capacity(nodes.len());
        for node in nodes {
            check_cancel(ctx)?;
            unit_digests.push(sha256(node.as_bytes()));
        }
        Ok((
            json!({ "version": 1, "input": "nodes", "depth": depth, "nodes": nodes }),
            unit_digests,
        ))
    }
}

impl Executor for PrimeCaches {
    /// The digest is the tree hash of per-unit digests of `ctx.units`.
    fn is_splittable(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        let (cache, unit_digests) = match ctx.input {
            PartitionInput::Files { .. } => self.prime_files(ctx)?,
            PartitionInput::Nodes { depth, nodes } => self.prime_nodes(ctx, *depth, nodes)?,
            other => return Err(wrong_input(NAME, "files or graph nodes", other)),
        };
        check_cancel(ctx)?;
        let bytes = serde_json::to_vec(&cache)
            .map_err(|e| ExecError::Failed(format!("encoding cache: {e}")))?;
        let path = write_artifact(ctx.artifacts_dir, ARTIFACT_KIND, "json", &bytes)?;
        tracing::debug!(stage_id = ctx.stage_id, cache = %path.display(), "primed caches");
        Ok(root_of_leaf_data(&unit_digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::support::testing::{assert_cancels, assert_split_recombines, Fixture};

    fn exec() -> PrimeCaches {
        PrimeCaches::default()
    }

    fn sample(fx: &Fixture) -> PartitionInput {
        fx.files(&[
            ("a.txt", b"  Title line  \r\nsecond\nthird"),
            ("b.bin", b"\x00\x01\x02\n"),
            ("c.txt", b""),
            ("d.txt", b"one\n"),
        ])
    }

    #[test]
    fn facts_count_lines_and_summarize() {
        assert_eq!(
            facts_of(b""),
            FileFacts {
                line_count: 0,
                summary: Some(String::new())
            }
        );
        assert_eq!(facts_of(b"a\nb").line_count, 2);
        assert_eq!(facts_of(b"a\nb\n").line_count, 2);
        assert_eq!(facts_of(b"\n\n").line_count, 2);
        assert_eq!(facts_of(b"  hi \r\nx").summary.as_deref(), Some("hi"));
        assert_eq!(facts_of(b"x\x00y").summary, None);
        let long = "é".repeat(500);
        assert_eq!(
            facts_of(long.as_bytes()).summary.unwrap().chars().count(),
            SUMMARY_LEN_MAX_CHARS
        );
    }

    #[test]
    fn streaming_matches_whole_file() {
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| {
                if i % 97 == 0 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        let fx = Fixture::new();
        let input = fx.files(&[("big.txt", &big)]);
        fx.run_all(&exec(), &input).unwrap();
        let files = fx.artifact_files(ARTIFACT_KIND);
        let cache: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        let expected = facts_of(&big);
        assert_eq!(cache["files"][0]["line_count"], expected.line_count);
        assert_eq!(cache["files"][0]["summary"], expected.summary.unwrap());
    }

    #[test]
    fn files_cache_is_deterministic() {
        let fx = Fixture::new();
        let input = sample(&fx);
        let first = fx.run_all(&exec(), &input).unwrap();
        assert_eq!(first, fx.run_all(&exec(), &input).unwrap());
        let files = fx.artifact_files(ARTIFACT_KIND);
        assert_eq!(files.len(), 1);
        let cache: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(
            cache["files"][0],
            json!({
                "path": "a.txt",
                "sha256": to_hex(&sha256(b"  Title line  \r\nsecond\nthird")),
                "size_bytes": 28, "line_count": 3, "summary": "Title line",
            })
        );
        assert_eq!(cache["files"][1]["summary"], Value::Null);
        assert_eq!(cache["files"][2]["line_count"], 0);
    }

    #[test]
    fn nodes_cache_records_depth_and_nodes() {
        let fx = Fixture::new();
        let input = PartitionInput::Nodes {
            depth: 2,
            nodes: vec!["api".into(), "db".into(), "web".into()],
        };
        let digest = fx.run_all(&exec(), &input).unwrap();
        let expected: Vec<Hash> = ["api", "db", "web"]
            .iter()
            .map(|n| sha256(n.as_bytes()))
            .collect();
        assert_eq!(digest, root_of_leaf_data(&expected));
        let files = fx.artifact_files(ARTIFACT_KIND);
        let cache: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(
            cache,
            json!({"version": 1, "input": "nodes", "depth": 2, "nodes": ["api", "db", "web"]})
        );
        assert_split_recombines(&fx, &exec(), &input);
    }

    #[test]
    fn split_recombines_cancel_stops_and_range_is_refused() {
        let fx = Fixture::new();
        let input = sample(&fx);
        assert_split_recombines(&fx, &exec(), &input);
        assert_cancels(&fx, &exec(), &input);
        let range = PartitionInput::Range { start: 0, end: 3 };
        assert!(matches!(
            fx.run_all(&exec(), &range),
            Err(ExecError::Failed(_))
        ));
    }
}
