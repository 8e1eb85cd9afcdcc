//! Routing configs: a JSON editor that shows the API's validation errors inline (and the
//! script's JSON syntax check as one types), with the fallback, loadbalance, retry and
//! override_params shapes as starting templates.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::layout::{self, csrf, page, text, Problem};
use super::refusal;
use super::session::{Signed, Submitted};
use crate::control::configs;
use crate::http::extract::QueryMap;
use crate::http::AppState;

type App = State<Arc<AppState>>;

const PAGE_SIZE: usize = 50;
const FIELDS: &[&str] = &["config", "workspace_id", "name"];

/// The starting templates: label and config.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "Fallback",
        r#"{"strategy": {"mode": "fallback"}, "targets": [{"provider": "@openai-prod"}, {"provider": "@anthropic-prod", "override_params": {"model": "claude-sonnet-4-5"}}]}"#,
    ),
    (
        "Load balance",
        r#"{"strategy": {"mode": "loadbalance"}, "targets": [{"provider": "@openai-a", "weight": 0.7}, {"provider": "@openai-b", "weight": 0.3}]}"#,
    ),
    (
        "Retry",
        r#"{"retry": {"attempts": 3, "on_status_codes": [429, 500, 502, 503]}, "provider": "@openai-prod"}"#,
    ),
    (
        "Override params",
        r#"{"provider": "@openai-prod", "override_params": {"model": "gpt-4o-mini", "max_tokens": 512}}"#,
    ),
];

/// Pretty JSON of a template (the textarea shows it indented).
fn pretty(json: &str) -> String {
    serde_json::from_str::<Value>(json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.to_owned())
}

/// `GET /console/configs`.
pub async fn list(State(app): App, s: Signed, QueryMap(mut q): QueryMap) -> Response {
    q.insert("page_size".into(), PAGE_SIZE.to_string());
    let body = match configs::list(&app.control, &s.caller, &q) {
        Ok(v) => {
            let empty = vec![];
            let rows = v["data"].as_array().unwrap_or(&empty);
            html! {
                p.actions { a.button href="/console/configs/new" { "Create config" } }
                (layout::search_box("/console/configs", &q, &[], "name or slug"))
                table {
                    caption.sr { "Configs" }
                    thead { tr { th { "Name" } th { "Slug" } th { "Workspace" } th { "Default" } th { "Updated" } } }
                    tbody {
                        @for c in rows {
                            tr {
                                td { a href={ "/console/configs/" (text(&c["slug"])) } { (text(&c["name"])) } }
                                td.mono { (text(&c["slug"])) }
                                td { (text(&c["workspace_id"])) }
                                td { @if c["is_default"] == 1 { "yes" } }
                                td { (text(&c["last_updated_at"])) }
                            }
                        }
                    }
                }
                (layout::pager("/console/configs", &q, v["total"].as_u64().unwrap_or(0), PAGE_SIZE))
            }
        }
        Err(e) => layout::alert(&refusal(&e).1),
    };
    page(&s, "Configs", "/console/configs", body).into_response()
}

/// The editor: `action` posts it; `name` and `config` prefill it; a new config's form offers
/// the `workspaces` it may be made in.
fn editor(
    s: &Signed,
    action: &str,
    (name, config): (&str, &str),
    p: &Problem,
    workspaces: Option<&[(String, String)]>,
) -> Markup {
    html! {
        form.stack method="post" action=(action) novalidate {
            (csrf(s))
            (p.general())
            label for="name" { "Name" }
            input #name name="name" value=(name) required aria-describedby=[p.described("name")];
            (p.at("name"))
            @if let Some(workspaces) = workspaces {
                label for="workspace_id" { "Workspace" }
                select #workspace_id name="workspace_id" {
                    @for (id, name) in workspaces { option value=(id) { (name) } }
                }
                (p.at("workspace_id"))
            }
            label for="template" { "Start from a template" }
            select #template data-template-for="config" {
                option value="" { "—" }
                @for (label, json) in TEMPLATES { option value=(pretty(json)) { (label) } }
            }
            label for="config" { "Config (JSON)" }
            textarea #config.code name="config" rows="16" spellcheck="false" data-json
                aria-describedby="config-check" aria-invalid=[(p.field == Some("config")).then_some("true")] { (config) }
            p #config-check .hint aria-live="polite" {}
            (p.at("config"))
            button type="submit" { "Save config" }
        }
    }
}

