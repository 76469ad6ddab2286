//! Invocation: `/function/<name>[/path]` proxies to a ready replica; `/async-function/<name>[/path]`
//! stores the call durably and answers `202`.
//!
//! Both continue the caller's W3C trace (or start one) and carry a request id: the function
//! gets a `traceparent` whose parent is the gateway's span, the caller's `tracestate` and the
//! `X-Request-Id`, and the answer carries the `X-Request-Id`. An async call stores its submit
//! span's context with its request headers, so every later hop continues it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use sluice_core::headers::{self, is_hop_by_hop};
use sluice_core::trace::{self, SpanTrace, TraceParent};
use sluice_core::{CallId, CallMeta, CallRecord, FunctionRef, QueuedCall, Submitted, Timestamp};
use tracing::Instrument as _;

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
            parts
                .headers
                .insert(REQUEST_ID.clone(), stamp.request_id.clone());
            // A debug span: made only when it is exported (or debug logs are on), so a sync
            // call pays for no span otherwise; the trace is continued either way.
            let span = tracing::debug_span!(
                "invoke",
                function = %function,
                call_id = stamp.id.to_str().unwrap_or_default(),
                trace_id = tracing::field::Empty,
            );
            continue_trace(&mut parts.headers, &span);
            let answer = proxy(&state, parts, body, &function, &path, &stamp)
                .instrument(span)
                .await;
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
    headers.insert(REQUEST_ID.clone(), stamp.request_id);
    response
}

static CALL_ID: HeaderName = HeaderName::from_static(headers::CALL_ID);
static START_TIME: HeaderName = HeaderName::from_static(headers::START_TIME);
static DURATION_SECONDS: HeaderName = HeaderName::from_static(headers::DURATION_SECONDS);
static TRACEPARENT: HeaderName = HeaderName::from_static(trace::TRACEPARENT);
static TRACESTATE: HeaderName = HeaderName::from_static(trace::TRACESTATE);
static REQUEST_ID: HeaderName = HeaderName::from_static(trace::REQUEST_ID);

/// The caller's trace context: its `traceparent` if it sent exactly one valid one (else none:
/// a new trace starts).
fn incoming_trace(headers: &HeaderMap) -> Option<TraceParent> {
    TraceParent::from_values(
        headers
            .get_all(&TRACEPARENT)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The caller's `tracestate`, to pass on as it came, when it goes with a valid `traceparent`
/// and is itself valid and within bounds (several headers are one list, joined with commas as
/// the spec says); `None` means it is dropped.
fn incoming_tracestate(headers: &HeaderMap, parent: Option<&TraceParent>) -> Option<HeaderValue> {
    parent?;
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    let joined = match values.next() {
        None => first.clone(),
        Some(second) => {
            let mut all = [first, second]
                .into_iter()
                .chain(values)
                .map(HeaderValue::as_bytes)
                .collect::<Vec<_>>()
                .join(&b","[..]);
            all.truncate(trace::MAX_TRACESTATE_LEN + 1);
            HeaderValue::from_bytes(&all).ok()?
        }
    };
    trace::tracestate_is_valid(joined.as_bytes()).then_some(joined)
}

/// Continues the caller's trace in `span` for a request going on to a function, in place: the
/// request's `traceparent` becomes the span's (same trace, the span as parent; a new trace if
/// the caller sent none usable), and its `tracestate` is kept only if it may be passed on.
fn continue_trace(headers: &mut HeaderMap, span: &tracing::Span) {
    let parent = incoming_trace(headers);
    match incoming_tracestate(headers, parent.as_ref()) {
        Some(state) => {
            headers.insert(TRACESTATE.clone(), state);
        }
        None => {
            headers.remove(&TRACESTATE);
        }
    }
    let joined = SpanTrace::remote(span, parent.as_ref());
    span.record("trace_id", tracing::field::display(joined.trace_id()));
    headers.insert(TRACEPARENT.clone(), traceparent_value(joined.context()));
}

/// A `traceparent` header value.
fn traceparent_value(context: &TraceParent) -> HeaderValue {
    HeaderValue::from_bytes(&context.encode()).expect("hex digits and dashes are a valid header")
}

/// The request's id: the client's `X-Request-Id` if it is usable as it is, else a fresh UUID.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| trace::request_id_is_valid(v.as_bytes()))
        .cloned()
        .unwrap_or_else(fresh_call_id)
}

/// What a sync call is stamped with, on its way to the function and on every answer, as
/// OpenFaaS's gateway stamps it: its id (the caller's `X-Call-Id` if it is a valid call id,
/// else a fresh UUID) and its start (`X-Start-Time`, nanoseconds since the epoch); and its
/// `X-Request-Id` (the caller's if usable, else a fresh UUID).
struct Stamp {
    id: HeaderValue,
    start: HeaderValue,
    request_id: HeaderValue,
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
            request_id: request_id(headers),
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

/// What an async call carries of its trace through the queue: the submit span's context (the
/// parent of every later hop), the caller's `tracestate` if it may be passed on, and the
/// request id.
struct CallTrace {
    context: TraceParent,
    state: Option<HeaderValue>,
    request_id: HeaderValue,
}

/// Headers to replay against the function when the call runs: not Sluice's own, and no
/// credentials; the caller's trace headers replaced with the call's.
fn replayable(headers: &HeaderMap, trace: &CallTrace) -> Result<Vec<(String, String)>, ApiError> {
    let owned = |k: &HeaderName, v: &HeaderValue| {
        let value = std::str::from_utf8(v.as_bytes()).map_err(|_| {
            ApiError::BadRequest(format!(
                "header {k} is not valid UTF-8; it cannot be queued"
            ))
        })?;
        Ok((k.as_str().to_owned(), value.to_owned()))
    };
    let mut kept = forwardable(headers)
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                headers::CALLBACK_URL
                    | headers::CALL_ID
                    | trace::TRACEPARENT
                    | trace::TRACESTATE
                    | trace::REQUEST_ID
            ) && !CREDENTIAL_HEADERS.contains(k)
        })
        .map(|(k, v)| owned(k, v))
        .collect::<Result<Vec<_>, ApiError>>()?;
    kept.push((trace::TRACEPARENT.to_owned(), trace.context.to_string()));
    if let Some(state) = &trace.state {
        kept.push(owned(&TRACESTATE, state)?);
    }
    kept.push(owned(&REQUEST_ID, &trace.request_id)?);
    Ok(kept)
}

