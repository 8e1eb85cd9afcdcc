//! Workspaces and providers (virtual keys): lists that search and paginate, create forms, and a
//! workspace's page with its budget and rate limits. Every action is the API's.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::form::Form;
use super::layout::{self, csrf, page, text, Problem};
use super::refusal;
use super::session::{Signed, Submitted};
use crate::control::providers::Api;
use crate::control::{integrations, providers, workspaces};
use crate::http::extract::QueryMap;
use crate::http::AppState;

type App = State<Arc<AppState>>;

const PAGE_SIZE: usize = 50;
const FIELDS: &[&str] = &[
    "slug",
    "integration_id",
    "workspace_id",
    "credit_limit",
    "alert_threshold",
    "periodic_reset",
    "rate_limits",
    "metadata",
    "expires_at",
    "name",
];

/// A list as the API answers it, or its refusal as a paragraph.
fn listed(r: crate::control::Result<Value>) -> Result<Value, Markup> {
    r.map_err(|e| layout::alert(&refusal(&e).1))
}

/// The limits a create form's toggles set, into an API body (`arrays`: as one-element arrays).
fn put_limits(f: &Form, b: &mut Map<String, Value>, arrays: bool) {
    if let Some(u) = f.budget("") {
        b.insert("usage_limits".into(), if arrays { json!([u]) } else { u });
    }
    if let Some(r) = f.rate_limits("") {
        b.insert("rate_limits".into(), r);
    }
}

/// `GET /console/workspaces`.
pub async fn workspaces(State(app): App, s: Signed, QueryMap(q): QueryMap) -> Response {
    workspaces_page(&app, &s, q, StatusCode::OK, &Problem::default())
}

fn workspaces_page(
    app: &AppState,
    s: &Signed,
    mut q: HashMap<String, String>,
    status: StatusCode,
    p: &Problem,
) -> Response {
    q.insert("page_size".into(), PAGE_SIZE.to_string());
    let table = match listed(workspaces::list(&app.control, &s.caller, &q)) {
        Ok(v) => {
            let empty = vec![];
            let rows = v["data"].as_array().unwrap_or(&empty);
            html! {
                table {
                    caption.sr { "Workspaces" }
                    thead { tr { th { "Name" } th { "Slug" } th { "Status" } th { "Budget" } th { "Spent" } } }
                    tbody {
                        @for w in rows {
                            tr {
                                td { a href={ "/console/workspaces/" (text(&w["id"])) } { (text(&w["name"])) } }
                                td.mono { (text(&w["slug"])) }
                                td { span class={ "status " (text(&w["status"])) } { (text(&w["status"])) } }
                                td { (layout::usage_bar(&w["usage_limits"][0])) }
                                td { "$" (text(&w["current_usage"]["cost"])) }
                            }
                        }
                    }
                }
                (layout::pager("/console/workspaces", &q, v["total"].as_u64().unwrap_or(0), PAGE_SIZE))
            }
        }
        Err(m) => m,
    };
    let body = html! {
        (layout::search_box("/console/workspaces", &q, &[], "name"))
        (table)
        @if s.workspace().is_none() {
            h2 { "Create workspace" }
            form.stack method="post" action="/console/workspaces" novalidate {
                (csrf(s))
                (p.general())
                label for="name" { "Name" }
                input #name name="name" required aria-describedby=[p.described("name")];
                (p.at("name"))
                label for="slug" { "Slug (optional)" }
                input #slug name="slug";
                (p.at("slug"))
                label for="description" { "Description" }
                input #description name="description";
                label for="metadata" { "Default metadata (JSON object, e.g. the department)" }
                textarea #metadata name="metadata" rows="2" placeholder=r#"{"department": "research"}"# {}
                (p.at("metadata"))
                (layout::budget_fields("", p))
                (layout::rate_fields("", p))
                button type="submit" { "Create workspace" }
            }
        }
    };
    layout::answer(status, page(s, "Workspaces", "/console/workspaces", body))
}

