//! Integrations: the tabs All (the provider catalog, which drives the credential forms),
//! Connected (organisation integrations) and Workspace-created; an integration's page with its
//! Workspace Provisioning (each workspace's "Edit Budget & Rate Limits", All Workspaces, "apply
//! to every workspace where this integration is enabled") and Model Provisioning (allow all or
//! an allow-list, custom pricing per model). Secrets are write-only: shown masked, never again.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::{json, Map, Value};

use super::form::{number, Form};
use super::layout::{self, csrf, page, text, Problem};
use super::refusal;
use super::session::{Signed, Submitted};
use crate::control::{integrations, workspaces};
use crate::domain::catalog::{self, KeyUse, Need, ProviderKind, CATALOG};
use crate::http::extract::QueryMap;
use crate::http::AppState;

type App = State<Arc<AppState>>;

const FIELDS: &[&str] = &[
    "slug",
    "key",
    "custom_host",
    "workspace_id",
    "credit_limit",
    "alert_threshold",
    "rate_limits",
    "pricing_config",
    "models",
    "name",
];

const TABS: &[(&str, &str)] = &[
    ("all", "All"),
    ("connected", "Connected"),
    ("workspace", "Workspace-created"),
];

/// `GET /console/integrations?tab=`.
pub async fn list(State(app): App, s: Signed, QueryMap(q): QueryMap) -> Response {
    let tab = q.get("tab").map_or("all", String::as_str);
    let body = match tab {
        "connected" | "workspace" => connected(&app, &s, &q, tab),
        _ => catalog_grid(),
    };
    let body = html! {
        nav.tabs aria-label="Integration tabs" {
            @for (id, label) in TABS {
                a href={ "/console/integrations?tab=" (id) } aria-current=[(*id == tab).then_some("page")] { (label) }
            }
        }
        (body)
    };
    page(&s, "Integrations", "/console/integrations", body).into_response()
}

fn catalog_grid() -> Markup {
    html! {
        ul.cards {
            @for k in CATALOG {
                li.card {
                    h2 { (k.name) }
                    p.muted { (k.protocol.name()) " · " (k.base_url.unwrap_or("your endpoint")) }
                    a.button href={ "/console/integrations/new/" (k.id) } aria-label={ "Connect " (k.name) } { "Connect" }
                }
            }
        }
    }
}

fn connected(app: &AppState, s: &Signed, q: &HashMap<String, String>, tab: &str) -> Markup {
    let mut q = q.clone();
    q.insert(
        "type".into(),
        if tab == "workspace" {
            "workspace"
        } else {
            "organisation"
        }
        .into(),
    );
    q.insert("page_size".into(), "50".into());
    let listed = integrations::list(&app.control, &s.caller, &q);
    let v = match listed {
        Ok(v) => v,
        Err(e) => return layout::alert(&refusal(&e).1),
    };
    let empty = vec![];
    let rows = v["data"].as_array().unwrap_or(&empty);
    html! {
        (layout::search_box("/console/integrations", &q, &["tab"], "name or slug"))
        table {
            caption.sr { "Integrations" }
            thead { tr { th { "Name" } th { "Slug" } th { "Provider" } th { "Workspace" } th { "Created" } } }
            tbody {
                @for i in rows {
                    tr {
                        td { a href={ "/console/integrations/" (text(&i["slug"])) } { (text(&i["name"])) } }
                        td.mono { (text(&i["slug"])) }
                        td { (text(&i["ai_provider_id"])) }
                        td { (text(&i["workspace_id"])) }
                        td { (text(&i["created_at"])) }
                    }
                }
            }
        }
        @if rows.is_empty() { p.muted { "None yet. Connect a provider from the All tab." } }
        (layout::pager("/console/integrations", &q, v["total"].as_u64().unwrap_or(0), 50))
    }
}

/// `GET /console/integrations/new/{provider}`: the provider's credential form.
pub async fn new(State(app): App, s: Signed, Path(provider): Path<String>) -> Response {
    let Some(kind) = catalog::kind(&provider) else {
        let body = html! { p.error role="alert" { "Tollgate does not support the provider " (provider) "." } };
        return layout::answer(
            StatusCode::NOT_FOUND,
            page(&s, "Connect a provider", "/console/integrations", body),
        );
    };
    let form = credential_form(&app, &s, kind, &Problem::default());
    page(
        &s,
        &format!("Connect {}", kind.name),
        "/console/integrations",
        form,
    )
    .into_response()
}

