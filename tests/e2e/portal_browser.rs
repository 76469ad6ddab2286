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
