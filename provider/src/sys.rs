//! The few operating-system calls the process provider needs that std and tokio do not offer:
//! tie a child's life to Sluice's, signal a child's whole process group, and the units of
//! `/proc`'s figures.

#![allow(unsafe_code)]

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::spec::RunSpec;

/// Environment variables a function inherits from Sluice; everything else it gets comes from its
/// own `envVars`, so Sluice's configuration and secrets never leak into functions.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// How a function's process is tied to Sluice's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// A replica's long-running process: it dies with Sluice (`PR_SET_PDEATHSIG`). The setting
    /// is made between fork and exec, so std forks the whole of Sluice to start it.
    DiesWithSluice,
    /// One classic run, started per request: spawned with `posix_spawn` (nothing runs between
    /// fork and exec), which costs a fraction of a fork of Sluice. It gets no death signal: if
    /// Sluice dies, its pipes close (end of input; a write to its output kills it), and a run
    /// that does neither is a leftover like a replica's own children, stopped by the next
    /// start (it carries the run marker).
    PerRequest,
}

/// A command for `spec`, in its own process group, tied to Sluice as `lifetime` says.
pub(crate) fn command(
    spec: &RunSpec,
    extra_env: &[(String, String)],
    lifetime: Lifetime,
) -> Command {
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
    if lifetime == Lifetime::DiesWithSluice {
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the
        // parent; it is the only thing run between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Where the command of `spec` is, when it names a program on the `PATH` its process gets (its
/// own `PATH`, else Sluice's): the first executable file of that name in an absolute directory
/// of it. Looked up once per replica rather than by every spawn; and std only uses
/// `posix_spawn` for a command whose program is a path when the environment sets `PATH`.
/// `None` when the command is already a path, or nothing is found (the spawn then searches, and
/// fails with the usual error).
pub(crate) fn resolve_program(spec: &RunSpec) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let program = spec.argv.first()?;
    if program.contains('/') {
        return None;
    }
    let path = match spec.env.get("PATH") {
        Some(p) => p.clone(),
        None => std::env::var("PATH").ok()?,
    };
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .and_then(|found| found.to_str().map(str::to_owned))
}

/// Refuses a command whose program is not there, so a deployment fails at once, naming it,
/// rather than as a replica that never starts: a path (a relative one from the function's
/// working directory) that is not an executable file, or a name that is an executable file in
/// no directory of the `PATH` its process gets (relative directories of it taken from the
/// working directory, as the spawn takes them).
pub(crate) fn check_program(spec: &RunSpec) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(program) = spec.argv.first() else {
        return Ok(());
    };
    let here = match spec.workdir.as_deref() {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_dir().unwrap_or_default(),
    };
    let executable = |candidate: &Path| {
        std::fs::metadata(candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = here.join(program);
        return if executable(&path) {
            Ok(())
        } else {
            Err(format!(
                "the command's program {program:?} is not an executable file ({} {})",
                path.display(),
                if path.exists() {
                    "is not executable"
                } else {
                    "does not exist"
                }
            ))
        };
    }
    let path = match spec.env.get("PATH") {
        Some(p) => p.clone(),
        None => match std::env::var("PATH") {
            Ok(p) => p,
            // The spawn falls back to a default search path: nothing to check against.
            Err(_) => return Ok(()),
        },
    };
    if path
        .split(':')
        .any(|dir| executable(&here.join(dir).join(program)))
    {
        Ok(())
    } else {
        Err(format!(
            "the command's program {program:?} was not found: no executable of that name on \
             the PATH the function gets ({path})"
        ))
    }
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

/// Holds `child` to `spec`'s memory limit, if it has one: its data limit (`RLIMIT_DATA`: heap
/// and private writable mappings, what a process allocates), which the processes it starts
/// inherit. Set just after the spawn (setting it between fork and exec would cost classic runs
/// `posix_spawn`). Returns why it could not be set.
pub(crate) fn limit_memory(child: &Child, spec: &RunSpec) -> Result<(), String> {
    let (Some(bytes), Some(pid)) = (spec.memory_limit, child.id()) else {
        return Ok(());
    };
    let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: prlimit(2) on our own child, with a valid rlimit and no old-limit pointer; it
    // touches no memory of ours beyond reading `limit`.
    let done = unsafe { libc::prlimit(pid, libc::RLIMIT_DATA, &limit, std::ptr::null_mut()) };
    if done == -1 {
        return Err(format!(
            "cannot set the memory limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Clock ticks per second: the unit of the CPU times in `/proc/<pid>/stat`.
pub(crate) fn clock_ticks() -> u64 {
    // SAFETY: sysconf(3) reads a system setting; it has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
}

/// Bytes in a memory page: the unit of the resident set size in `/proc/<pid>/stat`.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf(3) reads a system setting; it has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
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

/// Environment variable every function process carries: the id of the Sluice run that started
/// it. A process that outlived a killed Sluice is found by it on the next start. (Lower case, so
/// it never collides with a function's own configuration.)
pub(crate) const RUN_MARKER: &str = "sluice_run";
/// Environment variable naming the replica a long-running process belongs to.
pub(crate) const REPLICA_MARKER: &str = "sluice_replica";

/// Pids of the processes whose environment holds exactly `entry` (`NAME=value`).
fn processes_with_env(entry: &str) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
        })
        .collect()
}

/// Kills the processes that earlier, killed, Sluice runs left behind: each run recorded its id
/// as a file in `run_dir`, and each of its processes carries that id in its environment. Then
/// records `own_run`. Returns how many processes were killed.
pub(crate) fn reap_leftovers(run_dir: &Path, own_run: &str) -> std::io::Result<usize> {
    std::fs::create_dir_all(run_dir)?;
    let mut killed = 0;
    for entry in std::fs::read_dir(run_dir)?.flatten() {
        let Some(run) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if run == own_run || run.is_empty() || !run.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        for pid in processes_with_env(&format!("{RUN_MARKER}={run}")) {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on one process; no memory effects. The process carries the
                // marker of a run of ours, so it is one of our functions' processes.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
        }
        let _ = std::fs::remove_file(entry.path());
    }
    std::fs::write(run_dir.join(own_run), b"")?;
    Ok(killed)
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

/// Whether the socket listening on `port` belongs to a process carrying `marker` (`NAME=value`)
/// in its environment: the check that a readiness probe reached the replica we started, not
/// another process that took its port. `None` when it cannot be told (no permission to look).
pub(crate) fn listens_marked(port: u16, marker: &str) -> Option<bool> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Some(false);
    }
    let mut unknown = false;
    for pid in processes_with_env(marker) {
        match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => {
                let owns = fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
                });
                if owns {
                    return Some(true);
                }
            }
            Err(_) => unknown = true,
        }
    }
    if unknown { None } else { Some(false) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_who_listens_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // This test process carries PATH; no process carries a made-up marker.
        let path = format!("PATH={}", std::env::var("PATH").unwrap());
        assert_eq!(listens_marked(port, &path), Some(true));
        assert_eq!(listens_marked(port, "sluice_replica=nobody"), Some(false));
        drop(listener);
        assert_eq!(listens_marked(port, &path), Some(false));
    }

    fn spec(argv0: &str, path: Option<&str>) -> RunSpec {
        RunSpec {
            mode: crate::spec::Mode::Classic,
            argv: vec![argv0.to_owned()],
            env: path
                .map(|p| ("PATH".to_owned(), p.to_owned()))
                .into_iter()
                .collect(),
            workdir: None,
            exec_timeout: std::time::Duration::from_secs(1),
            max_inflight: 0,
            readiness_path: "/".into(),
            concurrency: None,
            memory_limit: None,
            secrets: Vec::new(),
        }
    }

    #[test]
    fn a_program_is_found_on_the_path_the_function_gets() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        // Not executable: not a candidate.
        let path = format!("relative/bin:{}", bin.display());
        assert_eq!(resolve_program(&spec("tool", Some(&path))), None);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve_program(&spec("tool", Some(&path))).as_deref(),
            tool.to_str()
        );
        // Its own PATH, not Sluice's; a path is left as it is; nothing found is `None`.
        assert_eq!(resolve_program(&spec("tool", None)), None);
        assert_eq!(resolve_program(&spec("./tool", Some(&path))), None);
        assert_eq!(resolve_program(&spec("no-such-tool", Some(&path))), None);
    }

    #[test]
    fn a_program_that_is_not_there_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("data.txt"), "x").unwrap();
        let path = bin.display().to_string();
        let in_dir = |argv0: &str, path: Option<&str>| {
            let mut s = spec(argv0, path);
            s.workdir = Some(dir.path().to_path_buf());
            check_program(&s)
        };
        // On the function's PATH, its own relative directories from its working directory, or
        // a path from there.
        assert_eq!(in_dir("tool", Some(&path)), Ok(()));
        assert_eq!(in_dir("tool", Some("/nowhere:bin")), Ok(()));
        assert_eq!(in_dir("./bin/tool", None), Ok(()));
        assert_eq!(in_dir(tool.to_str().unwrap(), None), Ok(()));
        assert_eq!(check_program(&spec("sh", None)), Ok(()), "Sluice's PATH");
        let err = in_dir("no-such-tool", Some(&path)).unwrap_err();
        assert!(err.contains("\"no-such-tool\" was not found"), "{err}");
        assert!(err.contains(&path), "{err}");
        let err = in_dir("./server.py", None).unwrap_err();
        assert!(
            err.contains("\"./server.py\"") && err.contains("does not exist"),
            "{err}"
        );
        let err = in_dir("./data.txt", None).unwrap_err();
        assert!(err.contains("is not executable"), "{err}");
    }
}
