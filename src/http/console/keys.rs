//! API keys: the list (search, pages), the create form with the brief's toggles (Add Budget
//! Limit, Add Rate Limit, Email Notifications), the secret shown once, and a key's page with
//! its live usage bar, reset and delete. Every action is the API's (`control::api_keys`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::layout::{self, csrf, page, text, Problem};
use super::refusal;
use super::session::{Signed, Submitted};
use crate::control::{api_keys, configs, workspaces};
use crate::domain::scopes::{ADMIN_SCOPES, DATA_PLANE_SCOPES};
use crate::http::extract::QueryMap;
use crate::http::AppState;

type App = State<Arc<AppState>>;

const PAGE_SIZE: usize = 50;

/// The fields a key's API refusal may name, in the form's terms.
const FIELDS: &[&str] = &[
    "workspace_id",
    "scopes",
    "credit_limit",
    "alert_threshold",
    "periodic_reset",
    "rate_limits",
    "alert_emails",
    "expires_at",
    "metadata",
    "config",
    "user_id",
    "name",
];

/// `GET /console/keys`.
pub async fn list(State(app): App, s: Signed, QueryMap(mut q): QueryMap) -> Response {
    q.insert("page_size".into(), PAGE_SIZE.to_string());
    let listed = api_keys::list(&app.control, &s.caller, &q);
    let body = match listed {
        Ok(v) => keys_table(&v, &q),
        Err(e) => layout::alert(&refusal(&e).1),
    };
    let body = html! {
        p.actions { a.button href="/console/keys/new" { "Create API key" } }
        (layout::search_box("/console/keys", &q, &[], "name, id or workspace"))
        (body)
    };
    page(&s, "API keys", "/console/keys", body).into_response()
}

fn keys_table(v: &Value, q: &HashMap<String, String>) -> Markup {
    let empty = vec![];
    let rows = v["data"].as_array().unwrap_or(&empty);
    html! {
        table {
            caption.sr { "API keys" }
            thead { tr { th { "Name" } th { "Key" } th { "Type" } th { "Workspace" } th { "Status" } th { "Budget" } th { "Created" } } }
            tbody {
                @for k in rows {
                    tr {
                        td { a href={ "/console/keys/" (text(&k["id"])) } { (text(&k["name"])) } }
                        td.mono { (text(&k["key"])) }
                        td { (text(&k["type"])) }
                        td { (text(&k["workspace_id"])) }
                        td { span class={ "status " (text(&k["status"])) } { (text(&k["status"])) } }
                        td { (layout::usage_bar(&k["usage_limits"])) }
                        td { (text(&k["created_at"])) }
                    }
                }
            }
        }
        @if rows.is_empty() { p.muted { "No keys match." } }
        (layout::pager("/console/keys", q, v["total"].as_u64().unwrap_or(0), PAGE_SIZE))
    }
}

/// `GET /console/keys/new`.
pub async fn new(State(app): App, s: Signed) -> Response {
    let form = key_form(&app, &s, &Problem::default());
    page(&s, "Create API key", "/console/keys", form).into_response()
}

/// Workspaces the signed-in key may pick: (id, name).
pub(super) fn workspace_choices(app: &AppState, s: &Signed) -> Vec<(String, String)> {
    let q = HashMap::from([("page_size".to_owned(), "1000".to_owned())]);
    workspaces::list(&app.control, &s.caller, &q)
        .ok()
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|w| (text(&w["id"]), text(&w["name"])))
        .collect()
}

/// Saved configs the signed-in key may use as a default: (slug, name).
fn config_choices(app: &AppState, s: &Signed) -> Vec<(String, String)> {
    let q = HashMap::from([("page_size".to_owned(), "1000".to_owned())]);
    configs::list(&app.control, &s.caller, &q)
        .ok()
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|c| (text(&c["slug"]), text(&c["name"])))
        .collect()
}

