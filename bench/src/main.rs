//! `sluice-bench`: starts Sluice in each form on loopback (with its own `nats-server` and a fresh
//! Postgres database for the cluster form), drives load at it and at a baseline in the same run,
//! and writes the table of figures, baselines and ratios into `BENCHMARKS.md`.
//!
//! ```sh
//! cargo run --release -p sluice-bench -- all --write BENCHMARKS.md
//! cargo run -p sluice-bench -- --quick all     # proves it still works; figures mean nothing
//! ```

mod load;
mod report;
mod servers;
mod sluice;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::StatusCode;
use tokio::time::Instant;

use crate::load::{Shot, Until};
use crate::report::Report;
use crate::sluice::{Api, PeakRss};

/// Sluice's benchmark.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench")]
struct Args {
    /// What to measure.
    #[arg(value_enum, required = true)]
    what: Vec<What>,
    /// A short run with small numbers: proves the benchmark works (CI runs it); its figures
    /// mean nothing.
    #[arg(long)]
    quick: bool,
    /// The `sluice` binary to measure [default: built now, beside this program].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Writes the table into this file (between its markers) as well as to standard output.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Keep-alive connections the load comes over.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Async calls sent for each end-to-end figure [default: 20000; quick: 300].
    #[arg(long)]
    calls: Option<u64>,
    /// Calls queued for the backlog figure [default: 1000000; quick: 1000].
    #[arg(long)]
    backlog: Option<u64>,
    /// Functions deployed for each scale figure [default: 2000 and 10000; quick: 100].
    #[arg(long = "functions")]
    functions: Vec<usize>,
    /// Requests to a function at zero [default: 30; quick: 2].
    #[arg(long)]
    cold_samples: Option<usize>,
    /// An argument added to every `sluice up` the benchmark starts (repeat for more), to
    /// measure a setting: `--up-arg=--worker-concurrency --up-arg=128`.
    #[arg(long = "up-arg", allow_hyphen_values = true)]
    up_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    /// Everything below.
    All,
    /// Async submissions and end to end with callbacks, `sluice up` (SQLite).
    AsyncUp,
    /// The same on Postgres + JetStream, beside raw JetStream publishes.
    AsyncCluster,
    /// `/function/<name>` beside the function called directly.
    Sync,
    /// Classic mode (`cat` per request) beside a server that only spawns `cat` per request.
    Classic,
    /// Requests to a function at zero replicas.
    Cold,
    /// Many functions at zero replicas.
    Scale,
    /// A deep queue of calls.
    Backlog,
    /// (Internal) the echo function Sluice runs during the benchmark.
    #[value(hide = true)]
    Echo,
    /// (Internal) a bare proxy to `$UPSTREAM`: the least any gateway in the way costs.
    #[value(hide = true)]
    Proxy,
}

/// How much of everything a run does.
#[derive(Debug)]
struct Settings {
    sluice: PathBuf,
    connections: usize,
    /// How long each timed load lasts.
    duration: Duration,
    body: Bytes,
    /// Calls sent for an end-to-end figure.
    calls: u64,
    cold_samples: usize,
    function_counts: Vec<usize>,
    backlog: u64,
    /// Added to every `sluice up`'s arguments.
    up_args: Vec<String>,
}

