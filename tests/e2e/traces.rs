//! One trace from the submitting client to the function and the callback: W3C `traceparent`
//! and `tracestate`, and `X-Request-Id`, kept with an async call through the queue (across a
//! restart of its worker, on both backends), shown by the calls API and in JSON logs, and spans
//! exported over OTLP/HTTP to a receiver the test runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::harness::{
    ADMIN_PASSWORD, ADMIN_USER, Backend, Callback, Receiver, Sluice, deploy, eventually, get_json,
    sample, try_get_json,
};

/// The caller's trace: the W3C spec's example.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

fn caller_traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// A `traceparent` taken apart: (trace id, parent id, flags), after checking its form.
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "not a traceparent: {traceparent:?}");
    assert_eq!(fields[0], "00", "{traceparent}");
    let hex = |s: &str, len| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    assert!(
        hex(fields[1], 32) && hex(fields[2], 16) && hex(fields[3], 2),
        "{traceparent}"
    );
    (fields[1].into(), fields[2].into(), fields[3].into())
}

/// The headers the `headers` sample function received, from its answer (the callback's body).
fn seen_by_function(callback: &Callback) -> HashMap<String, String> {
    serde_json::from_slice(&callback.body).expect("the headers function answers a JSON object")
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 4)
}

fn headers_function() -> Value {
    sample("headers", "python3 -u headers.py", true, &[])
}

