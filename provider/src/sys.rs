//! The few operating-system calls the process provider needs that std and tokio do not offer:
//! tie a child's life to Sluice's, and signal a child's whole process group.

#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::spec::RunSpec;

/// Environment variables a function inherits from Sluice; everything else it gets comes from its
/// own `envVars`, so Sluice's configuration and secrets never leak into functions.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// A command for `spec`, in its own process group, that dies with Sluice.
pub(crate) fn command(spec: &RunSpec, extra_env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    cmd.env_clear();
    for key in INHERITED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(&spec.env);
    cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = spec.workdir.as_deref() {
        cmd.current_dir(dir);
    }
    cmd.stdin(Stdio::null());
    cmd.stdout(Stdio::piped());
    cmd.stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    cmd.process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
    // it is the only thing run between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Describes a spawn failure so a user can act on it.
pub(crate) fn spawn(
    mut cmd: Command,
    argv0: &str,
    workdir: Option<&Path>,
) -> Result<Child, String> {
    cmd.spawn().map_err(|e| match workdir {
        Some(dir) => format!("cannot start {argv0:?} in {}: {e}", dir.display()),
        None => format!("cannot start {argv0:?}: {e}"),
    })
}

/// Sends `signal` to the process group led by `child` (each child leads its own group).
pub(crate) fn signal_group(child: &Child, signal: libc::c_int) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
        // The child has not been reaped yet (we hold it), so the group id is still ours.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// The record of a running child's process group in the run dir, removed when dropped. If Sluice
/// dies without dropping it, [`reap_leftovers`] finds it on the next start.
#[derive(Debug)]
pub(crate) struct RunRecord(PathBuf);

impl Drop for RunRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A process's start time (clock ticks since boot), which tells it from a later one that got
/// the same pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Records `child`'s process group under `run_dir`.
pub(crate) fn record(run_dir: Option<&Path>, child: &Child) -> Option<RunRecord> {
    let dir = run_dir?;
    let pid = child.id()?;
    let line = format!("{} {}\n", boot_id()?, start_time(pid)?);
    let path = dir.join(pid.to_string());
    match std::fs::write(&path, line) {
        Ok(()) => Some(RunRecord(path)),
        Err(error) => {
            tracing::warn!(%error, dir = %dir.display(), "cannot record a child process group");
            None
        }
    }
}

/// Kills the process groups that a previous Sluice left behind (it was killed before it could
/// stop its children's children) and clears their records. Returns how many groups were killed.
///
/// A group is killed only if its record is from this boot and its leader is either gone (it was
/// ours: the leader dies with Sluice) or still the very process that was recorded.
pub(crate) fn reap_leftovers(run_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return 0;
    };
    let boot = boot_id();
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let pgid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok());
        let record = std::fs::read_to_string(&path).unwrap_or_default();
        let mut fields = record.split_whitespace();
        let (rec_boot, rec_start) = (
            fields.next(),
            fields.next().and_then(|s| s.parse::<u64>().ok()),
        );
        if let (Some(pgid), Some(rec_boot), Some(rec_start)) = (pgid, rec_boot, rec_start) {
            let ours = boot.as_deref() == Some(rec_boot)
                && start_time(pgid).is_none_or(|now| now == rec_start);
            if ours && let Ok(pgid) = libc::pid_t::try_from(pgid) {
                // SAFETY: kill(2) on a process group; no memory effects.
                if unsafe { libc::kill(-pgid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// Inodes of the sockets listening on `port` (IPv4 and IPv6), from `/proc/net/tcp*`.
fn listening_inodes(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    inodes
}

/// The process group a process belongs to (field 5 of `/proc/<pid>/stat`).
fn process_group(pid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Whether the socket listening on `port` belongs to a process in group `pgid`: the check that
/// a readiness probe reached the replica we started, not another process that took its port.
pub(crate) fn listens_in_group(port: u16, pgid: u32) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| process_group(pid) == Some(pgid))
        .any(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_who_listens_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let own_group = process_group("self").unwrap();
        assert!(listens_in_group(port, own_group));
        assert!(!listens_in_group(port, own_group + 1));
        drop(listener);
        assert!(!listens_in_group(port, own_group));
    }
}
