//! The calls views: async calls newest first (filtered, paged), one call (its timeline, request
//! and result, cancel and retry), and the dead letters (calls that failed for good), re-driven
//! one at a time or all together after a confirmation.
//!
//! A function's request and answer are shown as escaped text (or a hex dump) and downloaded as
//! `application/octet-stream` attachments, never served as what they say they are: a function's
//! HTML shown as a page of the portal's origin could act with the viewer's session.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use sluice_core::{CallFilter, CallId, CallRecord, CallState, FunctionRef, Timestamp};

use crate::AppState;
use crate::error::ApiError;
use crate::ui::layout::{self, Nav, csrf_field, notice};
use crate::ui::{Viewer, status_page};

/// Calls per page.
const PAGE: u32 = 50;

/// Bytes of a request or result shown on a call's page; the whole is downloadable.
const SHOWN_BYTES: usize = 16 * 1024;

/// Calls one "re-drive all" takes at most (the rest wait for another).
const REDRIVE_ALL_MAX: usize = 1000;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    function: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    cursor: String,
}

/// The filter a list's query asks for, or what is wrong with it.
fn filter_of(q: &ListQuery, state: Option<CallState>) -> Result<CallFilter, String> {
    let function = match q.function.trim() {
        "" => None,
        f => Some(
            FunctionRef::parse(f, None)
                .map_err(|e| format!("function {f:?} cannot be a function's name: {e}"))?,
        ),
    };
    let state = match (state, q.state.trim()) {
        (Some(s), _) => Some(s),
        (None, "") => None,
        (None, s) => Some(CallState::parse(s).ok_or_else(|| format!("{s:?} is not a call state"))?),
    };
    let before = match q.cursor.trim() {
        "" => None,
        c => Some(
            crate::calls::parse_cursor(c).ok_or_else(|| "that page no longer exists".to_owned())?,
        ),
    };
    Ok(CallFilter {
        function,
        state,
        limit: PAGE,
        before,
    })
}

fn state_badge(state: CallState) -> Markup {
    let class = match state {
        CallState::Succeeded => "ok",
        CallState::Failed => "bad",
        CallState::Cancelled => "muted",
        CallState::Queued | CallState::Running => "warn",
    };
    html! { span.badge class=(class) { (state.as_str()) } }
}

fn call_href(id: &CallId) -> String {
    format!("/ui/calls/{}", crate::ui::login::encode(id.as_str()))
}

/// A page of calls as a table, with the link to the next page.
fn table(calls: &[CallRecord], q: &ListQuery, base: &str, redrive: Option<&Viewer>) -> Markup {
    let now = Timestamp::now();
    let next = (calls.len() == PAGE as usize)
        .then(|| calls.last())
        .flatten()
        .map(|c| {
            format!(
                "{base}?function={}&state={}&cursor={}_{}",
                crate::ui::login::encode(&q.function),
                crate::ui::login::encode(&q.state),
                c.submitted_at.as_millis(),
                crate::ui::login::encode(c.id.as_str())
            )
        });
    html! {
        div.table-wrap { table #calls {
            thead { tr {
                th scope="col" { "Call" }
                th scope="col" { "Function" }
                th scope="col" { "State" }
                th scope="col" class="num" { "Attempts" }
                th scope="col" class="num" { "Status" }
                th scope="col" class="hide-narrow" { "Submitted" }
                @if redrive.is_some() { th scope="col" { span.muted { "Action" } } }
            } }
            tbody {
                @for call in calls {
                    tr data-call=(call.id) {
                        td { a href=(call_href(&call.id)) { code { (call.id) } } }
                        td { (call.function) "." (call.namespace) }
                        td { (state_badge(call.state)) }
                        td.num { (call.attempts) }
                        td.num { @if let Some(code) = call.status_code { (code) } @else { "–" } }
                        td.hide-narrow { span title=(call.submitted_at.to_rfc3339()) { (layout::ago(call.submitted_at, now)) } }
                        @if let Some(viewer) = redrive {
                            td {
                                form.inline method="post" action=(format!("{}/retry?back=dead-letters", call_href(&call.id))) {
                                    (csrf_field(viewer))
                                    button.secondary type="submit" aria-label=(format!("Re-drive {}", call.id)) { "Re-drive" }
                                }
                            }
                        }
                    }
                }
                @if calls.is_empty() {
                    tr { td colspan="7" { "No calls here." } }
                }
            }
        } }
        nav.pager aria-label="Pages" {
            @if !q.cursor.is_empty() {
                a href=(format!("{base}?function={}&state={}", crate::ui::login::encode(&q.function), crate::ui::login::encode(&q.state))) { "← Newest" }
            }
            @if let Some(next) = next { a href=(next) rel="next" { "Older →" } }
        }
    }
}

