//! A call's timeline: `GET /system/calls/<id>` and `sluice call show` give each attempt with
//! its status and duration and each callback delivery, on both backends.

use serde_json::Value;

use crate::harness::{Backend, Receiver, deploy, eventually, get_json, sample, try_get_json};

on_both_backends!(a_calls_timeline_shows_each_attempt_and_callback_delivery);
async fn a_calls_timeline_shows_each_attempt_and_callback_delivery(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    // The receiver is down for the first callback, then takes the next.
    receiver.refuse_next(1);
    // flaky.py counts calls per key in its own process: one replica sees every attempt.
    let mut flaky = sample(
        "flaky",
        "python3 -u flaky.py",
        true,
        &[("com.openfaas.scale.max", "1")],
    );
    for (k, v) in [
        ("attempts", "4"),
        ("min_wait", "100ms"),
        ("max_wait", "400ms"),
    ] {
        flaky["annotations"][format!("com.openfaas.retry.{k}")] = v.into();
    }
    deploy(&http, url, &flaky).await;
    // Fails twice with 503, then succeeds.
    let r = http
        .post(format!("{url}/async-function/flaky?key=t&fail=2"))
        .header("X-Callback-Url", &receiver.url)
        .header("X-Call-Id", "timeline-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // The second delivery of the callback is recorded just after the receiver takes it.
    let record: Value = eventually("the callback delivered and recorded", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/timeline-1")).await?;
        (r["callback"]["delivered"] == true).then_some(r)
    })
    .await;
    assert_eq!(
        (record["state"].as_str(), record["attempts"].as_u64()),
        (Some("succeeded"), Some(3)),
        "{record}"
    );
    let timeline = &record["timeline"];
    let attempts = timeline["attempts"].as_array().expect("attempts listed");
    let summary: Vec<(u64, &str, u64)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["statusCode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "failed", 503),
            (2, "failed", 503),
            (3, "succeeded", 200)
        ],
        "{record}"
    );
    let mut previous_end = "";
    for a in attempts {
        let (started, finished) = (
            a["startedAt"].as_str().unwrap(),
            a["finishedAt"].as_str().unwrap(),
        );
        // RFC 3339 in UTC with milliseconds: in order as text.
        assert!(previous_end <= started && started <= finished, "{a}");
        previous_end = finished;
        let duration = a["durationSeconds"].as_f64().expect("a duration");
        assert!((0.0..30.0).contains(&duration), "{a}");
        assert!(a.get("redrive").is_none(), "{a}");
    }
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("attempt 1 of 4 failed: function answered 503"),
        "{record}"
    );
    assert!(attempts[2].get("error").is_none(), "{record}");
    let callbacks = timeline["callbacks"].as_array().expect("callbacks listed");
    let summary: Vec<(u64, bool, u64)> = callbacks
        .iter()
        .map(|c| {
            (
                c["attempt"].as_u64().unwrap(),
                c["delivered"].as_bool().unwrap(),
                c["statusCode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, [(1, false, 503), (2, true, 200)], "{record}");
    assert!(callbacks[0]["at"].as_str().unwrap() >= previous_end);
    assert!(callbacks[0]["at"].as_str() <= callbacks[1]["at"].as_str());
    assert!(
        callbacks[0]["error"].as_str().unwrap().contains("503"),
        "{record}"
    );
    assert_eq!(timeline["redrives"], serde_json::json!([]));
    // The receiver took one callback: the last attempt's.
    let taken = receiver.received();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].header("x-function-status"), "200");

    // A listing carries the counts, not the timeline.
    let page: Value = get_json(&http, format!("{url}/system/calls?function=flaky")).await;
    let listed = &page["calls"][0];
    assert_eq!(listed["id"], "timeline-1");
    assert_eq!(listed["attempts"], 3);
    assert!(listed.get("timeline").is_none(), "{listed}");

    // `sluice call show` prints the same steps, one line each.
    let out = crate::harness::cli(dir.path(), Some(url), &["call", "show", "timeline-1"], "");
    assert!(out.status.success(), "{}", crate::harness::printed(&out));
    let shown = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Vec<&str>> = shown
        .lines()
        .skip_while(|l| *l != "Timeline:")
        .skip(1)
        .map(|l| l.split_whitespace().skip(1).take(4).collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["queued"],
            vec!["attempt", "1", "failed", "503"],
            vec!["attempt", "2", "failed", "503"],
            vec!["attempt", "3", "succeeded", "200"],
            vec!["callback", "1", "failed", "503"],
            vec!["callback", "2", "delivered", "200"],
        ],
        "{shown}"
    );
}
