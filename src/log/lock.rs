//! The store lock: one process owns a checkpoint store at a time.
//!
//! A `LOCK` file in the store directory is locked with `flock(LOCK_EX |
//! LOCK_NB)` and holds the owner's pid as decimal text. A second opener
//! fails at once with [`LogError::Locked`] naming that pid: never a hang.
//! `flock` locks belong to the open file description, so a second open in
//! the same process conflicts too, and the kernel drops the lock when the
//! owner exits however it exits; a stale pid left in the file is harmless
//! because it is only read while the lock is held by someone.
//!
//! The lock is what makes the memory maps of [`super::storage`] sound: it
//! excludes every other HXO writer for as long as a [`super::Log`] (or a
//! compaction) lives.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::LogError;

/// Name of the lock file inside the store directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// How often, and how long apart, a loser re-reads an unreadable pid (the
/// winner may be between taking the lock and writing its pid).
const PID_READ_TRIES: u32 = 10;
const PID_READ_PAUSE: Duration = Duration::from_millis(10);

/// Held for as long as the store is owned; dropping it unlocks.
#[derive(Debug)]
pub struct StoreLock {
    // Closing the file releases the flock.
    _file: File,
    dir: PathBuf,
}

impl StoreLock {
    /// Takes the lock of the store in `dir` (created if missing) or fails
    /// at once with `Locked`.
    pub fn acquire(dir: &Path) -> Result<StoreLock, LogError> {
        let lock_io = |source: io::Error| LogError::LockIo {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(lock_io)?;
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_io)?;
        // SAFETY: plain syscall on a descriptor owned by `file`, alive for
        // the call; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LogError::Locked {
                    path: dir.to_owned(),
                    pid: read_pid(&mut file),
                });
            }
            return Err(lock_io(err));
        }
        // Write the pid over the old one, then cut the file to its length,
        // so a concurrent reader never sees an empty file once any pid was
        // written.
        let text = format!("{}\n", std::process::id());
        file.write_all_at(text.as_bytes(), 0).map_err(lock_io)?;
        file.set_len(text.len() as u64).map_err(lock_io)?;
        Ok(StoreLock {
            _file: file,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pid in the lock file; 0 if it stays unreadable (the holder took the
/// lock but has not written its pid after all tries).
fn read_pid(file: &mut File) -> u32 {
    for _ in 0..PID_READ_TRIES {
        let mut text = String::new();
        let parsed = file
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| text.lines().next()?.trim().parse().ok());
        if let Some(pid) = parsed {
            return pid;
        }
        std::thread::sleep(PID_READ_PAUSE);
        // Reading again from the start: the holder writes at offset 0.
        let _ = io::Seek::seek(file, io::SeekFrom::Start(0));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_at_once_naming_this_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let first = StoreLock::acquire(&dir).unwrap();
        let err = StoreLock::acquire(&dir).unwrap_err();
        match &err {
            LogError::Locked { path, pid } => {
                assert_eq!(path, &dir);
                assert_eq!(*pid, std::process::id());
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "checkpoint store {} locked by pid {}",
                dir.display(),
                std::process::id()
            )
        );
        drop(first);
        let again = StoreLock::acquire(&dir).unwrap();
        assert_eq!(again.dir(), dir);
        let text = fs::read_to_string(dir.join(LOCK_FILE_NAME)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }

    #[test]
    fn a_longer_stale_pid_is_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(LOCK_FILE_NAME), "4294967295\nstale\n").unwrap();
        let _lock = StoreLock::acquire(tmp.path()).unwrap();
        let text = fs::read_to_string(tmp.path().join(LOCK_FILE_NAME)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }
}