/// `GET /ui/calls`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let (calls, error) = match filter_of(&q, None) {
        Ok(filter) => (state.calls.list_calls(&filter).await?, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mut functions: Vec<String> = state
        .functions
        .list()
        .await?
        .into_iter()
        .map(|s| format!("{}.{}", s.function.name, s.function.namespace))
        .collect();
    functions.sort();
    let states = ["queued", "running", "succeeded", "failed", "cancelled"];
    let body = html! {
        @if let Some(error) = &error { (notice(error, true)) }
        form.row method="get" action="/ui/calls" {
            div.field {
                label for="function" { "Function" }
                select #function name="function" {
                    option value="" { "Any" }
                    @for f in &functions { option value=(f) selected[*f == q.function] { (f) } }
                }
            }
            div.field {
                label for="state" { "State" }
                select #state name="state" {
                    option value="" { "Any" }
                    @for s in states { option value=(s) selected[s == q.state] { (s) } }
                }
            }
            div { button type="submit" { "Show" } }
        }
        p {}
        (table(&calls, &q, "/ui/calls", None))
    };
    Ok(layout::page(&viewer, Nav::Calls, "Calls", body).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DoneQuery {
    #[serde(default)]
    done: String,
}

fn parse_id(id: &str) -> Option<CallId> {
    CallId::parse(id).ok()
}

/// The call's life in order: queued, each attempt, each callback delivery, each re-drive (from
/// the record's timeline; the aggregate fields when the store kept none).
fn timeline(call: &CallRecord) -> Markup {
    let Some(history) = &call.timeline else {
        return aggregate_timeline(call);
    };
    // (when, order among equals, class, markup)
    let mut events: Vec<(Timestamp, u8, &str, Markup)> = vec![(
        call.submitted_at,
        0,
        "",
        html! { "Queued " (layout::time(call.submitted_at)) },
    )];
    for r in &history.redrives {
        events.push((
            r.at,
            1,
            "",
            html! { "Re-driven (round " (r.redrive) ") " (layout::time(r.at)) },
        ));
    }
    for a in &history.attempts {
        let class = match a.outcome {
            sluice_core::AttemptOutcome::Succeeded => "ok",
            sluice_core::AttemptOutcome::Failed | sluice_core::AttemptOutcome::Interrupted => "bad",
            sluice_core::AttemptOutcome::Running => "",
        };
        events.push((
            a.started_at,
            2,
            class,
            html! {
                "Attempt " (a.attempt) @if a.redrive > 0 { " of re-drive " (a.redrive) }
                " started " (layout::time(a.started_at)) ": " strong { (a.outcome.as_str()) }
                @if let Some(code) = a.status_code { ", status " (code) }
                @if let Some(d) = a.duration_seconds { ", " (format!("{d:.3}")) " s" }
                @if let Some(e) = &a.error { " — " (e) }
            },
        ));
    }
    for c in &history.callbacks {
        let class = if c.delivered { "ok" } else { "bad" };
        events.push((
            c.at,
            3,
            class,
            html! {
                "Callback try " (c.attempt) " " (layout::time(c.at)) ": "
                strong { (if c.delivered { "delivered" } else { "not delivered" }) }
                @if let Some(code) = c.status_code { ", status " (code) }
                @if let Some(e) = &c.error { " — " (e) }
            },
        ));
    }
    events.sort_by_key(|(at, order, _, _)| (*at, *order));
    html! {
        ol.timeline #timeline {
            @for (_, _, class, item) in &events { li class=(class) { (item) } }
        }
    }
}

