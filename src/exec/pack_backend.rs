//! `pack_backend` (kind `deploy.pack`): packs a shard's files into one
//! deterministic tar archive, stored content-addressed.
//!
//! What it computes, for the files of `ctx.units` (in `rel_path` order):
//! - the archive `<artifacts_dir>/packs/<sha256 of archive, hex>.tar`: one
//!   ustar entry per file with the file's `rel_path`, mode 0644, mtime 0,
//!   uid/gid 0, empty user and group names, no extended (PAX or GNU
//!   long-name) headers, then the tar end-of-archive marker. The same files
//!   always give byte-identical archives, so an archive that already exists
//!   is kept as is;
//! - the output digest: the RFC 6962 tree hash of the unit digests, where a
//!   unit digest is `SHA-256(rel_path bytes || 0x00 || content SHA-256)`.
//!
//! Invariant: every byte archived is checked against the file's
//! compile-time fingerprint (`FileEntry::content_sha256`, `size_bytes`); a
//! file that changed since the plan was compiled fails the shard, naming the
//! file, and leaves no archive behind.
//!
//! A path that does not fit a ustar header (name 100 bytes, or prefix 155 +
//! name 100 split at a '/') fails the shard rather than fall back to a GNU
//! long-name entry.

use std::io::Write;

use sha2::{Digest, Sha256};

use super::support::{check_cancel, file_units, ArtifactWriter, VerifyingReader};
use crate::exec::ExecError;
use crate::exec::Executor;
use crate::exec::ShardContext;
use crate::hash::to_hex;
use crate::hash::Hash;
use crate::merkle::root_of_leaf_data;
use crate::partition::FileEntry;

const NAME: &str = "pack_backend";

/// Subdirectory of the artifacts directory that holds archives.
pub const ARTIFACT_KIND: &str = "packs";

/// Packs a shard's files into a content-addressed tar archive.
#[derive(Debug, Clone, Default)]
pub struct PackBackend {}

/// `SHA-256(rel_path || 0x00 || content_sha256)`.
pub fn unit_digest(entry: &FileEntry) -> Hash {
    let mut h = Sha256::new();
    h.update(entry.rel_path.as_bytes());
    h.update([0x00]);
    h.update(entry.content_sha256);
    h.finalize().into()
}

fn header_for(entry: &FileEntry) -> Result<tar::Header, ExecError> {
    let mut header = tar::Header::new_ustar();
    header.set_path(&entry.rel_path).map_err(|e| {
        ExecError::Failed(format!(
            "file {} cannot be stored in a ustar header: {e}",
            entry.rel_path
        ))
    })?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(entry.size_bytes);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    // new_ustar() leaves the user and group names empty (all zero bytes).
    header.set_cksum();
    Ok(header)
}

