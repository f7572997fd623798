//! The one directory walk and file fingerprinting that every file
//! partitioner (`by_filesize`, `by_module`, `by_asset_bucket`,
//! `by_route_map`) uses.
//!
//! Rules, kept here so they hold for every partitioner:
//! - Entries named `.git` are skipped at every level.
//! - Symlinks to directories are not followed (no loops, no surprises).
//! - Symlinks to regular files are followed only when their target lies
//!   inside the plan's directory; one that leads out is an
//!   [`PartitionError::EscapesRoot`]. Dangling symlinks are skipped (they
//!   have no content; editors leave them as lock files).
//! - Only regular files are read: FIFOs, sockets and devices are skipped, as
//!   reading them could block or never end.
//! - A file or directory name that is not UTF-8 is an error: `rel_path` is
//!   a `String`, and replacing bytes could make two files collide.
//! - Output is sorted by `rel_path` in byte order, '/'-separated, so it does
//!   not depend on directory iteration order; fingerprints are computed in
//!   parallel but collected in that order, and the first error in that
//!   order is the one reported, so results do not depend on thread count.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{FileEntry, PartitionError};

/// What [`list_dir`] found in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Directory,
    /// A regular file, or a symlink to one inside the plan's directory.
    File,
}

/// One entry of a directory that the walk rules keep.
#[derive(Clone, Debug)]
pub(crate) struct DirEntry {
    pub name: String,
    /// Where to read it: the entry itself, or a symlink's canonical target.
    pub path: PathBuf,
    pub kind: EntryKind,
}

/// A file found by [`walk`], not yet read.
#[derive(Clone, Debug)]
pub(crate) struct WalkedFile {
    pub rel_path: String,
    pub path: PathBuf,
}

/// Lists the entries of `dir` that the walk rules keep, sorted by name.
/// `base` is the canonical plan directory file symlinks must stay in;
/// errors name `key`.
pub(crate) fn list_dir(
    key: &str,
    dir: &Path,
    base: &Path,
) -> Result<Vec<DirEntry>, PartitionError> {
    let read_error = |path: &Path, source| PartitionError::io(key, path, source);
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| read_error(dir, source))? {
        let entry = entry.map_err(|source| read_error(dir, source))?;
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            return Err(PartitionError::config(
                key,
                format!("file name is not valid UTF-8: {}", path.display()),
            ));
        };
        if name == ".git" {
            continue;
        }
        // `DirEntry::file_type` does not follow symlinks.
        let file_type = entry
            .file_type()
            .map_err(|source| read_error(&path, source))?;
        if file_type.is_dir() {
            entries.push(DirEntry {
                name,
                path,
                kind: EntryKind::Directory,
            });
        } else if file_type.is_file() {
            entries.push(DirEntry {
                name,
                path,
                kind: EntryKind::File,
            });
        } else if file_type.is_symlink() {
            let target = match fs::canonicalize(&path) {
                Ok(target) => target,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(read_error(&path, source)),
            };
            let metadata = fs::metadata(&target).map_err(|source| read_error(&target, source))?;
            if !metadata.is_file() {
                continue;
            }
            if !target.starts_with(base) {
                return Err(PartitionError::EscapesRoot {
                    key: key.to_owned(),
                    given: path.display().to_string(),
                    resolved: target,
                    root: base.to_owned(),
                });
            }
            entries.push(DirEntry {
                name,
                path: target,
                kind: EntryKind::File,
            });
        }
    }
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Walks `dir` recursively by the module's rules and returns its files
/// sorted by `rel_path` (relative to `dir`).
pub(crate) fn walk(key: &str, dir: &Path, base: &Path) -> Result<Vec<WalkedFile>, PartitionError> {
    let mut files = Vec::new();
    // An explicit stack rather than recursion: a deep tree cannot overflow
    // the thread's stack.
    let mut pending: Vec<(PathBuf, String)> = vec![(dir.to_owned(), String::new())];
    while let Some((current, prefix)) = pending.pop() {
        for entry in list_dir(key, &current, base)? {
            let rel_path = format!("{prefix}{}", entry.name);
            match entry.kind {
                EntryKind::Directory => pending.push((entry.path, rel_path + "/")),
                EntryKind::File => files.push(WalkedFile {
                    rel_path,
                    path: entry.path,
                }),
            }
        }
    }
    files.sort_unstable_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(files)
}

