//! The `exec` executor: one shell command per shard.
//!
//! The command runs as `sh -c COMMAND` in the plan's directory, in a process
//! group of its own, with `HXO_SHARD_INDEX`, `HXO_SHARD_CAS_ID`,
//! `HXO_STAGE_ID`, `HXO_PLAN_ID` and each partition input as `HXO_IN_<KEY>`
//! in its environment (`HXO_IN_START`/`HXO_IN_END` for ranges,
//! `HXO_IN_ROOT`/`HXO_IN_FILES` (newline-separated) for files,
//! `HXO_IN_DEPTH`/`HXO_IN_NODES` for graph depths, and `HXO_IN_KEY` when the
//! partition has a key). The output digest is the SHA-256 of its stdout; a
//! non-zero exit fails the shard with the tail of its stderr.
//!
//! At the shard's deadline or on abort the whole process group is killed
//! (SIGKILL), so a command's children die with it. Stdout and stderr are
//! drained with `poll(2)` so neither pipe can fill and stall the child, and
//! stdout beyond `EXEC_STDOUT_BYTES_MAX` fails the shard rather than growing
//! memory.

use super::{ConfigError, ExecError, Executor, ShardContext};
use crate::hash::{to_hex, Hash};
use crate::limits::{ERROR_TEXT_BYTES_MAX, EXEC_STDOUT_BYTES_MAX};
use crate::partition::PartitionInput;
use serde_json::Map;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Shell {
    command: String,
    working_dir: PathBuf,
}

impl Shell {
    pub fn from_config(
        config: &Map<String, serde_json::Value>,
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let command = super::config::required_str(config, "command")?.to_string();
        Ok(Shell {
            command,
            working_dir: base_dir.to_path_buf(),
        })
    }

    fn environment(ctx: &ShardContext<'_>) -> Vec<(String, String)> {
        let mut env = vec![
            ("HXO_SHARD_INDEX".to_string(), ctx.leaf_index.to_string()),
            ("HXO_SHARD_CAS_ID".to_string(), to_hex(ctx.cas_id)),
            ("HXO_STAGE_ID".to_string(), ctx.stage_id.to_string()),
            ("HXO_PLAN_ID".to_string(), ctx.plan_id.to_string()),
            ("HXO_ATTEMPT".to_string(), ctx.attempt.to_string()),
        ];
        let (first, last) = (ctx.units.start as usize, ctx.units.end as usize);
        match ctx.input {
            PartitionInput::Range { start, .. } => {
                env.push(("HXO_IN_START".into(), (start + ctx.units.start).to_string()));
                env.push(("HXO_IN_END".into(), (start + ctx.units.end).to_string()));
            }
            PartitionInput::Files { root, files } => {
                env.push(("HXO_IN_ROOT".into(), root.display().to_string()));
                let list: Vec<&str> = files[first..last]
                    .iter()
                    .map(|f| f.rel_path.as_str())
                    .collect();
                env.push(("HXO_IN_FILES".into(), list.join("\n")));
            }
            PartitionInput::Nodes { depth, nodes } => {
                env.push(("HXO_IN_DEPTH".into(), depth.to_string()));
                env.push(("HXO_IN_NODES".into(), nodes[first..last].join("\n")));
            }
        }
        env
    }
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals the process group that
    // `process_group(0)` created for this child; it touches no memory.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

/// Keeps the last `ERROR_TEXT_BYTES_MAX` bytes of stderr.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    tail.extend_from_slice(chunk);
    if tail.len() > ERROR_TEXT_BYTES_MAX {
        let excess = tail.len() - ERROR_TEXT_BYTES_MAX;
        tail.drain(..excess);
    }
}

impl Executor for Shell {
    fn is_blocking(&self) -> bool {
        true
    }

