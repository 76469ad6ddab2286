//! The portal's scenarios in headless Chromium (see `browser.rs`), against `sluice up` with the
//! sample functions deployed.

use crate::browser::Browser;
use crate::harness::{Sluice, deploy, functions_dir, get_json, http, sample};

/// `sluice up` with a few of the sample functions.
async fn up_with_samples() -> (tempfile::TempDir, Sluice, reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let http = http();
    for (name, command, http_mode) in [
        ("echo", "python3 -u echo.py", true),
        ("sha512sum", "sha512sum", false),
        ("fail", "python3 -u fail.py", true),
    ] {
        deploy(&http, &sluice.url, &sample(name, command, http_mode, &[])).await;
    }
    (dir, sluice, http)
}

#[tokio::test]
async fn log_in_see_the_functions_and_invoke_one() {
    let (_dir, sluice, _http) = up_with_samples().await;
    let url = &sluice.url;
    let browser = Browser::start(1280, 900).await;

    // Any page sends a visitor without a session to the login page; a wrong password is refused.
    browser.go(&format!("{url}/ui/functions")).await;
    browser.find("#password").await;
    assert_eq!(browser.path().await, "/ui/login?next=/ui/functions");
    browser.screenshot("login").await;
    browser.fill("#user", crate::harness::ADMIN_USER).await;
    browser.fill("#password", "not-the-password").await;
    browser.click("button[type=submit]").await;
    let error = browser.text("#login-error").await;
    assert!(error.contains("not right"), "{error}");

    browser.log_in(url).await;
    browser
        .until_text("#total-functions", "three functions", |t| t == "3")
        .await;
    let health = browser.text("#health").await;
    assert!(health.contains("SQLite answering"), "{health}");
    browser.screenshot("overview").await;

    browser.click("nav a[href='/ui/functions']").await;
    for name in ["echo", "sha512sum", "fail"] {
        browser.find(&format!("tr[data-function='{name}']")).await;
    }
    browser
        .until_text("tr[data-function='echo']", "echo ready", |t| {
            t.contains("ready")
        })
        .await;
    browser.screenshot("functions").await;

    // The filter narrows the list, without JavaScript's help (a plain GET form).
    browser.fill("#q", "sha").await;
    browser.click("form[role=search] button").await;
    browser.until_path("/ui/functions?q=sha").await;
    browser.find("tr[data-function='sha512sum']").await;
    assert!(
        browser
            .client
            .find(fantoccini::Locator::Css("tr[data-function='echo']"))
            .await
            .is_err(),
        "the filter left echo in"
    );

    // One function, and a synchronous call read back.
    browser
        .go(&format!("{url}/ui/functions/openfaas-fn/echo"))
        .await;
    browser.fill("#body", "hello from the portal").await;
    browser.click("#invoke").await;
    let answer = browser
        .until_text("#invoke-body", "the echo", |t| {
            t.contains("hello from the portal")
        })
        .await;
    assert!(answer.contains("hello from the portal"), "{answer}");
    let status = browser.text("#invoke-status").await;
    assert!(status.starts_with("200"), "{status}");
    browser.screenshot("function").await;
    // The log tail follows the function's output.
    browser
        .until_text("#logs-status", "the live tail", |t| {
            t == "Following new lines."
        })
        .await;

    // A change sent without the session's CSRF token (a script of the page's origin) is refused;
    // nothing is scaled.
    let refused = browser
        .client
        .execute(
            "return fetch('/ui/functions/openfaas-fn/echo/scale', {method: 'POST', \
             headers: {'content-type': 'application/x-www-form-urlencoded'}, \
             body: 'replicas=3'}).then(r => r.status)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused, serde_json::json!(403));
    browser
        .go(&format!("{url}/ui/functions/openfaas-fn/echo"))
        .await;
    let replicas = browser.text("#replicas").await;
    assert!(replicas.ends_with("of 1"), "{replicas}");

    // Scale, asked first, then done.
    browser.click("a[href$='/scale']").await;
    browser
        .until_path("/ui/functions/openfaas-fn/echo/scale")
        .await;
    browser.fill("#replicas", "2").await;
    browser.click("#confirm").await;
    browser
        .until_text("#replicas", "two replicas", |t| t == "2 ready of 2")
        .await;
    browser.close().await;
}

#[tokio::test]
async fn the_portal_fits_a_phone() {
    let (_dir, sluice, _http) = up_with_samples().await;
    let browser = Browser::start(390, 844).await;
    browser.log_in(&sluice.url).await;
    browser.go(&format!("{}/ui/functions", sluice.url)).await;
    browser.find("tr[data-function='echo']").await;
    // Nothing is wider than the screen but the table, which scrolls inside its own box.
    let widths = browser
        .client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await
        .unwrap();
    let (page, window) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
    assert!(
        page <= window,
        "the page is {page}px wide on a {window}px screen"
    );
    browser.screenshot("functions-phone").await;
    browser.close().await;
}

#[tokio::test]
async fn an_async_call_is_followed_to_its_callback_and_a_dead_letter_is_re_driven() {
    let (_dir, sluice, http) = up_with_samples().await;
    let url = &sluice.url;
    let receiver = crate::harness::Receiver::start().await;
    let browser = Browser::start(1280, 900).await;
    browser.log_in(url).await;

    // Submitted from the invoke panel with a callback, then followed in the calls view.
    browser
        .go(&format!("{url}/ui/functions/openfaas-fn/echo"))
        .await;
    browser.fill("#body", "queued from the portal").await;
    browser.click("input[name=mode][value=async]").await;
    browser.fill("#callback_url", &receiver.url).await;
    browser.click("#invoke").await;
    let id = browser.text("#call-link").await;
    browser.click("#call-link").await;
    browser
        .until_text("#call-state", "the call to succeed", |t| t == "succeeded")
        .await;
    browser
        .until_text("#timeline", "the callback", |t| {
            t.contains("Callback try 1") && t.contains("delivered")
        })
        .await;
    let result = browser.text("#result-body").await;
    assert!(result.contains("queued from the portal"), "{result}");
    crate::harness::callbacks(&receiver, 1).await;
    assert_eq!(receiver.received()[0].header("x-call-id"), id);
    browser.screenshot("call").await;
    browser.go(&format!("{url}/ui/calls")).await;
    browser.find(&format!("tr[data-call='{id}']")).await;
    browser.screenshot("calls").await;

    // A function that fails with one attempt allowed: its call is dead-lettered.
    let mut failing = sample("flip", "python3 -u fail.py", true, &[]);
    failing["annotations"]["com.openfaas.retry.attempts"] = "1".into();
    deploy(&http, url, &failing).await;
    let r = http
        .post(format!("{url}/async-function/flip"))
        .body("please")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let dead = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    browser.go(&format!("{url}/ui/dead-letters")).await;
    let row = format!("tr[data-call='{dead}']");
    let deadline = tokio::time::Instant::now() + crate::harness::PATIENCE;
    while browser
        .client
        .find(fantoccini::Locator::Css(&row))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never failed for good"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        browser.client.refresh().await.unwrap();
    }
    browser.screenshot("dead-letters").await;

    // The function is fixed (the same name, now a server that answers), then the dead letter is
    // re-driven from the portal, all of them, after a confirmation.
    let mut fixed = sample("flip", "python3 -u echo.py", true, &[]);
    fixed["annotations"]["com.openfaas.retry.attempts"] = "1".into();
    let r = http
        .put(format!("{url}/system/functions"))
        .json(&fixed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    crate::harness::eventually("the fixed function", || async {
        let s: serde_json::Value =
            crate::harness::get_json(&http, format!("{url}/system/function/flip")).await;
        (s["availableReplicas"] == 1 && s["envProcess"] == "python3 -u echo.py").then_some(())
    })
    .await;
    browser.click("#redrive-all").await;
    assert_eq!(browser.text("#count").await, "1");
    browser.click("#confirm").await;
    browser.find("[role=status]").await;
    browser.go(&format!("{url}/ui/calls/{dead}")).await;
    browser
        .until_text("#call-state", "the re-driven call to succeed", |t| {
            t == "succeeded"
        })
        .await;
    browser.close().await;
}

#[tokio::test]
async fn the_scaling_chart_moves_during_a_burst() {
    let (_dir, sluice, http) = up_with_samples().await;
    let url = &sluice.url;
    // Two requests per replica, the autoscaler aiming at two in flight per replica within a
    // short window: a burst is held at first, then replicas are added.
    let sleep = sample(
        "sleep",
        "python3 -u sleep.py",
        true,
        &[
            ("com.sluice.concurrency", "2"),
            ("com.openfaas.scale.type", "capacity"),
            ("com.openfaas.scale.target", "2"),
            ("com.openfaas.scale.target-proportion", "1"),
            ("com.sluice.scale.window", "10s"),
        ],
    );
    deploy(&http, url, &sleep).await;
    let browser = Browser::start(1280, 900).await;
    browser.log_in(url).await;
    browser
        .go(&format!("{url}/ui/functions/openfaas-fn/sleep"))
        .await;
    // Quiet first: a sample with its one replica and nothing in flight.
    browser
        .until_text("#scaling-now", "a quiet sample", |t| {
            t.starts_with("Last 5 s: 1 replicas (1 ready), at most 0 in flight")
        })
        .await;
    let quiet_line = browser
        .find("#chart-counts polyline.s-inflight")
        .await
        .attr("points")
        .await
        .unwrap()
        .unwrap_or_default();

    let stop = tokio_util::sync::CancellationToken::new();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let _ = http
                        .get(format!("{url}/function/sleep?seconds=0.5"))
                        .send()
                        .await;
                }
            })
        })
        .collect();
    // The page refreshes its chart by itself (htmx, every 5 s): the burst shows, then the
    // replicas that were added for it.
    let busy = browser
        .until_text("#scaling-now", "the burst in the chart", |t| {
            t.split("at most ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|in_flight| in_flight > 0)
        })
        .await;
    browser
        .until_text("#scaling-now", "replicas added", |t| {
            t.split("Last 5 s: ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|replicas| replicas >= 2)
        })
        .await;
    let busy_line = browser
        .find("#chart-counts polyline.s-inflight")
        .await
        .attr("points")
        .await
        .unwrap()
        .unwrap_or_default();
    // The in-flight line left the zero line (the lowest y): some point is drawn above it.
    let ys = |points: &str| -> Vec<f64> {
        points
            .split_whitespace()
            .filter_map(|p| p.split_once(',').and_then(|(_, y)| y.parse().ok()))
            .collect()
    };
    let zero = ys(&quiet_line).into_iter().fold(f64::MIN, f64::max);
    assert!(
        ys(&busy_line).iter().any(|y| *y < zero),
        "the in-flight line did not move: {busy}; {busy_line}"
    );
    browser
        .client
        .execute(
            "document.getElementById('scaling-heading').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("scaling").await;
    stop.cancel();
    for client in clients {
        client.await.unwrap();
    }
    browser.close().await;
}

#[tokio::test]
async fn deploy_from_the_form_with_a_field_error_shown_for_an_invalid_name() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let browser = Browser::start(1280, 1400).await;
    browser.log_in(url).await;
    browser.click("nav a[href='/ui/deploy']").await;
    assert_eq!(browser.path().await, "/ui/deploy");

    // A name no function can have: the error is shown next to the name field, which is
    // marked invalid and described by it; what was typed stays.
    browser.fill("#name", "Bad_Name").await;
    browser.fill("#command", "python3 -u echo.py").await;
    browser
        .fill("#workdir", &functions_dir().display().to_string())
        .await;
    browser.click("#http").await;
    browser.fill("#env", "GREETING=hi").await;
    browser.click("#deploy").await;
    let error = browser.text("#name-error").await;
    assert!(error.contains("DNS-1123"), "{error}");
    let name = browser.find("#name").await;
    assert_eq!(
        name.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    let described = name.attr("aria-describedby").await.unwrap().unwrap();
    assert!(described.contains("name-error"), "{described}");
    assert_eq!(
        browser
            .find("#command")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("python3 -u echo.py")
    );
    assert!(browser.find("#http").await.is_selected().await.unwrap());
    browser.screenshot("deploy").await;

    // Fixed: deployed, and its page shows it ready.
    browser.fill("#name", "hello-portal").await;
    browser.click("#deploy").await;
    browser
        .until_text("#function-state", "hello-portal ready", |t| t == "ready")
        .await;
    assert_eq!(
        browser.path().await,
        "/ui/functions/openfaas-fn/hello-portal"
    );
    browser.screenshot("deployed").await;
    let status: serde_json::Value =
        get_json(&http(), format!("{url}/system/function/hello-portal")).await;
    assert_eq!(status["envVars"]["GREETING"], "hi");
    assert_eq!(status["envVars"]["mode"], "http");
    browser.close().await;
}

#[tokio::test]
async fn the_read_only_views_work_without_javascript() {
    let (_dir, sluice, http) = up_with_samples().await;
    let url = &sluice.url;
    let r = http
        .post(format!("{url}/async-function/echo"))
        .body("read me without scripts")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    crate::harness::eventually("the call to finish", || async {
        let c: serde_json::Value =
            crate::harness::get_json(&http, format!("{url}/system/calls/{id}")).await;
        (c["state"] == "succeeded").then_some(())
    })
    .await;
    let browser = Browser::start_without_javascript().await;
    // Logging in is a plain form, sent with the keyboard.
    browser.go(&format!("{url}/ui/")).await;
    browser.fill("#user", crate::harness::ADMIN_USER).await;
    browser
        .fill("#password", crate::harness::ADMIN_PASSWORD)
        .await;
    browser
        .find("#password")
        .await
        .send_keys(&fantoccini::key::Key::Enter.to_string())
        .await
        .unwrap();
    browser.until_path("/ui/").await;
    let htmx = browser
        .client
        .execute("return typeof window.htmx", vec![])
        .await
        .unwrap();
    // WebDriver's own scripts still run; the page's do not: htmx never loaded.
    assert_eq!(htmx, serde_json::json!("undefined"), "scripts ran");
    assert_eq!(browser.text("#total-functions").await, "3");
    browser.go(&format!("{url}/ui/functions")).await;
    browser.find("tr[data-function='sha512sum']").await;
    browser
        .go(&format!("{url}/ui/functions/openfaas-fn/echo"))
        .await;
    let logs = browser.text("#logs").await;
    assert!(!logs.is_empty(), "the last lines are on the page");
    browser.find("#chart-counts").await;
    browser.go(&format!("{url}/ui/calls")).await;
    browser.click(&format!("tr[data-call='{id}'] a")).await;
    browser.until_path(&format!("/ui/calls/{id}")).await;
    assert_eq!(browser.text("#call-state").await, "succeeded");
    let result = browser.text("#result-body").await;
    assert!(result.contains("read me without scripts"), "{result}");
    browser.go(&format!("{url}/ui/dead-letters")).await;
    browser.find("#calls").await;
    browser.close().await;
}
