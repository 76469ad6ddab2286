//! The functions views: the list, one function (its configuration, invoke panel, logs), and
//! scaling or removing it, each change behind a page that asks for confirmation.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::StreamExt;
use maud::{Markup, html};
use serde::Deserialize;
use sluice_core::{FunctionRef, FunctionStatus, Timestamp};

use crate::AppState;
use crate::error::ApiError;
use crate::metrics::CallSummary;
use crate::ui::layout::{self, Nav, csrf_field, notice};
use crate::ui::{HeldForm, Viewer, status_page};

/// The part of a function's answer the invoke panel shows; the rest is cut.
const SHOWN_BYTES: usize = 64 * 1024;

/// Log lines shown on a function's page before the live tail takes over.
const LOG_LINES: usize = 100;

/// One function as the list shows it.
struct Row {
    status: FunctionStatus,
    calls: CallSummary,
}

/// A function's replicas in a word: at zero, waking, scaling, crash-looping or ready.
fn scaling_state(s: &FunctionStatus) -> (&'static str, &'static str) {
    if s.crash_loop.is_some() {
        ("crash-looping", "bad")
    } else if s.replicas == 0 && s.available_replicas == 0 {
        ("at zero", "muted")
    } else if s.available_replicas == 0 {
        ("waking", "warn")
    } else if s.available_replicas != s.replicas
        || s.target_replicas.is_some_and(|t| t != s.replicas)
    {
        ("scaling", "warn")
    } else {
        ("ready", "ok")
    }
}

fn function_href(s: &FunctionStatus) -> String {
    format!(
        "/ui/functions/{}/{}",
        s.namespace.as_deref().unwrap_or_default(),
        s.name
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    q: String,
}

/// Every function, in name order, whose name or namespace holds `filter`.
async fn rows(state: &AppState, filter: &str) -> Result<Vec<Row>, ApiError> {
    let filter = filter.trim().to_lowercase();
    let mut specs = state.functions.list().await?;
    specs.retain(|s| {
        filter.is_empty()
            || s.function.name.contains(&filter)
            || s.function.namespace.contains(&filter)
    });
    specs.sort_by(|a, b| a.function.cmp(&b.function));
    Ok(specs
        .into_iter()
        .map(|spec| {
            let calls = state.metrics.summary(&spec.function);
            Row {
                status: crate::functions::status_of(state, spec),
                calls,
            }
        })
        .collect())
}

fn table(rows: &[Row], filter: &str) -> Markup {
    let now = Timestamp::now();
    let refresh = format!("/ui/api/functions?q={}", crate::ui::login::encode(filter));
    html! {
        div.table-wrap #functions hx-get=(refresh) hx-trigger="every 5s" hx-swap="outerHTML" {
            table {
                caption.muted { (rows.len()) " functions" }
                thead { tr {
                    th scope="col" { "Name" }
                    th scope="col" { "Namespace" }
                    th scope="col" class="num" { "Ready / desired" }
                    th scope="col" { "State" }
                    th scope="col" class="num" { "Invocations" }
                    th scope="col" class="num" { "Errors" }
                    th scope="col" class="hide-narrow" { "Last called" }
                } }
                tbody {
                    @for row in rows {
                        @let (state, class) = scaling_state(&row.status);
                        tr data-function=(row.status.name) {
                            td { a href=(function_href(&row.status)) { (row.status.name) } }
                            td { (row.status.namespace.as_deref().unwrap_or_default()) }
                            td.num { (row.status.available_replicas) "/" (row.status.replicas) }
                            td { span.badge class=(class) { (state) } }
                            td.num { (row.calls.invocations) }
                            td.num { @if row.calls.errors > 0 { span.bad { (row.calls.errors) } } @else { "0" } }
                            td.hide-narrow {
                                @match row.calls.last_at {
                                    Some(at) => span title=(at.to_rfc3339()) { (layout::ago(at, now)) },
                                    None => span.muted { "never" },
                                }
                            }
                        }
                    }
                    @if rows.is_empty() {
                        tr { td colspan="7" {
                            @if filter.is_empty() {
                                "No functions yet. " a href="/ui/deploy" { "Deploy one" } "."
                            } @else {
                                "No function matches " code { (filter) } "."
                            }
                        } }
                    }
                }
            }
        }
    }
}