    fn execute(&self, ctx: &ShardContext<'_>) -> Result<Hash, ExecError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .current_dir(&self.working_dir)
            .envs(Self::environment(ctx))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| ExecError::Failed(format!("cannot start sh: {e}")))?;
        let pid = child.id();
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let mut hasher = Sha256::new();
        let mut stdout_bytes: u64 = 0;
        let mut stderr_tail = Vec::new();
        let mut open = [true, true];
        let mut buffer = vec![0u8; 64 * 1024];
        let mut verdict: Option<ExecError> = None;
        while open[0] || open[1] {
            if ctx.cancel.is_cancelled() {
                verdict = Some(if ctx.cancel.timed_out() {
                    ExecError::TimedOut
                } else {
                    ExecError::Cancelled
                });
                break;
            }
            let wait_ms = match ctx.cancel.deadline() {
                Some(deadline) => deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .clamp(1, 100) as i32,
                None => 100,
            };
            let mut fds = [
                libc::pollfd {
                    fd: if open[0] { stdout.as_raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if open[1] { stderr.as_raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfd structs that lives
            // across the call; negative fds are ignored by poll(2).
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
            if ready < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                verdict = Some(ExecError::Failed(format!("poll failed: {error}")));
                break;
            }
            for (index, fd) in fds.iter().enumerate() {
                if !open[index] || fd.revents == 0 {
                    continue;
                }
                let read = if index == 0 {
                    stdout.read(&mut buffer)
                } else {
                    stderr.read(&mut buffer)
                };
                match read {
                    Ok(0) => open[index] = false,
                    Ok(n) if index == 0 => {
                        stdout_bytes += n as u64;
                        hasher.update(&buffer[..n]);
                    }
                    Ok(n) => keep_tail(&mut stderr_tail, &buffer[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => open[index] = false,
                }
            }
            if stdout_bytes > EXEC_STDOUT_BYTES_MAX {
                verdict = Some(ExecError::Failed(format!(
                    "stdout exceeded {EXEC_STDOUT_BYTES_MAX} bytes"
                )));
                break;
            }
        }
        if let Some(error) = verdict {
            kill_group(pid);
            let _ = child.wait();
            return Err(error);
        }
        // Both pipes closed: the command is exiting. Its group may still hold
        // stray children; they are not ours to wait for, but must not outlive
        // the shard.
        let status = child
            .wait()
            .map_err(|e| ExecError::Failed(format!("wait failed: {e}")))?;
        kill_group(pid);
        if !status.success() {
            let stderr_text = String::from_utf8_lossy(&stderr_tail);
            let stderr_text = stderr_text.trim();
            let code = match status.code() {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".to_string(),
            };
            return Err(ExecError::Failed(if stderr_text.is_empty() {
                format!("command failed with {code}")
            } else {
                format!("command failed with {code}: {stderr_text}")
            }));
        }
        Ok(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::CancelToken;
    use std::time::Duration;

    fn run(command: &str, deadline: Option<Instant>) -> Result<Hash, ExecError> {
        let mut config = Map::new();
        config.insert("command".into(), serde_json::Value::String(command.into()));
        let shell = Shell::from_config(&config, Path::new("/")).unwrap();
        let cancel = match deadline {
            Some(deadline) => CancelToken::with_deadline(deadline),
            None => CancelToken::new(),
        };
        let input = PartitionInput::Range { start: 10, end: 12 };
        let cas = [1u8; 32];
        let ctx = ShardContext {
            plan_id: "plan-1",
            stage_id: "stage",
            leaf_index: 3,
            cas_id: &cas,
            input: &input,
            units: 0..2,
            attempt: 1,
            artifacts_dir: Path::new("/"),
            cancel: &cancel,
            dry_run: false,
        };
        shell.execute(&ctx)
    }

    #[test]
    fn digest_is_sha256_of_stdout_and_env_is_set() {
        let digest = run(
            "printf '%s %s %s %s' $HXO_SHARD_INDEX $HXO_STAGE_ID $HXO_IN_START $HXO_IN_END",
            None,
        )
        .unwrap();
        assert_eq!(digest, crate::hash::sha256(b"3 stage 10 12"));
    }

    #[test]
    fn non_zero_exit_fails_with_stderr() {
        let error = run("echo broken >&2; exit 7", None).unwrap_err();
        assert_eq!(
            error,
            ExecError::Failed("command failed with exit code 7: broken".into())
        );
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let started = Instant::now();
        let error = run(
            "sleep 30 & sleep 30; wait",
            Some(Instant::now() + Duration::from_millis(200)),
        )
        .unwrap_err();
        assert_eq!(error, ExecError::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
