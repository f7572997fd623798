//! Shared plumbing of the guide executors: selecting a shard's units,
//! reading a unit's file and checking it against its compile-time
//! fingerprint, framing unit digests, and writing content-addressed
//! artifacts atomically.
//!
//! Invariants kept here:
//! - A file is only ever reported from bytes whose length and SHA-256 equal
//!   the `FileEntry` the shard was compiled from; anything else fails the
//!   shard (the input changed since compile, so the cas_id no longer
//!   describes it).
//! - An artifact at `<artifacts_dir>/<kind>/<sha256 hex>.<ext>` is always
//!   complete: it is written to a temporary file in the same directory,
//!   synced, then renamed, and the directory is synced. An existing artifact
//!   is never rewritten (same name, same bytes).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::exec::ExecError;
use crate::exec::ShardContext;
use crate::hash::to_hex;
use crate::hash::Hash;
use crate::partition::FileEntry;
use crate::partition::PartitionInput;

/// Read buffer for streaming a file through a hash.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Returns `Err(Cancelled)` once the shard's token is cancelled.
pub fn check_cancel(ctx: &ShardContext<'_>) -> Result<(), ExecError> {
    if ctx.cancel.timed_out() {
        Err(ExecError::TimedOut)
    } else if ctx.cancel.is_cancelled() {
        Err(ExecError::Cancelled)
    } else {
        Ok(())
    }
}

/// `ctx.units` as slice indices, checked against the input's unit count.
pub fn unit_indices(ctx: &ShardContext<'_>) -> Result<Range<usize>, ExecError> {
    let count = ctx.input.unit_count();
    let Range { start, end } = ctx.units.clone();
    if start > end || end > count {
        return Err(ExecError::Failed(format!(
            "units {start}..{end} are out of range for an input of {count} units"
        )));
    }
    let to_index = |u: u64| {
        usize::try_from(u)
            .map_err(|_| ExecError::Failed(format!("unit {u} does not fit this platform")))
    };
    Ok(to_index(start)?..to_index(end)?)
}

/// The root and the files of `ctx.units`, or a failure naming `executor`
/// when the shard's input is not a file list.
pub fn file_units<'a>(
    ctx: &ShardContext<'a>,
    executor: &str,
) -> Result<(&'a Path, &'a [FileEntry]), ExecError> {
    let input: &'a PartitionInput = ctx.input;
    match input {
        PartitionInput::Files { root, files } => {
            let range = unit_indices(ctx)?;
            Ok((root.as_path(), &files[range]))
        }
        other => Err(wrong_input(executor, "files", other)),
    }
}

/// A failure saying `executor` cannot run on this kind of input.
pub fn wrong_input(executor: &str, expected: &str, got: &PartitionInput) -> ExecError {
    let got = match got {
        PartitionInput::Range { .. } => "a range",
        PartitionInput::Files { .. } => "files",
        PartitionInput::Nodes { .. } => "graph nodes",
    };
    ExecError::Failed(format!(
        "executor {executor} takes {expected} as input, got {got}"
    ))
}

/// `root/rel_path`, refusing a `rel_path` that is absolute or climbs out of
/// `root` (the partitioner never produces one; a hand-edited plan might).
pub fn unit_path(root: &Path, entry: &FileEntry) -> Result<PathBuf, ExecError> {
    let rel = Path::new(&entry.rel_path);
    let mut path = root.to_path_buf();
    let mut parts = 0u32;
    for component in rel.components() {
        match component {
            Component::Normal(part) => {
                path.push(part);
                parts += 1;
            }
            _ => {
                return Err(ExecError::Failed(format!(
                    "file {:?} is not a plain relative path under the partition root",
                    entry.rel_path
                )))
            }
        }
    }
    if parts == 0 {
        return Err(ExecError::Failed(
            "a file entry has an empty path".to_owned(),
        ));
    }
    Ok(path)
}

fn io_failed(what: &str, path: &Path, err: &io::Error) -> ExecError {
    ExecError::Failed(format!("{what} {}: {err}", path.display()))
}

fn changed(entry: &FileEntry) -> ExecError {
    ExecError::Failed(format!(
        "file {} changed since the plan was compiled (size or content digest differs)",
        entry.rel_path
    ))
}

/// Reads a unit's file as a stream of exactly `size_bytes` bytes, hashing
/// what passes through; `finish` then checks the length, the digest and that
/// the file has no further bytes.
pub struct VerifyingReader<'e> {
    entry: &'e FileEntry,
    path: PathBuf,
    inner: io::Take<File>,
    hasher: Sha256,
    read_bytes: u64,
}

impl<'e> VerifyingReader<'e> {
    pub fn open(root: &Path, entry: &'e FileEntry) -> Result<Self, ExecError> {
        let path = unit_path(root, entry)?;
        let file = File::open(&path).map_err(|e| io_failed("opening", &path, &e))?;
        Ok(Self {
            entry,
            path,
            inner: file.take(entry.size_bytes),
            hasher: Sha256::new(),
            read_bytes: 0,
        })
    }

