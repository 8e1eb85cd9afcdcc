//! Control-plane handlers: extract, call one control function, answer JSON.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::extract::{Admin, JsonBody, QueryMap};
use super::AppState;
use crate::control::providers::{Api, Target};
use crate::control::{
    api_keys, audit_logs, configs, integrations, policies, providers, workspaces,
};

type Answer = Result<Json<Value>, ApiError>;
type App = State<Arc<AppState>>;

fn ok(r: crate::control::Result<Value>) -> Answer {
    r.map(Json).map_err(ApiError::from)
}

/// The control-plane routes (under `/v1`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/workspaces", get(ws_list).post(ws_create))
        .route(
            "/admin/workspaces/{id}",
            get(ws_get).put(ws_update).delete(ws_delete),
        )
        .route("/integrations", get(int_list).post(int_create))
        .route(
            "/integrations/{slug}",
            get(int_get).put(int_update).delete(int_delete),
        )
        .route(
            "/integrations/{slug}/workspaces",
            get(int_ws_list).put(int_ws_update),
        )
        .route(
            "/integrations/{slug}/models",
            get(int_models_list)
                .put(int_models_update)
                .delete(int_models_delete),
        )
        .route("/configs", get(cfg_list).post(cfg_create))
        .route(
            "/configs/{slug}",
            get(cfg_get).put(cfg_update).delete(cfg_delete),
        )
        .route("/api-keys", get(key_list))
        .route("/api-keys/{kind}/{sub}", post(key_create))
        .route(
            "/api-keys/{id}",
            get(key_get).put(key_update).delete(key_delete),
        )
        .route("/admin/notifications", get(notifications))
        .route("/audit-logs", get(audit_list))
        .route("/policies/usage-limits", get(pol_list).post(pol_create))
        .route(
            "/policies/usage-limits/{id}",
            get(pol_get).put(pol_update).delete(pol_delete),
        )
        .merge(provider_routes("/providers", Api::Providers))
        .merge(provider_routes("/virtual-keys", Api::VirtualKeys))
}

/// `base` and `base/{slug}` for providers managed through `api`: `/providers` and
/// `/virtual-keys` are one set of handlers, which differ only by the [`Api`] they pass on.
fn provider_routes(base: &str, api: Api) -> Router<Arc<AppState>> {
    Router::new()
        .route(
            base,
            get(move |c: App, a: Admin, q: QueryMap| prov_list(api, c, a, q))
                .post(move |c: App, a: Admin, b: JsonBody| prov_create(api, c, a, b)),
        )
        .route(
            &format!("{base}/{{slug}}"),
            get(move |c: App, a: Admin, s: Slug, q: QueryMap| prov_get(api, c, a, s, q))
                .put(move |c: App, a: Admin, s: Slug, q: QueryMap, b: JsonBody| {
                    prov_update(api, c, a, s, q, b)
                })
                .delete(move |c: App, a: Admin, s: Slug, q: QueryMap| prov_delete(api, c, a, s, q)),
        )
}

async fn ws_create(State(c): App, Admin(a): Admin, JsonBody(b): JsonBody) -> Answer {
    ok(workspaces::create(&c.control, &a, &b).await)
}
async fn ws_list(State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    ok(workspaces::list(&c.control, &a, &q))
}
async fn ws_get(State(c): App, Admin(a): Admin, Path(id): Path<String>) -> Answer {
    ok(workspaces::retrieve(&c.control, &a, &id))
}
async fn ws_update(
    State(c): App,
    Admin(a): Admin,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(workspaces::update(&c.control, &a, &id, &b).await)
}
async fn ws_delete(
    State(c): App,
    Admin(a): Admin,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(workspaces::delete(&c.control, &a, &id, &b).await)
}

async fn int_create(State(c): App, Admin(a): Admin, JsonBody(b): JsonBody) -> Answer {
    ok(integrations::create(&c.control, &a, &b).await)
}
async fn int_list(State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    ok(integrations::list(&c.control, &a, &q))
}
async fn int_get(State(c): App, Admin(a): Admin, Path(s): Path<String>) -> Answer {
    ok(integrations::retrieve(&c.control, &a, &s))
}
async fn int_update(
    State(c): App,
    Admin(a): Admin,
    Path(s): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(integrations::update(&c.control, &a, &s, &b).await)
}
async fn int_delete(State(c): App, Admin(a): Admin, Path(s): Path<String>) -> Answer {
    ok(integrations::delete(&c.control, &a, &s).await)
}
async fn int_ws_list(State(c): App, Admin(a): Admin, Path(s): Path<String>) -> Answer {
    ok(integrations::list_workspaces(&c.control, &a, &s))
}
async fn int_ws_update(
    State(c): App,
    Admin(a): Admin,
    Path(s): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(integrations::update_workspaces(&c.control, &a, &s, &b).await)
}
async fn int_models_list(State(c): App, Admin(a): Admin, Path(s): Path<String>) -> Answer {
    ok(integrations::list_models(&c.control, &a, &s))
}
async fn int_models_update(
    State(c): App,
    Admin(a): Admin,
    Path(s): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(integrations::update_models(&c.control, &a, &s, &b).await)
}
async fn int_models_delete(
    State(c): App,
    Admin(a): Admin,
    Path(s): Path<String>,
    QueryMap(q): QueryMap,
) -> Answer {
    ok(integrations::delete_models(
        &c.control,
        &a,
        &s,
        q.get("slugs").map(String::as_str).unwrap_or(""),
    )
    .await)
}

