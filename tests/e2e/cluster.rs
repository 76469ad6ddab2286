//! The cluster form: separate `sluice gateway` and `sluice queue-worker` processes sharing one
//! Postgres database and one `nats-server`, with processes killed under load.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::harness::{
    Backend, Receiver, Shared, Sluice, deploy, eventually, get_json, sample, submit_async,
    try_get_json,
};

const TOKEN: &str = "cluster-test-token";

fn gateway(shared: &Shared, dir: &Path, name: &str) -> Sluice {
    gateway_on(&shared.args(), dir, name)
}

/// A gateway on the backends `--nats <url> --database-url <url>`.
fn gateway_on(backends: &[String], dir: &Path, name: &str) -> Sluice {
    let data = dir.join(name);
    let mut args = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--db-connections",
        "6",
        "--internal-token",
        TOKEN,
        "--callback-allow-private",
    ];
    args.extend(backends.iter().map(String::as_str));
    Sluice::run(&args, &dir.join(format!("{name}.log")))
}

/// A gateway `gw` with the sample `function` (`python3 -u <function>.py`, in HTTP mode)
/// deployed and ready.
async fn gateway_with(
    shared: &Shared,
    dir: &Path,
    http: &reqwest::Client,
    function: &str,
) -> Sluice {
    let gw = gateway(shared, dir, "gw");
    let command = format!("python3 -u {function}.py");
    deploy(http, &gw.url, &sample(function, &command, true, &[])).await;
    ready_on(http, &gw.url, function).await;
    gw
}

fn worker(shared: &Shared, dir: &Path, name: &str, gateway_url: &str, extra: &[&str]) -> Sluice {
    let backends = shared.args();
    let mut args = vec![
        "queue-worker",
        "--gateway-url",
        gateway_url,
        "--db-connections",
        "6",
        "--internal-token",
        TOKEN,
        "--callback-allow-private",
    ];
    args.extend(backends.iter().map(String::as_str));
    args.extend_from_slice(extra);
    Sluice::run(&args, &dir.join(format!("{name}.log")))
}

/// Waits until the gateway at `url` runs a ready replica of `function`.
async fn ready_on(http: &reqwest::Client, url: &str, function: &str) {
    eventually("the function to be ready on every gateway", || async {
        let f: Value = try_get_json(http, format!("{url}/system/function/{function}")).await?;
        (f["availableReplicas"].as_u64()? >= 1).then_some(())
    })
    .await;
}

/// One submission attempt: when it was sent, when it was answered, with what.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    sent: Instant,
    answered: Instant,
    status: u16,
}