    /// Checks that exactly the compiled bytes were read.
    pub fn finish(self) -> Result<(), ExecError> {
        let mut file = self.inner.into_inner();
        let mut probe = [0u8; 1];
        let trailing = file
            .read(&mut probe)
            .map_err(|e| io_failed("reading", &self.path, &e))?;
        let digest: Hash = self.hasher.finalize().into();
        if trailing != 0
            || self.read_bytes != self.entry.size_bytes
            || digest != self.entry.content_sha256
        {
            return Err(changed(self.entry));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Read for VerifyingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read_bytes += n as u64;
        Ok(n)
    }
}

/// Streams a unit's file through `sink` in chunks, then verifies it.
pub fn stream_verified(
    root: &Path,
    entry: &FileEntry,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), ExecError> {
    let mut reader = VerifyingReader::open(root, entry)?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failed("reading", reader.path(), &e)),
        };
        sink(&buf[..n]);
    }
    reader.finish()
}

/// Reads a whole unit's file into memory and verifies it. Files over
/// `size_max_bytes` fail the shard rather than exhaust memory.
pub fn read_verified(
    root: &Path,
    entry: &FileEntry,
    size_max_bytes: u64,
    executor: &str,
) -> Result<Vec<u8>, ExecError> {
    if entry.size_bytes > size_max_bytes {
        return Err(ExecError::Failed(format!(
            "file {} is {} bytes, over the {size_max_bytes} byte limit of {executor}",
            entry.rel_path, entry.size_bytes
        )));
    }
    let capacity = usize::try_from(entry.size_bytes).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    stream_verified(root, entry, |chunk| bytes.extend_from_slice(chunk))?;
    Ok(bytes)
}

/// Incremental SHA-256 over an unambiguous framing of fields: each variable
/// length field is preceded by its length as u64 little-endian, so no two
/// different field sequences share an encoding.
pub struct UnitHasher(Sha256);

impl UnitHasher {
    /// Starts a digest under a domain tag (e.g. `hxo.pack_backend.unit.v1`).
    pub fn new(domain: &str) -> Self {
        let mut h = Self(Sha256::new());
        h.bytes(domain.as_bytes());
        h
    }

    pub fn bytes(&mut self, field: &[u8]) -> &mut Self {
        self.0.update((field.len() as u64).to_le_bytes());
        self.0.update(field);
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.0.update(value.to_le_bytes());
        self
    }

    pub fn hash(&mut self, value: &Hash) -> &mut Self {
        self.0.update(value);
        self
    }

    pub fn finish(&mut self) -> Hash {
        std::mem::take(&mut self.0).finalize().into()
    }
}

/// A content-addressed artifact being written: bytes go to a temporary file
/// in the destination directory while being hashed; `commit` names the file
/// after its SHA-256. Dropping it uncommitted removes the temporary file.
pub struct ArtifactWriter {
    dir: PathBuf,
    temp_path: PathBuf,
    // INVARIANT: `Some` until `commit` takes it.
    file: Option<BufWriter<File>>,
    hasher: Sha256,
}

impl ArtifactWriter {
    /// Starts an artifact under `<artifacts_dir>/<kind>/`.
    pub fn create(artifacts_dir: &Path, kind: &str) -> Result<Self, ExecError> {
        let dir = artifacts_dir.join(kind);
        fs::create_dir_all(&dir).map_err(|e| io_failed("creating", &dir, &e))?;
        // A random name: concurrent shards may write the same artifact.
        let temp_path = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let file =
            File::create_new(&temp_path).map_err(|e| io_failed("creating", &temp_path, &e))?;
        Ok(Self {
            dir,
            temp_path,
            file: Some(BufWriter::new(file)),
            hasher: Sha256::new(),
        })
    }

    /// Makes the artifact durable as `<sha256 hex>.<ext>` and returns its
    /// path and digest. When that name exists, the existing file is kept.
    pub fn commit(mut self, ext: &str) -> Result<(PathBuf, Hash), ExecError> {
        let Some(writer) = self.file.take() else {
            unreachable!("commit consumes the writer, so the file is present");
        };
        let file = writer
            .into_inner()
            .map_err(|e| io_failed("writing", &self.temp_path, e.error()))?;
        let digest: Hash = std::mem::take(&mut self.hasher).finalize().into();
        let final_path = self.dir.join(format!("{}.{ext}", to_hex(&digest)));
        if final_path.exists() {
            drop(file);
            // Drop removes the temporary file.
            return Ok((final_path, digest));
        }
        file.sync_all()
            .map_err(|e| io_failed("syncing", &self.temp_path, &e))?;
        drop(file);
        fs::rename(&self.temp_path, &final_path)
            .map_err(|e| io_failed("renaming into", &final_path, &e))?;
        // The rename is durable only once the directory entry is synced.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_failed("syncing", &self.dir, &e))?;
        Ok((final_path, digest))
    }
}

