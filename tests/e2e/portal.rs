//! The web portal over plain HTTP: who may see it, the session cookie, and CSRF. (What a browser
//! does with it is in `portal_browser.rs`.)

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::harness::{ADMIN_PASSWORD, ADMIN_USER, get_json, up_with_echo};

/// A client that follows no redirect and keeps no cookie, so each answer is seen as sent.
fn browserless() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in; the session cookie (`name=value`) and the whole `Set-Cookie` line.
pub async fn log_in(url: &str, extra: &[(&str, &str)]) -> (String, String) {
    let mut request = browserless().post(format!("{url}/ui/login")).form(&[
        ("user", ADMIN_USER),
        ("password", ADMIN_PASSWORD),
        ("next", "/ui/functions"),
    ]);
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/ui/functions");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    (cookie, set)
}

/// The CSRF token a page carries.
pub fn csrf_of(page: &str) -> String {
    let start = page
        .find(r#"name="csrf-token" content=""#)
        .expect("a csrf meta tag")
        + r#"name="csrf-token" content=""#.len();
    page[start..start + page[start..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn without_a_session_pages_redirect_to_the_login_and_the_api_answers_401() {
    let (_dir, sluice, _http) = up_with_echo(&[]).await;
    let url = &sluice.url;
    let client = browserless();
    for page in [
        "/ui/",
        "/ui/functions",
        "/ui/functions?q=ec",
        "/ui/functions/openfaas-fn/echo",
        "/ui/functions/openfaas-fn/echo/scale",
        "/ui/functions/openfaas-fn/echo/remove",
        "/ui/deploy",
        "/ui/calls",
        "/ui/dead-letters",
        "/ui/dead-letters/redrive-all",
        "/ui/calls/some-call",
        "/ui/no-such-page",
    ] {
        let r = client.get(format!("{url}{page}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{page}");
        let location = r.headers()[LOCATION].to_str().unwrap();
        assert!(
            location.starts_with("/ui/login?next=/ui/"),
            "{page}: {location}"
        );
    }
    // A change without a session goes nowhere either.
    let r = client
        .post(format!("{url}/ui/functions/openfaas-fn/echo/remove"))
        .form(&[("_csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    for api in [
        "/ui/api/overview",
        "/ui/api/functions",
        "/ui/api/functions/openfaas-fn/echo/logs",
        "/ui/api/functions/openfaas-fn/echo/summary",
        "/ui/api/functions/openfaas-fn/echo/scaling",
        "/ui/api/calls/some-call/summary",
        "/ui/api/calls/some-call/result",
        "/ui/api/calls/some-call/request",
        "/ui/api/anything",
    ] {
        let r = client.get(format!("{url}{api}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{api}");
        // No Basic challenge: a browser would pop up its own password dialog.
        assert!(!r.headers().contains_key("www-authenticate"), "{api}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{api}");
    }
    let r = client.get(format!("{url}/ui/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Log in to Sluice"));
    // A cookie that was never issued, or was altered, is no session.
    let r = client
        .get(format!("{url}/ui/"))
        .header(
            COOKIE,
            "sluice_session=v1.YWRtaW4.99999999999.AAAAAAAAAAAAAAAAAAAAAA.AAAA",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // The management API still wants its own credentials, not the portal's cookie.
    let (cookie, _) = log_in(url, &[]).await;
    let r = client
        .get(format!("{url}/system/functions"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_login_sets_a_strict_cookie_and_a_wrong_password_is_refused() {
    let (_dir, sluice, _http) = up_with_echo(&[]).await;
    let url = &sluice.url;
    let client = browserless();
    let r = client
        .post(format!("{url}/ui/login"))
        .form(&[("user", ADMIN_USER), ("password", "not-the-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!r.headers().contains_key(SET_COOKIE));
    assert!(r.text().await.unwrap().contains("not right"));

    let (cookie, set) = log_in(url, &[]).await;
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/ui"), "{set}");
    assert!(!set.contains("Secure"), "{set}");
    let (_, over_tls) = log_in(url, &[("x-forwarded-proto", "https")]).await;
    assert!(over_tls.contains("; Secure"), "{over_tls}");

    let r = client
        .get(format!("{url}/ui/functions"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"data-function="echo""#), "{page}");

    // Logging out takes the cookie away.
    let csrf = csrf_of(&page);
    let r = client
        .post(format!("{url}/ui/logout"))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn a_change_without_the_sessions_csrf_token_is_refused() {
    let (_dir, sluice, http) = up_with_echo(&[]).await;
    let url = &sluice.url;
    let client = browserless();
    let (cookie, _) = log_in(url, &[]).await;
    let page = client
        .get(format!("{url}/ui/functions/openfaas-fn/echo/scale"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    let scale = format!("{url}/ui/functions/openfaas-fn/echo/scale");
    // No token, a wrong token, another session's token, a token from another origin.
    let (other_cookie, _) = log_in(url, &[]).await;
    let other_page = client
        .get(format!("{url}/ui/"))
        .header(COOKIE, &other_cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let other_csrf = csrf_of(&other_page);
    assert_ne!(csrf, other_csrf);
    for (form, origin) in [
        (vec![("replicas", "3")], None),
        (vec![("replicas", "3"), ("_csrf", "wrong")], None),
        (
            vec![("replicas", "3"), ("_csrf", other_csrf.as_str())],
            None,
        ),
        (
            vec![("replicas", "3"), ("_csrf", csrf.as_str())],
            Some("http://evil.example"),
        ),
    ] {
        let mut request = client.post(&scale).header(COOKIE, &cookie).form(&form);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{form:?} {origin:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "forbidden");
    }
    // A JSON or other body cannot carry the token in a field: refused too.
    let r = client
        .post(&scale)
        .header(COOKIE, &cookie)
        .body(format!("replicas=3&_csrf={csrf}"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let status: serde_json::Value = get_json(&http, format!("{url}/system/function/echo")).await;
    assert_eq!(status["replicas"], 1, "nothing was scaled: {status}");

    // With the token, in the form or in htmx's header, the change is made.
    let r = client
        .post(&scale)
        .header(COOKIE, &cookie)
        .form(&[("replicas", "2"), ("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let status: serde_json::Value = get_json(&http, format!("{url}/system/function/echo")).await;
    assert_eq!(status["replicas"], 2, "{status}");
    let r = client
        .post(&scale)
        .header(COOKIE, &cookie)
        .header("x-csrf-token", &csrf)
        .form(&[("replicas", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // A count out of range is shown next to its field.
    let r = client
        .post(&scale)
        .header(COOKIE, &cookie)
        .form(&[("replicas", "-4"), ("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"id="replicas-error""#), "{page}");
}

#[tokio::test]
async fn a_result_is_downloaded_as_bytes_never_as_a_page_of_the_portal() {
    let (_dir, sluice, http) = up_with_echo(&[]).await;
    let url = &sluice.url;
    // A function's answer that is HTML with a script: shown escaped, downloaded inert.
    let r = http
        .post(format!("{url}/async-function/echo"))
        .header("content-type", "text/html")
        .body("<script>alert(1)</script>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    crate::harness::eventually("the call to finish", || async {
        let c: serde_json::Value = get_json(&http, format!("{url}/system/calls/{id}")).await;
        (c["state"] == "succeeded").then_some(())
    })
    .await;
    let (cookie, _) = log_in(url, &[]).await;
    let client = browserless();
    let page = client
        .get(format!("{url}/ui/calls/{id}"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"), "{page}");
    let r = client
        .get(format!("{url}/ui/api/calls/{id}/result"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["content-security-policy"], "sandbox");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    assert_eq!(r.text().await.unwrap(), "<script>alert(1)</script>");
    // Nothing kept for a call that did not fail.
    let r = client
        .get(format!("{url}/ui/api/calls/{id}/request"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

async fn the_overview_shows_the_backlog_and_the_backends(backend: crate::harness::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    // Calls that take seconds each: for a while they are all waiting or running.
    let slow = crate::harness::sample("slow", "python3 -u sleep.py", true, &[]);
    crate::harness::deploy(&http, url, &slow).await;
    for _ in 0..3 {
        let r = http
            .post(format!("{url}/async-function/slow?seconds=60"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let (cookie, _) = log_in(url, &[]).await;
    let page = browserless()
        .get(format!("{url}/ui/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (store, queue) = match backend {
        crate::harness::Backend::Embedded => ("SQLite", "SQLite"),
        crate::harness::Backend::Shared(_) => ("Postgres", "NATS JetStream"),
    };
    assert!(
        page.contains(&format!(
            "Calls and functions: <strong>{store}</strong> <span class=\"ok\">answering"
        )),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "Queue: <strong>{queue}</strong> <span class=\"ok\">answering"
        )),
        "{page}"
    );
    // Three calls submitted: each waiting or running, and the oldest waiting one named.
    let queued = |page: &str| -> u64 {
        let start = page.find(r#"id="queued">"#).unwrap() + r#"id="queued">"#.len();
        page[start..start + page[start..].find('<').unwrap()]
            .parse()
            .unwrap()
    };
    let running = |page: &str| -> u64 {
        let end = page.find(" running").unwrap();
        let start = page[..end].rfind('>').unwrap() + 1;
        page[start..end].trim().parse().unwrap()
    };
    assert_eq!(queued(&page) + running(&page), 3, "{page}");
    if queued(&page) > 0 {
        assert!(page.contains(r#"id="oldest""#), "{page}");
    }
}

on_both_backends!(the_overview_shows_the_backlog_and_the_backends);

#[tokio::test]
async fn a_queued_call_is_cancelled_and_a_function_removed_from_the_portal() {
    // One call worked on at a time: a second call waits in the queue.
    let (_dir, sluice, http) = up_with_echo(&["--worker-concurrency", "1"]).await;
    let url = &sluice.url;
    crate::harness::deploy(
        &http,
        url,
        &crate::harness::sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = http
            .post(format!("{url}/async-function/sleep?seconds=30"))
            .send()
            .await
            .unwrap();
        ids.push(r.headers()["x-call-id"].to_str().unwrap().to_owned());
    }
    // Once one runs (the worker's one slot taken), the other stays queued behind it.
    let queued = crate::harness::eventually("one call running, one queued", || async {
        let mut states = Vec::new();
        for id in &ids {
            let c: serde_json::Value = get_json(&http, format!("{url}/system/calls/{id}")).await;
            states.push((
                c["state"].as_str().unwrap_or_default().to_owned(),
                id.clone(),
            ));
        }
        let running = states.iter().any(|(s, _)| s == "running");
        let queued = states
            .iter()
            .find(|(s, _)| s == "queued")
            .map(|(_, id)| id.clone());
        if running { queued } else { None }
    })
    .await;
    let (cookie, _) = log_in(url, &[]).await;
    let client = browserless();
    let page = client
        .get(format!("{url}/ui/calls/{queued}"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="cancel""#), "{page}");
    let csrf = csrf_of(&page);
    let r = client
        .post(format!("{url}/ui/calls/{queued}/cancel"))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let c: serde_json::Value = get_json(&http, format!("{url}/system/calls/{queued}")).await;
    assert_eq!(c["state"], "cancelled", "{c}");
    // Cancelling it again changes nothing (as the API's cancel).
    let r = client
        .post(format!("{url}/ui/calls/{queued}/cancel"))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // Removing asks first, then removes.
    let page = client
        .get(format!("{url}/ui/functions/openfaas-fn/echo/remove"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Remove <strong>echo</strong>"), "{page}");
    let status: serde_json::Value = get_json(&http, format!("{url}/system/function/echo")).await;
    assert_eq!(status["name"], "echo", "nothing removed by asking");
    let r = client
        .post(format!("{url}/ui/functions/openfaas-fn/echo/remove"))
        .header(COOKIE, &cookie)
        .form(&[("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = http
        .get(format!("{url}/system/function/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn calls_are_listed_newest_first_a_page_at_a_time_and_filtered() {
    let (_dir, sluice, http) = up_with_echo(&[]).await;
    let url = &sluice.url;
    let mut ids = Vec::new();
    for i in 0..55 {
        let r = http
            .post(format!("{url}/async-function/echo"))
            .header("x-call-id", format!("page-call-{i:02}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(format!("page-call-{i:02}"));
    }
    let (cookie, _) = log_in(url, &[]).await;
    let client = browserless();
    let get = |path: String| {
        let (client, cookie) = (client.clone(), cookie.clone());
        async move {
            client
                .get(format!("{url}{path}"))
                .header(COOKIE, &cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let rows = |page: &str| -> Vec<String> {
        page.match_indices(r#"data-call=""#)
            .map(|(i, m)| {
                let rest = &page[i + m.len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect()
    };
    let first = get("/ui/calls?function=echo.openfaas-fn".into()).await;
    let first_rows = rows(&first);
    assert_eq!(first_rows.len(), 50, "{first}");
    // Newest first: the ids were submitted in order.
    let mut sorted = first_rows.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(first_rows, sorted);
    let start = first.find(r#"rel="next""#).expect("a link to older calls");
    let href_start = first[..start].rfind("href=\"").unwrap() + "href=\"".len();
    let next = first[href_start..start]
        .trim_end_matches("\" ")
        .replace("&amp;", "&");
    let second = get(next.trim_end_matches('"').to_owned()).await;
    let second_rows = rows(&second);
    assert_eq!(second_rows.len(), 5, "{second}");
    assert!(second_rows.iter().all(|id| !first_rows.contains(id)));
    assert!(!second.contains(r#"rel="next""#));
    // A filter on a state no call is in, and one that cannot be.
    let none = get("/ui/calls?state=cancelled".into()).await;
    assert!(rows(&none).is_empty() && none.contains("No calls here."));
    let bad = get("/ui/calls?state=lost".into()).await;
    assert!(bad.contains("is not a call state"), "{bad}");
}