/// Default metadata from a form's JSON text, into `defaults`.
fn put_metadata(f: &Form, b: &mut Map<String, Value>) -> Result<(), String> {
    if let Some(m) = f.text("metadata") {
        let m: Value =
            serde_json::from_str(m).map_err(|e| format!("metadata is not valid JSON: {e}"))?;
        b.insert("defaults".into(), json!({"metadata": m}));
    }
    Ok(())
}

/// `POST /console/workspaces`.
pub async fn workspace_create(State(app): App, s: Submitted) -> Response {
    let f = &s.form;
    let mut b = Map::new();
    for k in ["name", "slug", "description"] {
        f.put_text(&mut b, k, k);
    }
    put_limits(f, &mut b, true);
    let done = match put_metadata(f, &mut b) {
        Ok(()) => workspaces::create(&app.control, &s.signed.caller, &Value::Object(b))
            .await
            .map_err(|e| refusal(&e)),
        Err(m) => Err((StatusCode::BAD_REQUEST, m)),
    };
    match done {
        Ok(w) => Redirect::to(&format!("/console/workspaces/{}", text(&w["id"]))).into_response(),
        Err((status, m)) => workspaces_page(
            &app,
            &s.signed,
            HashMap::new(),
            status,
            &Problem::new(m, FIELDS),
        ),
    }
}

/// `GET /console/workspaces/{id}`.
pub async fn workspace(State(app): App, s: Signed, Path(id): Path<String>) -> Response {
    workspace_page(&app, &s, &id, StatusCode::OK, &Problem::default())
}

fn workspace_page(
    app: &AppState,
    s: &Signed,
    id: &str,
    status: StatusCode,
    p: &Problem,
) -> Response {
    let w = match workspaces::retrieve(&app.control, &s.caller, id) {
        Ok(w) => w,
        Err(e) => return layout::refused(s, "Workspace", "/console/workspaces", &e),
    };
    let budget = &w["usage_limits"][0];
    let no_rate = w["rate_limits"].as_array().is_none_or(|a| a.is_empty());
    let body = html! {
        dl.facts {
            dt { "Slug" } dd.mono { (text(&w["slug"])) }
            dt { "Description" } dd { (text(&w["description"])) }
            dt { "Default metadata" } dd.mono { (w["defaults"]["metadata"].to_string()) }
            dt { "Spent" } dd { "$" (text(&w["current_usage"]["cost"])) " · " (text(&w["current_usage"]["tokens"])) " tokens · " (text(&w["current_usage"]["requests"])) " requests" }
        }
        h2 { "Budget and rate limits" }
        (layout::limits_summary(budget, &w["rate_limits"]))
        @if s.workspace().is_none() {
            form.stack method="post" action={ "/console/workspaces/" (id) } novalidate {
                (csrf(s))
                (p.general())
                @if budget.is_null() { (layout::budget_fields("", p)) } @else {
                    label.check { input type="checkbox" name="reset_usage"; " Reset the budget's usage" }
                }
                @if no_rate { (layout::rate_fields("", p)) }
                button type="submit" { "Save" }
            }
        } @else {
            p.muted { "A workspace's own limits are set with an organisation key." }
        }
    };
    let title = format!("Workspace {}", text(&w["name"]));
    layout::answer(status, page(s, &title, "/console/workspaces", body))
}

/// `POST /console/workspaces/{id}`: limits not yet set, or a reset of the budget's usage.
pub async fn workspace_update(State(app): App, Path(id): Path<String>, s: Submitted) -> Response {
    let mut b = Map::new();
    put_limits(&s.form, &mut b, true);
    if s.form.checked("reset_usage") {
        b.insert("reset_usage".into(), json!(true));
    }
    match workspaces::update(&app.control, &s.signed.caller, &id, &Value::Object(b)).await {
        Ok(_) => Redirect::to(&format!("/console/workspaces/{id}")).into_response(),
        Err(e) => {
            let (status, m) = refusal(&e);
            workspace_page(&app, &s.signed, &id, status, &Problem::new(m, FIELDS))
        }
    }
}