impl Settings {
    /// `sluice up`'s arguments for a figure: its own, then the ones given with `--up-arg`.
    fn up_args<'a>(&'a self, own: &[&'a str]) -> Vec<&'a str> {
        own.iter()
            .copied()
            .chain(self.up_args.iter().map(String::as_str))
            .collect()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.what.contains(&What::Echo) {
        return runtime.block_on(servers::echo());
    }
    if args.what.contains(&What::Proxy) {
        return runtime.block_on(servers::proxy());
    }
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let quick = args.quick;
    let settings = Settings {
        sluice: sluice::binary(args.sluice.clone())?,
        connections: args.connections,
        duration: if quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        },
        body: Bytes::from(vec![b'x'; 128]),
        calls: args.calls.unwrap_or(if quick { 300 } else { 20_000 }),
        cold_samples: args
            .cold_samples
            .unwrap_or(if quick { 2 } else { 30 })
            .max(1),
        function_counts: match (&args.functions[..], quick) {
            ([], true) => vec![100],
            ([], false) => vec![2_000, 10_000],
            (given, _) => given.to_vec(),
        },
        backlog: args
            .backlog
            .unwrap_or(if quick { 1_000 } else { 1_000_000 }),
        up_args: args.up_args.clone(),
    };
    let all = args.what.contains(&What::All);
    let wants = |w: What| all || args.what.contains(&w);
    let mut report = Report::default();
    let memory = Memory::default();
    if wants(What::AsyncUp) {
        eprintln!("async, sluice up");
        async_up(&settings, &mut report, &memory).await?;
    }
    if wants(What::AsyncCluster) {
        eprintln!("async, Postgres + JetStream");
        async_cluster(&settings, &mut report).await?;
    }
    if wants(What::Sync) {
        eprintln!("sync");
        sync(&settings, &mut report, &memory).await?;
    }
    if wants(What::Classic) {
        eprintln!("classic");
        classic(&settings, &mut report, &memory).await?;
    }
    if wants(What::Cold) {
        eprintln!("cold start");
        cold(&settings, &mut report).await?;
    }
    memory.report(&mut report);
    if wants(What::Scale) {
        for &n in &settings.function_counts {
            eprintln!("{n} functions at zero");
            scale(&settings, &mut report, n).await?;
        }
    }
    if wants(What::Backlog) {
        eprintln!("{} queued calls", settings.backlog);
        backlog(&settings, &mut report).await?;
    }
    let mut command = String::from("cargo run --release -p sluice-bench --");
    for arg in std::env::args().skip(1) {
        command.push(' ');
        command.push_str(&arg);
    }
    let setup = format!(
        "Load: {} keep-alive connections from an async Rust client in the same program, each \
         sending its next request when the last is answered; {} s per timed figure, \
         {}-byte bodies; the function is this program's own echo server in HTTP mode, one \
         replica. Latencies are from send to the last byte of the answer.",
        settings.connections,
        settings.duration.as_secs(),
        settings.body.len()
    );
    let table = report.markdown(&command, &setup);
    println!("{table}");
    if let Some(path) = &args.write {
        report::write_into(path, &table)?;
    }
    Ok(())
}

/// `sluice up`'s memory: idle, and the most it took under each load.
#[derive(Debug, Default)]
struct Memory(std::sync::Mutex<Vec<(String, f64)>>);

impl Memory {
    fn note(&self, what: &str, mib: f64) {
        self.0
            .lock()
            .expect("not poisoned")
            .push((what.to_owned(), mib));
    }

