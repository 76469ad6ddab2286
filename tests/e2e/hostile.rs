//! Hostile clients: oversized heads, connections that send nothing or trickle, bodies too big
//! for memory. Each of issue 9's findings about them as a regression test.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Sluice, deploy, eventually, get_json, sample};
use crate::security::raw;

/// Finding 3: a 200 KB header made a classic function's spawn fail (`500 spawn_failed`, its
/// headers go into the environment) and the async path retried it five times. The head is
/// refused with `431` before any function is touched.
#[tokio::test]
async fn an_oversized_head_is_refused_before_a_function_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("cat", "cat", false, &[])).await;
    let big = "v".repeat(200 * 1024);
    for route in ["function", "async-function"] {
        let r = http
            .post(format!("{url}/{route}/cat"))
            .header("x-big", &big)
            .body("hi")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "{route}");
        assert_eq!(r.headers()["x-sluice-error"], "headers_too_large");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("bytes"),
            "{body}"
        );
    }
    // Many small headers, and a huge query string, too.
    let mut many = http.post(format!("{url}/function/cat"));
    for i in 0..150 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(many.send().await.unwrap().status(), 431);
    let r = http
        .get(format!("{url}/function/cat?q={}", "a".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
    // Nothing was queued, the function never ran, and it still answers.
    let calls: Value = get_json(&http, format!("{url}/system/calls")).await;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0), "{calls}");
    let logs = http
        .get(format!("{url}/system/logs?name=cat&tail=50"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!logs.contains("spawn"), "{logs}");
    let r = http
        .post(format!("{url}/function/cat"))
        .body("still fine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "still fine");
}

/// Reads from `stream` until it is closed (or errors); false if it stays open past `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Finding 5: idle and slowloris connections were never closed, so enough of them stopped
/// every other client. Now a connection must send its request head within
/// `--header-read-timeout`, and other clients are served meanwhile.
#[tokio::test]
async fn a_slowloris_does_not_stop_other_clients() {
    let (_dir, sluice, http) = crate::harness::up_with_echo(&["--header-read-timeout", "2s"]).await;
    let url = sluice.url.clone();
    let addr = url.strip_prefix("http://").unwrap().to_owned();
    // The replica started and ready before the connections come, so timing below is the
    // gateway's.
    let r = http
        .post(format!("{url}/function/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // 250 connections that send nothing and 250 that trickle a head a byte at a time.
    let mut idle = Vec::new();
    for _ in 0..250 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut trickling = Vec::new();
    for _ in 0..250 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let stop = stop.clone();
        trickling.push(tokio::spawn(async move {
            let head = b"POST /function/echo HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            stream.write_all(head).await.unwrap();
            let opened = tokio::time::Instant::now();
            // A byte every 100 ms, until the server hangs up (or the test gives up).
            loop {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if stream.write_all(b"a").await.is_err() {
                    return Some(opened.elapsed());
                }
                let mut buf = [0u8; 512];
                let read = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf));
                if let Ok(Ok(0) | Err(_)) = read.await {
                    return Some(opened.elapsed());
                }
            }
        }));
    }
    // Meanwhile other clients are served, promptly.
    for i in 0..20 {
        let started = tokio::time::Instant::now();
        let r = http
            .post(format!("{url}/function/echo"))
            .body(format!("request {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("request {i}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // And the server closes the idle and the trickling connections after the timeout.
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for task in trickling {
        let held = tokio::time::timeout_at(deadline, task)
            .await
            .expect("a trickling connection the server never closed")
            .unwrap()
            .expect("closed by the server");
        assert!(held < Duration::from_secs(8), "held {held:?}");
    }
    stop.cancel();
}

/// Finding 5, at the cap: past `--max-connections`, a new connection is answered `503` with a
/// JSON error at once (not left hanging), the shedding is logged, and once the idle ones are
/// closed, clients are served again.
#[tokio::test]
async fn past_the_connection_cap_new_connections_are_turned_away_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = Sluice::start(
        &data,
        &["--max-connections", "20", "--header-read-timeout", "2s"],
    );
    let url = sluice.url.clone();
    let addr = url.strip_prefix("http://").unwrap().to_owned();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Accepted connections are counted as the server takes them: ask until it is full.
    let answer = eventually("the gateway to be full", || async {
        let mut extra = TcpStream::connect(&addr).await.ok()?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(1), extra.read_to_string(&mut answer))
            .await
            .ok()?
            .ok()?;
        answer.starts_with("HTTP/1.1 503").then_some(answer)
    })
    .await;
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.contains(r#""code":"too_many_connections""#),
        "{answer}"
    );
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(log.contains("at the connection limit"), "{log}");
    // The idle connections time out; then a client is served.
    for stream in &mut idle {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }
    let (status, _) = eventually("a client to be served again", || async {
        let (status, body) = raw(
            &url,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200);
}

/// Finding 7: async submissions and sync calls shared one in-flight limit, and a submission
/// holds its slot through its durable write, so a flood of submissions starved sync calls.
/// Each now has a pool of its own.
#[tokio::test]
async fn a_flood_of_submissions_does_not_starve_sync_calls() {
    let (_dir, sluice, http) =
        crate::harness::up_with_echo(&["--max-in-flight", "40", "--max-async-in-flight", "4"])
            .await;
    let url = sluice.url.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut accepted, mut refused) = (0, 0);
                while !stop.is_cancelled() {
                    let r = http
                        .post(format!("{url}/async-function/echo"))
                        .body("async")
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        202 => accepted += 1,
                        503 => refused += 1,
                        other => panic!("submit answered {other}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    // 30 sync clients, 10 calls each, all while the flood goes on.
    let sync: Vec<_> = (0..30)
        .map(|c| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..10 {
                    let r = http
                        .post(format!("{url}/function/echo"))
                        .body(format!("{c}-{i}"))
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in sync {
        statuses.extend(task.await.unwrap());
    }
    stop.cancel();
    let (mut accepted, mut refused) = (0, 0);
    for task in flood {
        let (a, r) = task.await.unwrap();
        accepted += a;
        refused += r;
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(accepted > 0, "no submission was accepted");
    assert!(refused > 0, "the flood never reached the async limit");
}

/// Sends `n` requests at once; their statuses, and what held back those refused.
async fn burst(http: &reqwest::Client, url: &str, n: usize) -> (Vec<u16>, Vec<String>) {
    let sent = (0..n).map(|_| http.post(url).body("x").send());
    let (mut statuses, mut limits) = (Vec::new(), Vec::new());
    for r in futures_util::future::join_all(sent).await {
        let r = r.unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            assert_eq!(r.headers()["x-sluice-error"], "rate_limited");
            assert_eq!(r.headers()["retry-after"], "1");
            let body: Value = r.json().await.unwrap();
            limits.push(body["message"].as_str().unwrap().to_owned());
        }
        statuses.push(status);
    }
    (statuses, limits)
}

/// Rate limits: a function's own (`com.sluice.rate-limit`, per second, sync calls and async
/// submissions together) and the gateway's (`--rate-limit`), answered `429` with
/// `Retry-After`; a function without one is not held back by another's.
#[tokio::test]
async fn rate_limits_answer_429() {
    let (_dir, sluice, http) = crate::harness::up_with_echo(&["--rate-limit", "10"]).await;
    let url = &sluice.url;
    let limited = sample(
        "limited",
        "python3 -u echo.py",
        true,
        &[("com.sluice.rate-limit", "3")],
    );
    deploy(&http, url, &limited).await;
    let passed = |all: &[u16]| all.iter().filter(|s| **s == 200 || **s == 202).count();
    // Warm the limited function (its replica starts), then a burst of sync calls and async
    // submissions together, far over its 3 a second.
    http.post(format!("{url}/function/limited"))
        .send()
        .await
        .unwrap();
    let (sync_url, async_url) = (
        format!("{url}/function/limited"),
        format!("{url}/async-function/limited"),
    );
    let ((sync, sync_limits), (submitted, async_limits)) =
        tokio::join!(burst(&http, &sync_url, 6), burst(&http, &async_url, 6));
    let all: Vec<u16> = sync.iter().chain(&submitted).copied().collect();
    assert!(passed(&all) < all.len(), "{all:?}");
    // Held back by the function's own limit, on both paths (not only the gateway's).
    for limits in [&sync_limits, &async_limits] {
        assert!(
            limits.iter().any(|m| m.contains("function limited")),
            "{limits:?}"
        );
    }
    // echo, without a limit of its own, is not held back by limited's.
    let r = http
        .post(format!("{url}/function/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The gateway's own limit, 10 a second, holds everything back past it.
    let (echo, limits) = burst(&http, &format!("{url}/function/echo"), 40).await;
    assert!(passed(&echo) >= 1, "{echo:?}");
    assert!(
        limits.iter().any(|x| x.contains("the gateway")),
        "{limits:?}"
    );
    // A bad label is refused at deploy, naming it.
    crate::harness::bad_label_is_refused(&http, url, "com.sluice.rate-limit", "lots").await;
}

/// Finding 6: many large bodies at once grew the gateway without bound (64 sync calls of
/// 16 MiB peaked at 2.7 GB), and the `429` came only after a body was read. Bodies are now
/// admitted against a budget before they are read: past it, `503` with `Retry-After`, and the
/// bodies that were taken go through whole.
#[tokio::test]
async fn large_bodies_beyond_the_budget_are_refused_before_they_are_read() {
    let mib = 1024 * 1024;
    let (_dir, sluice, http) = crate::harness::up_with_echo(&[
        "--max-body-bytes",
        &(8 * mib).to_string(),
        "--max-body-buffer",
        &(24 * mib).to_string(),
    ])
    .await;
    let url = &sluice.url;
    let sleeper = sample("sleep", "python3 -u sleep.py", true, &[]);
    deploy(&http, url, &sleeper).await;
    http.post(format!("{url}/function/sleep?seconds=0"))
        .send()
        .await
        .unwrap();
    // Eight 8 MiB bodies at once to a function that takes a second: three fit the budget.
    let body = vec![b'x'; 8 * mib];
    let sent = (0..8).map(|_| {
        http.post(format!("{url}/function/sleep?seconds=1"))
            .body(body.clone())
            .send()
    });
    let mut statuses = Vec::new();
    for r in futures_util::future::join_all(sent).await {
        let r = r.unwrap();
        let status = r.status().as_u16();
        if status == 503 {
            assert_eq!(r.headers()["x-sluice-error"], "overloaded");
            assert_eq!(r.headers()["retry-after"], "1");
            let body: Value = r.json().await.unwrap();
            assert!(
                body["message"].as_str().unwrap().contains("24 MiB"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    let taken = statuses.iter().filter(|s| **s == 200).count();
    assert!((1..=3).contains(&taken), "{statuses:?}");
    assert_eq!(
        taken + statuses.iter().filter(|s| **s == 503).count(),
        8,
        "{statuses:?}"
    );
    // Once they are done the budget is free again: a body taken whole, byte for byte.
    let r = http
        .post(format!("{url}/function/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), body.len());
    // A setting that could never take the largest body is refused at start.
    let data = _dir.path().join("refused");
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["up", "--listen", "127.0.0.1:0", "--max-body-bytes", "1000"])
        .args(["--max-body-buffer", "999", "--data-dir"])
        .arg(&data)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("refused at once, not started")
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-body-buffer"));
}

/// Finding 6, on disk: the embedded queue took whatever was submitted (535 MB in 15 s). It is
/// bounded now, per function (`429 function_queue_full`) and in all (`503 queue_full`), with
/// `Retry-After`, and nothing already accepted is lost. On JetStream the per-function bound is
/// counted in the call store at submit.
async fn the_queue_is_bounded_per_function(backend: crate::harness::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(
        &dir.path().join("data"),
        &[
            "--worker-concurrency",
            "1",
            "--max-queued-per-function",
            "3",
        ],
    );
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(
        &http,
        url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    // One call runs (its row stays until it is acked), two wait: the fourth is refused.
    let mut accepted = Vec::new();
    for i in 0..3 {
        let r = http
            .post(format!("{url}/async-function/sleep?seconds=3"))
            .header("x-call-id", format!("slow-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        accepted.push(format!("slow-{i}"));
    }
    let r = http
        .post(format!("{url}/async-function/sleep?seconds=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-sluice-error"], "function_queue_full");
    assert!(r.headers().contains_key("retry-after"));
    // Another function still gets in.
    let r = http
        .post(format!("{url}/async-function/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // A resubmission of a queued call is answered as before, not refused.
    let r = http
        .post(format!("{url}/async-function/sleep?seconds=3"))
        .header("x-call-id", "slow-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Every accepted call finishes.
    for id in &accepted {
        eventually("the accepted calls to finish", || async {
            let call: Value =
                crate::harness::try_get_json(&http, format!("{url}/system/calls/{id}")).await?;
            (call["state"] == "succeeded").then_some(())
        })
        .await;
    }
}

on_both_backends!(the_queue_is_bounded_per_function);
