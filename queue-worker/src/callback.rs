//! Delivering an async call's result to its `X-Callback-Url`, with bounded retries.
//!
//! The callback is what OpenFaaS's queue worker sends: the function's body and headers, plus
//! `X-Call-Id`, `X-Function-Name`, `X-Function-Status`, `X-Duration-Seconds` and `X-Start-Time`.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use sluice_core::headers;
use sluice_core::{CallbackOutcome, PLATFORM_ERROR_HEADER, QueuedCall, Timestamp};

use crate::WorkerConfig;
use crate::invoke::Invocation;

/// On a call that needed retries: how many were made, and how many were allowed.
const RETRY: &str = "x-retry";
const RETRY_MAX: &str = "x-retry-max";

/// Status reported to the callback when the function could not be reached at all.
const UNREACHABLE_STATUS: u16 = 502;

pub(crate) async fn deliver(
    http: &reqwest::Client,
    config: &WorkerConfig,
    call: &QueuedCall,
    invocation: &Invocation,
    url: &str,
    retries: Option<(u32, u32)>,
) -> CallbackOutcome {
    let meta = &call.meta;
    let mut wait = config.callback_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (status, mut head, body) = match &invocation.response {
            Some(r) => (r.status, r.headers.clone(), r.body.clone()),
            None => {
                let error = invocation.error.as_deref().unwrap_or("no response");
                let body = serde_json::json!({ "code": "upstream_unreachable", "message": error });
                let mut head = HeaderMap::new();
                head.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                head.insert(
                    PLATFORM_ERROR_HEADER,
                    HeaderValue::from_static("upstream_unreachable"),
                );
                (UNREACHABLE_STATUS, head, body.to_string().into())
            }
        };
        // Ours replace any the function set with the same names.
        let ours = [
            (headers::CALL_ID, meta.id.to_string()),
            (headers::FUNCTION_NAME, meta.function.name.clone()),
            (headers::FUNCTION_STATUS, status.to_string()),
            (
                headers::DURATION_SECONDS,
                format!("{:.6}", invocation.duration.as_secs_f64()),
            ),
            (
                headers::START_TIME,
                meta.submitted_at.as_nanos().to_string(),
            ),
        ];
        let retry_headers = retries
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
            .body(body);
        let (delivered, status_code, error) = match request.send().await {
            Ok(r) if r.status().is_success() => (true, Some(r.status().as_u16()), None),
            Ok(r) => (
                false,
                Some(r.status().as_u16()),
                Some(format!("receiver answered {}", r.status())),
            ),
            Err(e) => (false, None, Some(format!("receiver unreachable: {e}"))),
        };
        if delivered || attempts >= config.callback_attempts.max(1) {
            if let Some(error) = &error {
                tracing::warn!(call = %meta.id, %error, attempts, "callback not delivered");
            }
            return CallbackOutcome {
                delivered,
                status_code,
                error,
                attempts,
                at: Timestamp::now(),
            };
        }
        tokio::time::sleep(wait).await;
        wait = wait.saturating_mul(2);
    }
}