fn key_form(app: &AppState, s: &Signed, p: &Problem) -> Markup {
    let workspaces = workspace_choices(app, s);
    let configs = config_choices(app, s);
    let org = s.workspace().is_none();
    html! {
        form.stack method="post" action="/console/keys" novalidate {
            (csrf(s))
            (p.general())
            label for="name" { "Name" }
            input #name name="name" required aria-describedby=[p.described("name")];
            (p.at("name"))
            label for="description" { "Description" }
            input #description name="description";
            label for="key_type" { "Type" }
            select #key_type name="key_type" {
                option value="workspace/service" { "Workspace service key" }
                option value="workspace/user" { "Workspace user key" }
                @if org { option value="organisation/service" { "Organisation (admin) key" } }
            }
            label for="user_id" { "User id (user keys)" }
            input #user_id name="user_id";
            (p.at("user_id"))
            label for="workspace_id" { "Workspace" }
            select #workspace_id name="workspace_id" aria-describedby=[p.described("workspace_id")] {
                @for (id, name) in &workspaces { option value=(id) selected[s.workspace() == Some(id.as_str())] { (name) } }
            }
            (p.at("workspace_id"))
            (scope_fields(p))
            (layout::budget_fields("", p))
            (layout::rate_fields("", p))
            (email_fields(&[], p))
            details {
                summary { "Defaults and expiry" }
                label for="config" { "Default config" }
                select #config name="config" {
                    option value="" { "None" }
                    @for (slug, name) in &configs { option value=(slug) { (name) " (" (slug) ")" } }
                }
                (p.at("config"))
                label for="metadata" { "Default metadata (JSON object)" }
                textarea #metadata name="metadata" rows="3" placeholder=r#"{"department": "research"}"# aria-describedby=[p.described("metadata")] {}
                (p.at("metadata"))
                label for="expires_at" { "Expires at (UTC)" }
                input #expires_at type="datetime-local" name="expires_at";
                (p.at("expires_at"))
            }
            button type="submit" { "Create key" }
        }
    }
}

fn scope_fields(p: &Problem) -> Markup {
    html! {
        fieldset.scopes {
            legend { "Scopes" }
            (p.at("scopes"))
            @for scope in DATA_PLANE_SCOPES.iter().chain(ADMIN_SCOPES) {
                label.check {
                    input type="checkbox" name="scopes" value=(scope) checked[*scope == "completions.write"];
                    " " (scope)
                }
            }
        }
    }
}

/// "Email Notifications": recipients as chips (Enter adds one), or comma-separated.
fn email_fields(current: &[String], p: &Problem) -> Markup {
    html! {
        fieldset.toggle {
            legend {
                input type="checkbox" #emails_on name="emails_on" data-toggle="email-fields" checked[!current.is_empty()];
                label for="emails_on" { "Email Notifications" }
            }
            div #email-fields {
                label for="alert_emails" { "Recipients (press Enter to add)" }
                div.chips data-chips="alert_emails" {
                    @for e in current {
                        span.chip { (e) input type="hidden" name="alert_emails" value=(e); button.link type="button" data-remove aria-label={ "Remove " (e) } { "×" } }
                    }
                }
                input #alert_emails name="alert_emails" type="text" data-chip-input autocomplete="off" aria-describedby=[p.described("alert_emails")];
                (p.at("alert_emails"))
            }
        }
    }
}

