//! Acceptance 3: a corpus of hostile and malformed requests against every route. Every one is
//! answered with a 4xx (a JSON error whenever the request is HTTP at all), none with a 5xx or
//! not at all; nothing panics, calls accepted before are all finished, and the functions still
//! answer.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{ADMIN_PASSWORD, ADMIN_USER, Receiver, Sluice, deploy, eventually, sample};

/// One request of the corpus, as bytes on the wire.
struct Case {
    what: String,
    bytes: Vec<u8>,
    /// Whether it is HTTP that hyper parses (then the answer is the gateway's JSON); if not,
    /// hyper answers with a bare status and closes the connection.
    parses: bool,
    /// After the bytes, close our side (a body cut short).
    truncate: bool,
    /// Not HTTP/1 at all: the connection may be closed without an answer.
    may_close: bool,
}

/// What came back.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn authorization() -> String {
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"));
    format!("Basic {token}")
}

/// A request with the admin's credentials (so the corpus reaches past authentication).
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    out.push_str(&format!("Authorization: {}\r\n", authorization()));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn case(what: impl Into<String>, bytes: Vec<u8>) -> Case {
    Case {
        what: what.into(),
        bytes,
        parses: true,
        truncate: false,
        may_close: false,
    }
}

fn unparseable(what: impl Into<String>, bytes: Vec<u8>) -> Case {
    Case {
        parses: false,
        ..case(what, bytes)
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The corpus: bad names on every route that takes one, paths that climb, bodies broken in
/// every way, hostile headers, odd methods, huge queries.
fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let names = [
        "..",
        ".",
        "%2e%2e",
        "ECHO",
        "echo.",
        "echo..",
        ".openfaas-fn",
        "-echo",
        "echo-",
        "ec_ho",
        &"a".repeat(64),
        "%C3%A9cho",
        "echo%00",
        "echo.Bad_NS",
        "%20",
        "$(id)",
        ";ls",
        "..%2f",
        "echo.openfaas-fn.x",
    ];
    for name in names {
        let quoted = serde_json::to_string(name).unwrap();
        cases.push(case(
            format!("sync call of {name:?}"),
            request("GET", &format!("/function/{name}"), &[], b""),
        ));
        cases.push(case(
            format!("async call of {name:?}"),
            request("POST", &format!("/async-function/{name}"), &[], b"x"),
        ));
        cases.push(case(
            format!("describe {name:?}"),
            request("GET", &format!("/system/function/{name}"), &[], b""),
        ));
        cases.push(case(
            format!("scale {name:?}"),
            request(
                "POST",
                &format!("/system/scale-function/{name}"),
                &[JSON],
                br#"{"replicas":1}"#,
            ),
        ));
        cases.push(case(
            format!("remove {name:?}"),
            request(
                "DELETE",
                "/system/functions",
                &[JSON],
                format!(r#"{{"functionName":{quoted}}}"#).as_bytes(),
            ),
        ));
        cases.push(case(
            format!("deploy {name:?}"),
            request(
                "POST",
                "/system/functions",
                &[JSON],
                format!(r#"{{"service":{quoted},"envProcess":"cat"}}"#).as_bytes(),
            ),
        ));
        cases.push(case(
            format!("logs of {name:?}"),
            request("GET", &format!("/system/logs?name={name}"), &[], b""),
        ));
        cases.push(case(
            format!("calls of {name:?}"),
            request("GET", &format!("/system/calls?function={name}"), &[], b""),
        ));
        cases.push(case(
            format!("list in namespace {name:?}"),
            request(
                "GET",
                &format!("/system/functions?namespace={name}"),
                &[],
                b"",
            ),
        ));
    }
    // Paths below a function that climb out of it, on both paths.
    for path in [
        "/../../system/functions",
        "/%2e%2e/%2e%2e/system/functions",
        "/./x",
        "/.%2E/x",
        "/a\\b",
        "/a/../../../etc/passwd",
    ] {
        for route in ["function", "async-function"] {
            cases.push(case(
                format!("{route}/echo{path}"),
                request("POST", &format!("/{route}/echo{path}"), &[JSON], b"{}"),
            ));
        }
    }
    // Deployment bodies broken in every way.
    let deployments: &[(&str, &[u8])] = &[
        ("not JSON", b"{not json"),
        ("empty", b""),
        ("whitespace", b"   \n"),
        ("an array", b"[]"),
        ("a string", b"\"echo\""),
        ("null", b"null"),
        ("service a number", br#"{"service":12,"envProcess":"cat"}"#),
        ("no service", br#"{"envProcess":"cat"}"#),
        ("no process", br#"{"service":"noproc"}"#),
        ("labels a list", br#"{"service":"x1","envProcess":"cat","labels":["a"]}"#),
        ("envVars numbers", br#"{"service":"x2","envProcess":"cat","envVars":{"a":1}}"#),
        ("bad mode", br#"{"service":"x3","envProcess":"cat","envVars":{"mode":"warp"}}"#),
        ("bad scale", br#"{"service":"x4","envProcess":"cat","labels":{"com.openfaas.scale.min":"-1"}}"#),
        ("min over max", br#"{"service":"x5","envProcess":"cat","labels":{"com.openfaas.scale.min":"5","com.openfaas.scale.max":"2"}}"#),
        ("bad retry", br#"{"service":"x6","envProcess":"cat","annotations":{"com.openfaas.retry.attempts":"0"}}"#),
        ("bad queue", br#"{"service":"x7","envProcess":"cat","annotations":{"com.openfaas.queue":"a b"}}"#),
        ("bad auth label", br#"{"service":"x8","envProcess":"cat","labels":{"com.sluice.auth":"maybe"}}"#),
        ("bad rate", br#"{"service":"x9","envProcess":"cat","labels":{"com.sluice.rate-limit":"0"}}"#),
        ("NUL in process", b"{\"service\":\"x10\",\"envProcess\":\"cat\\u0000\"}"),
        ("truncated", br#"{"service":"x11","envPro"#),
        ("deep nesting", &[b'['; 10_000]),
        ("invalid UTF-8", b"{\"service\":\"\xff\xfe\",\"envProcess\":\"cat\"}"),
        ("bad workdir", br#"{"service":"x12","envProcess":"cat","annotations":{"com.sluice.workdir":"/no/such/dir"}}"#),
        ("handler climbing", br#"{"service":"x13","envProcess":"cat","annotations":{"com.sluice.workdir":"../../../../"}}"#),
    ];
    for (what, body) in deployments {
        for method in ["POST", "PUT"] {
            cases.push(case(
                format!("{method} deployment: {what}"),
                request(method, "/system/functions", &[JSON], body),
            ));
        }
    }
    // Wrong content types on JSON routes.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ] {
        cases.push(case(
            format!("deployment as {content_type}"),
            request(
                "POST",
                "/system/functions",
                &[("Content-Type", content_type)],
                br#"{"service":"ct","envProcess":"cat"}"#,
            ),
        ));
    }
    // Scale and remove bodies.
    for body in [
        &b"{}"[..],
        br#"{"replicas":-1}"#,
        br#"{"replicas":1000000}"#,
        br#"{"replicas":"two"}"#,
        br#"{"replicas":1.5}"#,
    ] {
        cases.push(case(
            format!("scale body {}", String::from_utf8_lossy(body)),
            request("POST", "/system/scale-function/echo", &[JSON], body),
        ));
    }
    for body in [
        &b"{}"[..],
        br#"{"functionName":null}"#,
        br#"{"name":"echo"}"#,
        b"x",
    ] {
        cases.push(case(
            format!("remove body {}", String::from_utf8_lossy(body)),
            request("DELETE", "/system/functions", &[JSON], body),
        ));
    }
    // Oversized and truncated bodies, and lengths that do not match.
    cases.push(case(
        "management body over 1 MiB",
        request("POST", "/system/functions", &[JSON], &vec![b' '; 1_100_000]),
    ));
    cases.push(case(
        "function body over the limit",
        request("POST", "/function/echo", &[], &vec![b'x'; 17 * 1024 * 1024]),
    ));
    cases.push(case(
        "declared far over the limit",
        request(
            "POST",
            "/async-function/echo",
            &[("Content-Length", "99999999999")],
            b"",
        ),
    ));
    let mut cut = case(
        "a deployment cut short",
        request(
            "POST",
            "/system/functions",
            &[JSON, ("Content-Length", "100")],
            br#"{"service":"#,
        ),
    );
    cut.truncate = true;
    cases.push(cut);
    let mut cut = case(
        "an async body cut short",
        request(
            "POST",
            "/async-function/echo",
            &[("Content-Length", "1000")],
            b"only this",
        ),
    );
    cut.truncate = true;
    cases.push(cut);
    cases.push(case(
        "more bytes than declared",
        request(
            "POST",
            "/system/functions",
            &[JSON, ("Content-Length", "2")],
            br#"{}{"service":"extra","envProcess":"id"}"#,
        ),
    ));
    cases.push(unparseable(
        "two Content-Lengths that differ",
        b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
    ));
    cases.push(unparseable(
        "Content-Length not a number",
        b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n".to_vec(),
    ));
    // Hostile headers.
    let big = "v".repeat(100 * 1024);
    cases.push(case(
        "one 100 KB header",
        request("POST", "/function/cat", &[("X-Big", &big)], b"x"),
    ));
    cases.push(case(
        "one 100 KB header, async",
        request("POST", "/async-function/cat", &[("X-Big", &big)], b"x"),
    ));
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cases.push(case(
        "150 headers",
        request("GET", "/function/echo", &many, b""),
    ));
    let lots: String = (0..300).map(|i| format!("X-L{i}: v\r\n")).collect();
    cases.push(unparseable(
        "300 headers",
        format!("GET /function/echo HTTP/1.1\r\nHost: x\r\n{lots}\r\n").into_bytes(),
    ));
    cases.push(unparseable(
        "NUL in a header value",
        b"GET /function/echo HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(),
    ));
    cases.push(unparseable(
        "a bare CR in a header value",
        b"GET /function/echo HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_vec(),
    ));
    cases.push(unparseable(
        "a space in a header name",
        b"GET /function/echo HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n".to_vec(),
    ));
    cases.push(unparseable(
        "a header without a colon",
        b"GET /function/echo HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n".to_vec(),
    ));
    cases.push(unparseable(
        "garbage",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    ));
    let mut preface = unparseable(
        "HTTP/2 preface on HTTP/1",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
    );
    preface.may_close = true;
    cases.push(preface);
    cases.push(unparseable(
        "a bad version",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
    ));
    for (header, value) in [
        ("X-Callback-Url", "not a url"),
        ("X-Callback-Url", "ftp://example.com/"),
        ("X-Callback-Url", "http://169.254.169.254/latest/meta-data/"),
        ("X-Callback-Url", "http://[::ffff:169.254.169.254]/"),
        ("X-Callback-Url", "file:///etc/passwd"),
        ("X-Callback-Url", "http://user:pass@/x"),
        ("X-Call-Id", "has space"),
        ("X-Call-Id", "../../x"),
        ("X-Call-Id", &"i".repeat(200)),
        ("X-Sluice-Hops", "99"),
        ("X-Sluice-Hops", "-3"),
    ] {
        cases.push(case(
            format!("async with {header}: {}", &value[..value.len().min(40)]),
            request("POST", "/async-function/echo", &[(header, value)], b"x"),
        ));
    }
    // Credentials that cannot be read (only the management API reads them; a function's own
    // Authorization is its business).
    for authorization in ["Digest abc", "Basic !!!notbase64", "Basic Og==", "Bearer"] {
        let bytes = format!(
            "GET /system/functions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: {authorization}\r\n\r\n"
        );
        cases.push(case(
            format!("credentials {authorization:?}"),
            bytes.into_bytes(),
        ));
    }
    cases.push(unparseable(
        "a control character as credentials",
        b"GET /system/functions HTTP/1.1\r\nHost: x\r\nAuthorization: \x01\r\n\r\n".to_vec(),
    ));
    // Odd methods on every route.
    for target in [
        "/function/echo",
        "/async-function/echo",
        "/system/functions",
        "/system/calls",
        "/healthz",
    ] {
        for method in ["FOO", "TRACE", "PROPFIND", &"M".repeat(1000)] {
            cases.push(case(
                format!("{} {target}", &method[..method.len().min(10)]),
                request(method, target, &[], b""),
            ));
        }
    }
    // Query strings: huge, and bad values.
    let huge = "q".repeat(20_000);
    for target in [
        format!("/function/echo?{huge}"),
        format!("/system/calls?cursor={huge}"),
        "/system/calls?limit=abc".to_owned(),
        "/system/calls?limit=0".to_owned(),
        "/system/calls?limit=100000".to_owned(),
        "/system/calls?status=exploded".to_owned(),
        "/system/calls?cursor=zzz".to_owned(),
        "/system/logs?name=echo&follow=maybe".to_owned(),
        "/system/logs?name=echo&since=yesterday".to_owned(),
        "/system/logs".to_owned(),
        "/system/calls/has%20space".to_owned(),
        "/system/calls/nope/result".to_owned(),
        "/system/calls/nope/retry".to_owned(),
        "/system/function/%E2%98%83".to_owned(),
        "/nope".to_owned(),
        "/system/nope".to_owned(),
        "/function/".to_owned(),
        "/async-function/".to_owned(),
    ] {
        let method = if target.ends_with("/retry") {
            "POST"
        } else {
            "GET"
        };
        cases.push(case(
            format!("{method} {}", &target[..target.len().min(60)]),
            request(method, &target, &[], b""),
        ));
    }
    cases
}

/// Sends one case on a connection of its own and reads the answer (within a deadline).
async fn send(addr: &str, case: &Case) -> Option<Answer> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A server that answers before reading all of a large body may close early: keep going.
    let _ = stream.write_all(&case.bytes).await;
    if case.truncate {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    if read.is_err() && answer.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

#[tokio::test]
async fn a_hostile_corpus_gets_only_4xx_answers_and_breaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = Sluice::start(&data, &[]);
    let url = &sluice.url;
    let addr = url.strip_prefix("http://").unwrap();
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    deploy(&http, url, &sample("cat", "cat", false, &[])).await;
    deploy(
        &http,
        url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    // Calls accepted before the corpus: they must all finish, whatever comes after.
    let receiver = Receiver::start().await;
    let mut accepted = Vec::new();
    for i in 0..10 {
        let r = http
            .post(format!("{url}/async-function/sleep?seconds=0.5"))
            .header("x-callback-url", &receiver.url)
            .header("x-call-id", format!("before-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        accepted.push(format!("before-{i}"));
    }

    let cases = corpus();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let Some(answer) = send(addr, case).await else {
            if !case.may_close {
                failures.push(format!("{}: no answer", case.what));
            }
            continue;
        };
        if !(400..500).contains(&answer.status) {
            failures.push(format!("{}: {} {}", case.what, answer.status, answer.body));
            continue;
        }
        if case.parses {
            let json: Option<Value> = serde_json::from_str(&answer.body).ok();
            let code = json.as_ref().and_then(|j| j["code"].as_str());
            let marked = answer.head.contains("x-sluice-error:");
            if code.is_none() || !marked || json.as_ref().is_some_and(|j| !j["message"].is_string())
            {
                failures.push(format!(
                    "{}: {} not a JSON error: {:?}",
                    case.what, answer.status, answer.body
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Nothing panicked, nothing was deployed by the corpus, and all is still well.
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    let names: Vec<Value> =
        crate::harness::get_json(&http, format!("{url}/system/functions")).await;
    let mut names: Vec<&str> = names.iter().map(|f| f["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["cat", "echo", "sleep"]);
    for id in &accepted {
        eventually("every call accepted before to finish", || async {
            let call: Value =
                crate::harness::try_get_json(&http, format!("{url}/system/calls/{id}")).await?;
            (call["state"] == "succeeded").then_some(())
        })
        .await;
    }
    let r = http
        .post(format!("{url}/function/echo"))
        .body("alive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "alive");
    let r = http
        .post(format!("{url}/function/cat"))
        .body("alive")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "alive");
}
