//! Who may do what, and what a hostile client cannot make Sluice do: the findings of issue 9's
//! probe of `sluice up`, each as a regression test.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{
    ADMIN_PASSWORD, ADMIN_USER, Receiver, Sluice, deploy, eventually, get_json, sample,
};

/// Sends `request` (a whole HTTP/1.1 request, as written) on a fresh connection, as
/// `curl --path-as-is` would: nothing normalised on the way. Returns the status and the body.
pub async fn raw(url: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Runs the README's verification (`functions/verify_callback.py`) on a callback's headers
/// and `body`.
fn verified(key: &str, callback: &crate::harness::Callback, body: &[u8]) -> bool {
    use std::io::Write;
    let headers: serde_json::Map<String, Value> = callback
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
        .collect();
    let mut child = std::process::Command::new("python3")
        .arg(crate::harness::functions_dir().join("verify_callback.py"))
        .arg(Value::Object(headers).to_string())
        .env("SLUICE_CALLBACK_SIGNING_KEY", key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait().unwrap().success()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The functions the registry lists, by name.
async fn names(http: &reqwest::Client, url: &str) -> Vec<String> {
    let list: Vec<Value> = get_json(http, format!("{url}/system/functions")).await;
    list.iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_management_api_needs_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--api-token", "automation-token-0123456789"],
    );
    let url = &sluice.url;
    let anonymous = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/system/functions"),
        ("POST", "/system/functions"),
        ("PUT", "/system/functions"),
        ("DELETE", "/system/functions"),
        ("GET", "/system/function/echo"),
        ("GET", "/system/function/echo/scaling"),
        ("POST", "/system/scale-function/echo"),
        ("GET", "/system/info"),
        ("GET", "/system/namespaces"),
        ("GET", "/system/logs?name=echo"),
        ("GET", "/system/calls"),
        ("GET", "/system/calls/abc"),
        ("DELETE", "/system/calls/abc"),
        ("POST", "/system/calls/abc/retry"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        // Wrong credentials only on the first route: each counts as a failed attempt, and
        // enough of those from one address are refused outright (tested below).
        let wrong = [
            basic(ADMIN_USER, "wrong"),
            basic("root", ADMIN_PASSWORD),
            "Bearer not-the-token".to_owned(),
        ];
        let wrong = if path == "/system/functions" && method == "GET" {
            &wrong[..]
        } else {
            &[]
        };
        let offered = [None, Some("Bearer".to_owned())]
            .into_iter()
            .chain(wrong.iter().cloned().map(Some));
        for authorization in offered {
            let mut request = anonymous.request(m.clone(), format!("{url}{path}"));
            if let Some(a) = &authorization {
                request = request.header("authorization", a);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {authorization:?}");
            assert_eq!(
                r.headers()["www-authenticate"],
                r#"Basic realm="sluice", charset="UTF-8""#
            );
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "unauthorized", "{body}");
        }
    }
    // The right password, or an API token, lets in.
    let r = anonymous
        .get(format!("{url}/system/functions"))
        .header("authorization", basic(ADMIN_USER, ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = anonymous
        .get(format!("{url}/system/info"))
        .bearer_auth("automation-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Health and metrics stay open (probes and scrapers), as in OpenFaaS.
    for open in ["/healthz", "/metrics"] {
        let r = anonymous.get(format!("{url}{open}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{open}");
    }
}

#[tokio::test]
async fn guessing_from_one_address_is_slowed_down() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let anonymous = reqwest::Client::new();
    let with = |password: &str| {
        anonymous
            .get(format!("{url}/system/functions"))
            .header("authorization", basic(ADMIN_USER, password))
    };
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(with(&format!("guess-{i}")).send().await.unwrap().status());
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[11], 429, "{statuses:?}");
    // Past the limit even the right password is not checked, so guesses teach nothing.
    let r = with(ADMIN_PASSWORD).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "too_many_attempts");
}

/// faas-cli's requests, as it sends them (see DESIGN.md): login checks with `GET
/// /system/functions`, deploy is a PUT then a POST on 404, invoke sends no credentials, and
/// a faas-cli that has not logged in sends an empty `Authorization: Bearer`.
#[tokio::test]
async fn faas_cli_logs_in_then_deploys_lists_invokes_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.clone();
    let faas = reqwest::Client::builder()
        .user_agent("faas-cli/0.17.0")
        .build()
        .unwrap();
    // One request as faas-cli makes it: JSON bodies as application/json, the Authorization
    // header its login left (an empty bearer before it), no credentials on function routes.
    let send = |method: reqwest::Method, path: &str, auth: Option<&str>, body: Option<Value>| {
        let mut request = faas.request(method, format!("{url}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap() }
    };
    let deployment = json!({"service": "cat", "image": "ghcr.io/openfaas/alpine:latest",
                            "envProcess": "cat", "labels": {}, "annotations": {}});
    use reqwest::Method;
    // Not logged in.
    let r = send(
        Method::PUT,
        "/system/functions",
        Some("Bearer"),
        Some(deployment.clone()),
    )
    .await;
    assert_eq!(r.status(), 401);
    // faas-cli login --password-stdin checks with a list.
    let login = basic(ADMIN_USER, ADMIN_PASSWORD);
    let auth = Some(login.as_str());
    assert_eq!(
        send(Method::GET, "/system/functions", auth, None)
            .await
            .status(),
        200
    );
    // faas-cli deploy: PUT, then POST on 404.
    let r = send(
        Method::PUT,
        "/system/functions",
        auth,
        Some(deployment.clone()),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = send(Method::POST, "/system/functions", auth, Some(deployment)).await;
    assert_eq!(r.status(), 202);
    // faas-cli list.
    let list: Vec<Value> = send(Method::GET, "/system/functions", auth, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["name"], "cat");
    // faas-cli invoke, sync and async: no credentials, text/plain.
    for (route, status) in [("function", 200), ("async-function", 202)] {
        let r = faas
            .post(format!("{url}/{route}/cat.openfaas-fn"))
            .header("content-type", "text/plain")
            .body("meow")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{route}");
        if status == 200 {
            assert_eq!(r.text().await.unwrap(), "meow");
        }
    }
    // faas-cli remove.
    let remove = json!({"functionName": "cat", "namespace": "openfaas-fn"});
    let r = send(Method::DELETE, "/system/functions", auth, Some(remove)).await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn a_gateway_others_can_reach_refuses_to_start_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["gateway", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--database-url", "postgres://127.0.0.1:1/none"])
        .args(["--nats", "nats://127.0.0.1:1"])
        .env_remove("SLUICE_ADMIN_PASSWORD")
        .env_remove("SLUICE_API_TOKENS")
        .env_remove("SLUICE_AUTH_SECRETS_DIR")
        .env_remove("SLUICE_INSECURE_NO_AUTH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no credentials set") && stderr.contains("--admin-password"),
        "{stderr}"
    );
    // Nothing was created: the refusal comes before anything is touched.
    assert!(!dir.path().join("data").exists());
}

#[tokio::test]
async fn a_new_user_gets_a_private_data_dir_and_a_password_to_log_in_with() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = Sluice::start_as_new_user(&data, &[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for file in ["sluice.db", "sluice.db-wal", "sluice.db-shm", "lock"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let password_file = data.join("basic-auth-password");
    assert_eq!(mode(&password_file), 0o600);
    let password = std::fs::read_to_string(&password_file).unwrap();
    let password = password.trim();
    assert!(password.len() >= 32, "{password:?}");
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .get(format!("{}/system/functions", sluice.url))
        .basic_auth("admin", Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The password is kept across restarts, not made anew.
    drop(sluice);
    let again = Sluice::start_as_new_user(&data, &[]);
    assert_eq!(
        std::fs::read_to_string(&password_file).unwrap().trim(),
        password
    );
    let r = anonymous
        .get(format!("{}/system/functions", again.url))
        .basic_auth("admin", Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Finding 1: the async path replayed `/async-function/echo/../../system/functions` as a
/// management request with the worker's token; `%2e%2e` deployed a function.
#[tokio::test]
async fn paths_below_a_function_cannot_climb_out_of_it() {
    let (_dir, sluice, http) = crate::harness::up_with_echo(&[]).await;
    let url = &sluice.url;
    let receiver = Receiver::start().await;
    let deployment = r#"{"service":"pwned","envProcess":"id"}"#;
    for route in ["function", "async-function"] {
        for path in [
            "echo/../../system/functions",
            "echo/%2e%2e/%2e%2e/system/functions",
            "echo/%2E%2e/x",
            "echo/./x",
            "echo/.%2e/system/info",
            "echo.openfaas-fn/a/../../../system/functions",
        ] {
            let request = format!(
                "POST /{route}/{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 X-Callback-Url: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{deployment}",
                receiver.url,
                deployment.len()
            );
            let (status, body) = raw(url, &request).await;
            assert_eq!(status, 400, "/{route}/{path}: {body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["code"], "bad_request", "{body}");
        }
    }
    // Nothing was queued, so nothing is called back; and nothing was deployed.
    let calls: Value = get_json(&http, format!("{url}/system/calls")).await;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0), "{calls}");
    assert_eq!(names(&http, url).await, ["echo"]);
    // Ordinary paths below a function still work, dots inside segments too.
    let r = http
        .get(format!("{url}/function/echo/a.b/..c/v1.2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-path"], "/a.b/..c/v1.2");
}

/// Finding 2: a callback aimed at the gateway's own management API deployed a function, and a
/// web page could deploy one with a `text/plain` body.
#[tokio::test]
async fn a_callback_or_a_web_page_cannot_deploy_a_function() {
    let (_dir, sluice, http) = crate::harness::up_with_echo(&[]).await;
    let url = &sluice.url;
    let deployment = r#"{"service":"pwned","envProcess":"id"}"#;
    let r = reqwest::Client::new()
        .post(format!("{url}/async-function/echo"))
        .header("x-callback-url", format!("{url}/system/functions"))
        .header("content-type", "application/json")
        .body(deployment)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    let call: Value = eventually("the callback to be tried", || async {
        let call: Value =
            crate::harness::try_get_json(&http, format!("{url}/system/calls/{id}")).await?;
        call["callback"]["statusCode"].is_number().then_some(call)
    })
    .await;
    assert_eq!(call["callback"]["statusCode"], 401, "{call}");
    assert_eq!(names(&http, url).await, ["echo"]);

    // A page on another origin, with or without the admin's credentials cached by the browser.
    for (content_type, origin, expected) in [
        ("text/plain", None, 415),
        ("application/x-www-form-urlencoded", None, 415),
        ("application/json", Some("http://evil.example"), 403),
        ("text/plain", Some("http://evil.example"), 403),
        ("application/json", Some("null"), 403),
    ] {
        let mut request = http
            .post(format!("{url}/system/functions"))
            .header("content-type", content_type)
            .body(deployment);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), expected, "{content_type} from {origin:?}");
        let body: Value = r.json().await.unwrap();
        assert!(body["code"].is_string(), "{body}");
    }
    assert_eq!(names(&http, url).await, ["echo"]);
    // The same origin may: the portal will be served from here.
    let same = url.strip_prefix("http://").unwrap();
    let r = http
        .post(format!("{url}/system/functions"))
        .header("origin", url.as_str())
        .header("host", same)
        .json(&json!({"service": "fine", "envProcess": "cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// Finding 4: `echo.` was taken for `echo` (a DELETE of `echo.` removed it), and any method
/// token was queued and replayed.
#[tokio::test]
async fn odd_names_and_methods_are_refused() {
    let (_dir, sluice, http) = crate::harness::up_with_echo(&[]).await;
    let url = &sluice.url;
    for name in ["echo.", "echo..", ".openfaas-fn", "echo.openfaas-fn."] {
        let r = http
            .delete(format!("{url}/system/functions"))
            .json(&json!({ "functionName": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}");
        // On a function route a name no function can have is a 404, as OpenFaaS clients
        // expect for a function that is not there; either way nothing is queued for `echo`.
        let r = http
            .post(format!("{url}/async-function/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{name}");
        assert_eq!(
            r.headers()["x-sluice-error"],
            "function_not_found",
            "{name}"
        );
    }
    assert_eq!(names(&http, url).await, ["echo"]);
    let long = "X".repeat(10_000);
    for method in ["FOO", "CONNECT", "TRACE", long.as_str()] {
        for route in ["function", "async-function"] {
            let request = format!(
                "{method} /{route}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            );
            let (status, body) = raw(url, &request).await;
            assert!(
                status == 405 || status == 400,
                "{} /{route}: {status} {body}",
                &method[..method.len().min(10)]
            );
        }
    }
    let calls: Value = get_json(&http, format!("{url}/system/calls")).await;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0), "{calls}");

    // An 11 MB label map was deployed and then returned by every list.
    let huge: serde_json::Map<String, Value> = (0..1100)
        .map(|i| (format!("label-{i}"), json!("v".repeat(10_000))))
        .collect();
    let many: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("label-{i}"), json!("v")))
        .collect();
    for (labels, status) in [(huge, 413), (many, 400)] {
        let r = http
            .post(format!("{url}/system/functions"))
            .json(&json!({"service": "heavy", "envProcess": "cat", "labels": labels}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].is_string(), "{body}");
    }
    assert_eq!(names(&http, url).await, ["echo"]);
}

/// A function labelled `com.sluice.auth: required` needs the gateway's credentials on both
/// paths; the queue worker's own token runs its async calls; the function never sees them.
#[tokio::test]
async fn a_function_can_require_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = "function-caller-token-42";
    let sluice = Sluice::start(&data, &["--api-token", token]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let private = sample(
        "private",
        "python3 -u echo.py",
        true,
        &[("com.sluice.auth", "required")],
    );
    deploy(&http, url, &private).await;
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .post(format!("{url}/function/private"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anonymous
        .post(format!("{url}/async-function/private"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anonymous
        .post(format!("{url}/function/private"))
        .bearer_auth(token)
        .header("cookie", "session=abc")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value =
        serde_json::from_str(r.headers()["x-echo-headers"].to_str().unwrap()).unwrap();
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("cookie").is_none(), "{seen}");

    let receiver = Receiver::start().await;
    let r = anonymous
        .post(format!("{url}/async-function/private"))
        .bearer_auth(token)
        .header("x-callback-url", &receiver.url)
        .body("queued")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    crate::harness::callbacks(&receiver, 1).await;
    let callback = receiver.received().remove(0);
    assert_eq!(callback.header("x-function-status"), "200");
    assert_eq!(callback.body, "queued");
    let seen: Value = serde_json::from_str(callback.header("x-echo-headers")).unwrap();
    assert!(seen.get("authorization").is_none(), "{seen}");

    // A bad label value is refused at deploy, naming the label.
    crate::harness::bad_label_is_refused(&http, url, "com.sluice.auth", "yes").await;
}

/// Finding 8 and acceptance 4: credentials used in a run appear neither in the log nor in the
/// database.
#[tokio::test]
async fn credentials_are_kept_out_of_logs_and_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = "api-token-that-must-not-leak-7f3a";
    let sluice = Sluice::start(&data, &["--api-token", token]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    deploy(&http, url, &sample("fail", "python3 -u fail.py", true, &[])).await;
    let receiver = Receiver::start().await;
    let caller_secret = "Bearer caller-secret-9c1d";
    let cookie = "session=cookie-secret-51be";
    for target in ["echo", "fail?status=400"] {
        let r = reqwest::Client::new()
            .post(format!("{url}/async-function/{target}"))
            .header("authorization", caller_secret)
            .header("cookie", cookie)
            .header("x-callback-url", &receiver.url)
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Wrong credentials too, which are logged as failures.
    let r = reqwest::Client::new()
        .get(format!("{url}/system/functions"))
        .basic_auth(ADMIN_USER, Some("wrong-password-e1a9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = reqwest::Client::new()
        .get(format!("{url}/system/functions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Both calls end (a 400 is not retried), so their records, results and the failed one's
    // kept request are written.
    eventually("both calls to finish", || async {
        let calls: Value =
            crate::harness::try_get_json(&http, format!("{url}/system/calls")).await?;
        let calls = calls["calls"].as_array()?.clone();
        (calls.len() == 2
            && calls
                .iter()
                .all(|c| c["state"] == "succeeded" || c["state"] == "failed"))
        .then_some(())
    })
    .await;
    drop(sluice);
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "basic-auth-password" {
            stored.extend(std::fs::read(&path).unwrap());
        }
    }
    let log = std::fs::read(data.with_extension("log")).unwrap();
    for secret in [
        ADMIN_PASSWORD,
        token,
        "caller-secret-9c1d",
        "cookie-secret-51be",
        "wrong-password-e1a9",
    ] {
        let found = |hay: &[u8]| hay.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found(&stored), "{secret} is in the data dir");
        assert!(!found(&log), "{secret} is in the log");
    }
}

/// Acceptance 2: callbacks to metadata addresses, denied blocks, or names that resolve to them
/// are refused at submit with a 400 naming the reason, and nothing is queued.
#[tokio::test]
async fn callbacks_cannot_be_aimed_at_the_network_sluice_sits_in() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--callback-deny", "127.0.0.2/32,blocked.localhost"],
    );
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    for (target, why) in [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://0.0.0.0:9000/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://127.0.0.2:9000/x", "deny list"),
        ("http://blocked.localhost:9000/x", "deny list"),
        ("ftp://example.com/", "http:// or https://"),
        ("http://no-such-host.invalid/", "cannot be resolved"),
    ] {
        let r = http
            .post(format!("{url}/async-function/echo"))
            .header("x-callback-url", target)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{target}");
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{target}: {message}");
    }
    let calls: Value = get_json(&http, format!("{url}/system/calls")).await;
    assert_eq!(calls["calls"].as_array().map(Vec::len), Some(0), "{calls}");

    // A name that resolves to loopback, where private addresses are not allowed (the default
    // of `sluice gateway`): refused at submit.
    let strict_dir = dir.path().join("strict");
    let strict = Sluice::start(&strict_dir, &["--callback-allow-private", "false"]);
    deploy(
        &http,
        &strict.url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    for target in [
        "http://localhost:9000/",
        "http://127.0.0.1:9000/",
        "http://[::1]:9000/",
    ] {
        let r = http
            .post(format!("{}/async-function/echo", strict.url))
            .header("x-callback-url", target)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{target}");
        let message = r.text().await.unwrap();
        assert!(message.contains("loopback"), "{target}: {message}");
    }
    // An allow-list entry opens exactly what it names.
    let listed_dir = dir.path().join("listed");
    let listed = Sluice::start(
        &listed_dir,
        &[
            "--callback-allow-private",
            "false",
            "--callback-allow",
            "127.0.0.1/32",
        ],
    );
    deploy(
        &http,
        &listed.url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    let receiver = Receiver::start().await;
    let r = http
        .post(format!("{}/async-function/echo", listed.url))
        .header("x-callback-url", &receiver.url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    crate::harness::callbacks(&receiver, 1).await;
    let r = http
        .post(format!("{}/async-function/echo", listed.url))
        .header("x-callback-url", "http://93.184.215.14/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("allow list"));
}

/// Acceptance 2: a signed callback verifies with the README's procedure (the script it
/// shows), and fails when one byte of the body changes.
#[tokio::test]
async fn signed_callbacks_verify_and_a_changed_byte_does_not() {
    let key = "callback-signing-key-for-the-test";
    let (_dir, sluice, http) = crate::harness::up_with_echo(&["--callback-signing-key", key]).await;
    let url = &sluice.url;
    let receiver = Receiver::start().await;
    let callback = crate::harness::called_back(
        &http,
        format!("{url}/async-function/echo?x=1"),
        &receiver,
        "signed-call",
    )
    .await;
    assert!(callback.header("x-sluice-signature").starts_with("v1="));
    // The echo's body is empty here; a second call signs something with content.
    assert!(verified(key, &callback, &callback.body));
    assert!(!verified(
        "another-key-of-some-length",
        &callback,
        &callback.body
    ));
    let r = http
        .post(format!("{url}/async-function/echo"))
        .header("x-callback-url", &receiver.url)
        .body("the body that is signed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    crate::harness::callbacks(&receiver, 2).await;
    let second = receiver.received().remove(1);
    assert_eq!(second.body, "the body that is signed");
    assert!(verified(key, &second, &second.body));
    // One byte of the body changed: refused.
    let mut changed = second.body.to_vec();
    changed[4] ^= 0x01;
    assert!(!verified(key, &second, &changed));
    // Passed off as another call's, or with another status: refused.
    for (name, value) in [("x-call-id", "another-call"), ("x-function-status", "500")] {
        let mut forged = second.clone();
        forged.headers.insert(name, value.parse().unwrap());
        assert!(!verified(key, &forged, &second.body), "{name}");
    }
}

/// Acceptance 2: a callback pointing back at the gateway's async route does not loop. A
/// callback carries its call's `X-Call-Id`, so it is answered from the existing record and
/// queues nothing; and every callback counts its hops (`X-Sluice-Hops`), which the gateway
/// bounds, for chains that reach it with new ids through other hops.
#[tokio::test]
async fn a_callback_pointing_back_at_the_gateway_does_not_loop() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let next = format!("{url}/async-function/chain");
    let mut chain = sample("chain", "python3 -u chain.py", true, &[]);
    chain["envVars"]["NEXT_URL"] = json!(next);
    deploy(&http, url, &chain).await;
    let r = http
        .post(&next)
        .header("x-callback-url", &next)
        .body("round and round")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    let call: Value = eventually("the callback to be delivered", || async {
        let call: Value =
            crate::harness::try_get_json(&http, format!("{url}/system/calls/{id}")).await?;
        (call["callback"]["delivered"] == true).then_some(call)
    })
    .await;
    assert_eq!(call["callback"]["statusCode"], 202, "{call}");
    let page: Value = get_json(&http, format!("{url}/system/calls?function=chain")).await;
    assert_eq!(page["calls"].as_array().unwrap().len(), 1, "{page}");

    // Hops are counted on each callback and bounded at submit.
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    let receiver = Receiver::start().await;
    let r = http
        .post(format!("{url}/async-function/echo"))
        .header("x-callback-url", &receiver.url)
        .header("x-sluice-hops", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    crate::harness::callbacks(&receiver, 1).await;
    assert_eq!(receiver.received()[0].header("x-sluice-hops"), "4");
    for hops in ["10", "4294967295", "-1", "lots"] {
        let r = http
            .post(format!("{url}/async-function/echo"))
            .header("x-sluice-hops", hops)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{hops}");
    }
}