/// The API body of the create form.
fn create_body(s: &Submitted) -> Result<Value, String> {
    let f = &s.form;
    let mut b = Map::new();
    f.put_text(&mut b, "name", "name");
    f.put_text(&mut b, "description", "description");
    f.put_text(&mut b, "user_id", "user_id");
    if !f.one("key_type").starts_with("organisation") {
        f.put_text(&mut b, "workspace_id", "workspace_id");
    }
    b.insert("scopes".into(), json!(f.all("scopes").collect::<Vec<_>>()));
    if let Some(u) = f.budget("") {
        b.insert("usage_limits".into(), u);
    }
    if let Some(r) = f.rate_limits("") {
        b.insert("rate_limits".into(), r);
    }
    if f.checked("emails_on") {
        b.insert("alert_emails".into(), json!(f.emails("alert_emails")));
    }
    let mut defaults = Map::new();
    if let Some(c) = f.text("config") {
        defaults.insert("config_id".into(), json!(c));
    }
    if let Some(m) = f.text("metadata") {
        let m: Value =
            serde_json::from_str(m).map_err(|e| format!("metadata is not valid JSON: {e}"))?;
        defaults.insert("metadata".into(), m);
    }
    if !defaults.is_empty() {
        b.insert("defaults".into(), Value::Object(defaults));
    }
    if let Some(t) = super::form::utc_time(f.one("expires_at")) {
        b.insert("expires_at".into(), json!(t));
    }
    Ok(Value::Object(b))
}

/// `POST /console/keys`: creates the key and shows its secret, once.
pub async fn create(State(app): App, s: Submitted) -> Response {
    let kind = s.form.one("key_type").to_owned();
    let (kind, sub) = kind.split_once('/').unwrap_or(("workspace", "service"));
    let made = match create_body(&s) {
        Ok(body) => api_keys::create(&app.control, &s.signed.caller, kind, sub, &body)
            .await
            .map_err(|e| refusal(&e)),
        Err(m) => Err((StatusCode::BAD_REQUEST, m)),
    };
    match made {
        Ok(v) => {
            let body = html! {
                div.notice role="status" {
                    p { "The key " strong { (s.form.one("name")) } " was created. Copy its secret now: it is shown this once and never again." }
                    div.secret {
                        code #secret { (text(&v["key"])) }
                        button type="button" data-copy="secret" { "Copy" }
                    }
                    p { a href={ "/console/keys/" (text(&v["id"])) } { "Open the key" } " · " a href="/console/keys" { "All keys" } }
                }
            };
            page(&s.signed, "Key created", "/console/keys", body).into_response()
        }
        Err((status, message)) => {
            let p = Problem::new(message, FIELDS);
            let form = key_form(&app, &s.signed, &p);
            layout::answer(
                status,
                page(&s.signed, "Create API key", "/console/keys", form),
            )
        }
    }
}

/// `GET /console/keys/{id}`.
pub async fn show(State(app): App, s: Signed, Path(id): Path<String>) -> Response {
    key_page(&app, &s, &id, StatusCode::OK, &Problem::default())
}

fn key_page(app: &AppState, s: &Signed, id: &str, status: StatusCode, p: &Problem) -> Response {
    let k = match api_keys::retrieve(&app.control, &s.caller, id) {
        Ok(k) => k,
        Err(e) => return layout::refused(s, "API key", "/console/keys", &e),
    };
    let emails: Vec<String> = k["alert_emails"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let no_budget = k["usage_limits"].is_null();
    let no_rate = k["rate_limits"].as_array().is_none_or(|a| a.is_empty());
    let action = format!("/console/keys/{id}");
    let body = html! {
        dl.facts {
            dt { "Key" } dd.mono { (text(&k["key"])) }
            dt { "Type" } dd { (text(&k["type"])) }
            dt { "Workspace" } dd { (text(&k["workspace_id"])) }
            dt { "Status" } dd { span class={ "status " (text(&k["status"])) } { (text(&k["status"])) } }
            dt { "Expires" } dd { (k["expires_at"].as_str().unwrap_or("never")) }
            dt { "Spent" } dd { "$" (text(&k["current_usage"]["cost"])) " · " (text(&k["current_usage"]["tokens"])) " tokens · " (text(&k["current_usage"]["requests"])) " requests" }
        }
        h2 { "Budget and rate limits" }
        div #usage data-live={ "/console/keys/" (id) "/usage" } aria-live="polite" {
            (layout::limits_summary(&k["usage_limits"], &k["rate_limits"]))
        }
        @if !no_budget {
            form.inline method="post" action={ (action) "/reset" } {
                (csrf(s))
                button type="submit" { "Reset usage" }
            }
        }
        h2 { "Edit" }
        form.stack method="post" action=(action) novalidate {
            (csrf(s))
            (p.general())
            label for="name" { "Name" }
            input #name name="name" value=(text(&k["name"])) aria-describedby=[p.described("name")];
            (p.at("name"))
            label for="description" { "Description" }
            input #description name="description" value=(text(&k["description"]));
            @if no_budget { (layout::budget_fields("", p)) } @else {
                p.muted { "A set budget cannot be edited: reset its usage, or remove it and set a new one." }
                label.check { input type="checkbox" name="remove_budget"; " Remove the budget" }
            }
            @if no_rate { (layout::rate_fields("", p)) } @else {
                p.muted { "A set rate limit cannot be edited: remove it and set a new one." }
                label.check { input type="checkbox" name="remove_rate"; " Remove the rate limits" }
            }
            (email_fields(&emails, p))
            button type="submit" { "Save" }
        }
        h2 { "Delete" }
        form.inline method="post" action={ (action) "/delete" } data-confirm="Delete this key? Requests with it are refused at once." {
            (csrf(s))
            button.danger type="submit" { "Delete key" }
        }
    };
    let title = format!("API key {}", text(&k["name"]));
    layout::answer(status, page(s, &title, "/console/keys", body))
}