/// The timeline from the record's aggregate fields alone.
fn aggregate_timeline(call: &CallRecord) -> Markup {
    html! {
        ol.timeline #timeline {
            li { "Queued " (layout::time(call.submitted_at)) }
            @if let Some(at) = call.started_at {
                li { "Attempt " (call.attempts) " started " (layout::time(at)) }
            }
            @if let Some(at) = call.finished_at {
                li class=(if call.state == CallState::Succeeded { "ok" } else { "bad" }) {
                    (call.state.as_str()) " " (layout::time(at))
                    @if let Some(code) = call.status_code { " with status " (code) }
                    @if let Some(d) = call.duration_seconds { " after " (format!("{d:.3}")) " s" }
                    @if let Some(e) = &call.error { ": " (e) }
                }
            }
            @if let Some(cb) = &call.callback {
                li class=(if cb.delivered { "ok" } else { "bad" }) {
                    "Callback " (if cb.delivered { "delivered" } else { "not delivered" }) " " (layout::time(cb.at))
                    @if let Some(code) = cb.status_code { " (status " (code) ")" }
                    " after " (cb.attempts) " tries"
                    @if let Some(e) = &cb.error { ": " (e) }
                }
            }
        }
    }
}

fn summary(viewer: &Viewer, call: &CallRecord) -> Markup {
    // Followed until it has ended and, if it has a callback URL, its callback was tried.
    let live = !call.state.is_terminal()
        || (call.state != CallState::Cancelled
            && call.callback_url.is_some()
            && call.callback.is_none());
    let href = call_href(&call.id);
    html! {
        div #call-summary hx-get=[live.then(|| format!("/ui/api/calls/{}/summary", crate::ui::login::encode(call.id.as_str())))] hx-trigger=[live.then_some("every 2s")] hx-swap="outerHTML" {
            dl.props {
                dt { "Function" } dd { a href=(format!("/ui/functions/{}/{}", call.namespace, call.function)) { (call.function) } "." (call.namespace) }
                dt { "State" } dd #call-state { (state_badge(call.state)) }
                dt { "Request" } dd { code { (call.method) " " (call.path) } }
                dt { "Attempts" } dd { (call.attempts) }
                @if let Some(url) = &call.callback_url { dt { "Callback URL" } dd { code { (url) } } }
                // The W3C trace every hop of the call is in: the caller's, or one the gateway
                // started; find it in a tracing backend, or in JSON logs.
                @if let Some(trace) = &call.trace_id { dt { "Trace ID" } dd { code #call-trace { (trace) } } }
                @if let Some(id) = &call.request_id { dt { "Request ID" } dd { code #call-request-id { (id) } } }
            }
            h2 { "Timeline" }
            (timeline(call))
            div.row {
                @if call.state == CallState::Queued {
                    form.inline method="post" action=(format!("{href}/cancel")) {
                        (csrf_field(viewer))
                        button.secondary type="submit" #cancel { "Cancel" }
                    }
                }
                @if call.state == CallState::Failed {
                    form.inline method="post" action=(format!("{href}/retry")) {
                        (csrf_field(viewer))
                        button type="submit" #retry { "Retry" }
                    }
                }
            }
        }
    }
}

/// A body shown on a call's page, with its download link.
fn body_panel(title: &str, id: &str, bytes: &[u8], download: &str) -> Markup {
    let (text, cut, kind) = layout::shown_bytes(bytes, SHOWN_BYTES);
    html! {
        h2 { (title) }
        p.muted {
            (layout::size(bytes.len()))
            @if kind == "hex" { ", not text: shown in hex" }
            @if cut { ", the first " (layout::size(SHOWN_BYTES)) " shown" }
            ". " a href=(download) download { "Download" }
        }
        pre id=(id) tabindex="0" { (text) }
    }
}

/// `GET /ui/calls/<id>`.
pub(crate) async fn detail(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Query(done): Query<DoneQuery>,
) -> Result<Response, ApiError> {
    let Some(id) = parse_id(&id) else {
        return Ok(status_page(
            &viewer,
            StatusCode::NOT_FOUND,
            "There is no such call.",
        ));
    };
    let Some(call) = state.calls.get(&id).await? else {
        return Ok(status_page(
            &viewer,
            StatusCode::NOT_FOUND,
            &format!("There is no call {id}."),
        ));
    };
    let result = state.calls.result(&id).await?;
    let request = if call.state == CallState::Failed {
        state.calls.kept_request(&id).await?
    } else {
        None
    };
    let api = format!("/ui/api/calls/{}", crate::ui::login::encode(id.as_str()));
    let message = match done.done.as_str() {
        "retried" => Some("Re-driven: the call is queued again."),
        "cancelled" => Some("Cancelled: it will not run."),
        _ => None,
    };
    let body = html! {
        @if let Some(m) = message { (notice(m, false)) }
        (summary(&viewer, &call))
        @match &request {
            Some(r) => (body_panel("Request body", "request-body", &r.body, &format!("{api}/request"))),
            None => {
                h2 { "Request body" }
                p.muted { "Kept only for a call that failed for good (to re-drive it)." }
            }
        }
        @match &result {
            Some(r) => {
                (body_panel(&format!("Result (status {})", r.status_code), "result-body", &r.body, &format!("{api}/result")))
                details {
                    summary { "Result headers" }
                    div.table-wrap { table { tbody {
                        @for (k, v) in &r.headers { tr { td { code { (k) } } td { code { (v) } } } }
                    } } }
                }
            }
            None => {
                h2 { "Result" }
                p.muted {
                    @if call.state.is_terminal() { "No result is kept (results are kept up to a size, for a while)." }
                    @else { "None yet." }
                }
            }
        }
    };
    Ok(layout::page(&viewer, Nav::Calls, &format!("Call {id}"), body).into_response())
}

/// `GET /ui/api/calls/<id>/summary`: the state and timeline, for the live refresh.
pub(crate) async fn summary_fragment(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = CallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let call = state
        .calls
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("call {id}")))?;
    Ok(summary(&viewer, &call).into_response())
}

/// Bytes as a download that no browser will render.
fn attachment(name: String, bytes: bytes::Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
        ],
        Body::from(bytes),
    )
        .into_response()
}

