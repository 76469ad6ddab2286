//! Replaying a queued call against the function, through the gateway's `/function/` route.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_core::headers::{self, is_hop_by_hop};
use sluice_core::trace::{self, TraceParent};
use sluice_core::{PLATFORM_ERROR_HEADER, QueuedCall, Timestamp};

use crate::WorkerConfig;

/// What the function answered.
#[derive(Debug)]
pub(crate) struct FunctionResponse {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl FunctionResponse {
    /// A one-line reason for a non-success answer, telling the platform's errors from the
    /// function's own.
    pub(crate) fn describe_failure(&self) -> String {
        match self
            .headers
            .get(PLATFORM_ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some(code) => {
                let message = serde_json::from_slice::<serde_json::Value>(&self.body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("sluice could not run the function ({code}): {message}")
            }
            None => format!("function answered {}", self.status),
        }
    }
}

impl Invocation {
    /// The function's `Retry-After`, in seconds (the HTTP-date form is not honoured).
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        let value = self
            .response
            .as_ref()?
            .headers
            .get(reqwest::header::RETRY_AFTER)?;
        let secs: u64 = value.to_str().ok()?.trim().parse().ok()?;
        Some(std::time::Duration::from_secs(secs))
    }
}

/// One run of a call.
#[derive(Debug)]
pub(crate) struct Invocation {
    pub(crate) response: Option<FunctionResponse>,
    /// Set when there is no response: why.
    pub(crate) error: Option<String>,
    pub(crate) finished_at: Timestamp,
    pub(crate) duration: Duration,
}

/// Runs one attempt of `call`; `context` is the attempt span's, sent as its `traceparent`.
pub(crate) async fn invoke(
    http: &reqwest::Client,
    config: &WorkerConfig,
    call: &QueuedCall,
    context: &TraceParent,
) -> Invocation {
    let meta = &call.meta;
    let started = tokio::time::Instant::now();
    let result = match url_of(config, meta) {
        Ok(url) => send(http, config, call, url, context).await,
        Err(e) => Err(e),
    };
    let duration = started.elapsed();
    let (response, error) = match result {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    Invocation {
        response,
        error,
        finished_at: Timestamp::now(),
        duration,
    }
}

/// The gateway URL a call is replayed at, `/function/<name>.<namespace><path>[?query]`. The
/// worker's requests carry its internal token, so the path is checked again here (a call may
/// have been queued by an older gateway that did not check it), and so is the URL as parsed:
/// it must still name the call's function.
fn url_of(config: &WorkerConfig, meta: &sluice_core::CallMeta) -> Result<reqwest::Url, String> {
    sluice_core::check_function_path(&meta.path)?;
    let prefix = format!(
        "/function/{}.{}",
        meta.function.name, meta.function.namespace
    );
    let mut url = format!(
        "{}{prefix}{}",
        config.gateway_url.trim_end_matches('/'),
        meta.path
    );
    if let Some(q) = &meta.query {
        url.push('?');
        url.push_str(q);
    }
    let url = reqwest::Url::parse(&url).map_err(|e| format!("the call's URL is not valid: {e}"))?;
    let path = url.path();
    if path != prefix && !path.starts_with(&format!("{prefix}/")) {
        return Err(format!("the call's path leaves its function: {path:?}"));
    }
    Ok(url)
}

async fn send(
    http: &reqwest::Client,
    config: &WorkerConfig,
    call: &QueuedCall,
    url: reqwest::Url,
    context: &TraceParent,
) -> Result<FunctionResponse, String> {
    let meta = &call.meta;
    let method = reqwest::Method::from_bytes(meta.method.as_bytes())
        .map_err(|_| format!("stored method {:?} is not valid", meta.method))?;
    let mut request = http
        .request(method, url)
        .timeout(config.invoke_timeout)
        .header(headers::CALL_ID, meta.id.as_str())
        // The attempt's span is the parent of what the gateway and the function do with it;
        // the stored `tracestate` and `X-Request-Id` go with the headers below.
        .header(trace::TRACEPARENT, context.to_string())
        .body(call.body.clone());
    if let Some(token) = &config.internal_token {
        request = request.header(headers::INTERNAL, token);
    }
    for (k, v) in meta.headers.iter().filter(|(k, _)| k != trace::TRACEPARENT) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            request = request.header(k, v);
        }
    }
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            format!("function did not answer within {:?}", config.invoke_timeout)
        } else {
            format!("gateway unreachable: {}", e.without_url())
        }
    })?;
    let status = response.status().as_u16();
    let mut headers = response.headers().clone();
    headers.retain_hop_by_hop();
    let mut body = BytesMut::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk =
            chunk.map_err(|e| format!("reading the function's response: {}", e.without_url()))?;
        if body.len() + chunk.len() > config.max_response_bytes {
            return Err(format!(
                "function response is larger than the worker's limit of {} bytes",
                config.max_response_bytes
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(FunctionResponse {
        status,
        headers,
        body: body.freeze(),
    })
}

trait RetainEndToEnd {
    fn retain_hop_by_hop(&mut self);
}

impl RetainEndToEnd for HeaderMap {
    /// Drops hop-by-hop headers, keeping what travels end to end.
    fn retain_hop_by_hop(&mut self) {
        let drop: Vec<HeaderName> = self
            .keys()
            .filter(|k| is_hop_by_hop(k.as_str()))
            .cloned()
            .collect();
        for k in drop {
            self.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &str, query: Option<&str>) -> sluice_core::CallMeta {
        sluice_core::CallMeta {
            id: sluice_core::CallId::from_trusted("c1".into()),
            function: sluice_core::FunctionRef::new("echo", None).unwrap(),
            method: "POST".into(),
            path: path.into(),
            query: query.map(str::to_owned),
            headers: vec![],
            callback_url: None,
            submitted_at: Timestamp::now(),
            queue: None,
            redrive: 0,
        }
    }

    /// A call queued with a path that climbs out of its function (by a gateway that did not
    /// check it) is not replayed with the worker's token against another route.
    #[test]
    fn a_call_is_only_replayed_at_its_own_function() {
        let config = WorkerConfig::new("http://127.0.0.1:8080/");
        let url = url_of(&config, &meta("/a/b", Some("x=1&y=%2e%2e"))).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/function/echo.openfaas-fn/a/b?x=1&y=%2e%2e"
        );
        assert!(url_of(&config, &meta("/", None)).is_ok());
        for bad in [
            "/../../system/functions",
            "/%2e%2e/other",
            "/./x",
            "x",
            "/a\\b",
        ] {
            assert!(url_of(&config, &meta(bad, None)).is_err(), "{bad}");
        }
    }

    /// The function is called in the attempt's span: its `traceparent` (same trace, the attempt
    /// as parent) replaces the one stored with the call, and the stored `tracestate` and
    /// `X-Request-Id` go on as they are.
    #[tokio::test]
    async fn an_attempt_sends_its_own_traceparent_and_the_stored_trace_headers() {
        let (port, head) = crate::one_request().await;
        let config = WorkerConfig::new(format!("http://127.0.0.1:{port}"));
        let stored = TraceParent::root();
        let mut call = QueuedCall {
            meta: meta("/", None),
            body: bytes::Bytes::new(),
        };
        call.meta.headers = vec![
            (trace::TRACEPARENT.into(), stored.to_string()),
            (trace::TRACESTATE.into(), "rojo=1".into()),
            (trace::REQUEST_ID.into(), "req-9".into()),
        ];
        let attempt = stored.child();
        let invocation = invoke(&reqwest::Client::new(), &config, &call, &attempt).await;
        assert_eq!(invocation.response.map(|r| r.status), Some(200));
        let head = head.await.unwrap();
        assert!(
            head.contains(&format!("traceparent: {attempt}\r\n")),
            "{head}"
        );
        assert_eq!(head.matches("traceparent:").count(), 1, "{head}");
        assert!(head.contains("tracestate: rojo=1\r\n"), "{head}");
        assert!(head.contains("x-request-id: req-9\r\n"), "{head}");
    }
}
