//! The web console: the governance workflows and the spend, in a browser, served by the same
//! server from HTML rendered here (maud) with one small script and one stylesheet embedded in
//! the binary (`assets/`). Every page reads and writes through the same control-plane and
//! analytics functions the API's handlers call, as the signed-in key: no rule lives here.
//!
//! Security: an API key is exchanged at sign-in for a server-side session ([`session`]): an
//! HttpOnly, SameSite=Strict cookie (Secure behind TLS) naming it; the key itself is never kept in
//! the browser or put in a URL. Every state-changing request carries the session's CSRF token;
//! every answer carries a strict Content-Security-Policy (no inline script or style) and
//! `X-Frame-Options: DENY`.

mod activity;
mod analytics;
mod chart;
mod configs;
mod form;
mod integrations;
mod keys;
mod layout;
mod overview;
mod resources;
pub mod session;

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use super::AppState;
use crate::control::ControlError;

pub use session::Sessions;

/// The console's routes: `/` sends a browser to the overview.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/favicon.ico", get(favicon))
        .route("/console", get(overview::page))
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/assets/{name}", get(asset))
        .route("/console/keys", get(keys::list).post(keys::create))
        .route("/console/keys/new", get(keys::new))
        .route("/console/keys/{id}", get(keys::show).post(keys::update))
        .route("/console/keys/{id}/usage", get(keys::usage))
        .route("/console/keys/{id}/reset", post(keys::reset))
        .route("/console/keys/{id}/delete", post(keys::delete))
        .route(
            "/console/integrations",
            get(integrations::list).post(integrations::create),
        )
        .route(
            "/console/integrations/new/{provider}",
            get(integrations::new),
        )
        .route("/console/integrations/{slug}", get(integrations::show))
        .route(
            "/console/integrations/{slug}/workspaces",
            post(integrations::provision),
        )
        .route(
            "/console/integrations/{slug}/models",
            post(integrations::models),
        )
        .route(
            "/console/workspaces",
            get(resources::workspaces).post(resources::workspace_create),
        )
        .route(
            "/console/workspaces/{id}",
            get(resources::workspace).post(resources::workspace_update),
        )
        .route(
            "/console/providers",
            get(resources::providers).post(resources::provider_create),
        )
        .route("/console/configs", get(configs::list).post(configs::create))
        .route("/console/configs/new", get(configs::new))
        .route(
            "/console/configs/{slug}",
            get(configs::show).post(configs::update),
        )
        .route("/console/alerts", get(activity::alerts))
        .route("/console/audit", get(activity::audit))
        .route("/console/analytics", get(analytics::page))
        .route("/console/analytics.csv", get(analytics::csv))
        .layer(middleware::map_response(guard_headers))
}

/// The policy every console answer carries: scripts, styles and images from Tollgate only (no
/// inline script or style anywhere), no framing, no referrer, nothing cached.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn guard_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The embedded assets: the stylesheet and the script, as written in `assets/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
];

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "public, max-age=300"),
            ],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The icon browsers ask for on their own: an SVG toll gate.
async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("assets/favicon.svg"),
    )
        .into_response()
}

/// An admin command's refusal as the console shows it: its status and the API's words. An
/// internal failure is logged and shown without its detail.
fn refusal(e: &ControlError) -> (StatusCode, String) {
    let status = match e {
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::Internal(inner) => {
            tracing::error!(error = %inner, "a console command failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the change could not be committed; try again".into(),
            );
        }
    };
    (status, e.to_string())
}