fn need(n: Need) -> &'static str {
    match n {
        Need::Always => "required",
        Need::Optional => "optional",
        Need::ForAssumedRole => "required for an assumed role",
        Need::UnlessCustomHost => "required unless a custom host is set",
    }
}

fn credential_form(app: &AppState, s: &Signed, kind: &ProviderKind, p: &Problem) -> Markup {
    let workspaces = super::keys::workspace_choices(app, s);
    html! {
        form.stack method="post" action="/console/integrations" novalidate autocomplete="off" {
            (csrf(s))
            input type="hidden" name="ai_provider_id" value=(kind.id);
            (p.general())
            label for="name" { "Name" }
            input #name name="name" required aria-describedby=[p.described("name")];
            (p.at("name"))
            label for="slug" { "Slug (optional)" }
            input #slug name="slug" aria-describedby=[p.described("slug")];
            (p.at("slug"))
            label for="description" { "Description" }
            input #description name="description";
            @if kind.key != KeyUse::Unused {
                label for="key" { "API key" @if kind.key == KeyUse::Optional { " (optional)" } }
                input #key type="password" name="key" autocomplete="new-password" aria-describedby=[p.described("key")];
                p.hint { "Write-only: stored sealed, shown masked, never returned." }
                (p.at("key"))
            }
            @for f in kind.fields {
                label for={ "cfg-" (f.name) } { (f.name) " (" (need(f.required)) ")" }
                @if f.secret {
                    input id={ "cfg-" (f.name) } type="password" name={ "cfg." (f.name) } autocomplete="new-password";
                } @else {
                    input id={ "cfg-" (f.name) } name={ "cfg." (f.name) };
                }
                p.hint { (f.description) }
                (p.at(f.name))
            }
            label for="cfg-custom_host" { "Custom host (optional)" }
            input #cfg-custom_host name="cfg.custom_host" placeholder="https://llm.internal.example/v1" aria-describedby=[p.described("custom_host")];
            (p.at("custom_host"))
            label for="workspace_id" { "Owner" }
            select #workspace_id name="workspace_id" {
                @if s.workspace().is_none() { option value="" { "Organisation (shared with workspaces you provision)" } }
                @for (id, name) in &workspaces { option value=(id) { "Workspace " (name) } }
            }
            button type="submit" { "Create integration" }
        }
    }
}

/// `POST /console/integrations`.
pub async fn create(State(app): App, s: Submitted) -> Response {
    let f = &s.form;
    let provider = f.one("ai_provider_id").to_owned();
    let mut b = Map::new();
    for (field, key) in [
        ("name", "name"),
        ("slug", "slug"),
        ("description", "description"),
        ("key", "key"),
        ("workspace_id", "workspace_id"),
        ("ai_provider_id", "ai_provider_id"),
    ] {
        f.put_text(&mut b, field, key);
    }
    let mut cfg = Map::new();
    if let Some(kind) = catalog::kind(&provider) {
        for name in kind.fields.iter().map(|f| f.name).chain(["custom_host"]) {
            f.put_text(&mut cfg, &format!("cfg.{name}"), name);
        }
    }
    if !cfg.is_empty() {
        b.insert("configurations".into(), Value::Object(cfg));
    }
    match integrations::create(&app.control, &s.signed.caller, &Value::Object(b)).await {
        Ok(v) => {
            Redirect::to(&format!("/console/integrations/{}", text(&v["slug"]))).into_response()
        }
        Err(e) => {
            let (status, m) = refusal(&e);
            let Some(kind) = catalog::kind(&provider) else {
                return (status, m).into_response();
            };
            let form = credential_form(&app, &s.signed, kind, &Problem::new(m, FIELDS));
            let title = format!("Connect {}", kind.name);
            layout::answer(
                status,
                page(&s.signed, &title, "/console/integrations", form),
            )
        }
    }
}