/// `ANY /async-function/<name>[/path]`: the call is stored, then `202`; every answer carries
/// the request's `X-Request-Id`.
pub(crate) async fn submit(State(state): State<AppState>, req: Request) -> Response {
    use axum::response::IntoResponse;
    let request_id = request_id(req.headers());
    let mut response = accept(state, req, request_id.clone())
        .await
        .unwrap_or_else(IntoResponse::into_response);
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), request_id);
    response
}

async fn accept(
    state: AppState,
    req: Request,
    request_id: HeaderValue,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let admitted = state.admit_async()?;
    let (function, path) = target(&parts.uri, "/async-function/")?;
    check_method(&parts.method, parts.uri.path())?;
    let span = tracing::info_span!(
        "submit",
        function = %function,
        call_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = incoming_trace(&parts.headers);
    let joined = SpanTrace::remote(&span, parent.as_ref());
    span.record("trace_id", tracing::field::display(joined.trace_id()));
    let trace = CallTrace {
        context: *joined.context(),
        state: incoming_tracestate(&parts.headers, parent.as_ref()),
        request_id,
    };
    accept_in_span(state, parts, body, admitted, function, path, trace)
        .instrument(span)
        .await
}

/// The rest of [`accept`], in its submit span.
async fn accept_in_span(
    state: AppState,
    parts: axum::http::request::Parts,
    body: Body,
    admitted: tokio::sync::OwnedSemaphorePermit,
    function: FunctionRef,
    path: String,
    trace: CallTrace,
) -> Result<Response, ApiError> {
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
    tracing::Span::current().record("call_id", tracing::field::display(&id));
    let headers = replayable(&parts.headers, &trace)?;
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
    let stored = tokio::spawn(
        async move {
            let answer = store(&state, call).await;
            drop((held, admitted));
            answer
        }
        .in_current_span(),
    );
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

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn traceparent(headers: &HeaderMap) -> TraceParent {
        let value = headers.get(&TRACEPARENT).expect("a traceparent is sent on");
        TraceParent::parse(value.as_bytes()).expect("a valid one")
    }

    #[test]
    fn the_callers_trace_goes_on_with_the_gateway_as_parent() {
        let caller = TraceParent::parse(CALLER.as_bytes()).unwrap();
        let mut headers = with(&[("traceparent", CALLER), ("tracestate", "rojo=1,congo=2")]);
        continue_trace(&mut headers, &tracing::Span::none());
        let sent = traceparent(&headers);
        assert_eq!(sent.trace_id, caller.trace_id);
        assert_ne!(sent.parent_id, caller.parent_id);
        assert_eq!(headers.get_all(&TRACEPARENT).iter().count(), 1);
        assert_eq!(headers["tracestate"], "rojo=1,congo=2");
    }

    #[test]
    fn a_bad_traceparent_starts_a_new_trace_without_its_tracestate() {
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut headers = with(&[("traceparent", bad), ("tracestate", "rojo=1")]);
            continue_trace(&mut headers, &tracing::Span::none());
            let sent = traceparent(&headers);
            assert_ne!(
                sent.trace_id.to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert!(sent.sampled(), "a trace Sluice starts is sampled");
            assert!(!headers.contains_key("tracestate"), "{bad}");
        }
        // Two traceparents cannot be told apart: a new trace.
        let mut headers = with(&[("traceparent", CALLER), ("traceparent", CALLER)]);
        continue_trace(&mut headers, &tracing::Span::none());
        assert_ne!(
            traceparent(&headers).trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // None at all: a new trace too, with its own id each time.
        let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
        continue_trace(&mut a, &tracing::Span::none());
        continue_trace(&mut b, &tracing::Span::none());
        assert_ne!(traceparent(&a).trace_id, traceparent(&b).trace_id);
    }

    #[test]
    fn tracestate_is_joined_bounded_and_dropped_when_invalid() {
        let mut headers = with(&[
            ("traceparent", CALLER),
            ("tracestate", "rojo=1"),
            ("tracestate", "congo=2"),
        ]);
        continue_trace(&mut headers, &tracing::Span::none());
        assert_eq!(headers["tracestate"], "rojo=1,congo=2");
        let long = format!("k={}", "v".repeat(600));
        for bad in ["Not=valid", long.as_str()] {
            let mut headers = with(&[("traceparent", CALLER), ("tracestate", bad)]);
            continue_trace(&mut headers, &tracing::Span::none());
            assert!(!headers.contains_key("tracestate"), "{bad}");
            assert!(headers.contains_key("traceparent"));
        }
    }

    #[test]
    fn a_usable_request_id_is_kept_and_any_other_replaced() {
        assert_eq!(
            request_id(&with(&[("x-request-id", "req-1:a/b+c=")])),
            "req-1:a/b+c="
        );
        for bad in ["has space", "quote\"", &"x".repeat(129)] {
            let id = request_id(&with(&[("x-request-id", bad)]));
            assert!(is_uuid(&id), "{bad:?} became {id:?}");
        }
        let (a, b) = (request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
        assert!(is_uuid(&a) && is_uuid(&b) && a != b);
        assert_eq!(
            Stamp::new(&with(&[("x-request-id", "r1")])).request_id,
            "r1"
        );
    }

    #[test]
    fn an_async_call_stores_its_own_trace_headers_in_place_of_the_callers() {
        let caller = TraceParent::parse(CALLER.as_bytes()).unwrap();
        let headers = with(&[
            ("traceparent", CALLER),
            ("tracestate", "rojo=1"),
            ("x-request-id", "from-client"),
            ("content-type", "text/plain"),
        ]);
        let trace = CallTrace {
            context: caller.child(),
            state: incoming_tracestate(&headers, Some(&caller)),
            request_id: request_id(&headers),
        };
        let stored = replayable(&headers, &trace).unwrap();
        let find = |name: &str| {
            let found: Vec<&str> = stored
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(found.len(), 1, "{name} stored once: {stored:?}");
            found[0]
        };
        assert_eq!(find("traceparent"), trace.context.to_string());
        assert_ne!(find("traceparent"), CALLER);
        assert_eq!(find("tracestate"), "rojo=1");
        assert_eq!(find("x-request-id"), "from-client");
        assert_eq!(find("content-type"), "text/plain");
    }
}