/// Reads `files` in parallel and returns their sizes and SHA-256 digests in
/// the same order.
pub(crate) fn fingerprint(
    key: &str,
    files: Vec<WalkedFile>,
) -> Result<Vec<FileEntry>, PartitionError> {
    let mut groups = fingerprint_groups(vec![(key.to_owned(), files)])?;
    Ok(groups.pop().unwrap_or_default())
}

/// Walks and fingerprints `dir`: the file list of one `Files` partition.
pub(crate) fn files_under(
    key: &str,
    dir: &Path,
    base: &Path,
) -> Result<Vec<FileEntry>, PartitionError> {
    fingerprint(key, walk(key, dir, base)?)
}

/// Fingerprints several file lists at once, so that many small groups
/// (modules, routes) still keep every thread busy. Each group carries the
/// key its read errors name; groups come back in the same order.
pub(crate) fn fingerprint_groups(
    groups: Vec<(String, Vec<WalkedFile>)>,
) -> Result<Vec<Vec<FileEntry>>, PartitionError> {
    let mut keys = Vec::with_capacity(groups.len());
    let mut lens = Vec::with_capacity(groups.len());
    let mut flat = Vec::new();
    for (key, files) in groups {
        lens.push(files.len());
        flat.extend(files.into_iter().map(|file| (keys.len(), file)));
        keys.push(key);
    }
    let results: Vec<Result<FileEntry, PartitionError>> = flat
        .into_par_iter()
        .map(|(group, file)| {
            let (size_bytes, content_sha256) = hash_file(&file.path)
                .map_err(|source| PartitionError::io(keys[group].as_str(), &file.path, source))?;
            Ok(FileEntry {
                rel_path: file.rel_path,
                size_bytes,
                content_sha256,
            })
        })
        .collect();
    // Sequential regrouping: the first error in path order wins, whatever
    // thread finished first.
    let mut results = results.into_iter();
    lens.into_iter()
        .map(|len| results.by_ref().take(len).collect())
        .collect()
}

