//! Delivering an async call's result to its `X-Callback-Url`: one try per delivery of the call.
//!
//! The callback is what OpenFaaS's queue worker sends: the function's body and headers, plus
//! `X-Call-Id`, `X-Function-Name`, `X-Function-Status`, `X-Duration-Seconds` and `X-Start-Time`.
//! A try that fails is not retried here: the worker gives the call back to the queue with a
//! delay, and the next delivery tries the callback again (without running the function again),
//! so waiting for a receiver holds no worker slot and survives a restart.

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use sluice_core::headers;
use sluice_core::{CallMeta, CallResult, PLATFORM_ERROR_HEADER};

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

/// One try. `Ok(status)` when the receiver took it (2xx), `Err((status, reason))` when not.
pub(crate) async fn send(
    http: &reqwest::Client,
    config: &WorkerConfig,
    meta: &CallMeta,
    payload: &Payload,
    url: &str,
) -> Result<u16, (Option<u16>, String)> {
    let mut head = payload.headers.clone();
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
    for (name, value) in ours.into_iter().chain(retry_headers) {
        if let Ok(value) = HeaderValue::try_from(value) {
            head.insert(name, value);
        }
    }
    let request = http
        .post(url)
        .timeout(config.callback_timeout)
        .headers(head)
        .body(payload.body.clone());
    match request.send().await {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err((
            Some(r.status().as_u16()),
            format!("receiver answered {}", r.status()),
        )),
        Err(e) => Err((None, format!("receiver unreachable: {e}"))),
    }
}