/// A file name made of a call id (letters, digits, `-_.:`), `:` replaced.
fn file_name(id: &CallId, what: &str) -> String {
    format!("{}-{what}.bin", id.as_str().replace(':', "_"))
}

/// `GET /ui/api/calls/<id>/result`.
pub(crate) async fn download_result(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = CallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let result = state
        .calls
        .result(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("result of call {id}")))?;
    Ok(attachment(file_name(&id, "result"), result.body))
}

/// `GET /ui/api/calls/<id>/request`.
pub(crate) async fn download_request(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = CallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let request = state
        .calls
        .kept_request(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("kept request of call {id}")))?;
    Ok(attachment(file_name(&id, "request"), request.body))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct BackQuery {
    #[serde(default)]
    back: String,
}

/// `POST /ui/calls/<id>/retry`: re-drives a failed call.
pub(crate) async fn retry(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    Query(back): Query<BackQuery>,
) -> Result<Response, ApiError> {
    let Some(id) = parse_id(&id) else {
        return Ok(status_page(
            &viewer,
            StatusCode::NOT_FOUND,
            "There is no such call.",
        ));
    };
    match crate::calls::redrive(&state, &id).await {
        Ok(_) if back.back == "dead-letters" => Ok(Redirect::to(&format!(
            "/ui/dead-letters?done=1&call={}",
            crate::ui::login::encode(id.as_str())
        ))
        .into_response()),
        Ok(_) => Ok(Redirect::to(&format!("{}?done=retried", call_href(&id))).into_response()),
        Err(e @ (ApiError::Conflict(_) | ApiError::NotFound(_))) => {
            Ok(status_page(&viewer, e.status(), &e.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// `POST /ui/calls/<id>/cancel`: cancels a queued call.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(id) = parse_id(&id) else {
        return Ok(status_page(
            &viewer,
            StatusCode::NOT_FOUND,
            "There is no such call.",
        ));
    };
    match crate::calls::cancel_call(&state, &id).await {
        Ok(_) => Ok(Redirect::to(&format!("{}?done=cancelled", call_href(&id))).into_response()),
        Err(e @ (ApiError::Conflict(_) | ApiError::NotFound(_))) => {
            Ok(status_page(&viewer, e.status(), &e.to_string()))
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DeadQuery {
    #[serde(default)]
    function: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    done: String,
    #[serde(default)]
    call: String,
    #[serde(default)]
    redriven: Option<usize>,
}

/// `GET /ui/dead-letters`: calls that failed for good.
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<DeadQuery>,
) -> Result<Response, ApiError> {
    let list = ListQuery {
        function: q.function.clone(),
        state: String::new(),
        cursor: q.cursor.clone(),
    };
    let (calls, error) = match filter_of(&list, Some(CallState::Failed)) {
        Ok(filter) => (state.calls.list_calls(&filter).await?, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let body = html! {
        @if let Some(error) = &error { (notice(error, true)) }
        @if !q.done.is_empty() && !q.call.is_empty() { (notice(&format!("Re-driven: call {} is queued again.", q.call), false)) }
        @if let Some(n) = q.redriven { (notice(&format!("Re-driven {n} calls."), false)) }
        p { "Calls whose attempts ran out, or that failed in a way no retry mends. Fix the function, then re-drive them: each runs again with its original request." }
        @if !calls.is_empty() {
            p { a.button href="/ui/dead-letters/redrive-all" #redrive-all { "Re-drive all…" } }
        }
        (table(&calls, &list, "/ui/dead-letters", Some(&viewer)))
    };
    Ok(layout::page(&viewer, Nav::DeadLetters, "Dead letters", body).into_response())
}

/// Failed calls, up to `max`, newest first.
async fn failed_calls(state: &AppState, max: usize) -> Result<Vec<CallRecord>, ApiError> {
    let mut out = Vec::new();
    let mut before = None;
    while out.len() < max {
        let page = state
            .calls
            .list_calls(&CallFilter {
                state: Some(CallState::Failed),
                limit: 500,
                before: before.clone(),
                ..CallFilter::default()
            })
            .await?;
        let full = page.len() == 500;
        before = page.last().map(|c| (c.submitted_at, c.id.clone()));
        out.extend(page);
        if !full {
            break;
        }
    }
    out.truncate(max);
    Ok(out)
}

/// `GET /ui/dead-letters/redrive-all`: asks first.
pub(crate) async fn redrive_all_form(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, ApiError> {
    let n = failed_calls(&state, REDRIVE_ALL_MAX).await?.len();
    let body = html! {
        @if n == 0 {
            p { "There are no failed calls." }
        } @else {
            p {
                "Re-drive " strong #count { (n) } " failed calls"
                @if n == REDRIVE_ALL_MAX { " (the newest " (REDRIVE_ALL_MAX) "; re-drive again for the rest)" }
                "? Each is queued again with its original request."
            }
            form.row method="post" action="/ui/dead-letters/redrive-all" {
                (csrf_field(&viewer))
                button type="submit" #confirm { "Re-drive " (n) " calls" }
                a.button.secondary href="/ui/dead-letters" { "Cancel" }
            }
        }
    };
    Ok(layout::page(&viewer, Nav::DeadLetters, "Re-drive all", body).into_response())
}

/// `POST /ui/dead-letters/redrive-all`.
pub(crate) async fn redrive_all(State(state): State<AppState>) -> Result<Response, ApiError> {
    // The whole batch in a task of its own, so a client that hangs up does not stop it
    // half-way through.
    let batch = async move {
        let mut redriven = 0;
        for call in failed_calls(&state, REDRIVE_ALL_MAX).await? {
            match crate::calls::redrive(&state, &call.id).await {
                Ok(_) => redriven += 1,
                // Re-driven meanwhile by someone else, or its request is no longer kept.
                Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(redriven, error = %e, "re-driving all dead letters stopped");
                    return Err(e);
                }
            }
        }
        Ok::<_, ApiError>(redriven)
    };
    let redriven = tokio::spawn(batch)
        .await
        .map_err(|e| ApiError::Internal(format!("re-drive task: {e}")))??;
    tracing::info!(redriven, "dead letters re-driven from the portal");
    Ok(Redirect::to(&format!("/ui/dead-letters?redriven={redriven}")).into_response())
}