/// `GET /ui/functions`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let rows = rows(&state, &q.q).await?;
    let body = html! {
        form.row role="search" method="get" action="/ui/functions" {
            div.field {
                label for="q" { "Filter by name or namespace" }
                input #q type="text" name="q" value=(q.q);
            }
            div { button type="submit" { "Filter" } }
        }
        p {}
        (table(&rows, &q.q))
    };
    Ok(layout::page(&viewer, Nav::Functions, "Functions", body).into_response())
}

/// `GET /ui/api/functions`: the table alone, for its live refresh.
pub(crate) async fn table_fragment(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    Ok(table(&rows(&state, &q.q).await?, &q.q).into_response())
}

/// The function a page's path names, if it is deployed.
async fn find(
    state: &AppState,
    namespace: &str,
    name: &str,
) -> Result<Option<(FunctionRef, FunctionStatus)>, ApiError> {
    let Ok(function) = FunctionRef::new(name, Some(namespace)) else {
        return Ok(None);
    };
    Ok(state
        .functions
        .get(&function)
        .await?
        .map(|spec| (function, crate::functions::status_of(state, spec))))
}

fn missing(viewer: &Viewer, namespace: &str, name: &str) -> Response {
    status_page(
        viewer,
        StatusCode::NOT_FOUND,
        &format!("There is no function {name} in namespace {namespace}."),
    )
}

/// The last lines of a function's output, as text.
async fn last_lines(state: &AppState, function: &FunctionRef) -> String {
    let Ok(lines) = state.orchestrator.logs(function, LOG_LINES, false) else {
        return String::new();
    };
    // What arrives within two seconds (a slow provider's first lines are kept, not dropped).
    lines
        .take_until(tokio::time::sleep(Duration::from_secs(2)))
        .map(|l| format!("{} {} {}", l.timestamp.to_rfc3339(), l.instance, l.text))
        .collect::<Vec<_>>()
        .await
        .join("\n")
}

fn props(status: &FunctionStatus, calls: &CallSummary) -> Markup {
    let (state, class) = scaling_state(status);
    let refresh = format!(
        "/ui/api/functions/{}/{}/summary",
        status.namespace.as_deref().unwrap_or_default(),
        status.name
    );
    html! {
        div #summary hx-get=(refresh) hx-trigger="every 3s" hx-swap="outerHTML" {
        dl.props {
            dt { "Namespace" } dd { (status.namespace.as_deref().unwrap_or_default()) }
            dt { "State" } dd { span.badge class=(class) #function-state { (state) } }
            dt { "Replicas" } dd #replicas { (status.available_replicas) " ready of " (status.replicas) }
            @if let Some(target) = status.target_replicas {
                dt { "Autoscaler" } dd { (target) " wanted" @if let Some(r) = &status.scale_reason { " (" (r) ")" } }
            }
            dt { "Invocations" } dd { (calls.invocations) }
            dt { "Errors (5xx)" } dd { (calls.errors) }
            dt { "Last called" } dd { @match calls.last_at { Some(at) => (layout::time(at)), None => "never" } }
            @if let Some(at) = status.created_at {
                dt { "Created" } dd { (layout::time(at)) }
            }
            @if !status.image.is_empty() {
                dt { "Image" } dd { code { (status.image) } }
            }
            @if let Some(process) = status.env_process.as_deref().filter(|p| !p.is_empty()) {
                dt { "Process" } dd { code { (process) } }
            }
            @if let Some(usage) = &status.usage {
                dt { "Usage" } dd { (format!("{:.0}", usage.cpu)) " millicores, " (layout::size(usage.total_memory_bytes as usize)) }
            }
            @if let Some(problem) = &status.problem {
                dt { "Problem" } dd.bad { (problem) }
            }
        }
        @if let Some(crash) = &status.crash_loop {
            (notice(&format!("Crash-looping: {} ({} runs in a row ended too soon).", crash.exit, crash.exits), true))
            @if !crash.last_lines.is_empty() {
                pre { (crash.last_lines.join("\n")) }
            }
        }
        }
    }
}