    fn report(&self, report: &mut Report) {
        for (what, mib) in self.0.lock().expect("not poisoned").iter() {
            let target = if what.starts_with("idle") {
                "≤ 20 MB"
            } else {
                "≤ 60 MB"
            };
            report.row(
                format!("`sluice up` RSS, {what}"),
                format!("{mib:.1} MiB"),
                "—",
                "—",
                target,
            );
        }
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}

/// `12.3k` or `870`.
fn count(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn per_s(v: f64) -> String {
    format!("{}/s", count(v))
}

/// `12.3k/s, p50 1.20 ms, p99 4.00 ms` (and what went wrong, if anything).
fn summary(o: &load::Outcome) -> String {
    let mut s = format!(
        "{}, p50 {}, p99 {}",
        per_s(o.rate()),
        ms(o.percentile_ms(50.0)),
        ms(o.percentile_ms(99.0))
    );
    let problems = o.problems();
    if !problems.is_empty() {
        s.push_str(&format!(" ({problems})"));
    }
    s
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b.max(1e-9))
}

/// The echo function at one replica, ready.
async fn deploy_echo(api: &Api, name: &str) -> anyhow::Result<()> {
    let one = [
        ("com.openfaas.scale.min", "1"),
        ("com.openfaas.scale.max", "1"),
    ];
    api.deploy(&sluice::echo_function(name, &one)?).await?;
    api.wait_ready(name, 1).await
}

async fn async_up(s: &Settings, report: &mut Report, memory: &Memory) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = sluice::up(
        &s.sluice,
        dir.path(),
        &s.up_args(&["--shutdown-grace", "1s"]),
    )?;
    let api = Api::new(&up.url);
    deploy_echo(&api, "echo").await?;
    memory.note(
        "idle, the echo function deployed",
        sluice::rss_mib(up.pid()),
    );
    let peak = PeakRss::watch(vec![up.pid()]);
    let (rate, lost) = end_to_end(s, up.addr()?).await?;
    report.row(
        "async end to end with callbacks, `sluice up`",
        format!("{} calls/s, {lost} lost", count(rate)),
        "—",
        "—",
        "≥ 5k/s, 0 lost",
    );
    memory.note("async end to end (peak)", peak.peak());
    let peak = PeakRss::watch(vec![up.pid()]);
    let submitted = submissions(s, up.addr()?, "echo").await?;
    report.row(
        "async submissions (202/s), `sluice up`",
        summary(&submitted),
        "—",
        "—",
        "≥ 10k/s",
    );
    memory.note("async submissions (peak)", peak.peak());
    Ok(())
}

/// As many async submissions to `function` as the gateway takes in the run's time.
async fn submissions(
    s: &Settings,
    addr: std::net::SocketAddr,
    function: &str,
) -> anyhow::Result<load::Outcome> {
    let path = format!("/async-function/{function}");
    let shot = Shot::post(path, s.body.clone(), StatusCode::ACCEPTED);
    load::run(addr, s.connections, shot, Until::Elapsed(s.duration)).await
}

/// Sends `s.calls` async calls with callbacks; returns calls per second from the first
/// submission to the last callback, and how many never called back.
async fn end_to_end(s: &Settings, addr: std::net::SocketAddr) -> anyhow::Result<(f64, u64)> {
    let (callbacks, url) = servers::Callbacks::start().await?;
    let started = Instant::now();
    let shot = Shot::post("/async-function/echo", s.body.clone(), StatusCode::ACCEPTED)
        .header("x-callback-url", &url);
    let sent = load::run(addr, s.connections, shot, Until::Sent(s.calls)).await?;
    if sent.ok != s.calls {
        bail!(
            "only {} of {} submissions were accepted ({})",
            sent.ok,
            s.calls,
            sent.problems()
        );
    }
    let arrived = callbacks
        .wait_for(s.calls as usize, Duration::from_secs(30))
        .await;
    let elapsed = started.elapsed();
    Ok((
        arrived as f64 / elapsed.as_secs_f64(),
        s.calls - arrived as u64,
    ))
}

async fn async_cluster(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let nats = sluice_testkit::NatsServer::start();
    let database = sluice_testkit::FreshDatabase::create().await;
    let dir = tempfile::tempdir()?;
    let (gateway, worker) = sluice::cluster(&s.sluice, dir.path(), &database.url, &nats.url())?;
    let api = Api::new(&gateway.url);
    deploy_echo(&api, "echo").await?;
    let (rate, lost) = end_to_end(s, gateway.addr()?).await?;
    report.row(
        "async end to end with callbacks, Postgres + JetStream",
        format!("{} calls/s, {lost} lost", count(rate)),
        "—",
        "—",
        "≥ 5k/s, 0 lost",
    );
    // To a queue no worker takes from: what the gateway takes, as the baseline measures what
    // JetStream takes, with no worker running calls beside it.
    let mut parked = sluice::echo_function("parked", &[])?;
    parked["annotations"] = serde_json::json!({ "com.openfaas.queue": "bench-parked" });
    api.deploy(&parked).await?;
    let submitted = submissions(s, gateway.addr()?, "parked").await?;
    let raw = raw_jetstream(s, &nats.url()).await?;
    report.row(
        "async submissions (202/s), Postgres + JetStream, to a queue no worker takes from",
        summary(&submitted),
        format!("raw JetStream publish + ack: {}", summary(&raw)),
        ratio(submitted.rate(), raw.rate()),
        "≥ 0.5× raw, ≥ 20k/s",
    );
    drop((worker, gateway));
    Ok(())
}

/// JetStream alone: publishes of the same body at the same concurrency to a file-backed
/// work-queue stream, each waiting for its ack.
async fn raw_jetstream(s: &Settings, url: &str) -> anyhow::Result<load::Outcome> {
    use async_nats::jetstream::{self, stream};
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    let deadline = started + s.duration;
    let mut tasks = Vec::new();
    for _ in 0..s.connections {
        let (js, body) = (js.clone(), s.body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                js.publish("bench.raw", body.clone()).await?.await?;
                latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(load::Outcome::from_latencies(latencies, started.elapsed()))
}

async fn sync(s: &Settings, report: &mut Report, memory: &Memory) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = sluice::up(&s.sluice, dir.path(), &s.up_args(&[]))?;
    let api = Api::new(&up.url);
    deploy_echo(&api, "echo").await?;
    let direct = DirectEcho::start().await?;
    let shot = Shot::post("/", s.body.clone(), StatusCode::OK);
    let alone = load::run(direct.addr, s.connections, shot, Until::Elapsed(s.duration)).await?;
    let bare = DirectEcho::proxy_to(direct.addr).await?;
    let shot = Shot::post("/", s.body.clone(), StatusCode::OK);
    let proxied = load::run(bare.addr, s.connections, shot, Until::Elapsed(s.duration)).await?;
    drop(bare);
    let peak = PeakRss::watch(vec![up.pid()]);
    let shot = Shot::post("/function/echo", s.body.clone(), StatusCode::OK);
    let through = load::run(up.addr()?, s.connections, shot, Until::Elapsed(s.duration)).await?;
    memory.note("sync (peak)", peak.peak());
    report.row(
        "sync `/function/<name>`",
        summary(&through),
        format!("the echo called directly: {}", summary(&alone)),
        ratio(through.rate(), alone.rate()),
        "≥ 0.45×",
    );
    report.row(
        "sync `/function/<name>`, beside a bare proxy",
        summary(&through),
        format!(
            "a bare proxy (hyper, nothing else) in front of the echo: {}",
            summary(&proxied)
        ),
        ratio(through.rate(), proxied.rate()),
        "—",
    );
    report.row(
        "sync, latency the gateway adds",
        added_latency(&through, &alone),
        "—",
        "—",
        "p50 ≤ +0.5 ms, p99 ≤ +2 ms",
    );
    report.row(
        "sync, latency a bare proxy adds",
        added_latency(&proxied, &alone),
        "—",
        "—",
        "—",
    );
    Ok(())
}

/// How much later than `alone` the answers of `through` came, at the median and the 99th
/// percentile.
fn added_latency(through: &load::Outcome, alone: &load::Outcome) -> String {
    format!(
        "p50 +{}, p99 +{}",
        ms(through.percentile_ms(50.0) - alone.percentile_ms(50.0)),
        ms(through.percentile_ms(99.0) - alone.percentile_ms(99.0))
    )
}

/// This program's echo server as its own process on a free port: the function without Sluice.
/// Also the bare proxy in front of it (`sluice-bench proxy`).
#[derive(Debug)]
struct DirectEcho {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl DirectEcho {
    /// Starts it and waits until it answers; also returns how long that took.
    async fn start() -> anyhow::Result<Self> {
        Ok(Self::start_timed().await?.0)
    }

    async fn start_timed() -> anyhow::Result<(Self, Duration)> {
        Self::spawn("echo", &[]).await
    }

    /// A bare proxy to `upstream`, on a free port of its own.
    async fn proxy_to(upstream: std::net::SocketAddr) -> anyhow::Result<Self> {
        Ok(Self::spawn("proxy", &[("UPSTREAM", upstream.to_string())])
            .await?
            .0)
    }

    /// This program run as `what`, on a free port, once it answers.
    async fn spawn(what: &str, env: &[(&str, String)]) -> anyhow::Result<(Self, Duration)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg(what)
            .env("PORT", port.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true)
            .spawn()?;
        let deadline = started + Duration::from_secs(10);
        loop {
            if answers(addr).await {
                return Ok((Self { child, addr }, started.elapsed()));
            }
            if Instant::now() > deadline {
                bail!("`sluice-bench {what}` did not answer on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for DirectEcho {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Whether an HTTP server at `addr` answers a request.
async fn answers(addr: std::net::SocketAddr) -> bool {
    let shot = Shot::post("/", Bytes::new(), StatusCode::OK);
    matches!(
        load::run(addr, 1, shot, Until::Sent(1)).await,
        Ok(o) if o.ok == 1
    )
}

async fn classic(s: &Settings, report: &mut Report, memory: &Memory) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = sluice::up(&s.sluice, dir.path(), &s.up_args(&[]))?;
    let api = Api::new(&up.url);
    api.deploy(&sluice::classic_function(
        "cat",
        "cat",
        &[
            ("com.openfaas.scale.min", "1"),
            ("com.openfaas.scale.max", "1"),
        ],
    ))
    .await?;
    api.wait_ready("cat", 1).await?;
    let bare = servers::spawn_per_request("cat").await?;
    let shot = Shot::post("/", s.body.clone(), StatusCode::OK);
    let alone = load::run(bare, s.connections, shot, Until::Elapsed(s.duration)).await?;
    let peak = PeakRss::watch(vec![up.pid()]);
    let shot = Shot::post("/function/cat", s.body.clone(), StatusCode::OK);
    let through = load::run(up.addr()?, s.connections, shot, Until::Elapsed(s.duration)).await?;
    memory.note("classic `cat` (peak)", peak.peak());
    report.row(
        "classic fork-per-request (`cat`)",
        summary(&through),
        format!(
            "a server that only spawns `cat` per request: {}",
            summary(&alone)
        ),
        ratio(through.rate(), alone.rate()),
        "≥ 0.8×",
    );
    Ok(())
}

async fn cold(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = sluice::up(&s.sluice, dir.path(), &s.up_args(&[]))?;
    let api = Api::new(&up.url);
    api.deploy(&sluice::echo_function(
        "cold",
        &[
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "1s"),
        ],
    )?)
    .await?;
    let addr = up.addr()?;
    let mut cold = Vec::new();
    for _ in 0..s.cold_samples {
        api.wait_ready("cold", 0).await?;
        let shot = Shot::post("/function/cold", s.body.clone(), StatusCode::OK);
        let o = load::run(addr, 1, shot, Until::Sent(1)).await?;
        if o.ok != 1 {
            bail!("a request at zero failed: {}", o.problems());
        }
        cold.push(o.percentile_ms(50.0));
    }
    let mut alone = Vec::new();
    for _ in 0..s.cold_samples {
        let (_echo, took) = DirectEcho::start_timed().await?;
        alone.push(took.as_secs_f64() * 1000.0);
    }
    let p = |v: &[f64], q: f64| {
        let micros: Vec<u32> = v.iter().map(|ms| (ms * 1000.0) as u32).collect();
        f64::from(load::percentile(&micros, q)) / 1000.0
    };
    report.row(
        format!("cold start from zero ({} samples)", s.cold_samples),
        format!("p50 {}, p99 {}", ms(p(&cold, 50.0)), ms(p(&cold, 99.0))),
        format!(
            "the echo's own start, spawn → answering: p50 {}, p99 {}",
            ms(p(&alone, 50.0)),
            ms(p(&alone, 99.0))
        ),
        ratio(p(&cold, 50.0), p(&alone, 50.0)),
        "p50 ≤ 50 ms, p99 ≤ 150 ms",
    );
    Ok(())
}

async fn scale(s: &Settings, report: &mut Report, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let up = sluice::up(&s.sluice, dir.path(), &s.up_args(&[]))?;
    let api = Api::new(&up.url);
    let idle = sluice::rss_mib(up.pid());
    let zero = [("com.openfaas.scale.zero", "true")];
    let started = Instant::now();
    for i in 0..n {
        api.deploy(&sluice::classic_function(&format!("f{i:05}"), "cat", &zero))
            .await?;
    }
    let deploy_rate = n as f64 / started.elapsed().as_secs_f64();
    for i in 0..n {
        api.scale(&format!("f{i:05}"), 0).await?;
    }
    let mut lists = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let listed = api.get("/system/functions").await?;
        lists.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        let count = listed.as_array().map_or(0, Vec::len);
        if count != n {
            bail!("{count} functions listed, {n} deployed");
        }
    }
    let tick = match autoscaler_tick(&api, n).await? {
        Some(seconds) => ms(seconds * 1000.0),
        None => "not reported by this build".into(),
    };
    let rss = sluice::rss_mib(up.pid());
    let list = |q: f64| ms(f64::from(load::percentile(&lists, q)) / 1000.0);
    report.row(
        format!("{n} functions at zero replicas"),
        format!(
            "RSS {idle:.0} → {rss:.0} MiB; list p50 {}, max {}; deploys {}, one at a time; \
             autoscaler tick {tick}",
            list(50.0),
            list(100.0),
            per_s(deploy_rate),
        ),
        "—",
        "—",
        "at 10,000: RSS ≤ 200 MB, list ≤ 100 ms, tick ≤ 10 ms per 1,000",
    );
    Ok(())
}

/// The longest of a few autoscaler ticks over `n` functions, in seconds, from `/metrics`;
/// `None` from a Sluice that does not report them.
async fn autoscaler_tick(api: &Api, n: usize) -> anyhow::Result<Option<f64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut longest: f64 = 0.0;
    let mut seen = 0;
    let mut last = None;
    while seen < 3 {
        if Instant::now() > deadline {
            bail!("the autoscaler did not tick over {n} functions three times within 30 s");
        }
        let metrics = api.text("/metrics").await?;
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        };
        let functions = gauge("autoscaler_last_tick_functions ").unwrap_or(0.0);
        let seconds = gauge("autoscaler_last_tick_seconds ");
        let ticks = gauge("autoscaler_ticks_total ");
        if ticks.is_none() {
            return Ok(None);
        }
        if functions as usize == n && ticks != last {
            if let Some(seconds) = seconds {
                longest = longest.max(seconds);
                seen += 1;
            }
            last = ticks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Some(longest))
}

async fn backlog(s: &Settings, report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bound = (s.backlog + 1_000).to_string();
    let up = sluice::up(
        &s.sluice,
        dir.path(),
        &s.up_args(&[
            "--shutdown-grace",
            "1s",
            "--max-queued-per-function",
            &bound,
            "--max-queued-calls",
            &bound,
        ]),
    )?;
    let api = Api::new(&up.url);
    deploy_echo(&api, "hold").await?;
    let idle = sluice::rss_mib(up.pid());
    // Each call the worker takes sleeps for an hour, so the queue only grows.
    let shot = Shot::post(
        "/async-function/hold/sleep?ms=3600000",
        s.body.clone(),
        StatusCode::ACCEPTED,
    );
    let peak = PeakRss::watch(vec![up.pid()]);
    let sent = load::run(up.addr()?, s.connections, shot, Until::Sent(s.backlog)).await?;
    if sent.ok != s.backlog {
        bail!(
            "{} of {} calls accepted ({})",
            sent.ok,
            s.backlog,
            sent.problems()
        );
    }
    let after = sluice::rss_mib(up.pid());
    let disk = sluice::disk_bytes(&dir.path().join("data"));
    report.row(
        format!("{} calls queued, `sluice up`", s.backlog),
        format!(
            "accepted {}; RSS {idle:.0} → {after:.0} MiB (peak {:.0}); on disk {:.0} MiB",
            summary(&sent),
            peak.peak(),
            disk as f64 / 1024.0 / 1024.0
        ),
        "—",
        "—",
        "—",
    );
    Ok(())
}
