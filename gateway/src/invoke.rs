//! Invocation: `/function/<name>[/path]` proxies to a ready replica; `/async-function/<name>[/path]`
//! stores the call durably and answers `202`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use sluice_core::headers::{self, is_hop_by_hop};
use sluice_core::{CallId, CallMeta, CallRecord, FunctionRef, QueuedCall, Submitted, Timestamp};

use crate::AppState;
use crate::error::ApiError;

/// Splits `/function/echo.dev/a/b` (after the route prefix) into the function and the path below it.
///
/// A name no function can have (empty, `.x`, upper case) is a `404`, as for a function that is
/// not deployed: OpenFaaS clients take a 404 to mean "no such function". The path below a
/// function belongs to the function and is passed on as it came; one that could climb out of
/// it (`sluice_core::check_function_path`) is refused here, on both the sync and the async path.
fn target(uri: &axum::http::Uri, prefix: &str) -> Result<(FunctionRef, String), ApiError> {
    let rest = uri.path().strip_prefix(prefix).unwrap_or_default();
    let (name, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let function = FunctionRef::parse(name, None).map_err(ApiError::NoSuchFunction)?;
    check_path(path)?;
    Ok((function, path.to_owned()))
}

/// Refuses a path below a function that could climb out of it.
fn check_path(path: &str) -> Result<(), ApiError> {
    sluice_core::check_function_path(path).map_err(ApiError::BadRequest)
}

/// At most the first 200 characters of something a client sent, for an error message.
fn truncated(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The methods a function can be called with. Anything else (a made-up token, `CONNECT`,
/// `TRACE`) is refused before it is queued or proxied.
const METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

fn check_method(method: &Method, path: &str) -> Result<(), ApiError> {
    if METHODS.contains(method) {
        return Ok(());
    }
    Err(ApiError::MethodNotAllowed {
        method: truncated(method.as_str()).to_owned(),
        path: truncated(path).to_owned(),
    })
}

/// Headers that carry credentials: never stored with an async call (they would sit on disk in
/// the queue and in kept requests), and never passed on to a function that requires Sluice's
/// own credentials (they are Sluice's, not the function's).
const CREDENTIAL_HEADERS: &[HeaderName] = &[
    axum::http::header::AUTHORIZATION,
    axum::http::header::PROXY_AUTHORIZATION,
    axum::http::header::COOKIE,
];

/// The function runs on this gateway's provider, or is in the registry and is applied to it now
/// (deployed through another gateway a moment ago, before this one's next look).
async fn ensure_deployed(state: &AppState, function: &FunctionRef) -> Result<(), ApiError> {
    if state.orchestrator.replicas(function).is_some() {
        return Ok(());
    }
    if crate::sync::apply_from_registry(state, function).await? {
        return Ok(());
    }
    Err(ApiError::FunctionNotFound(function.to_string()))
}

static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a request header stops at the gateway: hop-by-hop headers and Sluice's own.
fn stays_here(name: &HeaderName) -> bool {
    is_hop_by_hop(name.as_str()) || name.as_str() == headers::INTERNAL
}

/// The client's `Host`, passed on as `X-Forwarded-Host` (as OpenFaaS's gateway does) unless the
/// request already carries one.
fn forwarded_host(headers: &HeaderMap) -> Option<&HeaderValue> {
    if headers.contains_key(&FORWARDED_HOST) {
        return None;
    }
    headers.get(axum::http::header::HOST)
}

/// Request headers that go on to the function (an async call's, to be stored): see
/// [`stays_here`] and [`forwarded_host`]; the sync path edits its request in place with
/// [`forward_headers`] instead.
fn forwardable(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers
        .iter()
        .filter(|(k, _)| !stays_here(k))
        .chain(forwarded_host(headers).map(|v| (&FORWARDED_HOST, v)))
}

pub(crate) async fn sync(State(state): State<AppState>, req: Request) -> Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = req.into_parts();
    let stamp = Stamp::new(&parts.headers);
    let answer = match target(&parts.uri, "/function/")
        .and_then(|t| check_method(&parts.method, parts.uri.path()).map(|()| t))
    {
        Err(e) => Err(e),
        Ok((function, path)) => {
            // The function sees the call's id and start, as OpenFaaS's gateway sends them.
            parts.headers.insert(CALL_ID.clone(), stamp.id.clone());
            parts
                .headers
                .insert(START_TIME.clone(), stamp.start.clone());
            let answer = proxy(&state, parts, body, &function, &path, &stamp).await;
            let code = match &answer {
                Ok(response) => Some(response.status()),
                // Not a function's: no series, or any name sent would make one.
                Err(ApiError::FunctionNotFound(_)) => None,
                Err(e) => Some(e.status()),
            };
            if let Some(code) = code {
                state
                    .metrics
                    .observe(&function, code.as_u16(), stamp.started.elapsed());
            }
            answer
        }
    };
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    let headers = response.headers_mut();
    headers.insert(CALL_ID.clone(), stamp.id);
    headers.insert(START_TIME.clone(), stamp.start);
    response
}

static CALL_ID: HeaderName = HeaderName::from_static(headers::CALL_ID);
static START_TIME: HeaderName = HeaderName::from_static(headers::START_TIME);
static DURATION_SECONDS: HeaderName = HeaderName::from_static(headers::DURATION_SECONDS);

/// What a sync call is stamped with, on its way to the function and on every answer, as
/// OpenFaaS's gateway stamps it: its id (the caller's `X-Call-Id` if it is a valid call id,
/// else a fresh UUID) and its start (`X-Start-Time`, nanoseconds since the epoch).
struct Stamp {
    id: HeaderValue,
    start: HeaderValue,
    /// When the gateway took the request, for `X-Duration-Seconds` and the metrics.
    started: std::time::Instant,
}

impl Stamp {
    fn new(headers: &HeaderMap) -> Self {
        let started = std::time::Instant::now();
        let id = headers
            .get(&CALL_ID)
            .filter(|v| sluice_core::CallId::is_valid(v.as_bytes()))
            .cloned()
            .unwrap_or_else(fresh_call_id);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            id,
            start: HeaderValue::from(nanos),
            started,
        }
    }

    /// `X-Duration-Seconds` for an answer whose head has just arrived: seconds since the
    /// gateway took the request, with six decimals (Go's `%f`, as OpenFaaS's watchdog writes
    /// it), formatted on the stack.
    fn duration(&self) -> Option<HeaderValue> {
        use std::io::Write;
        let mut buf = [0u8; 32];
        let mut rest = &mut buf[..];
        write!(rest, "{:.6}", self.started.elapsed().as_secs_f64()).ok()?;
        let len = 32 - rest.len();
        HeaderValue::from_bytes(&buf[..len]).ok()
    }
}

/// A fresh call id: a version 4 UUID from the thread's random generator (no system call).
fn fresh_call_id() -> HeaderValue {
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The sync path proper: admit, find (or wait for) a replica, proxy.
async fn proxy(
    state: &AppState,
    parts: axum::http::request::Parts,
    body: Body,
    function: &FunctionRef,
    path: &str,
    stamp: &Stamp,
) -> Result<Response, ApiError> {
    let admitted = state.admit(&parts.headers)?;
    let state = state.clone();
    let function = function.clone();
    // Who may call it (from the registry), before anything is started for the request.
    let policy = state.policies.get(&state, &function).await?;
    if policy.auth_required {
        crate::auth::check_origin(&parts.method, &parts.headers)?;
        crate::auth::check(&state, &parts.headers, &parts.extensions, true)?;
    }
    state.check_rates(&parts.headers, &function, &policy)?;
    ensure_deployed(&state, &function).await?;
    let held = state.read_body(&parts.headers, body).await?;
    // Load for the autoscaler from here until the response has been streamed, held time included.
    let tracked = state.autoscaler.track(&function);
    let endpoint = state
        .activator
        .endpoint(&function, policy.concurrency)
        .await?;
    let (mut parts, body) = (parts, held.bytes.clone());
    let uri = match parts.uri.query() {
        Some(q) => format!("{}{path}?{q}", endpoint.url),
        None => format!("{}{path}", endpoint.url),
    };
    parts.uri = uri
        .parse()
        .map_err(|e| ApiError::Internal(format!("the URL of a replica of {function}: {e}")))?;
    parts.version = axum::http::Version::HTTP_11;
    parts.extensions = axum::http::Extensions::new();
    forward_headers(&mut parts.headers, policy.auth_required);
    let deadline = tokio::time::Instant::now() + state.config.upstream_timeout;
    let request = axum::http::Request::from_parts(parts, Body::from(body));
    let response = tokio::time::timeout_at(deadline, state.upstream.request(request))
        .await
        .map_err(|_| ApiError::UpstreamTimeout(function.to_string()))?
        .map_err(|e| {
            // hyper's errors carry no URL (its query string is the client's and may carry
            // secrets); the cause says what failed (connect, reset, ...).
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::warn!(%function, error = %e, ?cause, "replica unreachable");
            ApiError::Upstream(function.to_string())
        })?;
    // The body has gone to the replica: it no longer counts against the budget while the
    // response streams back.
    drop(held);
    let (mut parts, body) = response.into_parts();
    // Measured as the head arrives: a header cannot wait for the body.
    if let Some(duration) = stamp.duration() {
        parts.headers.insert(DURATION_SECONDS.clone(), duration);
    }
    remove_where(&mut parts.headers, |k| is_hop_by_hop(k.as_str()));
    // The endpoint travels with the body: the replica counts the request as in flight until the
    // response has been streamed to its end (or the client went away).
    let body = crate::upstream::Guarded::new(body, deadline, (endpoint, admitted, tracked));
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A client's request headers made into the replica's, in place: as [`forwardable`], and
/// without credentials when they were Sluice's (the function requires them).
fn forward_headers(headers: &mut HeaderMap, auth_required: bool) {
    if let Some(host) = forwarded_host(headers).cloned() {
        headers.insert(FORWARDED_HOST.clone(), host);
    }
    remove_where(headers, stays_here);
    if auth_required {
        for name in CREDENTIAL_HEADERS {
            headers.remove(name);
        }
    }
}

/// Removes every header whose name `stays` says.
fn remove_where(headers: &mut HeaderMap, stays: impl Fn(&HeaderName) -> bool) {
    // Collected first (no allocation when there are none): a `HeaderMap` cannot be changed
    // while it is walked.
    let names: Vec<HeaderName> = headers.keys().filter(|k| stays(k)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// How long resolving a callback host may take at submit.
const CALLBACK_RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest callback URL taken.
const CALLBACK_URL_MAX: usize = 2048;

/// The call's `X-Callback-Url`, checked: an absolute http(s) URL whose host resolves only to
/// addresses the callback policy allows. The worker checks again when it delivers.
async fn callback_url(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(headers::CALLBACK_URL) else {
        return Ok(None);
    };
    let bad = |why: &str| ApiError::BadRequest(format!("X-Callback-Url {why}"));
    if raw.len() > CALLBACK_URL_MAX {
        return Err(bad(&format!("is longer than {CALLBACK_URL_MAX} bytes")));
    }
    let raw = raw.to_str().map_err(|_| bad("is not valid ASCII"))?;
    // The URL itself stays out of messages (they are logged): it may carry credentials or a
    // secret path.
    let url = reqwest::Url::parse(raw).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let Some(host) = url
        .host_str()
        .filter(|_| matches!(url.scheme(), "http" | "https"))
    else {
        return Err(bad("must be an absolute http:// or https:// URL"));
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok();
    let addresses: Vec<std::net::IpAddr> = match literal {
        Some(ip) => vec![ip],
        None => {
            state
                .config
                .callbacks
                .check_name(host)
                .map_err(|why| bad(&format!("is refused: {why}")))?;
            let lookup = tokio::net::lookup_host((host, port));
            match tokio::time::timeout(CALLBACK_RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                Ok(Err(e)) => return Err(bad(&format!("host {host:?} cannot be resolved: {e}"))),
                Err(_) => {
                    return Err(bad(&format!(
                        "host {host:?} was not resolved within {CALLBACK_RESOLVE_TIMEOUT:?}"
                    )));
                }
            }
        }
    };
    if addresses.is_empty() {
        return Err(bad(&format!("host {host:?} resolves to no address")));
    }
    // Every address: a name with one harmless and one internal address is refused.
    for ip in addresses {
        state
            .config
            .callbacks
            .check(host, ip)
            .map_err(|why| bad(&format!("is refused: {why}")))?;
    }
    Ok(Some(url.to_string()))
}

/// How many callbacks led to this submission; past the limit it is refused, so a callback
/// that points back at an async route cannot loop for ever.
fn check_hops(headers: &HeaderMap) -> Result<(), ApiError> {
    use sluice_core::callback::{HOPS_HEADER, MAX_CALLBACK_HOPS};
    let Some(value) = headers.get(HOPS_HEADER) else {
        return Ok(());
    };
    let hops = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| ApiError::BadRequest(format!("{HOPS_HEADER} must be a whole number")))?;
    if hops >= MAX_CALLBACK_HOPS {
        return Err(ApiError::BadRequest(format!(
            "this call comes from a chain of {hops} callbacks ({HOPS_HEADER}); at most \
             {MAX_CALLBACK_HOPS} are followed, so a callback pointing back at an async route \
             cannot loop"
        )));
    }
    Ok(())
}

fn call_id(headers: &HeaderMap) -> Result<CallId, ApiError> {
    match headers.get(headers::CALL_ID) {
        None => Ok(CallId::from_trusted(uuid::Uuid::new_v4().to_string())),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| CallId::parse(s).ok())
            .ok_or_else(|| ApiError::BadRequest(sluice_core::call::InvalidCallId.to_string())),
    }
}

/// Headers to replay against the function when the call runs: not Sluice's own, and no
/// credentials.
fn replayable(headers: &HeaderMap) -> Result<Vec<(String, String)>, ApiError> {
    forwardable(headers)
        .filter(|(k, _)| {
            k.as_str() != headers::CALLBACK_URL
                && k.as_str() != headers::CALL_ID
                && !CREDENTIAL_HEADERS.contains(k)
        })
        .map(|(k, v)| {
            let value = std::str::from_utf8(v.as_bytes()).map_err(|_| {
                ApiError::BadRequest(format!(
                    "header {k} is not valid UTF-8; it cannot be queued"
                ))
            })?;
            Ok((k.as_str().to_owned(), value.to_owned()))
        })
        .collect()
}

pub(crate) async fn submit(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let admitted = state.admit_async()?;
    let (function, path) = target(&parts.uri, "/async-function/")?;
    check_method(&parts.method, parts.uri.path())?;
    // The registry, not this gateway's provider, says what is deployed (another gateway may
    // have deployed it a moment ago, and the call runs later, wherever a replica is): the
    // policy is read from it, and kept until the function changes (in the cluster form, a
    // function removed through another gateway is forgotten here at the next registry sync).
    let policy = state.policies.get(&state, &function).await?;
    let queue = policy.queue.clone();
    if policy.auth_required {
        crate::auth::check_origin(&parts.method, &parts.headers)?;
        crate::auth::check(&state, &parts.headers, &parts.extensions, false)?;
    }
    state.check_rates(&parts.headers, &function, &policy)?;
    check_hops(&parts.headers)?;
    let callback_url = callback_url(&state, &parts.headers).await?;
    let id = call_id(&parts.headers)?;
    let headers = replayable(&parts.headers)?;
    let held = state.read_body(&parts.headers, body).await?;
    let body = held.bytes.clone();
    let meta = CallMeta {
        id,
        function,
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().map(str::to_owned),
        headers,
        callback_url,
        submitted_at: Timestamp::now(),
        queue,
        redrive: 0,
    };
    let call = QueuedCall { meta, body };
    // The body stays counted against the budget until the intake has answered, even if the
    // client hangs up meanwhile (the intake finishes what it started either way).
    let stored = tokio::spawn(async move {
        let answer = store(&state, call).await;
        drop((held, admitted));
        answer
    });
    stored
        .await
        .map_err(|e| ApiError::Internal(format!("storing a call: {e}")))?
}

/// Stores an accepted call through the intake (its record, the arbiter of call ids, and its
/// queued call, together) and answers the `202`, or why not. A client resubmitting its own
/// `X-Call-Id` is answered from the existing record.
async fn store(state: &AppState, call: QueuedCall) -> Result<Response, ApiError> {
    let (id, function) = (call.meta.id.clone(), call.meta.function.clone());
    let submitted_at = call.meta.submitted_at;
    match state.intake.submit(call).await? {
        Submitted::Queued => {
            tracing::debug!(call = %id, %function, "queued");
            accepted(&id, submitted_at)
        }
        Submitted::Existing(existing) => {
            check_same_function(&id, &function, &existing)?;
            accepted(&id, existing.submitted_at)
        }
    }
}

/// A call id already belongs to a call; it may only be resubmitted for the same function.
fn check_same_function(
    id: &CallId,
    function: &FunctionRef,
    existing: &CallRecord,
) -> Result<(), ApiError> {
    if existing.function != function.name || existing.namespace != function.namespace {
        return Err(ApiError::Conflict(format!(
            "call id {id} is already used by a call to {}",
            existing.function
        )));
    }
    Ok(())
}

pub(crate) fn accepted(id: &CallId, submitted_at: Timestamp) -> Result<Response, ApiError> {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(headers::CALL_ID, id.as_str())
        .header(headers::START_TIME, submitted_at.as_nanos().to_string())
        .header("location", format!("/system/calls/{id}"))
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(format!("building the 202: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_call_id(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CALL_ID.clone(), HeaderValue::from_str(id).unwrap());
        headers
    }

    fn is_uuid(v: &HeaderValue) -> bool {
        v.to_str()
            .ok()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .is_some_and(|u| u.get_version_num() == 4)
    }

    #[test]
    fn a_call_keeps_a_valid_caller_id_and_gets_a_fresh_one_otherwise() {
        assert_eq!(
            Stamp::new(&with_call_id("my-call.1:a_b")).id,
            "my-call.1:a_b"
        );
        for bad in ["has space", "slash/y", &"x".repeat(129)] {
            let id = Stamp::new(&with_call_id(bad)).id;
            assert!(is_uuid(&id), "{bad:?} became {id:?}");
        }
        let (a, b) = (Stamp::new(&HeaderMap::new()), Stamp::new(&HeaderMap::new()));
        assert!(is_uuid(&a.id) && is_uuid(&b.id));
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn start_is_in_nanoseconds_and_duration_in_seconds_with_six_decimals() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let stamp = Stamp::new(&HeaderMap::new());
        let start: u128 = stamp.start.to_str().unwrap().parse().unwrap();
        assert!(
            start >= before && start - before < 60_000_000_000,
            "{start}"
        );
        let stamp = Stamp {
            started: std::time::Instant::now() - std::time::Duration::from_millis(1500),
            ..stamp
        };
        let duration = stamp.duration().unwrap();
        let text = duration.to_str().unwrap();
        let (whole, decimals) = text.split_once('.').unwrap();
        assert_eq!(decimals.len(), 6, "{text}");
        let seconds: f64 = text.parse().unwrap();
        assert!(whole == "1" && (1.5..60.0).contains(&seconds), "{text}");
    }
}