/// `GET /console/integrations/{slug}`.
pub async fn show(State(app): App, s: Signed, Path(slug): Path<String>) -> Response {
    integration_page(&app, &s, &slug, StatusCode::OK, &Problem::default())
}

fn integration_page(
    app: &AppState,
    s: &Signed,
    slug: &str,
    status: StatusCode,
    p: &Problem,
) -> Response {
    let c = &app.control;
    let i = match integrations::retrieve(c, &s.caller, slug) {
        Ok(i) => i,
        Err(e) => return layout::refused(s, "Integration", "/console/integrations", &e),
    };
    let access = integrations::list_workspaces(c, &s.caller, slug).ok();
    let models = integrations::list_models(c, &s.caller, slug).ok();
    let body = html! {
        (p.general())
        dl.facts {
            dt { "Provider" } dd { (text(&i["ai_provider_id"])) }
            dt { "Key" } dd.mono { (i["masked_key"].as_str().unwrap_or("none")) }
            dt { "Owner" } dd { (i["workspace_id"].as_str().map_or("organisation".to_owned(), |w| format!("workspace {w}"))) }
            dt { "Spent" } dd { "$" (text(&i["current_usage"]["cost"])) " · " (text(&i["current_usage"]["requests"])) " requests" }
            @if let Some(cfg) = i["configurations"].as_object() {
                @for (k, v) in cfg { dt { (k) } dd.mono { (text(v)) } }
            }
        }
        @if let Some(a) = &access { (provisioning(app, s, slug, &i, a, p)) }
        @if let Some(m) = &models { (model_provisioning(s, slug, m, p)) }
    };
    let title = format!("Integration {}", text(&i["name"]));
    layout::answer(status, page(s, &title, "/console/integrations", body))
}

fn provisioning(
    app: &AppState,
    s: &Signed,
    slug: &str,
    i: &Value,
    access: &Value,
    p: &Problem,
) -> Markup {
    let q = HashMap::from([("page_size".to_owned(), "1000".to_owned())]);
    let all = match workspaces::list(&app.control, &s.caller, &q) {
        Ok(v) => v["data"].as_array().cloned().unwrap_or_default(),
        // Without the workspaces to show, there is no form to post.
        Err(e) => return layout::alert(&refusal(&e).1),
    };
    let granted: HashMap<String, &Value> = access["workspaces"]
        .as_array()
        .map(|a| a.iter().map(|w| (text(&w["id"]), w)).collect())
        .unwrap_or_default();
    let global = &i["global_workspace_access"];
    let global_on = global["enabled"] == true;
    html! {
        h2 { "Workspace Provisioning" }
        form.stack method="post" action={ "/console/integrations/" (slug) "/workspaces" } novalidate {
            (csrf(s))
            table {
                caption.sr { "Workspaces this integration serves" }
                thead { tr { th { "Workspace" } th { "Enabled" } th { "Budget" } th { "Rate limit" } th { "Edit Budget & Rate Limits" } } }
                tbody {
                    @for w in &all {
                        @let id = text(&w["id"]);
                        @let a = granted.get(&id);
                        @let on = a.is_some_and(|a| a["enabled"] == true);
                        tr {
                            td {
                                (text(&w["name"]))
                                input type="hidden" name="shown" value=(id);
                                @if on { input type="hidden" name="was" value=(id); }
                            }
                            td { input type="checkbox" name="enabled" value=(id) checked[on] aria-label={ "Enable for " (text(&w["name"])) }; }
                            td { @if let Some(a) = a { (layout::usage_bar(&a["usage_limits"])) } }
                            td { @if let Some(a) = a { @if !a["rate_limits"].is_null() { (layout::rate_text(&a["rate_limits"])) } } }
                            td { (row_limits(&id, &text(&w["name"]), a.copied(), p)) }
                        }
                    }
                }
            }
            fieldset.toggle {
                legend {
                    @if global_on { input type="hidden" name="global_was" value="on"; }
                    input type="checkbox" #global_on name="global_on" checked[global_on] data-toggle="global-fields";
                    label for="global_on" { "All Workspaces (also every workspace created later)" }
                }
                div #global-fields {
                    @if global_on {
                        p.muted { "Now: " (global_limits_text(global)) ". Limits set here replace them." }
                    }
                    (layout::budget_fields("g.", p))
                    (layout::rate_fields("g.", p))
                    label.check {
                        input type="checkbox" name="apply_all";
                        " Apply to every workspace where this integration is enabled"
                    }
                }
            }
            button type="submit" { "Save provisioning" }
        }
    }
}

