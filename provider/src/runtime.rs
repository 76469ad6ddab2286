//! One function's replicas on this machine: starting, probing, restarting and stopping them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{FunctionRef, Replicas};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::logs::{LogBuffer, pump_lines};
use crate::spec::{Mode, RunSpec};
use crate::{sys, watchdog};

/// Tunables shared by every function's runtime.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeConfig {
    pub(crate) stop_grace: Duration,
    pub(crate) restart_backoff_min: Duration,
    pub(crate) restart_backoff_max: Duration,
}

/// A replica as the runtime tracks it.
#[derive(Debug)]
struct Replica {
    cancel: CancellationToken,
    ready: Arc<Mutex<Option<SocketAddr>>>,
}

/// The live state of one deployed function.
#[derive(Debug)]
pub(crate) struct FunctionRuntime {
    function: FunctionRef,
    spec: Mutex<Arc<RunSpec>>,
    replicas: Mutex<Vec<Replica>>,
    /// Bumped whenever a replica becomes ready or stops being ready, or the count changes.
    changes: watch::Sender<u64>,
    next: AtomicUsize,
    pub(crate) logs: Arc<LogBuffer>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    config: RuntimeConfig,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FunctionRuntime {
    pub(crate) fn new(
        function: FunctionRef,
        spec: RunSpec,
        logs: Arc<LogBuffer>,
        cancel: CancellationToken,
        tracker: TaskTracker,
        config: RuntimeConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            function,
            spec: Mutex::new(Arc::new(spec)),
            replicas: Mutex::new(Vec::new()),
            changes: watch::channel(0).0,
            next: AtomicUsize::new(0),
            logs,
            cancel,
            tracker,
            config,
        })
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn counts(&self) -> Replicas {
        let replicas = lock(&self.replicas);
        let ready = replicas.iter().filter(|r| lock(&r.ready).is_some()).count();
        Replicas {
            desired: u32::try_from(replicas.len()).unwrap_or(u32::MAX),
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
        }
    }

    /// Sets the replica count: starts new replicas or stops the newest extra ones.
    pub(crate) fn scale(self: &Arc<Self>, count: u32) {
        let spec = lock(&self.spec).clone();
        let mut replicas = lock(&self.replicas);
        let count = count as usize;
        while replicas.len() < count {
            replicas.push(self.start_replica(spec.clone()));
        }
        for extra in replicas.drain(count..) {
            extra.cancel.cancel();
        }
        drop(replicas);
        self.bump();
    }

    /// Replaces the function's configuration: new replicas are started, then the old ones stop.
    pub(crate) fn replace(self: &Arc<Self>, spec: RunSpec, count: u32) {
        let spec = Arc::new(spec);
        *lock(&self.spec) = spec.clone();
        let fresh: Vec<Replica> = (0..count)
            .map(|_| self.start_replica(spec.clone()))
            .collect();
        let old = std::mem::replace(&mut *lock(&self.replicas), fresh);
        for r in old {
            r.cancel.cancel();
        }
        self.bump();
    }