/// `GET /ui/api/functions/<namespace>/<name>/summary`: a function's state, for its live refresh.
pub(crate) async fn summary(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let function = FunctionRef::new(&name, Some(&namespace))?;
    let Some((function, status)) = find(&state, &function.namespace, &function.name).await? else {
        return Err(ApiError::FunctionNotFound(function.to_string()));
    };
    Ok(props(&status, &state.metrics.summary(&function)).into_response())
}

fn map_table(caption: &str, map: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        @if map.is_empty() {
            p.muted { "No " (caption.to_lowercase()) "." }
        } @else {
            div.table-wrap { table {
                caption.muted { (caption) }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Value" } } }
                tbody { @for (k, v) in map { tr { td { code { (k) } } td { code { (v) } } } } }
            } }
        }
    }
}

/// What the invoke panel was asked, kept to fill the form again.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct InvokeForm {
    #[serde(default = "post")]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    headers: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    callback_url: String,
}

fn post() -> String {
    "POST".into()
}

const METHODS: [&str; 5] = ["POST", "GET", "PUT", "PATCH", "DELETE"];

fn invoke_panel(
    viewer: &Viewer,
    status: &FunctionStatus,
    form: &InvokeForm,
    result: Option<Markup>,
) -> Markup {
    let action = format!("{}/invoke", function_href(status));
    let is_async = form.mode == "async";
    html! {
        section aria-labelledby="invoke-heading" {
            h2 #invoke-heading { "Invoke" }
            form.stack method="post" action=(action) hx-post=(action) hx-target="#invoke-result" hx-swap="innerHTML" {
                (csrf_field(viewer))
                div.row {
                    div.field {
                        label for="method" { "Method" }
                        select #method name="method" {
                            @for m in METHODS {
                                option value=(m) selected[form.method == m] { (m) }
                            }
                        }
                    }
                    div.field {
                        label for="path" { "Path below the function" span.hint { " (optional, with its query)" } }
                        input #path type="text" name="path" value=(form.path) placeholder="/";
                    }
                }
                div.field {
                    label for="headers" { "Headers" span.hint { " (one per line, Name: value)" } }
                    textarea #headers name="headers" rows="2" { (form.headers) }
                }
                div.field {
                    label for="body" { "Body" }
                    textarea #body name="body" rows="4" { (form.body) }
                }
                fieldset {
                    legend { "How" }
                    label { input type="radio" name="mode" value="sync" checked[!is_async]; " Synchronously: wait for the answer" }
                    label { input type="radio" name="mode" value="async" checked[is_async]; " Asynchronously: queue it" }
                    div.field {
                        label for="callback_url" { "Callback URL" span.hint { " (async only, optional)" } }
                        input #callback_url type="url" name="callback_url" value=(form.callback_url) placeholder="http://127.0.0.1:9000/done";
                    }
                }
                div { button type="submit" #invoke { "Invoke" } }
            }
            div #invoke-result aria-live="polite" {
                @if let Some(result) = result { (result) }
            }
        }
    }
}

/// `GET /ui/functions/<namespace>/<name>`.
pub(crate) async fn detail(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    detail_page(
        &state,
        &viewer,
        &namespace,
        &name,
        &InvokeForm::default(),
        None,
        None,
    )
    .await
}