on_both_backends!(one_trace_from_the_client_to_the_function_and_the_callback_across_a_restart);
async fn one_trace_from_the_client_to_the_function_and_the_callback_across_a_restart(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--shutdown-grace", "300ms"];
    let sluice = backend.up(&data, &args);
    let url = sluice.url.clone();
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(&http, &url, &headers_function()).await;

    // A call that is still running when its worker stops.
    let r = http
        .post(format!("{url}/async-function/headers?seconds=3"))
        .header("X-Callback-Url", &receiver.url)
        .header("X-Call-Id", "traced-1")
        .header("traceparent", caller_traceparent())
        .header("tracestate", TRACESTATE)
        .header("X-Request-Id", "req-e2e-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-request-id"], "req-e2e-1");
    let running: Value = eventually("the call to be running", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/traced-1")).await?;
        (r["state"] == "running").then_some(r)
    })
    .await;
    assert_eq!(running["traceId"], TRACE_ID, "{running}");
    assert_eq!(running["requestId"], "req-e2e-1", "{running}");
    assert!(sluice.stop().success(), "sluice did not stop cleanly");
    assert_eq!(
        receiver.count(),
        0,
        "the call finished; the test proves nothing"
    );

    // A fresh Sluice on the same state runs it again, in the same trace.
    let sluice = backend.up(&data, &args);
    let url = sluice.url.clone();
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    let callback = receiver.received().remove(0);
    assert_eq!(callback.header("x-call-id"), "traced-1");
    assert_eq!(callback.header("x-function-status"), "200");
    let (trace, callback_parent, _) = parts(callback.header("traceparent"));
    assert_eq!(trace, TRACE_ID, "the callback continues the caller's trace");
    assert_ne!(callback_parent, CALLER_SPAN);
    assert_eq!(callback.header("tracestate"), TRACESTATE);
    assert_eq!(callback.header("x-request-id"), "req-e2e-1");
    let seen = seen_by_function(&callback);
    let (trace, function_parent, flags) = parts(&seen["traceparent"]);
    assert_eq!(
        trace, TRACE_ID,
        "the function continues the caller's trace: {seen:?}"
    );
    assert_eq!(flags, "01");
    assert!(
        function_parent != CALLER_SPAN && function_parent != callback_parent,
        "{seen:?}"
    );
    assert_eq!(seen["tracestate"], TRACESTATE);
    assert_eq!(seen["x-request-id"], "req-e2e-1");
    assert_eq!(seen["x-call-id"], "traced-1");
    let record: Value = eventually("the callback to be recorded", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/traced-1")).await?;
        (r["callback"]["delivered"] == true).then_some(r)
    })
    .await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(
        record["attempts"], 2,
        "run again after the restart: {record}"
    );
    assert_eq!(record["traceId"], TRACE_ID, "{record}");
    assert_eq!(record["requestId"], "req-e2e-1", "{record}");
    // The portal's page of the call shows them.
    let (cookie, _) = crate::portal::log_in(&url, &[]).await;
    let page = reqwest::Client::new()
        .get(format!("{url}/ui/calls/traced-1"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(r#"<code id="call-trace">{TRACE_ID}</code>"#)),
        "{page}"
    );
    assert!(
        page.contains(r#"<code id="call-request-id">req-e2e-1</code>"#),
        "{page}"
    );
    let listed: Value = get_json(&http, format!("{url}/system/calls?function=headers")).await;
    assert!(
        listed["calls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == "traced-1" && c["traceId"] == TRACE_ID),
        "{listed}"
    );

    // A call with no trace context (and a bad one) starts a trace of its own, which every hop
    // continues; its request id is made for it.
    let r = http
        .post(format!("{url}/async-function/headers"))
        .header("X-Callback-Url", &receiver.url)
        .header("traceparent", "00-not-a-trace")
        .header("tracestate", "dropped=with-the-bad-traceparent")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(is_uuid(&request_id), "{request_id}");
    eventually("the second callback", || async {
        (receiver.count() == 2).then_some(())
    })
    .await;
    let callback = receiver.received().remove(1);
    let (fresh, _, _) = parts(callback.header("traceparent"));
    assert_ne!(fresh, TRACE_ID);
    assert_eq!(callback.header("x-request-id"), request_id);
    assert_eq!(callback.header("tracestate"), "");
    let seen = seen_by_function(&callback);
    assert_eq!(parts(&seen["traceparent"]).0, fresh, "{seen:?}");
    assert_eq!(seen["x-request-id"], request_id);
    assert!(!seen.contains_key("tracestate"), "{seen:?}");
    let record: Value = get_json(&http, format!("{url}/system/calls/{id}")).await;
    assert_eq!(record["traceId"], fresh.as_str(), "{record}");
    assert_eq!(record["requestId"], request_id.as_str(), "{record}");
}

#[tokio::test]
async fn sync_calls_continue_the_callers_trace_and_answer_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &headers_function()).await;

    let r = http
        .get(format!("{url}/function/headers"))
        .header("traceparent", caller_traceparent())
        .header("tracestate", TRACESTATE)
        .header("X-Request-Id", "sync-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "sync-req-1");
    let seen: HashMap<String, String> = r.json().await.unwrap();
    let (trace, parent, _) = parts(&seen["traceparent"]);
    assert_eq!(trace, TRACE_ID);
    assert_ne!(
        parent, CALLER_SPAN,
        "the gateway's span is the function's parent"
    );
    assert_eq!(seen["tracestate"], TRACESTATE);
    assert_eq!(seen["x-request-id"], "sync-req-1");

    // None sent, or none usable: a new trace and a fresh request id, the same the function saw.
    for (traceparent, request_id) in [
        (None, None),
        (
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("bad id"),
        ),
    ] {
        let mut request = http.get(format!("{url}/function/headers"));
        if let Some(traceparent) = traceparent {
            request = request
                .header("traceparent", traceparent)
                .header("tracestate", TRACESTATE);
        }
        if let Some(request_id) = request_id {
            request = request.header("X-Request-Id", request_id);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let answered = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(is_uuid(&answered), "{answered}");
        let seen: HashMap<String, String> = r.json().await.unwrap();
        assert_eq!(seen["x-request-id"], answered);
        assert_ne!(parts(&seen["traceparent"]).0, TRACE_ID);
        assert!(!seen.contains_key("tracestate"), "{seen:?}");
    }
    // The gateway's own refusals carry the request id too.
    let r = http
        .get(format!("{url}/function/missing"))
        .header("X-Request-Id", "sync-req-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "sync-req-2");
    let r = http
        .post(format!("{url}/async-function/missing"))
        .header("X-Request-Id", "async-req-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-request-id"], "async-req-2");
}

/// Starts `sluice up` in `data` with these environment variables (and the test admin's).
fn up_with_env(data: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Sluice {
    let mut all = vec![
        "up",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut vars = vec![
        ("SLUICE_ADMIN_USER", Some(ADMIN_USER)),
        ("SLUICE_ADMIN_PASSWORD", Some(ADMIN_PASSWORD)),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, Some(*v))));
    Sluice::run_with_env(&all, &data.with_extension("log"), &vars)
}

on_both_backends!(json_logs_carry_the_call_id_and_trace_id_and_no_secrets);
async fn json_logs_carry_the_call_id_and_trace_id_and_no_secrets(backend: crate::harness::Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = match &backend {
        crate::harness::Backend::Embedded => Vec::new(),
        crate::harness::Backend::Shared(shared) => shared.args(),
    };
    args.extend(["--log-format".to_owned(), "json".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Debug, so every line Sluice has to say about the call is looked at.
    let sluice = up_with_env(&data, &args, &[("SLUICE_LOG", "debug")]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(&http, url, &headers_function()).await;
    let callback_url = format!("{}?token=callback-secret-in-query", receiver.url);
    let r = http
        .post(format!("{url}/async-function/headers"))
        .header("X-Callback-Url", &callback_url)
        .header("X-Call-Id", "logged-1")
        .header("traceparent", caller_traceparent())
        .body("body-secret-in-request")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    let log = data.with_extension("log");
    let in_span = |line: &Value, span: &str| {
        line["spans"].as_array().is_some_and(|spans| {
            spans.iter().any(|s| {
                s["name"] == span && s["call_id"] == "logged-1" && s["trace_id"] == TRACE_ID
            })
        })
    };
    // The attempt's last line is written as it is acked, just after the callback.
    let lines: Vec<Value> = eventually("the attempt's lines", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        lines
            .iter()
            .any(|l| l["message"] == "call finished" && in_span(l, "attempt"))
            .then_some(lines)
    })
    .await;
    let finished = lines
        .iter()
        .find(|l| l["message"] == "call finished" && in_span(l, "attempt"))
        .unwrap();
    assert_eq!(finished["span"]["function"], "headers", "{finished}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "queued" && in_span(l, "submit")),
        "no line of the submit span carries the call id and trace id"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        "callback-secret-in-query",
        "body-secret-in-request",
        ADMIN_PASSWORD,
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the log");
    }
}

/// A span as the test's OTLP receiver got it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    name: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: HashMap<String, String>,
    start: u64,
    end: u64,
}

/// An OTLP/HTTP receiver on a free port: `POST /v1/traces` with protobuf, every span kept.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<ExportedSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let spans: Arc<Mutex<Vec<ExportedSpan>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP export");
                let mut kept = kept.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(&a.value))
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        kept.push(ExportedSpan {
                            name: span.name,
                            service: service.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_id: hex(&span.parent_span_id),
                            attributes: span
                                .attributes
                                .iter()
                                .map(|a| (a.key.clone(), text(&a.value)))
                                .collect(),
                            start: span.start_time_unix_nano,
                            end: span.end_time_unix_nano,
                        });
                    }
                }
                // An empty ExportTraceServiceResponse: everything taken.
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test]
async fn spans_of_an_async_call_reach_an_otlp_receiver_in_one_trace() {
    let (endpoint, spans) = otlp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = up_with_env(
        &data,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "sluice-e2e"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(&http, url, &headers_function()).await;
    let r = http
        .post(format!("{url}/async-function/headers"))
        .header("X-Callback-Url", &receiver.url)
        .header("X-Call-Id", "exported-1")
        .header("traceparent", caller_traceparent())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;

    let names = ["submit", "queue wait", "attempt", "invoke", "callback"];
    let by_name: HashMap<String, ExportedSpan> = eventually("the call's spans", || async {
        let spans = spans.lock().unwrap().clone();
        let ours: HashMap<String, ExportedSpan> = spans
            .into_iter()
            .filter(|s| s.trace_id == TRACE_ID)
            .map(|s| (s.name.clone(), s))
            .collect();
        names.iter().all(|n| ours.contains_key(*n)).then_some(ours)
    })
    .await;
    let span = |name: &str| &by_name[name];
    // The tree: the caller → submit → (queue wait, attempt → (invoke → function, callback)).
    assert_eq!(span("submit").parent_id, CALLER_SPAN);
    assert_eq!(span("queue wait").parent_id, span("submit").span_id);
    assert_eq!(span("attempt").parent_id, span("submit").span_id);
    assert_eq!(span("invoke").parent_id, span("attempt").span_id);
    assert_eq!(span("callback").parent_id, span("attempt").span_id);
    // What was sent on names the exported spans.
    let callback = receiver.received().remove(0);
    let (trace, parent, _) = parts(callback.header("traceparent"));
    assert_eq!(
        (trace.as_str(), parent.as_str()),
        (TRACE_ID, span("callback").span_id.as_str())
    );
    let seen = seen_by_function(&callback);
    assert_eq!(parts(&seen["traceparent"]).1, span("invoke").span_id);
    for name in names {
        let s = span(name);
        assert_eq!(s.service, "sluice-e2e", "{s:?}");
        assert!(s.start <= s.end, "{s:?}");
        assert_eq!(
            s.attributes.get("call_id").map(String::as_str),
            Some("exported-1"),
            "{s:?}"
        );
        assert_eq!(
            s.attributes.get("trace_id").map(String::as_str),
            Some(TRACE_ID),
            "{s:?}"
        );
        assert!(
            s.attributes
                .get("function")
                .is_some_and(|f| f.starts_with("headers")),
            "{s:?}"
        );
    }
    // The wait began at the submission and ended as the attempt began.
    assert!(span("queue wait").start <= span("attempt").start);
    assert!(span("queue wait").end <= span("attempt").end);
}

#[test]
fn a_bad_otlp_endpoint_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "-*/not a uri")
        .env("SLUICE_ADMIN_USER", ADMIN_USER)
        .env("SLUICE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "it listened: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{stderr}"
    );
}