/// Streams a file through SHA-256. The size is the number of bytes hashed,
/// not the metadata length, so the two always agree even if the file
/// changes underneath.
fn hash_file(path: &Path) -> io::Result<(u64, crate::hash::Hash)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size_bytes = io::copy(&mut file, &mut hasher)?;
    Ok((size_bytes, hasher.finalize().into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hash::sha256;

    /// Writes `files` (rel_path, content) under `root`, creating parents.
    pub(crate) fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
        for (rel_path, content) in files {
            let path = root.join(rel_path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
    }

    /// A temp dir and its canonical path (macOS /tmp is a symlink).
    pub(crate) fn temp_base() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        (dir, base)
    }

    /// (key, root, rel_paths) of file partitions, for comparing layouts.
    pub(crate) fn keyed_layout(
        partitions: &[crate::partition::Partition],
    ) -> Vec<(String, PathBuf, Vec<String>)> {
        partitions
            .iter()
            .map(|partition| match &partition.input {
                crate::partition::PartitionInput::Files { root, files } => (
                    partition.key.as_deref().unwrap().to_owned(),
                    root.clone(),
                    files.iter().map(|file| file.rel_path.clone()).collect(),
                ),
                other => unreachable!("a file partitioner made {other:?}"),
            })
            .collect()
    }

    fn rel_paths(files: &[FileEntry]) -> Vec<&str> {
        files.iter().map(|file| file.rel_path.as_str()).collect()
    }

    #[test]
    fn walk_sorts_by_rel_path_bytes_and_skips_git() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[
                ("b.txt", b"b"),
                ("a/z.txt", b"z"),
                ("a.txt", b"a"),
                ("a/b/c.txt", b"c"),
                ("B.txt", b"B"),
                (".git/HEAD", b"ref"),
                ("sub/.git", b"gitdir: elsewhere"),
                (".hidden", b"h"),
            ],
        );
        let files = files_under("root", &base, &base).unwrap();
        // '.' (0x2e) < '/' (0x2f): "a.txt" sorts before "a/...".
        assert_eq!(
            rel_paths(&files),
            [".hidden", "B.txt", "a.txt", "a/b/c.txt", "a/z.txt", "b.txt"]
        );
        let c = files
            .iter()
            .find(|file| file.rel_path == "a/b/c.txt")
            .unwrap();
        assert_eq!(c.size_bytes, 1);
        assert_eq!(c.content_sha256, sha256(b"c"));
    }

    #[test]
    fn empty_dir_has_no_files() {
        let (_dir, base) = temp_base();
        assert!(files_under("root", &base, &base).unwrap().is_empty());
    }

    #[test]
    fn fingerprint_is_independent_of_thread_count() {
        let (_dir, base) = temp_base();
        let contents: Vec<(String, Vec<u8>)> = (0..200)
            .map(|index| {
                (
                    format!("d{}/f{index:03}", index % 7),
                    vec![index as u8; index * 13],
                )
            })
            .collect();
        let borrowed: Vec<(&str, &[u8])> = contents
            .iter()
            .map(|(path, content)| (path.as_str(), content.as_slice()))
            .collect();
        write_tree(&base, &borrowed);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| files_under("root", &base, &base).unwrap())
        };
        assert_eq!(run(1), run(4));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_follow_inside_files_only() {
        use std::os::unix::fs::symlink;
        let (_dir, base) = temp_base();
        let root = base.join("root");
        write_tree(
            &base,
            &[
                ("root/real.txt", b"real"),
                ("root/dir/x", b"x"),
                ("other/y", b"y"),
            ],
        );
        symlink(root.join("real.txt"), root.join("link.txt")).unwrap();
        symlink(root.join("dir"), root.join("dirlink")).unwrap();
        symlink(base.join("missing"), root.join("dangling")).unwrap();
        symlink(base.join("other/y"), root.join("to_other")).unwrap();
        let files = files_under("root", &root, &base).unwrap();
        assert_eq!(
            rel_paths(&files),
            ["dir/x", "link.txt", "real.txt", "to_other"]
        );
        assert_eq!(files[1].content_sha256, sha256(b"real"));
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_file_leading_out_is_an_escape() {
        let (_dir, base) = temp_base();
        let plan = base.join("plan");
        write_tree(&base, &[("plan/src/a", b"a"), ("secret", b"s")]);
        std::os::unix::fs::symlink(base.join("secret"), plan.join("src/leak")).unwrap();
        let error = files_under("root", &plan.join("src"), &plan).unwrap_err();
        assert!(
            matches!(error, PartitionError::EscapesRoot { .. }),
            "{error}"
        );
        assert_eq!(error.key(), "root");
    }

    #[cfg(unix)]
    #[test]
    fn fifo_is_skipped() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("a", b"a")]);
        let fifo = std::ffi::CString::new(base.join("pipe").to_str().unwrap()).unwrap();
        // SAFETY: `fifo` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
        assert_eq!(rc, 0);
        assert_eq!(
            rel_paths(&files_under("root", &base, &base).unwrap()),
            ["a"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_name_is_an_error() {
        use std::os::unix::ffi::OsStrExt;
        let (_dir, base) = temp_base();
        let name = std::ffi::OsStr::from_bytes(b"bad\xff");
        if fs::write(base.join(name), b"x").is_err() {
            return; // The file system refuses non-UTF-8 names: nothing to test.
        }
        let error = files_under("root", &base, &base).unwrap_err();
        assert!(error.to_string().contains("not valid UTF-8"), "{error}");
    }
}
