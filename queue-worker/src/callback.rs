//! Delivering an async call's result to its `X-Callback-Url`: one try per delivery of the call.
//!
//! The callback is what OpenFaaS's queue worker sends: the function's body and headers, plus
//! `X-Call-Id`, `X-Function-Name`, `X-Function-Status`, `X-Duration-Seconds` and `X-Start-Time`.
//! It goes on with the call's trace: a `traceparent` of the same trace (the callback try's span
//! as parent), the caller's `tracestate` and the submission's `X-Request-Id`.
//! A try that fails is not retried here: the worker gives the call back to the queue with a
//! delay, and the next delivery tries the callback again (without running the function again),
//! so waiting for a receiver holds no worker slot and survives a restart.
//!
//! Callbacks go only where the operator's [`CallbackPolicy`] lets them: the client that sends
//! them resolves names through [`PolicyResolver`], which hands reqwest only the addresses the
//! policy allows, so the address checked is the address connected to. Redirects are not
//! followed (a 3xx is a failed try). With a signing key, each callback carries a timestamp and
//! an HMAC-SHA256 of it and the body, so a receiver can tell it came from this Sluice.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use sluice_core::callback::{
    HOPS_HEADER, SIGNATURE_HEADER, SIGNATURE_TIMESTAMP_HEADER, signed_message,
};
use sluice_core::headers;
use sluice_core::trace::{self, TraceParent};
use sluice_core::{CallMeta, CallResult, CallbackPolicy, PLATFORM_ERROR_HEADER};

use crate::WorkerConfig;
use crate::invoke::Invocation;

/// On a call that needed retries: how many were made, and how many were allowed.
const RETRY: &str = "x-retry";
const RETRY_MAX: &str = "x-retry-max";

/// Status reported to the callback when the function could not be reached at all.
const UNREACHABLE_STATUS: u16 = 502;

/// What a callback carries.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) duration_seconds: f64,
    /// Retries made and allowed, when there were retries.
    pub(crate) retries: Option<(u32, u32)>,
}

fn unreachable(error: &str) -> (u16, HeaderMap, Bytes) {
    let body = serde_json::json!({ "code": "upstream_unreachable", "message": error });
    let mut head = HeaderMap::new();
    head.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    head.insert(
        PLATFORM_ERROR_HEADER,
        HeaderValue::from_static("upstream_unreachable"),
    );
    (UNREACHABLE_STATUS, head, body.to_string().into())
}

impl Payload {
    /// From an invocation that just finished.
    pub(crate) fn from_invocation(invocation: &Invocation, retries: Option<(u32, u32)>) -> Self {
        let (status, headers, body) = match &invocation.response {
            Some(r) => (r.status, r.headers.clone(), r.body.clone()),
            None => unreachable(invocation.error.as_deref().unwrap_or("no response")),
        };
        Self {
            status,
            headers,
            body,
            duration_seconds: invocation.duration.as_secs_f64(),
            retries,
        }
    }

    /// From what was kept of a call that finished earlier: its response, or (when it had none)
    /// the error it was recorded with.
    pub(crate) fn from_kept(
        result: Option<CallResult>,
        error: Option<&str>,
        duration_seconds: f64,
        retries: Option<(u32, u32)>,
    ) -> Self {
        let (status, headers, body) = match result {
            Some(r) => {
                let mut head = HeaderMap::new();
                for (k, v) in &r.headers {
                    if let (Ok(k), Ok(v)) = (
                        reqwest::header::HeaderName::try_from(k.as_str()),
                        HeaderValue::try_from(v.as_str()),
                    ) {
                        head.append(k, v);
                    }
                }
                (r.status_code, head, r.body)
            }
            None => unreachable(error.unwrap_or("no response")),
        };
        Self {
            status,
            headers,
            body,
            duration_seconds,
            retries,
        }
    }
}

/// Resolves callback hosts, keeping only the addresses the policy allows.
#[derive(Debug)]
pub(crate) struct PolicyResolver(pub(crate) Arc<CallbackPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.check(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refusal.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.map_or_else(
                    || format!("{host} resolves to no address"),
                    |r| r.to_string(),
                );
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A callback target the policy refuses.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused by the callback policy: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// The client callbacks are sent with: names resolved through the policy, no redirects.
pub(crate) fn client(policy: Arc<CallbackPolicy>) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve and connect in our place, past the policy.
        .no_proxy()
        .dns_resolver(Arc::new(PolicyResolver(policy)))
        .build()
        .expect("a reqwest client with static settings builds")
}

/// Why a try failed.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The receiver's status, if it answered.
    pub(crate) status: Option<u16>,
    pub(crate) reason: String,
    /// The policy refused the target: trying again cannot help.
    pub(crate) refused: bool,
}