/// Provider `slug` through `api`, in the query's `workspace_id` if it names one.
fn target<'a>(
    api: Api,
    slug: &'a str,
    q: &'a std::collections::HashMap<String, String>,
) -> Target<'a> {
    let workspace = q
        .get("workspace_id")
        .map(String::as_str)
        .filter(|w| !w.is_empty());
    Target {
        api,
        slug,
        workspace,
    }
}

type Slug = Path<String>;

async fn prov_create(api: Api, State(c): App, Admin(a): Admin, JsonBody(b): JsonBody) -> Answer {
    ok(providers::create(&c.control, &a, api, &b).await)
}
async fn prov_list(api: Api, State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    ok(providers::list(&c.control, &a, api, &q))
}
async fn prov_get(
    api: Api,
    State(c): App,
    Admin(a): Admin,
    Path(s): Slug,
    QueryMap(q): QueryMap,
) -> Answer {
    ok(providers::retrieve(&c.control, &a, target(api, &s, &q)))
}
async fn prov_update(
    api: Api,
    State(c): App,
    Admin(a): Admin,
    Path(s): Slug,
    QueryMap(q): QueryMap,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(providers::update(&c.control, &a, target(api, &s, &q), &b).await)
}
async fn prov_delete(
    api: Api,
    State(c): App,
    Admin(a): Admin,
    Path(s): Slug,
    QueryMap(q): QueryMap,
) -> Answer {
    ok(providers::delete(&c.control, &a, target(api, &s, &q)).await)
}

async fn cfg_create(State(c): App, Admin(a): Admin, JsonBody(b): JsonBody) -> Answer {
    ok(configs::create(&c.control, &a, &b).await)
}
async fn cfg_list(State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    ok(configs::list(&c.control, &a, &q))
}
async fn cfg_get(State(c): App, Admin(a): Admin, Path(s): Path<String>) -> Answer {
    ok(configs::retrieve(&c.control, &a, &s))
}
async fn cfg_update(
    State(c): App,
    Admin(a): Admin,
    Path(s): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(configs::update(&c.control, &a, &s, &b).await)
}
async fn cfg_delete(State(c): App, Admin(a): Admin, Path(s): Path<String>) -> Answer {
    ok(configs::delete(&c.control, &a, &s).await)
}

async fn key_create(
    State(c): App,
    Admin(a): Admin,
    Path((kind, sub)): Path<(String, String)>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(api_keys::create(&c.control, &a, &kind, &sub, &b).await)
}
async fn key_list(State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    ok(api_keys::list(&c.control, &a, &q))
}
async fn key_get(State(c): App, Admin(a): Admin, Path(id): Path<String>) -> Answer {
    ok(api_keys::retrieve(&c.control, &a, &id))
}
async fn key_update(
    State(c): App,
    Admin(a): Admin,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(api_keys::update(&c.control, &a, &id, &b).await)
}
async fn key_delete(State(c): App, Admin(a): Admin, Path(id): Path<String>) -> Answer {
    ok(api_keys::delete(&c.control, &a, &id).await)
}

async fn pol_create(State(c): App, Admin(a): Admin, JsonBody(b): JsonBody) -> Answer {
    ok(policies::create(&c.control, &a, &b).await)
}
async fn pol_list(State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    ok(policies::list(&c.control, &a, &q))
}
async fn pol_get(State(c): App, Admin(a): Admin, Path(id): Path<String>) -> Answer {
    ok(policies::retrieve(&c.control, &a, &id))
}
async fn pol_update(
    State(c): App,
    Admin(a): Admin,
    Path(id): Path<String>,
    JsonBody(b): JsonBody,
) -> Answer {
    ok(policies::update(&c.control, &a, &id, &b).await)
}
async fn pol_delete(State(c): App, Admin(a): Admin, Path(id): Path<String>) -> Answer {
    ok(policies::delete(&c.control, &a, &id).await)
}

async fn audit_list(State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    ok(audit_logs::list(&c.control, &a, &q).await)
}

/// Every notification sent (or that failed) for limit events, newest first.
async fn notifications(State(c): App, Admin(a): Admin, QueryMap(q): QueryMap) -> Answer {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100usize)
        .min(1000);
    let data = notification_views(&c, &a, limit).await?;
    Ok(Json(
        serde_json::json!({"object": "list", "total": data.len(), "data": data}),
    ))
}

/// The newest `limit` notifications as the API shows them. They report usage against limits,
/// so they are read with `analytics.view`, by an organisation key.
pub(super) async fn notification_views(
    c: &AppState,
    a: &crate::control::Caller,
    limit: usize,
) -> Result<Vec<Value>, ApiError> {
    a.require("analytics.view")?;
    if a.key.workspace_id.is_some() {
        return Err(ApiError::from(crate::control::ControlError::Forbidden(
            "notifications are listed with an organisation key".into(),
        )));
    }
    let rows = c.store.notifications(limit).await.map_err(|e| {
        tracing::error!(error = %e, "listing notifications failed");
        ApiError::control(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "listing notifications failed",
        )
    })?;
    Ok(rows
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(n).unwrap_or(Value::Null);
            v["created_at"] = Value::String(n.created_at.to_iso());
            v
        })
        .collect())
}
