//! One function's replicas on this machine: starting, probing, restarting and stopping them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{CrashLoop, FunctionRef, ReadyReplica, ReadySet, ReplicaLoad, Replicas};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::logs::{LogBuffer, pump_lines};
use crate::restarts::Restarts;
use crate::secrets::{SECRETS_DIR_ENV, SecretFiles};
use crate::spec::{Mode, RunSpec};
use crate::{sys, watchdog};

/// Tunables shared by every function's runtime.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeConfig {
    /// This provider's run id, carried by every function process (see `sys::RUN_MARKER`).
    pub(crate) run_id: Arc<str>,
    pub(crate) stop_grace: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) restart_backoff_min: Duration,
    pub(crate) restart_backoff_max: Duration,
    /// Where replicas' secrets directories go (`None`: functions cannot name secrets).
    pub(crate) secrets_root: Option<std::path::PathBuf>,
}

/// A replica as the runtime tracks it.
#[derive(Debug, Clone)]
struct Replica {
    cancel: CancellationToken,
    /// Its base URL while it is ready.
    ready: Arc<Mutex<Option<Arc<str>>>>,
    /// Requests the activator sent it; drained before it is stopped.
    load: Arc<ReplicaLoad>,
    /// Set while it keeps exiting (HTTP mode), cleared when it becomes ready.
    crash: CrashSlot,
    /// The process group its process leads while one runs (HTTP mode); 0 when none does.
    group: Arc<AtomicI32>,
}

/// Clears a replica's recorded process group when its run ends, however it ends.
struct Recorded<'a>(&'a AtomicI32);

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Where a replica's supervisor reports it crash-looping.
type CrashSlot = Arc<Mutex<Option<Arc<CrashLoop>>>>;

/// How long the output of a run that ended may take to be read to its end (its pipes close
/// with it, unless a process it left behind holds them).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Replicas in rotation.
#[derive(Debug, Default)]
struct Rotation {
    /// The function's replicas at its current configuration: what counts and what scales.
    current: Vec<Replica>,
    /// Replicas of an earlier configuration, still serving until every current one is ready.
    outgoing: Vec<Replica>,
}