async fn detail_page(
    state: &AppState,
    viewer: &Viewer,
    namespace: &str,
    name: &str,
    form: &InvokeForm,
    result: Option<Markup>,
    message: Option<&str>,
) -> Result<Response, ApiError> {
    let Some((function, status)) = find(state, namespace, name).await? else {
        return Ok(missing(viewer, namespace, name));
    };
    let calls = state.metrics.summary(&function);
    let logs = last_lines(state, &function).await;
    let href = function_href(&status);
    let logs_src = format!(
        "/ui/api/functions/{}/{}/logs",
        function.namespace, function.name
    );
    let calls_href = format!(
        "/ui/calls?function={}.{}",
        function.name, function.namespace
    );
    let body = html! {
        @if let Some(message) = message { (notice(message, false)) }
        (props(&status, &calls))
        p.row {
            a.button.secondary href=(format!("{href}/scale")) { "Scale…" }
            a.button.secondary href=(format!("{href}/remove")) { "Remove…" }
            a href=(calls_href) { "Its async calls" }
        }
        section aria-labelledby="scaling-heading" {
            h2 #scaling-heading { "Scaling over the last hour" }
            div #scaling hx-get=(format!("/ui/api/functions/{}/{}/scaling", function.namespace, function.name)) hx-trigger="every 5s" hx-swap="innerHTML" {
                (scaling_chart(state, &function))
            }
        }
        (invoke_panel(viewer, &status, form, result))
        section aria-labelledby="logs-heading" {
            h2 #logs-heading { "Logs" }
            p.muted #logs-status role="status" { "The last " (LOG_LINES) " lines." }
            pre #logs data-logs-src=(logs_src) data-status="logs-status" tabindex="0" aria-label="Function logs" { (logs) }
        }
        section aria-labelledby="config-heading" {
            h2 #config-heading { "Configuration" }
            h3 { "Labels" }
            (map_table("Labels", status.labels.as_ref().unwrap_or(&Default::default())))
            h3 { "Annotations" }
            (map_table("Annotations", status.annotations.as_ref().unwrap_or(&Default::default())))
            h3 { "Environment" }
            (map_table("Environment", &status.env_vars))
            h3 { "Secrets" }
            @if status.secrets.is_empty() { p.muted { "No secrets." } }
            @else { ul { @for s in &status.secrets { li { code { (s) } } } } }
        }
    };
    Ok(layout::page(viewer, Nav::Functions, &status.name, body).into_response())
}

/// `POST /ui/functions/<namespace>/<name>/invoke`: calls the function through the gateway's
/// own sync or async path (its checks and limits apply), as the logged-in admin.
pub(crate) async fn invoke(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    held: HeldForm,
) -> Result<Response, ApiError> {
    let form: InvokeForm = held.parse()?;
    let Ok(function) = FunctionRef::new(&name, Some(&namespace)) else {
        return Ok(missing(&viewer, &namespace, &name));
    };
    let result = match call(&state, &function, &form).await {
        Ok(shown) => shown,
        Err(problem) => html! { (notice(&problem, true)) },
    };
    if headers.contains_key("hx-request") {
        return Ok(result.into_response());
    }
    detail_page(
        &state,
        &viewer,
        &namespace,
        &name,
        &form,
        Some(result),
        None,
    )
    .await
}

/// Makes the call the invoke panel describes and shows its outcome; `Err` says what was wrong
/// with the form.
async fn call(
    state: &AppState,
    function: &FunctionRef,
    form: &InvokeForm,
) -> Result<Markup, String> {
    let method = Method::from_bytes(form.method.trim().as_bytes())
        .ok()
        .filter(|m| METHODS.contains(&m.as_str()))
        .ok_or_else(|| format!("method {:?} is not one the panel sends", form.method))?;
    let path = form.path.trim();
    let path = if path.is_empty() || path == "/" {
        String::new()
    } else if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let is_async = form.mode == "async";
    let prefix = if is_async {
        "/async-function"
    } else {
        "/function"
    };
    let uri = format!("{prefix}/{}.{}{path}", function.name, function.namespace);
    let mut request = Request::builder()
        .method(method)
        .uri(&uri)
        .body(Body::from(form.body.clone().into_bytes()))
        .map_err(|e| format!("the path {path:?} cannot be used: {e}"))?;
    for line in form
        .headers
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?} is not Name: value"))?;
        let k = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", k.trim()))?;
        let v = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("the value of header {k} cannot be sent"))?;
        request.headers_mut().append(k, v);
    }
    let headers = request.headers_mut();
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(form.body.len()));
    if is_async && !form.callback_url.trim().is_empty() {
        let url = HeaderValue::from_str(form.callback_url.trim())
            .map_err(|_| "the callback URL cannot be sent as a header".to_owned())?;
        headers.insert(sluice_core::headers::CALLBACK_URL, url);
    }
    request.extensions_mut().insert(crate::auth::Authenticated);
    let started = tokio::time::Instant::now();
    let response = if is_async {
        crate::invoke::submit(State(state.clone()), request)
            .await
            .into_response()
    } else {
        crate::invoke::sync(State(state.clone()), request).await
    };
    let status = response.status();
    if is_async && status == StatusCode::ACCEPTED {
        let id = response
            .headers()
            .get(sluice_core::headers::CALL_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        return Ok(html! {
            div.notice role="status" #invoke-outcome {
                "Queued as call " a #call-link href=(format!("/ui/calls/{id}")) { code { (id) } } "."
            }
        });
    }
    let shown_headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (bytes, whole) = read_some(response.into_body(), SHOWN_BYTES).await;
    let took = started.elapsed();
    let (text, cut, kind) = layout::shown_bytes(&bytes, SHOWN_BYTES);
    let class = if status.is_success() { "ok" } else { "bad" };
    Ok(html! {
        div #invoke-outcome {
            p {
                span.badge class=(class) #invoke-status { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                " in " span #invoke-duration { (format!("{:.3}", took.as_secs_f64())) " s" }
                @if cut || !whole { span.muted { " (the first " (layout::size(SHOWN_BYTES)) " shown)" } }
                @if kind == "hex" { span.muted { " (not text: shown in hex)" } }
            }
            details {
                summary { "Response headers" }
                div.table-wrap { table { tbody {
                    @for (k, v) in &shown_headers { tr { td { code { (k) } } td { code { (v) } } } }
                } } }
            }
            pre #invoke-body { (text) }
        }
    })
}

