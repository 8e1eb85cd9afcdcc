//! The HTTP server: routes, the request-metrics layer, and [`serve`] (bind anywhere, stop on a
//! shutdown signal; tests bind `127.0.0.1:0` and run the real server in-process).

pub mod admin;
pub mod analytics;
pub mod cap;
pub mod conn;
pub mod console;
pub mod data;
pub mod error;
pub mod extract;
pub mod ops;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Barrier};
use tokio_util::task::TaskTracker;

use crate::control::Control;
use crate::ledger::Ledger;
use crate::proxy::DataPlane;
use crate::settings::Settings;
use crate::store::UsageStore;
use crate::telemetry::Metrics;
use error::{ApiError, Plane};

/// What the handlers use: the control plane, the data plane, and the read side (the ledger's
/// state and readiness, the usage store for analytics).
pub struct AppState {
    control: Control,
    plane: Arc<DataPlane>,
    ledger: Arc<Ledger>,
    store: Arc<dyn UsageStore>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    console: console::Sessions,
}

impl AppState {
    pub fn new(
        control: Control,
        plane: DataPlane,
        ledger: Arc<Ledger>,
        store: Arc<dyn UsageStore>,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AppState {
            control,
            plane: Arc::new(plane),
            ledger,
            store,
            console: console::Sessions::new(&settings),
            settings,
            metrics,
        }
    }
}

/// The whole application router.
pub fn router(app: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .merge(admin::routes())
        .merge(data::routes())
        .merge(analytics::routes());
    Router::new()
        .nest("/v1", v1)
        .merge(ops::routes())
        .merge(console::routes())
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .layer(DefaultBodyLimit::max(app.settings.max_body_bytes))
        .with_state(app)
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

async fn count_requests(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let resp = next.run(req).await.into_response();
    app.metrics.request(route, resp.status().as_u16());
    resp
}

/// Serves on `settings.serve_threads` threads until `shutdown` turns true, then stops accepting,
/// lets requests in flight finish and waits for the work they left running ([`Ledger::tasks`]).
/// At most `settings.max_connections` client connections are open at once, over all threads;
/// each is bounded by the connection timeouts ([`conn`]).
///
/// Each thread runs its own single-threaded runtime and accepts from its own handle on the one
/// listening socket (a free thread takes the next connection), so a request is parsed, routed,
/// sent upstream and answered on one thread with no work stealing or cross-thread wake-ups.
/// Runtimes are dropped only after every thread is done: a pooled upstream connection opened by
/// one thread may be carrying another thread's request.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let threads = app.settings.serve_threads.max(1);
    let all_done = Arc::new(Barrier::new(threads));
    let refusals = Arc::new(cap::Refusals::default());
    let mut finished = Vec::with_capacity(threads);
    // Every runtime is built before any thread starts, so none can fail to reach the barrier.
    let runtimes = (0..threads)
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                // Poll the I/O driver every 256 scheduled tasks rather than tokio's 61. Within one
                // build it made no measurable difference here, but see `.cargo/config.toml`: this
                // build measured 8–10% faster than the one without it (benches/README.md).
                .event_interval(256)
                .enable_all()
                .build()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for (i, runtime) in runtimes.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        let (listener, app) = (listener.try_clone()?, app.clone());
        let (shutdown, all_done) = (shutdown.clone(), all_done.clone());
        let refusals = refusals.clone();
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || {
                let served =
                    runtime.block_on(serve_thread(listener, app, shutdown, all_done, refusals));
                let _ = tx.send(served);
            })?;
        finished.push(rx);
    }
    for rx in finished {
        rx.await
            .map_err(|_| std::io::Error::other("a serving thread panicked"))??;
    }
    Ok(())
}

/// One serving thread's loop, on its own runtime.
async fn serve_thread(
    listener: std::net::TcpListener,
    app: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    all_done: Arc<Barrier>,
    refusals: Arc<cap::Refusals>,
) -> std::io::Result<()> {
    let served = accept_until_shutdown(listener, &app, shutdown, &refusals).await;
    app.ledger.tasks().close();
    let bound = app.settings.stream_drain_timeout + Duration::from_secs(5);
    if tokio::time::timeout(bound, app.ledger.tasks().wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = app.ledger.tasks().len(),
            "stopping with background work unfinished"
        );
    }
    all_done.wait().await;
    served
}

/// Accepts connections until shutdown, then waits for the open ones to finish (each is told to
/// shut down gracefully: the request in flight completes, idle ones close at once).
async fn accept_until_shutdown(
    listener: std::net::TcpListener,
    app: &Arc<AppState>,
    shutdown: watch::Receiver<bool>,
    refusals: &cap::Refusals,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let routes = router(app.clone());
    let timeouts = conn::Timeouts::of(&app.settings);
    let connections = TaskTracker::new();
    let mut stop = shutdown.clone();
    loop {
        // A dropped sender (Err) stops serving too.
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _)) => match cap::Slot::take(app) {
                Some(slot) => {
                    let serving =
                        conn::serve(stream, routes.clone(), slot, timeouts, shutdown.clone());
                    connections.spawn(serving);
                }
                None => {
                    refusals.refused(app.settings.max_connections);
                    cap::refuse(stream);
                }
            },
            Err(e) if cap::is_connection_error(&e) => {}
            Err(e) => {
                // Most likely the open-file limit: accepting again at once would spin.
                refusals.accept_failed(&e);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.wait_for(|stop| *stop) => break,
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}