/// `GET /console/configs/new`.
pub async fn new(State(app): App, s: Signed) -> Response {
    let workspaces = super::keys::workspace_choices(&app, &s);
    let form = editor(
        &s,
        "/console/configs",
        ("", "{}"),
        &Problem::default(),
        Some(&workspaces),
    );
    page(&s, "Create config", "/console/configs", form).into_response()
}

/// The config text of a form as JSON, or the parse error in the API's terms.
fn config_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))
}

/// `POST /console/configs`.
pub async fn create(State(app): App, s: Submitted) -> Response {
    let f = &s.form;
    let done = match config_json(f.one("config")) {
        Ok(config) => {
            let mut b = Map::new();
            f.put_text(&mut b, "name", "name");
            f.put_text(&mut b, "workspace_id", "workspace_id");
            b.insert("config".into(), config);
            configs::create(&app.control, &s.signed.caller, &Value::Object(b))
                .await
                .map_err(|e| refusal(&e))
        }
        Err(m) => Err((StatusCode::BAD_REQUEST, m)),
    };
    match done {
        Ok(v) => Redirect::to(&format!("/console/configs/{}", text(&v["slug"]))).into_response(),
        Err((status, m)) => {
            let p = Problem::new(m, FIELDS);
            let workspaces = super::keys::workspace_choices(&app, &s.signed);
            let values = (f.one("name"), f.one("config"));
            let form = editor(&s.signed, "/console/configs", values, &p, Some(&workspaces));
            layout::answer(
                status,
                page(&s.signed, "Create config", "/console/configs", form),
            )
        }
    }
}

/// `GET /console/configs/{slug}`.
pub async fn show(State(app): App, s: Signed, Path(slug): Path<String>) -> Response {
    match configs::retrieve(&app.control, &s.caller, &slug) {
        Ok(c) => {
            let config = serde_json::to_string_pretty(&c["config"]).unwrap_or_default();
            let action = format!("/console/configs/{slug}");
            let name = text(&c["name"]);
            let form = editor(&s, &action, (&name, &config), &Problem::default(), None);
            let title = format!("Config {}", text(&c["name"]));
            page(&s, &title, "/console/configs", form).into_response()
        }
        Err(e) => layout::refused(&s, "Config", "/console/configs", &e),
    }
}

/// `POST /console/configs/{slug}`.
pub async fn update(State(app): App, Path(slug): Path<String>, s: Submitted) -> Response {
    let f = &s.form;
    let done = match config_json(f.one("config")) {
        Ok(config) => {
            let body = json!({"name": f.one("name").trim(), "config": config});
            configs::update(&app.control, &s.signed.caller, &slug, &body)
                .await
                .map_err(|e| refusal(&e))
        }
        Err(m) => Err((StatusCode::BAD_REQUEST, m)),
    };
    match done {
        Ok(_) => Redirect::to(&format!("/console/configs/{slug}")).into_response(),
        Err((status, m)) => {
            let p = Problem::new(m, FIELDS);
            let action = format!("/console/configs/{slug}");
            let values = (f.one("name"), f.one("config"));
            let form = editor(&s.signed, &action, values, &p, None);
            layout::answer(status, page(&s.signed, "Config", "/console/configs", form))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_json() {
        for (label, t) in TEMPLATES {
            assert!(serde_json::from_str::<Value>(t).is_ok(), "{label}");
        }
    }
}