const CALLS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_calls_survive_killed_workers_and_a_nats_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut shared = Shared::start().await;
    let http = crate::harness::http();
    let gateways = [gateway(&shared, dir, "gw0"), gateway(&shared, dir, "gw1")];
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    deploy(
        &http,
        &urls[0],
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    for url in &urls {
        ready_on(&http, url, "echo").await;
    }
    let lease = ["--lease", "2s", "--worker-concurrency", "16"];
    let mut workers: Vec<Sluice> = (0..3)
        .map(|i| worker(&shared, dir, &format!("w{i}"), &urls[i % 2], &lease))
        .collect();
    let receiver = Receiver::start().await;

    // Submit every call, each through one of the gateways, retrying a 503 (with the same call
    // id) until it is accepted.
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let submitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let submitting = {
        let (http, urls, receiver) = (http.clone(), urls.clone(), receiver.clone());
        let (attempts, submitted) = (attempts.clone(), submitted.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..CALLS)
                .for_each_concurrent(48, |i| {
                    let (http, urls, receiver) = (&http, &urls, &receiver);
                    let (attempts, submitted) = (&attempts, &submitted);
                    async move {
                        let target = format!("{}/async-function/echo", urls[i % 2]);
                        let deadline = Instant::now() + Duration::from_secs(120);
                        loop {
                            let sent = Instant::now();
                            // A connection the gateway closed as it was reused is retried with
                            // the same call id, as a client should: the id makes it once.
                            let r = match http
                                .post(target.clone())
                                .header("X-Callback-Url", &receiver.url)
                                .header("X-Call-Id", format!("c{i}"))
                                .send()
                                .await
                            {
                                Ok(r) => r,
                                Err(e) if e.is_connect() || e.is_request() => {
                                    assert!(Instant::now() < deadline, "c{i}: {e}");
                                    continue;
                                }
                                Err(e) => panic!("c{i}: {e}"),
                            };
                            let status = r.status().as_u16();
                            let answered = Instant::now();
                            attempts.lock().unwrap().push(Attempt {
                                sent,
                                answered,
                                status,
                            });
                            match status {
                                202 => break,
                                503 => {
                                    assert!(Instant::now() < deadline, "c{i} never accepted");
                                    assert!(r.headers().contains_key("retry-after"));
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                other => panic!("c{i}: {other} {}", r.text().await.unwrap()),
                            }
                        }
                        submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
                .await;
        })
    };

    // Meanwhile: SIGKILL a worker every few seconds and start it again; once, a third of the
    // way in, kill nats-server and bring it back a few seconds later.
    let mut outage = None;
    let mut kills = 0;
    while !submitting.is_finished() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let k = kills % workers.len();
        workers[k].kill();
        workers[k] = tokio::task::block_in_place(|| {
            worker(&shared, dir, &format!("w{k}"), &urls[k % 2], &lease)
        });
        kills += 1;
        let done = submitted.load(std::sync::atomic::Ordering::Relaxed);
        if outage.is_none() && done >= CALLS / 3 {
            shared.nats.kill();
            let down = Instant::now();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let up = Instant::now();
            tokio::task::block_in_place(|| shared.nats.restart());
            outage = Some((down, up));
        }
    }
    submitting.await.unwrap();
    let (down, up) = outage.expect("the submissions ended before nats-server was restarted");

    // During the outage nothing was accepted: a 202 sent after the kill and answered before
    // the restart would be a call NATS never stored.
    let attempts = attempts.lock().unwrap().clone();
    let lies: Vec<_> = attempts
        .iter()
        .filter(|a| a.status == 202 && a.sent >= down && a.answered <= up)
        .collect();
    assert!(lies.is_empty(), "202 during the NATS outage: {lies:?}");
    let refused = attempts
        .iter()
        .filter(|a| a.status == 503 && a.sent >= down && a.answered <= up)
        .count();
    assert!(refused > 0, "no submission was refused during the outage");

    // Every accepted call is called back (at least once).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ids: HashSet<String> = receiver
            .received()
            .iter()
            .map(|c| c.header("x-call-id").to_owned())
            .collect();
        if ids.len() == CALLS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {CALLS} callbacks after 5 minutes",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for cb in receiver.received() {
        assert_eq!(cb.header("x-function-status"), "200", "{:?}", cb.headers);
    }
    // And every record says so: all succeeded, none lost.
    let mut succeeded = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/system/calls?status=succeeded&limit=1000", urls[1]);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = get_json(&http, url).await;
        for call in page["calls"].as_array().unwrap() {
            succeeded.insert(call["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(succeeded.len(), CALLS, "calls not recorded as succeeded");
    assert!(kills >= 3, "only {kills} worker kills happened");
    eprintln!(
        "{CALLS} calls: {kills} worker kills, {refused} submissions refused during a {:?} NATS \
         outage, {} callbacks in all",
        up - down,
        receiver.count()
    );
}

#[tokio::test]
async fn a_call_three_times_longer_than_its_lease_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let shared = Shared::start().await;
    let http = crate::harness::http();
    let gw = gateway_with(&shared, dir, &http, "sleep").await;
    // Two workers on a one-second lease: a redelivery would go to the other.
    let lease = ["--lease", "1s"];
    let _workers = [
        worker(&shared, dir, "w0", &gw.url, &lease),
        worker(&shared, dir, "w1", &gw.url, &lease),
    ];
    let receiver = Receiver::start().await;
    let r = submit_async(
        &http,
        format!("{}/async-function/sleep?seconds=3", gw.url),
        &receiver,
        "long",
    )
    .await;
    assert_eq!(r.status(), 202);
    let record: Value = eventually("the call to finish", || async {
        let r: Value = try_get_json(&http, format!("{}/system/calls/long", gw.url)).await?;
        (r["state"] == "succeeded").then_some(r)
    })
    .await;
    assert_eq!(record["attempts"], 1, "the call ran twice: {record}");
    eventually("the callback", || async {
        (receiver.count() >= 1).then_some(())
    })
    .await;
    let cb = &receiver.received()[0];
    assert_eq!(cb.body, "slept 3s\n");
    // A second run would have started within a lease of the first; it would show as a second
    // attempt on the record or a second callback.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let r: Value = get_json(&http, format!("{}/system/calls/long", gw.url)).await;
        assert_eq!(r["attempts"], 1, "the call ran again: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(receiver.count(), 1, "a second callback came");
}

on_both_backends!(a_five_mib_body_survives_the_async_path_byte_for_byte);
async fn a_five_mib_body_survives_the_async_path_byte_for_byte(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    let receiver = Receiver::start().await;
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = http
        .post(format!("{url}/async-function/echo"))
        .header("X-Callback-Url", &receiver.url)
        .header("X-Call-Id", "big")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    let cb = &receiver.received()[0];
    assert_eq!(cb.header("x-function-status"), "200");
    assert_eq!(cb.body.len(), body.len());
    assert!(cb.body.as_ref() == body.as_slice(), "the body changed");

    // One byte over the gateway's limit is refused, naming the limit.
    let too_big = vec![b'x'; 16 * 1024 * 1024 + 1];
    let r = http
        .post(format!("{url}/async-function/echo"))
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let err: Value = r.json().await.unwrap();
    assert!(
        err["message"].as_str().unwrap().contains("16777216"),
        "{err}"
    );
}

#[tokio::test]
async fn a_named_queue_is_served_and_a_slow_function_does_not_hold_up_the_others() {
    let backend = Backend::shared().await;
    let dir = tempfile::tempdir().unwrap();
    // Four slots, at most two for any one function.
    let sluice = backend.up(
        &dir.path().join("data"),
        &["--worker-concurrency", "4", "--function-concurrency", "2"],
    );
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(
        &http,
        url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    let mut echo = sample("echo", "python3 -u echo.py", true, &[]);
    echo["annotations"]["com.openfaas.queue"] = "priority".into();
    deploy(&http, url, &echo).await;
    // The same, on the default queue with the sleeps.
    deploy(
        &http,
        url,
        &sample("plain", "python3 -u echo.py", true, &[]),
    )
    .await;
    // A queue name that cannot name a NATS subject is refused at deploy.
    let mut bad = sample("bad", "python3 -u echo.py", true, &[]);
    bad["annotations"]["com.openfaas.queue"] = "no.dots".into();
    let r = http
        .post(format!("{url}/system/functions"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    for i in 0..6 {
        let target = format!("{url}/async-function/sleep?seconds=4");
        let r = submit_async(&http, target, &receiver, format!("slow-{i}")).await;
        assert_eq!(r.status(), 202);
    }
    eventually("two sleeps to run", || async {
        let page: Value = try_get_json(&http, format!("{url}/system/calls?status=running")).await?;
        (page["calls"].as_array()?.len() == 2).then_some(())
    })
    .await;
    for (function, id) in [("echo", "quick"), ("plain", "quick-too")] {
        let target = format!("{url}/async-function/{function}");
        let r = submit_async(&http, target, &receiver, id).await;
        assert_eq!(r.status(), 202);
    }
    let started = Instant::now();
    eventually("the echoes' callbacks", || async {
        let got = receiver.received();
        let has = |id: &str| got.iter().any(|c| c.header("x-call-id") == id);
        (has("quick") && has("quick-too")).then_some(())
    })
    .await;
    // The echo went through its own queue, and the plain one past the sleeps queued before it
    // on the default queue, while the sleeps held their share of the slots.
    let slow_done = receiver
        .received()
        .iter()
        .filter(|c| c.header("x-call-id").starts_with("slow-"))
        .count();
    assert!(
        slow_done <= 2,
        "the echoes waited for {slow_done} sleeps ({:?})",
        started.elapsed()
    );
    let running: Value = get_json(&http, format!("{url}/system/calls?status=running")).await;
    assert!(
        running["calls"].as_array().unwrap().len() <= 2,
        "more than two sleeps at once: {running}"
    );
    eventually("every sleep's callback", || async {
        (receiver.count() == 8).then_some(())
    })
    .await;
}

#[tokio::test]
async fn gateways_follow_each_others_deploys_and_removals() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let shared = Shared::start().await;
    let http = crate::harness::http();
    let (a, b) = (gateway(&shared, dir, "a"), gateway(&shared, dir, "b"));
    deploy(
        &http,
        &a.url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    // At once, before b's next look at the registry: b applies it on the first request.
    let r = http
        .post(format!("{}/function/echo", b.url))
        .body("through b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "through b");
    // A scale through a reaches b.
    crate::harness::scale(&http, &a.url, "echo", 2).await;
    let f = eventually("b to scale to 2", || async {
        let f: Value = try_get_json(&http, format!("{}/system/function/echo", b.url)).await?;
        (f["replicas"] == 2).then_some(f)
    })
    .await;
    // And b's autoscaler leaves it there for a while, as a's does.
    assert!(
        f["scaleReason"].as_str().unwrap().contains("registry"),
        "{f}"
    );
    // A removal through a reaches b.
    let r = http
        .delete(format!("{}/system/functions", a.url))
        .json(&serde_json::json!({"functionName": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("b to remove it", || async {
        let r = http
            .post(format!("{}/function/echo", b.url))
            .send()
            .await
            .ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
    let list: Value = get_json(&http, format!("{}/system/functions", b.url)).await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn a_receiver_down_for_thirty_seconds_gets_every_callback() {
    let backend = Backend::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    let receiver = Receiver::start().await;
    receiver.refuse();
    let down = Instant::now();
    for i in 0..20 {
        let target = format!("{url}/async-function/echo");
        let r = submit_async(&http, target, &receiver, format!("r{i}")).await;
        assert_eq!(r.status(), 202);
    }
    while down.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        receiver.accept() >= 20,
        "the callbacks were not tried meanwhile"
    );
    // The longest wait between tries is a minute.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ids: HashSet<String> = receiver
            .received()
            .iter()
            .map(|c| c.header("x-call-id").to_owned())
            .collect();
        if ids.len() == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{} of 20 callbacks", ids.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_nats_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_owned();
    let mut shared = Shared::start().await;
    shared.nats.kill();
    let log = dir.join("gw.log");
    let starting = {
        let (backends, dir) = (shared.args(), dir.clone());
        std::thread::spawn(move || gateway_on(&backends, &dir, "gw"))
    };
    eventually("the gateway to say it waits for NATS", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("not ready yet").then_some(())
    })
    .await;
    tokio::task::block_in_place(|| shared.nats.restart());
    let gw = tokio::task::block_in_place(|| starting.join().unwrap());
    let http = crate::harness::http();
    deploy(
        &http,
        &gw.url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    let r = http
        .post(format!("{}/async-function/echo", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn a_function_at_zero_wakes_for_sync_and_queued_calls_in_the_cluster_form() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let shared = Shared::start().await;
    let http = crate::harness::http();
    let gw = gateway(&shared, dir, "gw");
    let _worker = worker(&shared, dir, "w", &gw.url, &[]);
    let echo = sample(
        "echo",
        "python3 -u echo.py",
        true,
        &[
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "2s"),
        ],
    );
    deploy(&http, &gw.url, &echo).await;
    let at_zero = || async {
        let f: Value = try_get_json(&http, format!("{}/system/function/echo", gw.url)).await?;
        (f["replicas"] == 0).then_some(())
    };
    eventually("echo to go to zero", at_zero).await;
    let r = http
        .post(format!("{}/function/echo", gw.url))
        .body("sync")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "sync");
    eventually("echo to go to zero again", at_zero).await;
    let receiver = Receiver::start().await;
    let target = format!("{}/async-function/echo", gw.url);
    let cb = crate::harness::called_back(&http, target, &receiver, "queued-cold").await;
    assert_eq!(cb.header("x-function-status"), "200");
    assert_eq!(cb.header("x-retry"), "");
}

/// A publish that times out (NATS going away) may have been stored all the same, while the
/// gateway deletes the call's record and answers `503`. The client's resubmission of the id
/// gets a new record, and JetStream takes its publish for a duplicate of the first: the call is
/// published again as a new message, so it runs and is called back, never answered `409
/// already queued` with a queue entry that has no record.
#[tokio::test]
async fn a_resubmission_after_a_publish_stored_despite_its_timeout_is_queued_and_runs() {
    use sluice_core::{CallId, CallStore};
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let shared = Shared::start().await;
    let http = crate::harness::http();
    let gw = gateway_with(&shared, dir, &http, "echo").await;
    let receiver = Receiver::start().await;
    let target = format!("{}/async-function/echo", gw.url);
    let r = submit_async(&http, target.clone(), &receiver, "stored").await;
    assert_eq!(r.status(), 202);
    // What the gateway does after such a timeout: the record goes, the message stays.
    let pool = sluice_store::open_postgres(&shared.db.url, 1)
        .await
        .unwrap();
    let store = sluice_store::PgStore::new(pool);
    let id = CallId::parse("stored").unwrap();
    store.forget(&id).await.unwrap();
    assert_eq!(store.get(&id).await.unwrap(), None);

    let r = submit_async(&http, target, &receiver, "stored").await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    assert!(
        store.get(&id).await.unwrap().is_some(),
        "the record is back"
    );
    // With a worker: one of the two messages runs the call, the other finds it started.
    let _worker = worker(&shared, dir, "w", &gw.url, &[]);
    eventually("the call's callback", || async {
        let got = receiver.received();
        got.iter()
            .any(|c| c.header("x-call-id") == "stored")
            .then_some(())
    })
    .await;
    eventually("the call to be recorded as succeeded", || async {
        let record = store.get(&id).await.ok()??;
        (record.state == sluice_core::CallState::Succeeded).then_some(())
    })
    .await;
}