/// Up to `limit` bytes of a body (and whether that was all of it); what is left is dropped.
async fn read_some(body: Body, limit: usize) -> (Vec<u8>, bool) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = Vec::new();
    let reading = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return false;
            };
            if let Ok(data) = frame.into_data() {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    return false;
                }
            }
        }
        true
    };
    let whole = tokio::time::timeout(Duration::from_secs(300), reading)
        .await
        .unwrap_or(false);
    (out, whole)
}

#[derive(Debug, Deserialize)]
pub(crate) struct ScaleForm {
    replicas: String,
}

/// `GET /ui/functions/<namespace>/<name>/scale`: the count to set, asked before it is set.
pub(crate) async fn scale_form(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    scale_page(&state, &viewer, &namespace, &name, None, StatusCode::OK).await
}

async fn scale_page(
    state: &AppState,
    viewer: &Viewer,
    namespace: &str,
    name: &str,
    error: Option<&str>,
    code: StatusCode,
) -> Result<Response, ApiError> {
    let Some((_, status)) = find(state, namespace, name).await? else {
        return Ok(missing(viewer, namespace, name));
    };
    let href = function_href(&status);
    let body = html! {
        p { (status.name) " has " (status.replicas) " replicas (" (status.available_replicas) " ready). A count set by hand holds until the autoscaler has seen a window of load." }
        form.stack method="post" action=(format!("{href}/scale")) {
            (csrf_field(viewer))
            div.field {
                label for="replicas" { "Replicas" }
                input #replicas type="number" name="replicas" min="0" value=(status.replicas) required
                    aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| "replicas-error")];
                @if let Some(error) = error { span.error-text #replicas-error { (error) } }
            }
            div.row {
                button type="submit" #confirm { "Scale " (status.name) }
                a.button.secondary href=(href) { "Cancel" }
            }
        }
    };
    Ok((
        code,
        layout::page(
            viewer,
            Nav::Functions,
            &format!("Scale {}", status.name),
            body,
        ),
    )
        .into_response())
}

