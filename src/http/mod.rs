//! The HTTP server: routes, the request-metrics layer, and [`serve`] (bind anywhere, stop on a
//! shutdown signal; tests bind `127.0.0.1:0` and run the real server in-process).

pub mod admin;
pub mod analytics;
pub mod data;
pub mod error;
pub mod extract;
pub mod ops;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::Core;
use error::{ApiError, Plane};

/// The whole application router.
pub fn router(core: Arc<Core>) -> Router {
    let v1 = Router::new()
        .merge(admin::routes())
        .merge(data::routes())
        .merge(analytics::routes());
    Router::new()
        .nest("/v1", v1)
        .merge(ops::routes())
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(core.clone(), count_requests))
        .layer(DefaultBodyLimit::max(core.settings.max_body_bytes))
        .with_state(core)
}

async fn unknown_route(req: Request) -> ApiError {
    let plane = if is_data_plane(req.uri().path()) {
        Plane::Data
    } else {
        Plane::Control
    };
    ApiError::not_found(
        plane,
        &format!("route {} {}", req.method(), req.uri().path()),
    )
}

fn is_data_plane(path: &str) -> bool {
    [
        "/v1/chat",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

/// Route patterns as `&'static str` metric labels; the set is the router's routes, so it is small.
fn route_label(m: Option<&MatchedPath>) -> &'static str {
    static LABELS: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let Some(m) = m else { return "unmatched" };
    let mut labels = LABELS.get_or_init(Default::default).lock();
    if let Some(l) = labels.get(m.as_str()) {
        return l;
    }
    let leaked: &'static str = Box::leak(m.as_str().to_owned().into_boxed_str());
    labels.insert(m.as_str().to_owned(), leaked);
    leaked
}

async fn count_requests(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let resp = next.run(req).await.into_response();
    core.metrics.request(route, resp.status().as_u16());
    resp
}

/// Serves until `shutdown` turns true, then stops accepting and lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(core);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
}
