//! A real `nats-server` with JetStream for one test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to write its ports file.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A `nats-server -js` on a free port of 127.0.0.1 with a store directory of its own. Killed
/// when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The server binary: `SLUICE_NATS_SERVER`, else `nats-server` on the PATH or in the usual
/// places Debian and the release tarball put it.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests need nats-server (with JetStream); .ci/run installs it, or set \
                 SLUICE_NATS_SERVER to its path"
            )
        })
}

impl NatsServer {
    /// Starts a server on a port the OS picks.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let child = spawn(dir.path(), None);
        let port = wait_for_port(dir.path(), child.id());
        Self {
            child: Some(child),
            port,
            dir,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL), as a crash would; its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, after [`Self::kill`].
    pub fn restart(&mut self) {
        self.kill();
        let ports = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        let child = spawn(self.dir.path(), Some(self.port));
        let port = wait_for_port(self.dir.path(), child.id());
        assert_eq!(port, self.port, "nats-server came back on another port");
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, port: Option<u16>) -> Child {
    let ports = dir.join("ports");
    std::fs::create_dir_all(&ports).expect("creating the ports dir");
    let port = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    Command::new(binary())
        .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
        .arg(dir.join("store"))
        .arg("--ports_file_dir")
        .arg(&ports)
        .arg("-l")
        .arg(dir.join("nats.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nats-server")
}

/// Reads the port from the ports file the server writes once it accepts clients.
fn wait_for_port(dir: &Path, pid: u32) -> u16 {
    let file = dir.join("ports").join(format!("nats-server_{pid}.ports"));
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| parse_port(&s))
        {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not start within {START_DEADLINE:?}; see {}",
            dir.join("nats.log").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `{"nats":["nats://127.0.0.1:4222"], ...}` → 4222.
fn parse_port(ports_file: &str) -> Option<u16> {
    let start = ports_file.find("nats://")?;
    let rest = &ports_file[start + "nats://".len()..];
    let end = rest.find('"')?;
    rest[..end].rsplit_once(':')?.1.parse().ok()
}