/// All Workspaces' limits in words.
fn global_limits_text(g: &Value) -> String {
    let budget = g["usage_limits"]
        .get(0)
        .map_or("no budget".to_owned(), |u| {
            format!(
                "a budget of {} {}",
                text(&u["credit_limit"]),
                text(&u["type"])
            )
        });
    let rates: Vec<String> = g["rate_limits"]
        .as_array()
        .map(|r| r.iter().map(layout::rate_text).collect())
        .unwrap_or_default();
    if rates.is_empty() {
        format!("{budget}, no rate limit")
    } else {
        format!("{budget}, {}", rates.join(", "))
    }
}

/// A workspace row's "Edit Budget & Rate Limits": new limits where none is set; a set one (the
/// API refuses to edit it) can be reset or removed, and then set again.
fn row_limits(id: &str, name: &str, access: Option<&Value>, p: &Problem) -> Markup {
    let prefix = format!("w.{id}.");
    let budget = access.is_some_and(|a| !a["usage_limits"].is_null());
    let rate = access.is_some_and(|a| !a["rate_limits"].is_null());
    html! {
        details {
            summary { "Edit Budget & Rate Limits" span.sr { " for " (name) } }
            @if budget {
                label.check { input type="checkbox" name={ (prefix) "reset_usage" }; " Reset the budget's usage" }
                label.check { input type="checkbox" name={ (prefix) "remove_budget" }; " Remove the budget" }
            } @else {
                (layout::budget_fields(&prefix, p))
            }
            @if rate {
                label.check { input type="checkbox" name={ (prefix) "remove_rate" }; " Remove the rate limit" }
            } @else {
                (layout::rate_fields(&prefix, p))
            }
        }
    }
}

/// The API body of the provisioning form: only the rows shown that changed (turned on or off, or
/// given limits), so a workspace the form did not show, or left as it was, is not touched (and
/// "apply to every workspace" reaches it); All Workspaces only when it was turned on or off or
/// given new limits.
fn provisioning_body(f: &Form) -> Value {
    let enabled: Vec<&str> = f.all("enabled").collect();
    let was: Vec<&str> = f.all("was").collect();
    let mut rows = Vec::new();
    for id in f.all("shown") {
        let on = enabled.contains(&id);
        let mut w = json!({"id": id, "enabled": on});
        let prefix = format!("w.{id}.");
        let mut changed = on != was.contains(&id);
        if let Some(u) = f.budget(&prefix) {
            w["usage_limits"] = json!([u]);
            changed = true;
        }
        if f.checked(&format!("{prefix}remove_budget")) {
            w["usage_limits"] = Value::Null;
            changed = true;
        }
        if f.checked(&format!("{prefix}reset_usage")) {
            w["reset_usage"] = json!(true);
            changed = true;
        }
        if let Some(r) = f.rate_limits(&prefix) {
            w["rate_limits"] = r;
            changed = true;
        }
        if f.checked(&format!("{prefix}remove_rate")) {
            w["rate_limits"] = json!([]);
            changed = true;
        }
        if changed {
            rows.push(w);
        }
    }
    let mut b = json!({"workspaces": rows});
    let (on, was_on) = (f.checked("global_on"), f.checked("global_was"));
    let (budget, rate) = (f.budget("g."), f.rate_limits("g."));
    if on != was_on || (on && (budget.is_some() || rate.is_some())) {
        let mut g = json!({"enabled": on});
        if let Some(u) = budget {
            g["usage_limits"] = json!([u]);
        }
        if let Some(r) = rate {
            g["rate_limits"] = r;
        }
        b["global_workspace_access"] = g;
    }
    if f.checked("apply_all") {
        b["override_existing_workspaces_access"] = json!(true);
    }
    b
}

