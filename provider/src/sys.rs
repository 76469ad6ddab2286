//! The few operating-system calls the process provider needs that std and tokio do not offer:
//! tie a child's life to Sluice's, and signal a child's whole process group.

#![allow(unsafe_code)]

use std::path::Path;
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
