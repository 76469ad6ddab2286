//! The portal's pages, one module per view, and the routes that reach them.
//!
//! Pages live under `/ui/`; what scripts fetch (fragments that refresh, the log stream, chart
//! data, downloads) lives under `/ui/api/`, which answers `401` rather than redirecting when the
//! session is gone.

mod calls;
mod deploy;
mod functions;
mod overview;

use axum::Extension;
use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use super::Viewer;
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/", get(overview::page))
        .route("/ui/api/overview", get(overview::fragment))
        .route("/ui/deploy", get(deploy::page).post(deploy::deploy))
        .route("/ui/deploy/stack", post(deploy::deploy_stack))
        .route("/ui/functions", get(functions::list))
        .route("/ui/api/functions", get(functions::table_fragment))
        .route("/ui/functions/{namespace}/{name}", get(functions::detail))
        .route(
            "/ui/functions/{namespace}/{name}/invoke",
            post(functions::invoke),
        )
        .route(
            "/ui/functions/{namespace}/{name}/scale",
            get(functions::scale_form).post(functions::scale),
        )
        .route(
            "/ui/functions/{namespace}/{name}/remove",
            get(functions::remove_form).post(functions::remove),
        )
        .route(
            "/ui/api/functions/{namespace}/{name}/scaling",
            get(functions::scaling),
        )
        .route(
            "/ui/api/functions/{namespace}/{name}/summary",
            get(functions::summary),
        )
        .route(
            "/ui/api/functions/{namespace}/{name}/logs",
            get(functions::logs),
        )
        .route("/ui/calls", get(calls::list))
        .route("/ui/calls/{id}", get(calls::detail))
        .route("/ui/calls/{id}/retry", post(calls::retry))
        .route("/ui/calls/{id}/cancel", post(calls::cancel))
        .route("/ui/api/calls/{id}/summary", get(calls::summary_fragment))
        .route("/ui/api/calls/{id}/result", get(calls::download_result))
        .route("/ui/api/calls/{id}/request", get(calls::download_request))
        .route("/ui/dead-letters", get(calls::dead_letters))
        .route(
            "/ui/dead-letters/redrive-all",
            get(calls::redrive_all_form).post(calls::redrive_all),
        )
}

/// Any other `/ui/` path, for someone logged in.
pub(crate) async fn not_found(Extension(viewer): Extension<Viewer>) -> Response {
    super::status_page(&viewer, StatusCode::NOT_FOUND, "There is no such page.")
}