/// `GET /console/keys/{id}/usage`: the usage bar and limits, for the page's live refresh.
pub async fn usage(State(app): App, s: Signed, Path(id): Path<String>) -> Response {
    match api_keys::retrieve(&app.control, &s.caller, &id) {
        Ok(k) => layout::limits_summary(&k["usage_limits"], &k["rate_limits"]).into_response(),
        Err(e) => refusal(&e).into_response(),
    }
}

/// `POST /console/keys/{id}`: name, description, recipients, and limits not yet set.
pub async fn update(State(app): App, Path(id): Path<String>, s: Submitted) -> Response {
    let f = &s.form;
    let mut b = Map::new();
    f.put_text(&mut b, "name", "name");
    f.put_text(&mut b, "description", "description");
    if let Some(u) = f.budget("") {
        b.insert("usage_limits".into(), u);
    }
    if let Some(r) = f.rate_limits("") {
        b.insert("rate_limits".into(), r);
    }
    if f.checked("remove_budget") {
        b.insert("usage_limits".into(), Value::Null);
    }
    if f.checked("remove_rate") {
        b.insert("rate_limits".into(), json!([]));
    }
    let emails = if f.checked("emails_on") {
        f.emails("alert_emails")
    } else {
        vec![]
    };
    b.insert("alert_emails".into(), json!(emails));
    let done = api_keys::update(&app.control, &s.signed.caller, &id, &Value::Object(b)).await;
    after(&app, &s.signed, &id, done)
}

/// `POST /console/keys/{id}/reset`: sets the budget's usage back to zero.
pub async fn reset(State(app): App, Path(id): Path<String>, s: Submitted) -> Response {
    let body = json!({"reset_usage": true});
    let done = api_keys::update(&app.control, &s.signed.caller, &id, &body).await;
    after(&app, &s.signed, &id, done)
}

fn after(app: &AppState, s: &Signed, id: &str, done: crate::control::Result<Value>) -> Response {
    match done {
        Ok(_) => Redirect::to(&format!("/console/keys/{id}")).into_response(),
        Err(e) => {
            let (status, m) = refusal(&e);
            key_page(app, s, id, status, &Problem::new(m, FIELDS))
        }
    }
}

/// `POST /console/keys/{id}/delete`.
pub async fn delete(State(app): App, Path(id): Path<String>, s: Submitted) -> Response {
    match api_keys::delete(&app.control, &s.signed.caller, &id).await {
        Ok(_) => Redirect::to("/console/keys").into_response(),
        Err(e) => {
            let (status, m) = refusal(&e);
            key_page(&app, &s.signed, &id, status, &Problem::new(m, FIELDS))
        }
    }
}