    /// Stops every replica; their tasks finish in the provider's tracker.
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
        lock(&self.replicas).clear();
        self.bump();
    }

    /// A ready replica's address, round-robin, waiting up to `wait` while replicas start.
    pub(crate) async fn endpoint(&self, wait: Duration) -> Result<SocketAddr, EndpointError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let (desired, ready) = {
                let replicas = lock(&self.replicas);
                let ready: Vec<SocketAddr> =
                    replicas.iter().filter_map(|r| *lock(&r.ready)).collect();
                (replicas.len(), ready)
            };
            if !ready.is_empty() {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % ready.len();
                return Ok(ready[i]);
            }
            if desired == 0 || self.cancel.is_cancelled() {
                return Err(EndpointError::ScaledToZero);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(EndpointError::NotReady),
            }
        }
    }

    fn start_replica(self: &Arc<Self>, spec: Arc<RunSpec>) -> Replica {
        let cancel = self.cancel.child_token();
        let ready = Arc::new(Mutex::new(None));
        let id = format!(
            "{}-{}",
            self.function.name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let rt = self.clone();
        let (task_cancel, task_ready) = (cancel.clone(), ready.clone());
        self.tracker.spawn(async move {
            match spec.mode {
                Mode::Classic => rt.run_classic(id, spec, task_ready, task_cancel).await,
                Mode::Http => rt.supervise_http(id, spec, task_ready, task_cancel).await,
            }
        });
        Replica { cancel, ready }
    }

    fn set_ready(&self, slot: &Mutex<Option<SocketAddr>>, addr: Option<SocketAddr>) {
        *lock(slot) = addr;
        self.bump();
    }

    async fn run_classic(
        &self,
        id: String,
        spec: Arc<RunSpec>,
        ready: Arc<Mutex<Option<SocketAddr>>>,
        cancel: CancellationToken,
    ) {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                self.logs
                    .push(&id, format!("cannot bind a loopback port: {e}"));
                return;
            }
        };
        let addr = listener.local_addr().ok();
        self.set_ready(&ready, addr);
        tracing::info!(function = %self.function, replica = %id, ?addr, "classic replica ready");
        let serving = watchdog::serve(listener, spec, self.logs.clone(), id, cancel.clone());
        tokio::pin!(serving);
        tokio::select! {
            () = &mut serving => {}
            () = cancel.cancelled() => {
                self.set_ready(&ready, None);
                // Let in-flight runs finish, within the grace period.
                let _ = tokio::time::timeout(self.config.stop_grace, serving).await;
            }
        }
        self.set_ready(&ready, None);
    }

    async fn supervise_http(
        &self,
        id: String,
        spec: Arc<RunSpec>,
        ready: Arc<Mutex<Option<SocketAddr>>>,
        cancel: CancellationToken,
    ) {
        let mut backoff = self.config.restart_backoff_min;
        while !cancel.is_cancelled() {
            let started = tokio::time::Instant::now();
            match self.run_http_once(&id, &spec, &ready, &cancel).await {
                Exit::Cancelled => break,
                Exit::Ended(how) => {
                    self.logs
                        .push(&id, format!("replica {how}; restarting in {backoff:?}"));
                    tracing::warn!(function = %self.function, replica = %id, %how, ?backoff, "replica exited");
                }
            }
            if started.elapsed() > self.config.restart_backoff_max {
                backoff = self.config.restart_backoff_min;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.restart_backoff_max);
        }
    }

    async fn run_http_once(
        &self,
        id: &str,
        spec: &RunSpec,
        ready: &Mutex<Option<SocketAddr>>,
        cancel: &CancellationToken,
    ) -> Exit {
        let port = match free_port().await {
            Ok(p) => p,
            Err(e) => return Exit::Ended(format!("found no free port: {e}")),
        };
        let env = [("PORT".to_owned(), port.to_string())];
        let cmd = sys::command(spec, &env);
        let mut child = match sys::spawn(cmd, &spec.argv[0], spec.workdir.as_deref()) {
            Ok(c) => c,
            Err(msg) => return Exit::Ended(msg),
        };
        self.capture_output(id, &mut child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let probe = async {
            let mut waited = Duration::ZERO;
            let step = Duration::from_millis(25);
            let mut warned = false;
            loop {
                if probe_http(addr, &spec.readiness_path).await {
                    return;
                }
                tokio::time::sleep(step).await;
                waited += step;
                if !warned && waited >= Duration::from_secs(30) {
                    warned = true;
                    self.logs.push(
                        id,
                        format!(
                            "not ready after 30s: nothing answers GET {} on port {port}",
                            spec.readiness_path
                        ),
                    );
                }
            }
        };
        tokio::select! {
            () = probe => {
                self.set_ready(ready, Some(addr));
                tracing::info!(function = %self.function, replica = %id, %addr, "http replica ready");
            }
            status = child.wait() => return Exit::Ended(describe_exit(status)),
            () = cancel.cancelled() => {
                self.terminate(&mut child).await;
                return Exit::Cancelled;
            }
        }
        let exit = tokio::select! {
            status = child.wait() => Exit::Ended(describe_exit(status)),
            () = cancel.cancelled() => Exit::Cancelled,
        };
        self.set_ready(ready, None);
        if matches!(exit, Exit::Cancelled) {
            self.terminate(&mut child).await;
        }
        exit
    }

    fn capture_output(&self, id: &str, child: &mut Child) {
        if let Some(out) = child.stdout.take() {
            let (logs, id) = (self.logs.clone(), id.to_owned());
            self.tracker
                .spawn(async move { pump_lines(out, |l| logs.push(&id, l)).await });
        }
        if let Some(err) = child.stderr.take() {
            let (logs, id) = (self.logs.clone(), id.to_owned());
            self.tracker
                .spawn(async move { pump_lines(err, |l| logs.push(&id, l)).await });
        }
    }

    /// SIGTERM to the replica's process group, SIGKILL if it is still there after the grace.
    async fn terminate(&self, child: &mut Child) {
        sys::signal_group(child, libc::SIGTERM);
        if tokio::time::timeout(self.config.stop_grace, child.wait())
            .await
            .is_err()
        {
            sys::signal_group(child, libc::SIGKILL);
            let _ = child.kill().await;
        }
    }
}

enum Exit {
    Cancelled,
    Ended(String),
}

/// Why no endpoint could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndpointError {
    ScaledToZero,
    NotReady,
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => format!("exited with {s}"),
        Err(e) => format!("could not be waited for: {e}"),
    }
}

async fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// One readiness probe: any HTTP answer below 500 within a second means ready.
async fn probe_http(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.ok()?;
        // Read the whole (small) answer: closing with unread data would reset the connection
        // under the function's feet.
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await.ok()?;
        // "HTTP/1.1 200 OK"
        let code: u16 = std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()?;
        Some(answer.starts_with(b"HTTP/") && code < 500)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}
