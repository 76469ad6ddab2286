//! Replaying a queued call against the function, through the gateway's `/function/` route.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_core::headers::{self, is_hop_by_hop};
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

pub(crate) async fn invoke(
    http: &reqwest::Client,
    config: &WorkerConfig,
    call: &QueuedCall,
) -> Invocation {
    let meta = &call.meta;
    let mut url = format!(
        "{}/function/{}.{}{}",
        config.gateway_url.trim_end_matches('/'),
        meta.function.name,
        meta.function.namespace,
        meta.path
    );
    if let Some(q) = &meta.query {
        url.push('?');
        url.push_str(q);
    }
    let started = tokio::time::Instant::now();
    let result = send(http, config, call, &url).await;
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

async fn send(
    http: &reqwest::Client,
    config: &WorkerConfig,
    call: &QueuedCall,
    url: &str,
) -> Result<FunctionResponse, String> {
    let meta = &call.meta;
    let method = reqwest::Method::from_bytes(meta.method.as_bytes())
        .map_err(|_| format!("stored method {:?} is not valid", meta.method))?;
    let mut request = http
        .request(method, url)
        .timeout(config.invoke_timeout)
        .header(headers::CALL_ID, meta.id.as_str())
        .body(call.body.clone());
    if let Some(token) = &config.internal_token {
        request = request.header(headers::INTERNAL, token);
    }
    for (k, v) in &meta.headers {
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
            format!("gateway unreachable: {e}")
        }
    })?;
    let status = response.status().as_u16();
    let mut headers = response.headers().clone();
    headers.retain_hop_by_hop();
    let mut body = BytesMut::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| format!("reading the function's response: {e}"))?;
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
