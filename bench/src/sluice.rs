//! Starting Sluice in each form on loopback, and talking to its API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The admin password every Sluice the benchmark starts is given.
const ADMIN_PASSWORD: &str = "sluice-bench-admin";

/// Shared by the cluster form's gateway and queue worker.
const INTERNAL_TOKEN: &str = "sluice-bench-internal-token";

/// A running `sluice` process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    /// Where it listens (`http://127.0.0.1:port`); empty for a queue worker.
    pub url: String,
}

impl Process {
    /// Runs `sluice <args>` with its log in `log`; returns once it says it is running.
    pub(crate) fn start(sluice: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let log_file = std::fs::File::create(log)?;
        let mut child = Command::new(sluice)
            .args(args)
            .env("SLUICE_ADMIN_USER", "admin")
            .env("SLUICE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("SLUICE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", sluice.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let first = first.trim();
        let url = match first.strip_prefix("sluice listening on ") {
            Some(url) => url.to_owned(),
            None if first == "sluice queue worker running" => String::new(),
            None => bail!(
                "sluice {} did not start (it said {first:?}); see {}",
                args.first().map_or("", String::as_str),
                log.display()
            ),
        };
        Ok(Self { child, url })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its address, for the load generator.
    pub(crate) fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self
            .url
            .strip_prefix("http://")
            .context("a gateway URL")?
            .parse()?)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        // It stops its functions' processes first; a stuck one is killed after a while.
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Samples the highest resident memory of `pids` (added up) until dropped.
#[derive(Debug)]
pub(crate) struct PeakRss {
    peak: std::sync::Arc<std::sync::Mutex<f64>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    pub(crate) fn watch(pids: Vec<u32>) -> Self {
        let peak = std::sync::Arc::new(std::sync::Mutex::new(0.0_f64));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let now: f64 = pids.iter().map(|&p| rss_mib(p)).sum();
                {
                    let mut peak = seen.lock().expect("not poisoned");
                    *peak = peak.max(now);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { peak, task }
    }

    pub(crate) fn peak(&self) -> f64 {
        *self.peak.lock().expect("not poisoned")
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sluice's HTTP API, as the admin.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub url: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(url: &str) -> Self {
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Basic {token}").parse().expect("a valid header"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .no_proxy()
            .build()
            .expect("a client with static settings");
        Self {
            url: url.to_owned(),
            http,
        }
    }

    pub(crate) async fn deploy(&self, deployment: &Value) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/system/functions", self.url))
            .json(deployment)
            .send()
            .await?;
        if r.status() != 202 {
            bail!("deploy answered {}: {}", r.status(), r.text().await?);
        }
        Ok(())
    }

    pub(crate) async fn scale(&self, function: &str, replicas: u32) -> anyhow::Result<()> {
        let r = self
            .http
            .post(format!("{}/system/scale-function/{function}", self.url))
            .json(&json!({ "serviceName": function, "replicas": replicas }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "scaling {function} answered {}: {}",
                r.status(),
                r.text().await?
            );
        }
        Ok(())
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.http.get(format!("{}{path}", self.url)).send().await?;
        if !r.status().is_success() {
            bail!("GET {path} answered {}", r.status());
        }
        Ok(r.json().await?)
    }

    pub(crate) async fn text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// Waits until `function` has `ready` ready replicas (and wants as many).
    pub(crate) async fn wait_ready(&self, function: &str, ready: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(f) = self.get(&format!("/system/function/{function}")).await
                && f["availableReplicas"].as_u64() == Some(ready)
                && f["replicas"].as_u64() == Some(ready)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{function} did not get to {ready} ready replicas within a minute");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A deployment of the benchmark's echo function (this program, `sluice-bench echo`), in HTTP
/// mode, with these labels.
pub(crate) fn echo_function(name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Value> {
    let me = std::env::current_exe()?;
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    Ok(json!({
        "service": name,
        "image": "sluice/bench-echo:latest",
        "envProcess": format!("{} echo", me.display()),
        "envVars": { "mode": "http" },
        "labels": labels,
    }))
}

/// A classic-mode function: `command` forked per request.
pub(crate) fn classic_function(name: &str, command: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    json!({
        "service": name,
        "image": format!("sluice/{name}:latest"),
        "envProcess": command,
        "labels": labels,
    })
}

/// `sluice up` on a free port with its data in `dir`.
pub(crate) fn up(sluice: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Process> {
    let mut args: Vec<String> = ["up", "--listen", "127.0.0.1:0", "--data-dir"]
        .map(String::from)
        .into();
    args.push(dir.join("data").display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Process::start(sluice, &args, &dir.join("up.log"))
}

/// The cluster form on one machine: `sluice gateway` and `sluice queue-worker` on Postgres
/// (`database`) and JetStream (`nats`).
pub(crate) fn cluster(
    sluice: &Path,
    dir: &Path,
    database: &str,
    nats: &str,
) -> anyhow::Result<(Process, Process)> {
    let backends = ["--database-url", database, "--nats", nats].map(String::from);
    let mut args: Vec<String> = [
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--internal-token",
        INTERNAL_TOKEN,
        "--callback-allow-private",
        "--data-dir",
    ]
    .map(String::from)
    .into();
    args.push(dir.join("gateway").display().to_string());
    args.extend(backends.clone());
    let gateway = Process::start(sluice, &args, &dir.join("gateway.log"))?;
    let mut args: Vec<String> = [
        "queue-worker",
        "--gateway-url",
        &gateway.url,
        "--internal-token",
        INTERNAL_TOKEN,
        "--callback-allow-private",
    ]
    .map(String::from)
    .into();
    args.extend(backends);
    let worker = Process::start(sluice, &args, &dir.join("worker.log"))?;
    Ok((gateway, worker))
}

/// The `sluice` binary: `--sluice`, else the one built beside this program (built now, in the
/// same profile, so it is never stale).
pub(crate) fn binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let me = std::env::current_exe()?;
    let dir = me.parent().context("this program's directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "sluice-cli", "--bin", "sluice"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build
        .status()
        .context("running cargo build for the sluice binary")?;
    if !status.success() {
        bail!("cargo build -p sluice-cli failed");
    }
    let sluice = dir.join("sluice");
    if !sluice.is_file() {
        bail!(
            "{} is missing after the build; pass --sluice <path>",
            sluice.display()
        );
    }
    Ok(sluice)
}

/// Bytes in the files under `dir`.
pub(crate) fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