/// `v1=<hex HMAC-SHA256(key, signed message)>` (see `signed_message`).
pub(crate) fn signature(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// One try. `Ok(status)` when the receiver took it (2xx), `Err` with why when not. `context` is
/// the try's span's, sent as its `traceparent`.
pub(crate) async fn send(
    http: &reqwest::Client,
    config: &WorkerConfig,
    meta: &CallMeta,
    payload: &Payload,
    url: &str,
    context: &TraceParent,
) -> Result<u16, Failure> {
    let failure = |status, reason: String, refused| Failure {
        status,
        reason,
        refused,
    };
    // An address in the URL is not resolved, so the resolver does not see it: check it here.
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| failure(None, format!("callback URL is not valid: {e}"), true))?;
    let literal = parsed
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok());
    if let Some(ip) = literal
        && let Err(why) = config.callbacks.check(&ip.to_string(), ip)
    {
        return Err(failure(
            None,
            format!("refused by the callback policy: {why}"),
            true,
        ));
    }
    let mut head = payload.headers.clone();
    // The function's own trace headers (if it answered with any) are not the call's.
    for name in [trace::TRACESTATE, trace::REQUEST_ID] {
        head.remove(name);
    }
    let traced = [
        Some((trace::TRACEPARENT, context.to_string())),
        meta.header(trace::TRACESTATE)
            .map(|v| (trace::TRACESTATE, v.to_owned())),
        meta.request_id().map(|v| (trace::REQUEST_ID, v.to_owned())),
    ];
    // Ours replace any the function set with the same names.
    let ours = [
        (headers::CALL_ID, meta.id.to_string()),
        (headers::FUNCTION_NAME, meta.function.name.clone()),
        (headers::FUNCTION_STATUS, payload.status.to_string()),
        (
            headers::DURATION_SECONDS,
            format!("{:.6}", payload.duration_seconds),
        ),
        (
            headers::START_TIME,
            meta.submitted_at.as_nanos().to_string(),
        ),
    ];
    let retry_headers = payload
        .retries
        .map(|(made, max)| [(RETRY, made.to_string()), (RETRY_MAX, max.to_string())])
        .into_iter()
        .flatten();
    // A receiver that submits async calls itself passes this on, so a chain of callbacks
    // that loops back is cut off by the gateway.
    let hops = meta
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(HOPS_HEADER))
        .and_then(|(_, v)| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let hops = [(HOPS_HEADER, hops.saturating_add(1).to_string())];
    let signed = config.callback_signing_key.as_ref().map(|key| {
        let timestamp = sluice_core::Timestamp::now().as_nanos() / 1_000_000_000;
        let timestamp = u64::try_from(timestamp).unwrap_or_default();
        [
            (SIGNATURE_TIMESTAMP_HEADER, timestamp.to_string()),
            (
                SIGNATURE_HEADER,
                signature(
                    key.as_bytes(),
                    &signed_message(
                        timestamp,
                        meta.id.as_str(),
                        &meta.function.name,
                        payload.status,
                        &payload.body,
                    ),
                ),
            ),
        ]
    });
    for (name, value) in ours
        .into_iter()
        .chain(traced.into_iter().flatten())
        .chain(retry_headers)
        .chain(hops)
        .chain(signed.into_iter().flatten())
    {
        if let Ok(value) = HeaderValue::try_from(value) {
            head.insert(name, value);
        }
    }
    let request = http
        .post(parsed)
        .timeout(config.callback_timeout)
        .headers(head)
        .body(payload.body.clone());
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err(failure(
            Some(r.status().as_u16()),
            format!("receiver answered {}", r.status()),
            false,
        )),
        Err(e) => {
            // The URL may carry credentials or tokens: it stays out of the message.
            let refused = std::error::Error::source(&e).is_some_and(|mut source| {
                loop {
                    if source.is::<Refused>() {
                        break true;
                    }
                    match source.source() {
                        Some(next) => source = next,
                        None => break false,
                    }
                }
            });
            let e = e.without_url();
            let reason = if refused {
                let mut source: &dyn std::error::Error = &e;
                while let Some(next) = source.source() {
                    source = next;
                }
                source.to_string()
            } else {
                format!("receiver unreachable: {}", error_chain(&e))
            };
            Err(failure(None, reason, refused))
        }
    }
}