/// `GET /console/providers`.
pub async fn providers(State(app): App, s: Signed, QueryMap(q): QueryMap) -> Response {
    providers_page(&app, &s, q, StatusCode::OK, &Problem::default())
}

fn providers_page(
    app: &AppState,
    s: &Signed,
    mut q: HashMap<String, String>,
    status: StatusCode,
    p: &Problem,
) -> Response {
    q.insert("page_size".into(), PAGE_SIZE.to_string());
    let table = match listed(providers::list(&app.control, &s.caller, Api::Providers, &q)) {
        Ok(v) => {
            let empty = vec![];
            let rows = v["data"].as_array().unwrap_or(&empty);
            html! {
                table {
                    caption.sr { "Providers" }
                    thead { tr { th { "Name" } th { "Slug" } th { "Integration" } th { "Workspace" } th { "Status" } th { "Budget" } th { "Spent" } } }
                    tbody {
                        @for v in rows {
                            tr {
                                td { (text(&v["name"])) }
                                td.mono { (text(&v["slug"])) }
                                td { (text(&v["integration_id"])) }
                                td { (text(&v["workspace_id"])) }
                                td { span class={ "status " (text(&v["status"])) } { (text(&v["status"])) } }
                                td { (layout::usage_bar(&v["usage_limits"])) }
                                td { "$" (text(&v["current_usage"]["cost"])) }
                            }
                        }
                    }
                }
                (layout::pager("/console/providers", &q, v["total"].as_u64().unwrap_or(0), PAGE_SIZE))
            }
        }
        Err(m) => m,
    };
    let all = HashMap::from([("page_size".to_owned(), "1000".to_owned())]);
    let choices = integrations::list(&app.control, &s.caller, &all)
        .ok()
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default();
    let workspaces = super::keys::workspace_choices(app, s);
    let body = html! {
        (layout::search_box("/console/providers", &q, &[], "name or slug"))
        (table)
        h2 { "Create provider" }
        p.muted { "A provider (virtual key) is a workspace's handle on an integration's credential, with limits of its own." }
        form.stack method="post" action="/console/providers" novalidate {
            (csrf(s))
            (p.general())
            label for="name" { "Name" }
            input #name name="name" required aria-describedby=[p.described("name")];
            (p.at("name"))
            label for="slug" { "Slug (optional)" }
            input #slug name="slug";
            (p.at("slug"))
            label for="integration_id" { "Integration" }
            select #integration_id name="integration_id" {
                @for i in &choices { option value=(text(&i["slug"])) { (text(&i["name"])) " (" (text(&i["ai_provider_id"])) ")" } }
            }
            (p.at("integration_id"))
            label for="workspace_id" { "Workspace" }
            select #workspace_id name="workspace_id" {
                @for (id, name) in &workspaces { option value=(id) { (name) } }
            }
            (p.at("workspace_id"))
            label for="note" { "Note" }
            input #note name="note";
            (layout::budget_fields("", p))
            (layout::rate_fields("", p))
            button type="submit" { "Create provider" }
        }
    };
    layout::answer(status, page(s, "Providers", "/console/providers", body))
}

/// `POST /console/providers`.
pub async fn provider_create(State(app): App, s: Submitted) -> Response {
    let f = &s.form;
    let mut b = Map::new();
    for k in ["name", "slug", "integration_id", "workspace_id", "note"] {
        f.put_text(&mut b, k, k);
    }
    put_limits(f, &mut b, false);
    let body = Value::Object(b);
    match providers::create(&app.control, &s.signed.caller, Api::Providers, &body).await {
        Ok(_) => Redirect::to("/console/providers").into_response(),
        Err(e) => {
            let (status, m) = refusal(&e);
            providers_page(
                &app,
                &s.signed,
                HashMap::new(),
                status,
                &Problem::new(m, FIELDS),
            )
        }
    }
}