/// `POST /console/integrations/{slug}/workspaces`.
pub async fn provision(State(app): App, Path(slug): Path<String>, s: Submitted) -> Response {
    let c = &app.control;
    let body = provisioning_body(&s.form);
    let done = integrations::update_workspaces(c, &s.signed.caller, &slug, &body).await;
    after(&app, &s.signed, &slug, done)
}

fn model_provisioning(s: &Signed, slug: &str, m: &Value, p: &Problem) -> Markup {
    let empty = vec![];
    let models = m["models"].as_array().unwrap_or(&empty);
    let price = |e: &Value, k: &str| text(&e["pricing_config"]["pay_as_you_go"][k]["price"]);
    html! {
        h2 { "Model Provisioning" }
        form.stack method="post" action={ "/console/integrations/" (slug) "/models" } novalidate {
            (csrf(s))
            label.check {
                input type="checkbox" name="allow_all_models" checked[m["allow_all_models"] == true];
                " Allow all models (otherwise only the models enabled below)"
            }
            (p.at("models"))
            (p.at("pricing_config"))
            table {
                caption.sr { "Models" }
                thead { tr { th { "Model" } th { "Enabled" } th { "Input price (US cents / token)" } th { "Output price (US cents / token)" } } }
                tbody {
                    @for e in models {
                        @let m = text(&e["slug"]);
                        tr {
                            td.mono { (m) input type="hidden" name="model" value=(m); }
                            td { input type="checkbox" name="model_on" value=(m) checked[e["enabled"] == true] aria-label={ "Enable " (m) }; }
                            td { input name={ "in." (m) } value=(price(e, "request_token")) inputmode="decimal" aria-label={ "Input price of " (m) }; }
                            td { input name={ "out." (m) } value=(price(e, "response_token")) inputmode="decimal" aria-label={ "Output price of " (m) }; }
                        }
                    }
                    tr {
                        td { input name="new_model" placeholder="model id, e.g. gpt-4o-mini" aria-label="Add a model"; }
                        td { input type="checkbox" name="new_model_on" checked aria-label="Enable the new model"; }
                        td { input name="new_in" inputmode="decimal" aria-label="Input price of the new model"; }
                        td { input name="new_out" inputmode="decimal" aria-label="Output price of the new model"; }
                    }
                }
            }
            button type="submit" { "Save models" }
        }
    }
}

/// A model entry of the models form. Its pricing starts from what the model has (so prices the
/// form does not show, such as cache reads, are kept), the form's input and output prices over
/// it (an emptied one removed); sent only when that differs from what it has.
fn model_item(slug: &str, enabled: bool, prices: (&str, &str), before: Option<&Value>) -> Value {
    let mut e = json!({"slug": slug, "enabled": enabled});
    let had = before.filter(|p| !p.is_null());
    let mut cfg = had
        .cloned()
        .unwrap_or_else(|| json!({"type": "static", "pay_as_you_go": {}}));
    for (k, v) in [("request_token", prices.0), ("response_token", prices.1)] {
        let v = v.trim();
        if v.is_empty() {
            if let Some(payg) = cfg["pay_as_you_go"].as_object_mut() {
                payg.remove(k);
            }
        } else {
            cfg["pay_as_you_go"][k] = json!({"price": number(v)});
        }
    }
    let priced = cfg["pay_as_you_go"]
        .as_object()
        .is_some_and(|p| !p.is_empty());
    if priced && Some(&cfg) != had {
        e["pricing_config"] = cfg;
    }
    e
}

/// The API body of the models form; `before` is the integration's model list.
fn models_body(f: &Form, before: &Value) -> Value {
    let on: Vec<&str> = f.all("model_on").collect();
    let pricing = |m: &str| {
        before["models"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["slug"] == m))
            .map(|e| &e["pricing_config"])
    };
    let mut models: Vec<Value> = f
        .all("model")
        .map(|m| {
            let prices = (f.one(&format!("in.{m}")), f.one(&format!("out.{m}")));
            model_item(m, on.contains(&m), prices, pricing(m))
        })
        .collect();
    if let Some(m) = f.text("new_model") {
        let prices = (f.one("new_in"), f.one("new_out"));
        models.push(model_item(m, f.checked("new_model_on"), prices, pricing(m)));
    }
    json!({"allow_all_models": f.checked("allow_all_models"), "models": models})
}