/// An error and its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(callback_url: &str) -> CallMeta {
        CallMeta {
            id: sluice_core::CallId::from_trusted("c1".into()),
            function: sluice_core::FunctionRef::new("echo", None).unwrap(),
            method: "POST".into(),
            path: "/".into(),
            query: None,
            headers: vec![],
            callback_url: Some(callback_url.into()),
            submitted_at: sluice_core::Timestamp::now(),
            queue: None,
            redrive: 0,
        }
    }

    fn context() -> TraceParent {
        TraceParent::root()
    }

    fn payload() -> Payload {
        Payload {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"hello"),
            duration_seconds: 0.1,
            retries: None,
        }
    }

    #[test]
    fn the_signature_is_an_hmac_of_the_signed_message() {
        // python3 -c "import hmac,hashlib; print(hmac.new(b'key-of-sixteen-chars',
        //     b'1700000000\\nc1\\necho\\n200\\nhello', hashlib.sha256).hexdigest())"
        let message = signed_message(1_700_000_000, "c1", "echo", 200, b"hello");
        assert_eq!(message, b"1700000000\nc1\necho\n200\nhello");
        assert_eq!(
            signature(b"key-of-sixteen-chars", &message),
            "v1=9dd7abe8273424e77ddd1107adfd85ab5f572cce09886eeafaf950daa75a0aa3"
        );
    }

    /// What the gateway let through at submit is checked again at delivery, on the addresses
    /// actually connected to: a name now resolving to loopback gets nowhere, and is not retried.
    #[tokio::test]
    async fn delivery_is_refused_where_the_policy_says_and_not_retried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = WorkerConfig::new("http://127.0.0.1:1");
        let http = client(Arc::new(config.callbacks.clone()));
        for url in [
            format!("http://localhost:{port}/cb"),
            format!("http://127.0.0.1:{port}/cb"),
            "http://[::ffff:169.254.169.254]/latest".to_owned(),
        ] {
            let failure = send(&http, &config, &meta(&url), &payload(), &url, &context())
                .await
                .unwrap_err();
            assert!(failure.refused, "{url}: {failure:?}");
            assert!(
                failure.reason.contains("refused by the callback policy"),
                "{failure:?}"
            );
        }
        // Allowed, the same receiver is reached.
        let mut open = WorkerConfig::new("http://127.0.0.1:1");
        open.callbacks.allow_private = true;
        let http = client(Arc::new(open.callbacks.clone()));
        let url = format!("http://localhost:{port}/cb");
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });
        let failure = send(&http, &open, &meta(&url), &payload(), &url, &context()).await;
        assert!(accepted.await.unwrap());
        // The test's listener never answers: an unreachable receiver, to be tried again.
        if let Err(failure) = failure {
            assert!(!failure.refused, "{failure:?}");
        }
    }

    /// A callback goes on with the call's trace, whatever trace headers the function answered
    /// with: the try's `traceparent`, the caller's `tracestate`, the submission's request id.
    #[tokio::test]
    async fn a_callback_carries_the_calls_trace() {
        let (port, head) = crate::one_request().await;
        let mut config = WorkerConfig::new("http://127.0.0.1:1");
        config.callbacks.allow_private = true;
        let http = client(Arc::new(config.callbacks.clone()));
        let url = format!("http://127.0.0.1:{port}/cb");
        let stored = TraceParent::root();
        let mut meta = meta(&url);
        meta.headers = vec![
            (trace::TRACEPARENT.into(), stored.to_string()),
            (trace::TRACESTATE.into(), "rojo=1".into()),
            (trace::REQUEST_ID.into(), "req-9".into()),
        ];
        let mut payload = payload();
        for (name, value) in [
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "function=own"),
            ("x-request-id", "function-own"),
        ] {
            payload
                .headers
                .insert(name, HeaderValue::from_static(value));
        }
        let context = stored.child();
        send(&http, &config, &meta, &payload, &url, &context)
            .await
            .unwrap();
        let head = head.await.unwrap();
        assert!(
            head.contains(&format!("traceparent: {context}\r\n")),
            "{head}"
        );
        assert!(head.contains("tracestate: rojo=1\r\n"), "{head}");
        assert!(head.contains("x-request-id: req-9\r\n"), "{head}");
        assert!(
            !head.contains("function=own") && !head.contains("function-own"),
            "the function's own trace headers: {head}"
        );
        assert!(!head.contains("0af7651916cd43dd8448eb211c80319c"), "{head}");
    }
}
