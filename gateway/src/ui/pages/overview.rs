//! The overview: totals across functions, and the newest async calls.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use sluice_core::{CallFilter, Timestamp};

use crate::AppState;
use crate::error::ApiError;
use crate::ui::Viewer;
use crate::ui::layout::{self, Nav};

/// Calls the overview lists.
const RECENT_CALLS: u32 = 10;

async fn cards(state: &AppState) -> Result<Markup, ApiError> {
    // The backends first: when one does not answer, the rest of the page says so too.
    let health = health(state).await;
    if let Some((what, name, Err(e))) = health.iter().find(|(_, _, h)| h.is_err()) {
        return Ok(html! {
            div #overview hx-get="/ui/api/overview" hx-trigger="every 5s" hx-swap="outerHTML" {
                div.notice.bad role="alert" { (what) " (" (name) ") is not answering: " (e) }
                (health_list(&health))
            }
        });
    }
    let specs = state.functions.list().await?;
    let (mut desired, mut ready, mut invocations, mut errors, mut at_zero) = (0, 0, 0, 0, 0);
    for spec in &specs {
        let replicas = state
            .orchestrator
            .replicas(&spec.function)
            .unwrap_or_default();
        desired += u64::from(replicas.desired);
        ready += u64::from(replicas.ready);
        at_zero += u64::from(replicas.desired == 0 && replicas.ready == 0);
        let calls = state.metrics.summary(&spec.function);
        invocations += calls.invocations;
        errors += calls.errors;
    }
    let now = Timestamp::now();
    let backlog = state.calls.backlog().await?;
    let recent = state
        .calls
        .list_calls(&CallFilter {
            limit: RECENT_CALLS,
            ..CallFilter::default()
        })
        .await?;
    Ok(html! {
        div #overview hx-get="/ui/api/overview" hx-trigger="every 5s" hx-swap="outerHTML" {
            div.cards {
                div.card { div.muted { "Functions" } div.big #total-functions { (specs.len()) } div.muted { (at_zero) " at zero" } }
                div.card { div.muted { "Replicas" } div.big #total-replicas { (ready) " / " (desired) } div.muted { "ready / desired" } }
                div.card { div.muted { "Invocations" } div.big { (invocations) } div.muted { "since this gateway started" } }
                div.card #queue {
                    div.muted { "Async calls waiting" }
                    div.big #queued { (backlog.queued) }
                    div.muted {
                        (backlog.running) " running"
                        @if let Some(at) = backlog.oldest_queued { "; the oldest waiting since " span #oldest title=(at.to_rfc3339()) { (layout::ago(at, now)) } }
                    }
                }
                div.card { div.muted { "Errors (5xx)" } div.big { @if errors > 0 { span.bad { (errors) } } @else { "0" } } div.muted { "since this gateway started" } }
            }
            h2 { "Backends" }
            (health_list(&health))
            h2 { "Newest async calls" }
            @if recent.is_empty() {
                p.muted { "No async calls yet." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th scope="col" { "Call" } th scope="col" { "Function" } th scope="col" { "State" } th scope="col" { "Submitted" } } }
                    tbody { @for call in &recent { tr {
                        td { a href=(format!("/ui/calls/{}", call.id)) { code { (call.id) } } }
                        td { (call.function) "." (call.namespace) }
                        td { (call.state.as_str()) }
                        td { (layout::ago(call.submitted_at, now)) }
                    } } }
                } }
            }
        }
    })
}

type Health = Vec<(&'static str, &'static str, Result<u128, String>)>;

fn health_list(health: &Health) -> Markup {
    html! {
        ul #health {
            @for (what, name, outcome) in health {
                li {
                    (what) ": " strong { (name) } " "
                    @match outcome {
                        Ok(took) => span.ok { "answering (" (took) " ms)" },
                        Err(e) => span.bad { "not answering: " (e) },
                    }
                }
            }
        }
    }
}

/// How long a backend may take to answer the overview's ping.
const PING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The call store and the queue: what each is, and whether it answers (in how many ms).
async fn health(state: &AppState) -> Health {
    let timed = |started: tokio::time::Instant| started.elapsed().as_millis();
    let started = tokio::time::Instant::now();
    let store = match tokio::time::timeout(PING_PATIENCE, state.calls.ping()).await {
        Ok(Ok(())) => Ok(timed(started)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PING_PATIENCE.as_secs())),
    };
    let started = tokio::time::Instant::now();
    let queue = match tokio::time::timeout(PING_PATIENCE, state.queue.ping()).await {
        Ok(Ok(())) => Ok(timed(started)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PING_PATIENCE.as_secs())),
    };
    vec![
        ("Calls and functions", state.calls.backend(), store),
        ("Queue", state.queue.backend(), queue),
    ]
}

/// `GET /ui/`.
pub(crate) async fn page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Response, ApiError> {
    let body = cards(&state).await?;
    Ok(layout::page(&viewer, Nav::Overview, "Overview", body).into_response())
}

/// `GET /ui/api/overview`: the same, for its live refresh.
pub(crate) async fn fragment(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(cards(&state).await?.into_response())
}