/// `POST /ui/functions/<namespace>/<name>/scale`.
pub(crate) async fn scale(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((namespace, name)): Path<(String, String)>,
    held: HeldForm,
) -> Result<Response, ApiError> {
    let form: ScaleForm = held.parse()?;
    let Ok(function) = FunctionRef::new(&name, Some(&namespace)) else {
        return Ok(missing(&viewer, &namespace, &name));
    };
    let Ok(replicas) = form.replicas.trim().parse::<i64>() else {
        let error = format!("{:?} is not a whole number", form.replicas);
        return scale_page(
            &state,
            &viewer,
            &namespace,
            &name,
            Some(&error),
            StatusCode::BAD_REQUEST,
        )
        .await;
    };
    match crate::functions::scale_to(&state, &function, replicas).await {
        Ok(_) => Ok(Redirect::to(&format!("/ui/functions/{namespace}/{name}")).into_response()),
        Err(ApiError::BadRequest(error)) => {
            scale_page(
                &state,
                &viewer,
                &namespace,
                &name,
                Some(&error),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(ApiError::FunctionNotFound(_)) => Ok(missing(&viewer, &namespace, &name)),
        Err(e) => Err(e),
    }
}

/// `GET /ui/functions/<namespace>/<name>/remove`: asks first.
pub(crate) async fn remove_form(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Some((_, status)) = find(&state, &namespace, &name).await? else {
        return Ok(missing(&viewer, &namespace, &name));
    };
    let href = function_href(&status);
    let body = html! {
        p { "Remove " strong { (status.name) } " from namespace " (namespace) "? Its replicas are stopped once their requests are done; its queued calls will fail." }
        form.row method="post" action=(format!("{href}/remove")) {
            (csrf_field(&viewer))
            button.danger type="submit" #confirm { "Remove " (status.name) }
            a.button.secondary href=(href) { "Cancel" }
        }
    };
    Ok(layout::page(
        &viewer,
        Nav::Functions,
        &format!("Remove {}", status.name),
        body,
    )
    .into_response())
}

/// `POST /ui/functions/<namespace>/<name>/remove`.
pub(crate) async fn remove(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Ok(function) = FunctionRef::new(&name, Some(&namespace)) else {
        return Ok(missing(&viewer, &namespace, &name));
    };
    match crate::functions::remove(&state, &function).await {
        Ok(()) | Err(ApiError::FunctionNotFound(_)) => {
            Ok(Redirect::to("/ui/functions").into_response())
        }
        Err(e) => Err(e),
    }
}

/// How long one log stream lasts at most (the page opens another while it is shown).
const TAIL_MAX: Duration = Duration::from_secs(10 * 60);

/// How often a quiet log stream sends an empty line, so a connection that died is noticed.
const TAIL_HEARTBEAT: Duration = Duration::from_secs(20);

/// `GET /ui/api/functions/<namespace>/<name>/logs`: the function's output as it comes (NDJSON,
/// as `/system/logs?follow=true` sends it), for the live tail. It ends when the session does,
/// after [`TAIL_MAX`], or at shutdown, and sends an empty line when quiet.
pub(crate) async fn logs(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let function = FunctionRef::new(&name, Some(&namespace))?;
    if state.functions.get(&function).await?.is_none() {
        return Err(ApiError::FunctionNotFound(function.to_string()));
    }
    let lines = state.orchestrator.logs(&function, LOG_LINES, true)?;
    let shutdown = state.shutdown.clone();
    let session_left =
        Duration::from_secs(viewer.expires.saturating_sub(crate::ui::session::now()));
    let ndjson = lines.map(|line| {
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, std::io::Error>(bytes)
    });
    let heartbeats = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(TAIL_HEARTBEAT).await;
        Some((Ok::<_, std::io::Error>(b"\n".to_vec()), ()))
    });
    let stream = futures_util::stream::select(ndjson, heartbeats)
        .take_until(tokio::time::sleep(session_left.min(TAIL_MAX)))
        // A follower must not hold the server open at shutdown.
        .take_until(shutdown.cancelled_owned());
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn scaling_chart(state: &AppState, function: &FunctionRef) -> Markup {
    let points = state.scaling(function, None).unwrap_or_default();
    let now = u64::try_from(Timestamp::now().as_millis()).unwrap_or(0);
    crate::ui::chart::scaling(&points, now)
}

/// `GET /ui/api/functions/<namespace>/<name>/scaling`: the chart, for its live refresh.
pub(crate) async fn scaling(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let function = FunctionRef::new(&name, Some(&namespace))?;
    if state.functions.get(&function).await?.is_none() {
        return Err(ApiError::FunctionNotFound(function.to_string()));
    }
    Ok(scaling_chart(&state, &function).into_response())
}