impl Executor for PackBackend {
    /// The digest is the tree hash of per-unit digests of `ctx.units`.
    fn is_splittable(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        let (root, files) = file_units(ctx, NAME)?;
        let mut archive =
            tar::Builder::new(ArtifactWriter::create(ctx.artifacts_dir, ARTIFACT_KIND)?);
        let mut unit_digests = Vec::with_capacity(files.len());
        for entry in files {
            check_cancel(ctx)?;
            let header = header_for(entry)?;
            let mut reader = VerifyingReader::open(root, entry)?;
            archive.append(&header, &mut reader).map_err(|e| {
                ExecError::Failed(format!("archiving {}: {e}", reader.path().display()))
            })?;
            // Only now is it known that the bytes archived are the compiled ones.
            reader.finish()?;
            unit_digests.push(unit_digest(entry));
        }
        check_cancel(ctx)?;
        let mut writer = archive
            .into_inner()
            .map_err(|e| ExecError::Failed(format!("finishing archive: {e}")))?;
        writer
            .flush()
            .map_err(|e| ExecError::Failed(format!("finishing archive: {e}")))?;
        let (path, archive_sha256) = writer.commit("tar")?;
        tracing::debug!(
            stage_id = ctx.stage_id,
            leaf_index = ctx.leaf_index,
            archive = %path.display(),
            archive_sha256 = %to_hex(&archive_sha256),
            files = unit_digests.len(),
            "packed"
        );
        Ok(root_of_leaf_data(&unit_digests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::support::testing::{assert_cancels, assert_split_recombines, Fixture};
    use crate::hash::sha256;
    use crate::partition::PartitionInput;

    fn sample(fx: &Fixture) -> PartitionInput {
        fx.files(&[
            ("src/main.rs", b"fn main() {}\n"),
            ("src/lib.rs", b"pub fn f() {}\n"),
            ("Cargo.toml", b"[package]\nname = \"x\"\n"),
            ("README.md", b"# x\n"),
            ("empty.txt", b""),
        ])
    }

    fn exec() -> PackBackend {
        PackBackend::default()
    }

    #[test]
    fn digest_and_archive_are_deterministic() {
        let fx = Fixture::new();
        let input = sample(&fx);
        let first = fx.run_all(&exec(), &input).unwrap();
        let packs = fx.artifact_files(ARTIFACT_KIND);
        assert_eq!(packs.len(), 1, "{packs:?}");
        let bytes = std::fs::read(&packs[0]).unwrap();
        // The name is the archive's own digest.
        assert_eq!(
            packs[0].file_name().unwrap().to_str().unwrap(),
            format!("{}.tar", to_hex(&sha256(&bytes)))
        );
        let second = fx.run_all(&exec(), &input).unwrap();
        assert_eq!(first, second);
        assert_eq!(
            fx.artifact_files(ARTIFACT_KIND),
            packs,
            "no second archive, no temp left"
        );

        // Byte-identical in a fresh artifacts directory too.
        let fx2 = Fixture::new();
        let input2 = sample(&fx2);
        assert_eq!(fx2.run_all(&exec(), &input2).unwrap(), first);
        let packs2 = fx2.artifact_files(ARTIFACT_KIND);
        assert_eq!(std::fs::read(&packs2[0]).unwrap(), bytes);
    }

    #[test]
    fn archive_has_normalized_entries_in_path_order() {
        let fx = Fixture::new();
        let input = sample(&fx);
        fx.run_all(&exec(), &input).unwrap();
        let packs = fx.artifact_files(ARTIFACT_KIND);
        let mut archive = tar::Archive::new(std::fs::File::open(&packs[0]).unwrap());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            assert_eq!(h.mode().unwrap(), 0o644);
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            assert_eq!(h.groupname_bytes(), Some(&b""[..]));
            assert!(h.as_ustar().is_some());
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let on_disk = std::fs::read(fx.root().join(&path)).unwrap();
            assert_eq!(content, on_disk);
            names.push(path);
        }
        assert_eq!(
            names,
            [
                "Cargo.toml",
                "README.md",
                "empty.txt",
                "src/lib.rs",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn a_changed_file_changes_archive_and_digest() {
        let fx = Fixture::new();
        let before = fx.run_all(&exec(), &sample(&fx)).unwrap();
        let all = fx.files(&[
            ("src/main.rs", b"fn main() {}\n"),
            ("src/lib.rs", b"pub fn g() {}\n"),
            ("Cargo.toml", b"[package]\nname = \"x\"\n"),
            ("README.md", b"# x\n"),
            ("empty.txt", b""),
        ]);
        let after = fx.run_all(&exec(), &all).unwrap();
        assert_ne!(before, after);
        assert_eq!(fx.artifact_files(ARTIFACT_KIND).len(), 2);
    }

    #[test]
    fn a_file_changed_since_compile_fails_the_shard() {
        let fx = Fixture::new();
        let input = sample(&fx);
        std::fs::write(fx.root().join("src/lib.rs"), b"pub fn h() {}\n").unwrap();
        let err = fx.run_all(&exec(), &input).unwrap_err();
        let ExecError::Failed(msg) = err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains("src/lib.rs") && msg.contains("changed"),
            "{msg}"
        );
        assert!(
            fx.artifact_files(ARTIFACT_KIND).is_empty(),
            "no archive, no temp"
        );

        // A file that grew is caught too, even with the same prefix.
        let fx = Fixture::new();
        let input = sample(&fx);
        std::fs::write(fx.root().join("README.md"), b"# x\nmore\n").unwrap();
        assert!(matches!(
            fx.run_all(&exec(), &input),
            Err(ExecError::Failed(_))
        ));
    }

    #[test]
    fn split_recombines_and_cancel_stops() {
        let fx = Fixture::new();
        let input = sample(&fx);
        assert_split_recombines(&fx, &exec(), &input);
        assert_cancels(&fx, &exec(), &input);
    }

    #[test]
    fn overlong_path_fails_cleanly() {
        let fx = Fixture::new();
        let long = format!("{}/f.txt", "d".repeat(160));
        let input = fx.files(&[(long.as_str(), b"x")]);
        let err = fx.run_all(&exec(), &input).unwrap_err();
        assert!(
            matches!(err, ExecError::Failed(ref m) if m.contains("ustar")),
            "{err:?}"
        );
    }
}