/// `POST /console/integrations/{slug}/models`.
pub async fn models(State(app): App, Path(slug): Path<String>, s: Submitted) -> Response {
    let c = &app.control;
    let before = integrations::list_models(c, &s.signed.caller, &slug).unwrap_or_default();
    let body = models_body(&s.form, &before);
    let done = integrations::update_models(c, &s.signed.caller, &slug, &body).await;
    after(&app, &s.signed, &slug, done)
}

fn after(app: &AppState, s: &Signed, slug: &str, done: crate::control::Result<Value>) -> Response {
    match done {
        Ok(_) => Redirect::to(&format!("/console/integrations/{slug}")).into_response(),
        Err(e) => {
            let (status, m) = refusal(&e);
            integration_page(app, s, slug, status, &Problem::new(m, FIELDS))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provisioning_form_sends_only_the_rows_shown_that_changed() {
        let f = Form::of(&[
            ("shown", "ws-a"),
            ("enabled", "ws-a"),
            ("w.ws-a.budget_on", "on"),
            ("w.ws-a.credit_limit", "10"),
            ("w.ws-a.rate_on", "on"),
            ("w.ws-a.rate_value", "5"),
            ("shown", "ws-b"),
            ("was", "ws-b"),
            ("shown", "ws-c"),
            ("was", "ws-c"),
            ("enabled", "ws-c"),
            ("w.ws-c.remove_budget", "on"),
            ("w.ws-c.remove_rate", "on"),
            ("shown", "ws-d"),
            ("was", "ws-d"),
            ("enabled", "ws-d"),
            ("apply_all", "on"),
        ]);
        let b = provisioning_body(&f);
        assert_eq!(
            b["workspaces"],
            json!([
                {"id": "ws-a", "enabled": true, "usage_limits": [{"type": "cost", "credit_limit": 10}],
                 "rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}]},
                {"id": "ws-b", "enabled": false},
                {"id": "ws-c", "enabled": true, "usage_limits": null, "rate_limits": []},
            ]),
            "ws-d is unchanged: left to apply_all; a workspace not shown is never sent"
        );
        assert_eq!(
            b.get("global_workspace_access"),
            None,
            "All Workspaces untouched"
        );
        assert_eq!(b["override_existing_workspaces_access"], true);
        let keep = Form::of(&[("global_on", "on"), ("global_was", "on")]);
        assert_eq!(
            provisioning_body(&keep).get("global_workspace_access"),
            None
        );
        let off = Form::of(&[("global_was", "on")]);
        assert_eq!(
            provisioning_body(&off)["global_workspace_access"],
            json!({"enabled": false})
        );
    }

    #[test]
    fn the_models_form_changes_only_the_prices_it_shows() {
        let before = json!({"models": [
            {"slug": "gpt-4o", "pricing_config": {"type": "static", "pay_as_you_go": {
                "request_token": {"price": 0.0003}, "cache_read_input_token": {"price": 0.0001}}}},
            {"slug": "gpt-4", "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0.003}}}},
        ]});
        let f = Form::of(&[
            ("model", "gpt-4o"),
            ("model_on", "gpt-4o"),
            ("in.gpt-4o", "0.0003"),
            ("out.gpt-4o", "0.0006"),
            ("model", "gpt-4"),
            ("in.gpt-4", "0.003"),
            ("new_model", "o3"),
            ("new_model_on", "on"),
        ]);
        let b = models_body(&f, &before);
        assert_eq!(b["allow_all_models"], false);
        assert_eq!(
            b["models"],
            json!([
                {"slug": "gpt-4o", "enabled": true, "pricing_config": {"type": "static", "pay_as_you_go": {
                    "request_token": {"price": 0.0003}, "cache_read_input_token": {"price": 0.0001},
                    "response_token": {"price": 0.0006}}}},
                {"slug": "gpt-4", "enabled": false},
                {"slug": "o3", "enabled": true},
            ])
        );
    }
}