/// The live state of one deployed function.
#[derive(Debug)]
pub(crate) struct FunctionRuntime {
    function: FunctionRef,
    spec: Mutex<Arc<RunSpec>>,
    /// The function's replicas, current and outgoing.
    replicas: Mutex<Rotation>,
    /// Bumped whenever a replica becomes ready or stops being ready, or the set changes.
    changes: watch::Sender<u64>,
    pub(crate) logs: Arc<LogBuffer>,
    /// Cancelled when the provider shuts down: every replica stops at once.
    root: CancellationToken,
    /// Cancelled when the function is removed.
    removed: CancellationToken,
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
        root: CancellationToken,
        tracker: TaskTracker,
        config: RuntimeConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            function,
            spec: Mutex::new(Arc::new(spec)),
            replicas: Mutex::new(Rotation::default()),
            changes: watch::channel(0).0,
            logs,
            root,
            removed: CancellationToken::new(),
            tracker,
            config,
        })
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn counts(&self) -> Replicas {
        let rotation = lock(&self.replicas);
        let ready = rotation
            .current
            .iter()
            .filter(|r| lock(&r.ready).is_some())
            .count();
        Replicas {
            desired: u32::try_from(rotation.current.len()).unwrap_or(u32::MAX),
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
        }
    }

    /// Sets the replica count: starts new replicas, or takes the extra ones out of rotation and
    /// stops them once their in-flight requests are done. The ones taken out are those not ready
    /// yet, then the least busy.
    pub(crate) fn scale(self: &Arc<Self>, count: u32) {
        let spec = lock(&self.spec).clone();
        let count = count as usize;
        let extra: Vec<Replica> = {
            let mut rotation = lock(&self.replicas);
            while rotation.current.len() < count {
                let replica = self.start_replica(spec.clone());
                rotation.current.push(replica);
            }
            let surplus = rotation.current.len().saturating_sub(count);
            let mut order: Vec<usize> = (0..rotation.current.len()).collect();
            order.sort_by_key(|&i| {
                let r = &rotation.current[i];
                (lock(&r.ready).is_some(), r.load.in_flight())
            });
            let mut leaving: Vec<usize> = order.into_iter().take(surplus).collect();
            leaving.sort_unstable_by(|a, b| b.cmp(a));
            leaving
                .into_iter()
                .map(|i| rotation.current.remove(i))
                .collect()
        };
        self.bump();
        for r in extra {
            self.retire(r);
        }
    }

    /// Whether the replicas run exactly `spec`.
    pub(crate) fn runs(&self, spec: &RunSpec) -> bool {
        **lock(&self.spec) == *spec
    }

    /// Replaces the function's configuration. New replicas start beside the old ones; the old
    /// ones leave rotation once every new one is ready, and stop once drained.
    pub(crate) fn replace(self: &Arc<Self>, spec: RunSpec, count: u32) {
        let spec = Arc::new(spec);
        *lock(&self.spec) = spec.clone();
        {
            let mut rotation = lock(&self.replicas);
            let fresh: Vec<Replica> = (0..count)
                .map(|_| self.start_replica(spec.clone()))
                .collect();
            let old = std::mem::replace(&mut rotation.current, fresh);
            rotation.outgoing.extend(old);
        }
        self.bump();
        self.retire_outgoing_when_ready();
    }

    /// Once every current replica is ready (or there are none), retires the outgoing ones.
    fn retire_outgoing_when_ready(self: &Arc<Self>) {
        let rt = self.clone();
        self.tracker.spawn(async move {
            let mut changes = rt.changes.subscribe();
            loop {
                // Mark the state seen before looking at it, so a change after the look wakes us.
                changes.borrow_and_update();
                let retiring: Option<Vec<Replica>> = {
                    let mut rotation = lock(&rt.replicas);
                    let settled = rotation.current.iter().all(|r| lock(&r.ready).is_some());
                    (settled || rt.removed.is_cancelled())
                        .then(|| rotation.outgoing.drain(..).collect())
                };
                if let Some(retiring) = retiring {
                    if !retiring.is_empty() {
                        rt.bump();
                    }
                    for r in retiring {
                        rt.retire(r);
                    }
                    return;
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    () = rt.root.cancelled() => return,
                    () = rt.removed.cancelled() => {}
                }
            }
        });
    }

    /// Takes every replica out of rotation and stops each once drained.
    pub(crate) fn stop(self: &Arc<Self>) {
        self.removed.cancel();
        let all: Vec<Replica> = {
            let mut rotation = lock(&self.replicas);
            let mut all: Vec<Replica> = rotation.current.drain(..).collect();
            all.append(&mut rotation.outgoing);
            all
        };
        self.bump();
        for r in all {
            self.retire(r);
        }
    }

    /// Stops a replica that is already out of rotation, once its in-flight requests are done
    /// (at most the drain timeout; at once if the provider is shutting down).
    fn retire(&self, replica: Replica) {
        replica.load.close();
        let (drain, root) = (self.config.drain_timeout, self.root.clone());
        self.tracker.spawn(async move {
            tokio::select! {
                () = replica.load.drained() => {}
                _ = tokio::time::sleep(drain) => {}
                () = root.cancelled() => {}
            }
            replica.cancel.cancel();
        });
    }

    /// The replicas ready for traffic, current and outgoing; `None` once the function is removed.
    pub(crate) fn ready_set(&self) -> Option<ReadySet> {
        if self.removed.is_cancelled() {
            return None;
        }
        let rotation = lock(&self.replicas);
        let ready = rotation
            .current
            .iter()
            .chain(&rotation.outgoing)
            .filter_map(|r| {
                lock(&r.ready).clone().map(|url| ReadyReplica {
                    url,
                    load: r.load.clone(),
                })
            })
            .collect();
        Some(ReadySet {
            desired: u32::try_from(rotation.current.len()).unwrap_or(u32::MAX),
            ready,
            crash_loop: crash_loop(&rotation),
        })
    }

    /// Why the function's current replicas keep exiting, while one does.
    pub(crate) fn crash_loop(&self) -> Option<Arc<CrashLoop>> {
        crash_loop(&lock(&self.replicas))
    }

    /// The process groups of the replicas in rotation whose process runs now, or `None` for a
    /// classic-mode function (its processes are runs of one request each: not measured).
    pub(crate) fn process_groups(&self) -> Option<Vec<i32>> {
        if lock(&self.spec).mode != Mode::Http {
            return None;
        }
        let rotation = lock(&self.replicas);
        Some(
            rotation
                .current
                .iter()
                .chain(&rotation.outgoing)
                .map(|r| r.group.load(Ordering::Acquire))
                .filter(|&g| g > 0)
                .collect(),
        )
    }

    /// Bumped whenever the ready set may have changed.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn start_replica(self: &Arc<Self>, spec: Arc<RunSpec>) -> Replica {
        let cancel = self.root.child_token();
        let ready = Arc::new(Mutex::new(None));
        let crash = CrashSlot::default();
        let group = Arc::new(AtomicI32::new(0));
        let id = format!(
            "{}-{}",
            self.function.name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let rt = self.clone();
        let (task_cancel, task_ready, task_crash, task_group) =
            (cancel.clone(), ready.clone(), crash.clone(), group.clone());
        self.tracker.spawn(async move {
            // Kept until the replica has stopped: then its secrets directory goes.
            let (spec, _secrets) = match rt.secret_files(&id, spec) {
                Ok(with_files) => with_files,
                Err(msg) => {
                    rt.logs.push(&id, msg.clone());
                    tracing::error!(function = %rt.function, replica = %id, error = %msg, "replica not started");
                    return;
                }
            };
            match spec.mode {
                Mode::Classic => rt.run_classic(id, spec, task_ready, task_cancel).await,
                Mode::Http => {
                    rt.supervise_http(id, spec, task_ready, task_crash, task_group, task_cancel)
                        .await
                }
            }
        });
        Replica {
            cancel,
            ready,
            load: Arc::default(),
            crash,
            group,
        }
    }

    /// Writes the replica's secrets, if the function names any, and gives its process their
    /// directory.
    fn secret_files(
        &self,
        replica: &str,
        spec: Arc<RunSpec>,
    ) -> Result<(Arc<RunSpec>, Option<SecretFiles>), String> {
        if spec.secrets.is_empty() {
            return Ok((spec, None));
        }
        let root = self
            .config
            .secrets_root
            .as_deref()
            .ok_or("this provider has no directory for secrets (no run dir)")?;
        let dir = format!("{}.{replica}", self.function.namespace);
        let files = SecretFiles::write(root, &dir, &spec.secrets).map_err(|e| {
            format!(
                "cannot write the replica's secrets under {}: {e}",
                root.display()
            )
        })?;
        let mut with_dir = (*spec).clone();
        with_dir.env.insert(
            SECRETS_DIR_ENV.to_owned(),
            files.dir().to_string_lossy().into_owned(),
        );
        Ok((Arc::new(with_dir), Some(files)))
    }

    fn set_ready(&self, slot: &Mutex<Option<Arc<str>>>, addr: Option<SocketAddr>) {
        *lock(slot) = addr.map(|a| Arc::from(format!("http://{a}")));
        self.bump();
    }

    async fn run_classic(
        &self,
        id: String,
        spec: Arc<RunSpec>,
        ready: Arc<Mutex<Option<Arc<str>>>>,
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
        let serving = watchdog::serve(
            listener,
            spec,
            self.logs.clone(),
            id,
            self.config.run_id.clone(),
            cancel.clone(),
        );
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

    /// Runs an HTTP-mode replica's process, restarting it with backoff whenever it ends, and
    /// reports the replica crash-looping while its runs keep ending too soon
    /// ([`Restarts`]); a run that becomes ready clears that.
    async fn supervise_http(
        &self,
        id: String,
        spec: Arc<RunSpec>,
        ready: Arc<Mutex<Option<Arc<str>>>>,
        crash: CrashSlot,
        group: Arc<AtomicI32>,
        cancel: CancellationToken,
    ) {
        let mut restarts = Restarts::new(
            self.config.restart_backoff_min,
            self.config.restart_backoff_max,
        );
        while !cancel.is_cancelled() {
            let started = tokio::time::Instant::now();
            let (how, output) = match self
                .run_http_once(&id, &spec, &ready, &crash, &group, &cancel)
                .await
            {
                Exit::Cancelled => break,
                Exit::Ended { how, output } => (how, output),
            };
            let next = restarts.ended(started.elapsed());
            let backoff = next.delay;
            self.logs
                .push(&id, format!("replica {how}; restarting in {backoff:?}"));
            tracing::warn!(function = %self.function, replica = %id, %how, ?backoff, "replica exited");
            if next.crash_looping {
                let crash_loop = CrashLoop::new(how, next.short_runs, output);
                tracing::warn!(function = %self.function, replica = %id, %crash_loop, "replica crash-looping");
                *lock(&crash) = Some(Arc::new(crash_loop));
                self.bump();
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    async fn run_http_once(
        &self,
        id: &str,
        spec: &RunSpec,
        ready: &Mutex<Option<Arc<str>>>,
        crash: &Mutex<Option<Arc<CrashLoop>>>,
        group: &AtomicI32,
        cancel: &CancellationToken,
    ) -> Exit {
        let port = match free_port().await {
            Ok(p) => p,
            Err(e) => return Exit::early(format!("found no free port: {e}")),
        };
        let replica_marker = format!("{}={id}", sys::REPLICA_MARKER);
        let env = [
            ("PORT".to_owned(), port.to_string()),
            (sys::RUN_MARKER.to_owned(), self.config.run_id.to_string()),
            (sys::REPLICA_MARKER.to_owned(), id.to_owned()),
        ];
        let cmd = sys::command(spec, &env, sys::Lifetime::DiesWithSluice);
        let mut child = match sys::spawn(cmd, &spec.argv[0], spec.workdir.as_deref()) {
            Ok(c) => c,
            Err(msg) => return Exit::early(msg),
        };
        // The child leads its own process group: its id is the group's.
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        group.store(pid, Ordering::Release);
        let _recorded = Recorded(group);
        if let Err(msg) = sys::limit_memory(&child, spec) {
            self.terminate(&mut child).await;
            return Exit::early(msg);
        }
        let output = self.capture_output(id, &mut child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let probe = wait_ready(addr, &spec.readiness_path, |msg| self.logs.push(id, msg));
        tokio::select! {
            () = probe => {
                // Another process may have taken the port between our check and the child's
                // bind; then the probe reached it, not our replica. Start over on a new port.
                match sys::listens_marked(port, &replica_marker) {
                    Some(true) => {}
                    Some(false) => {
                        self.terminate(&mut child).await;
                        return Exit::early(format!("found port {port} taken by another process"));
                    }
                    None => tracing::warn!(
                        function = %self.function, replica = %id, port,
                        "cannot tell who listens on the replica's port (no permission); trusting the probe"
                    ),
                }
                *lock(crash) = None;
                self.set_ready(ready, Some(addr));
                tracing::info!(function = %self.function, replica = %id, %addr, "http replica ready");
            }
            status = child.wait() => return output.ended(describe_exit(status)).await,
            () = cancel.cancelled() => {
                self.terminate(&mut child).await;
                return Exit::Cancelled;
            }
        }
        let status = tokio::select! {
            status = child.wait() => Some(status),
            () = cancel.cancelled() => None,
        };
        self.set_ready(ready, None);
        match status {
            Some(status) => output.ended(describe_exit(status)).await,
            None => {
                self.terminate(&mut child).await;
                Exit::Cancelled
            }
        }
    }

    /// Sends the child's stdout and stderr, line by line, to the function's logs, keeping the
    /// run's last few lines for a crash-loop report.
    fn capture_output(&self, id: &str, child: &mut Child) -> RunOutput {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(CrashLoop::MAX_LINES)));
        let mut pumps = Vec::with_capacity(2);
        let streams: [Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>; 2] = [
            child.stdout.take().map(|o| Box::new(o) as _),
            child.stderr.take().map(|e| Box::new(e) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let (logs, id, tail) = (self.logs.clone(), id.to_owned(), tail.clone());
            pumps.push(self.tracker.spawn(async move {
                pump_lines(stream, |l| {
                    {
                        let mut tail = lock(&tail);
                        if tail.len() == CrashLoop::MAX_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(l.clone());
                    }
                    logs.push(&id, l);
                })
                .await;
            }));
        }
        RunOutput { tail, pumps }
    }

    async fn terminate(&self, child: &mut Child) {
        terminate(child, self.config.stop_grace).await;
    }
}

/// SIGTERM to a long-running function's process group, SIGKILL if it is still there after
/// `grace`.
pub(crate) async fn terminate(child: &mut Child, grace: Duration) {
    sys::signal_group(child, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        sys::signal_group(child, libc::SIGKILL);
        let _ = child.kill().await;
    }
}

enum Exit {
    Cancelled,
    /// The run ended: how, and its last lines of output.
    Ended {
        how: String,
        output: Vec<String>,
    },
}

impl Exit {
    /// A run that ended before its process wrote anything (or started at all).
    fn early(how: String) -> Self {
        Self::Ended {
            how,
            output: Vec::new(),
        }
    }
}

/// The output of one run being read.
struct RunOutput {
    /// Its last lines, at most [`CrashLoop::MAX_LINES`].
    tail: Arc<Mutex<VecDeque<String>>>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl RunOutput {
    /// The run ended `how`: its last lines, once its output has been read to its end (within
    /// [`OUTPUT_GRACE`]).
    async fn ended(self, how: String) -> Exit {
        let _ =
            tokio::time::timeout(OUTPUT_GRACE, futures_util::future::join_all(self.pumps)).await;
        let output = lock(&self.tail).drain(..).collect();
        Exit::Ended { how, output }
    }
}

/// The first current replica found crash-looping, if any.
fn crash_loop(rotation: &Rotation) -> Option<Arc<CrashLoop>> {
    rotation.current.iter().find_map(|r| lock(&r.crash).clone())
}

/// How a function's process ended, in the words a person reads: `exited with status 3`,
/// `killed by signal 9`.
pub(crate) fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) if s.core_dumped() => {
                format!("killed by signal {signal} (core dumped)")
            }
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => format!("ended: {s}"),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

/// A loopback port free a moment ago, for a long-running function to listen on.
pub(crate) async fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// Returns once a long-running function answers `GET path` on `addr` (see [`probe_http`]);
/// says so through `warn`, once, if that takes more than 30 seconds.
pub(crate) async fn wait_ready(addr: SocketAddr, path: &str, mut warn: impl FnMut(String)) {
    let mut waited = Duration::ZERO;
    let mut warned = false;
    loop {
        if probe_http(addr, path).await {
            return;
        }
        // Often at first, when a request may be waiting on this cold start; less so for a
        // function that is slow to come up.
        let step = if waited < Duration::from_secs(2) {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(50)
        };
        tokio::time::sleep(step).await;
        waited += step;
        if !warned && waited >= Duration::from_secs(30) {
            warned = true;
            warn(format!(
                "not ready after 30s: nothing answers GET {path} on port {}",
                addr.port()
            ));
        }
    }
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
