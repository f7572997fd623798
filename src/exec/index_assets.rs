//! `index_assets` (kind `assets.index`): writes a JSON manifest of a shard's
//! asset files, stored content-addressed.
//!
//! What it computes, for the files of `ctx.units` (in `rel_path` order):
//! - one manifest line per file, exactly
//!   `{"path":P,"size_bytes":N,"sha256":"HEX","type":T}` (keys in that order,
//!   no spaces, strings escaped as JSON), where `T` is a MIME type chosen from
//!   the file's extension, case-insensitively (see [`media_type`]);
//! - the manifest `[\n` + lines joined by `,\n` + `\n]\n` (`[]\n` when empty),
//!   stored at `<artifacts_dir>/assets/<sha256 of manifest, hex>.json`;
//! - the output digest: the RFC 6962 tree hash of the unit digests, a unit
//!   digest being the SHA-256 of that file's manifest line.
//!
//! The size and digest recorded are those of the bytes actually read, which
//! must equal the compile-time fingerprint; a changed file fails the shard.

use super::support::{check_cancel, file_units, json_str, stream_verified, write_artifact};
use crate::exec::ExecError;
use crate::exec::Executor;
use crate::exec::ShardContext;
use crate::hash::sha256;
use crate::hash::to_hex;
use crate::hash::Hash;
use crate::merkle::root_of_leaf_data;
use crate::partition::FileEntry;

const NAME: &str = "index_assets";

/// Subdirectory of the artifacts directory that holds manifests.
pub const ARTIFACT_KIND: &str = "assets";

/// Indexes a shard's asset files into a content-addressed manifest.
#[derive(Debug, Clone, Default)]
pub struct IndexAssets {}

/// MIME type from the extension of `path` (case-insensitive);
/// `application/octet-stream` when unknown.
pub fn media_type(path: &str) -> &'static str {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    let ext = match file_name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "css" => "text/css",
        "html" | "htm" => "text/html",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "js" | "mjs" | "cjs" | "jsx" => "application/javascript",
        "ts" | "mts" | "cts" | "tsx" => "application/typescript",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "xml" => "application/xml",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// The manifest line of one file.
pub fn manifest_line(entry: &FileEntry) -> String {
    format!(
        "{{\"path\":{},\"size_bytes\":{},\"sha256\":\"{}\",\"type\":\"{}\"}}",
        json_str(&entry.rel_path),
        entry.size_bytes,
        to_hex(&entry.content_sha256),
        media_type(&entry.rel_path)
    )
}

impl Executor for IndexAssets {
    /// The digest is the tree hash of per-unit digests of `ctx.units`.
    fn is_splittable(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        let (root, files) = file_units(ctx, NAME)?;
        let mut lines = Vec::with_capacity(files.len());
        let mut unit_digests = Vec::with_capacity(files.len());
        for entry in files {
            check_cancel(ctx)?;
            // Streams the file only to prove it is still the compiled one.
            stream_verified(root, entry, |_| {})?;
            let line = manifest_line(entry);
            unit_digests.push(sha256(line.as_bytes()));
            lines.push(line);
        }
        check_cancel(ctx)?;
        let manifest = if lines.is_empty() {
            "[]\n".to_owned()
        } else {
            format!("[\n{}\n]\n", lines.join(",\n"))
        };
        let path = write_artifact(
            ctx.artifacts_dir,
            ARTIFACT_KIND,
            "json",
            manifest.as_bytes(),
        )?;
        tracing::debug!(stage_id = ctx.stage_id, manifest = %path.display(), "indexed assets");
        Ok(root_of_leaf_data(&unit_digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::support::testing::{assert_cancels, assert_split_recombines, Fixture};
    use crate::partition::PartitionInput;

    fn sample(fx: &Fixture) -> PartitionInput {
        fx.files(&[
            ("img/logo.PNG", b"\x89PNG fake"),
            ("css/site.css", b"body{}"),
            ("fonts/a.woff2", b"wOF2"),
            ("js/app.js", b"console.log(1)"),
            ("weird \"name\".bin", b"?"),
        ])
    }

    fn exec() -> IndexAssets {
        IndexAssets::default()
    }

    #[test]
    fn media_types_follow_extension() {
        assert_eq!(media_type("a/b.png"), "image/png");
        assert_eq!(media_type("a/B.WOFF2"), "font/woff2");
        assert_eq!(media_type("x.css"), "text/css");
        assert_eq!(media_type("x.js"), "application/javascript");
        assert_eq!(media_type(".png"), "application/octet-stream");
        assert_eq!(media_type("Makefile"), "application/octet-stream");
    }

    #[test]
    fn manifest_is_valid_json_and_deterministic() {
        let fx = Fixture::new();
        let input = sample(&fx);
        let first = fx.run_all(&exec(), &input).unwrap();
        assert_eq!(first, fx.run_all(&exec(), &input).unwrap());
        let manifests = fx.artifact_files(ARTIFACT_KIND);
        assert_eq!(manifests.len(), 1);
        let text = std::fs::read_to_string(&manifests[0]).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let items = parsed.as_array().unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0]["path"], "css/site.css");
        assert_eq!(items[0]["type"], "text/css");
        assert_eq!(items[0]["size_bytes"], 6);
        assert_eq!(items[0]["sha256"], to_hex(&sha256(b"body{}")));
        assert_eq!(items[2]["type"], "image/png");
        assert_eq!(items[4]["path"], "weird \"name\".bin");
    }

    #[test]
    fn split_recombines_and_cancel_stops() {
        let fx = Fixture::new();
        let input = sample(&fx);
        assert_split_recombines(&fx, &exec(), &input);
        assert_cancels(&fx, &exec(), &input);
    }

    #[test]
    fn changed_file_fails() {
        let fx = Fixture::new();
        let input = sample(&fx);
        std::fs::write(fx.root().join("css/site.css"), b"body{x}").unwrap();
        let err = fx.run_all(&exec(), &input).unwrap_err();
        assert!(
            matches!(err, ExecError::Failed(ref m) if m.contains("css/site.css")),
            "{err:?}"
        );
    }
}