impl Write for ArtifactWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("artifact already committed"));
        };
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for ArtifactWriter {
    fn drop(&mut self) {
        self.file = None;
        // Best effort: after a rename the temporary name no longer exists.
        let _ = fs::remove_file(&self.temp_path);
    }
}

/// Writes `bytes` as a content-addressed artifact `<kind>/<sha>.<ext>`.
pub fn write_artifact(
    artifacts_dir: &Path,
    kind: &str,
    ext: &str,
    bytes: &[u8],
) -> Result<PathBuf, ExecError> {
    let mut writer = ArtifactWriter::create(artifacts_dir, kind)?;
    writer
        .write_all(bytes)
        .map_err(|e| io_failed("writing", &writer.temp_path, &e))?;
    let (path, _) = writer.commit(ext)?;
    Ok(path)
}

/// JSON string literal for `s` (serde_json's escaping, so deterministic).
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
pub mod testing {
    //! Fixtures shared by the executors' tests.

    use std::path::{Path, PathBuf};

    use crate::exec::CancelToken;
    use crate::exec::ExecError;
    use crate::exec::Executor;
    use crate::exec::ShardContext;
    use crate::hash::sha256;
    use crate::hash::Hash;
    use crate::merkle::root_of_leaf_data;
    use crate::partition::FileEntry;
    use crate::partition::PartitionInput;

    pub struct Fixture {
        pub dir: tempfile::TempDir,
    }

    impl Default for Fixture {
        fn default() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
    }

    impl Fixture {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }

        pub fn artifacts(&self) -> PathBuf {
            self.dir.path().join("artifacts")
        }

        /// Writes `files` under the root and returns a sorted Files input.
        pub fn files(&self, files: &[(&str, &[u8])]) -> PartitionInput {
            let root = self.root();
            let mut entries: Vec<FileEntry> = files
                .iter()
                .map(|(rel, content)| {
                    let path = root.join(rel);
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&path, content).expect("write");
                    FileEntry {
                        rel_path: (*rel).to_owned(),
                        size_bytes: content.len() as u64,
                        content_sha256: sha256(content),
                    }
                })
                .collect();
            entries.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
            PartitionInput::Files {
                root,
                files: entries,
            }
        }

        pub fn run(
            &self,
            exec: &dyn Executor,
            input: &PartitionInput,
            units: std::ops::Range<u64>,
        ) -> Result<Hash, ExecError> {
            self.run_with(exec, input, units, &CancelToken::new(), false)
        }

        pub fn run_all(
            &self,
            exec: &dyn Executor,
            input: &PartitionInput,
        ) -> Result<Hash, ExecError> {
            self.run(exec, input, 0..input.unit_count())
        }

        pub fn run_with(
            &self,
            exec: &dyn Executor,
            input: &PartitionInput,
            units: std::ops::Range<u64>,
            cancel: &CancelToken,
            dry_run: bool,
        ) -> Result<Hash, ExecError> {
            let cas_id = sha256(b"test shard");
            let artifacts = self.artifacts();
            let ctx = ShardContext {
                attempt: 1,
                plan_id: "plan-test",
                stage_id: "stage-test",
                leaf_index: 0,
                cas_id: &cas_id,
                input,
                units,
                artifacts_dir: &artifacts,
                cancel,
                dry_run,
            };
            exec.execute(&ctx)
        }

        /// Sorted list of files under `<artifacts>/<kind>` (excluding temporaries).
        pub fn artifact_files(&self, kind: &str) -> Vec<PathBuf> {
            list(&self.artifacts().join(kind))
        }
    }

    pub fn list(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries.map(|e| e.expect("entry").path()).collect();
        out.sort();
        out
    }

    /// RFC 6962 interior node.
    pub fn node(left: &Hash, right: &Hash) -> Hash {
        let mut bytes = vec![0x01u8];
        bytes.extend_from_slice(left);
        bytes.extend_from_slice(right);
        sha256(&bytes)
    }

    /// Largest power of two strictly below `n` (n >= 2).
    pub fn split_point(n: u64) -> u64 {
        assert!(n >= 2);
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// Checks that the digest over all units equals the RFC 6962 combination
    /// of the digests over the two halves of the tree's own split.
    pub fn assert_split_recombines(fx: &Fixture, exec: &dyn Executor, input: &PartitionInput) {
        let n = input.unit_count();
        let k = split_point(n);
        let whole = fx.run(exec, input, 0..n).expect("whole");
        let left = fx.run(exec, input, 0..k).expect("left");
        let right = fx.run(exec, input, k..n).expect("right");
        assert_eq!(
            whole,
            node(&left, &right),
            "split at {k} of {n} must recombine"
        );
        assert_ne!(whole, root_of_leaf_data(&[]));
    }

    /// Checks that a cancelled token stops the executor.
    pub fn assert_cancels(fx: &Fixture, exec: &dyn Executor, input: &PartitionInput) {
        let cancel = CancelToken::new();
        cancel.cancel();
        let got = fx.run_with(exec, input, 0..input.unit_count(), &cancel, false);
        assert_eq!(got, Err(ExecError::Cancelled));
    }
}
