//! Saved routing configs (`pc-…`).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::domain::routing::Node;
use crate::domain::*;

/// A config body may be an object or its JSON text; it must pass §4 validation (bounds included,
/// checked before the text is parsed). It is parsed again, once, when its event is applied to the
/// state, and requests share that plan.
fn config_of(v: &Value) -> Result<Value> {
    let bad = |e: String| invalid(format!("invalid config: {e}"));
    match v {
        Value::String(s) => {
            Node::parse_text(s).map_err(bad)?;
            serde_json::from_str(s).map_err(|e| invalid(format!("config is not valid JSON: {e}")))
        }
        other => {
            Node::parse(other).map_err(bad)?;
            Ok(other.clone())
        }
    }
}

fn find(state: &State, caller: &Caller, slug: &str) -> Result<RouteConfig> {
    state
        .config(slug)
        .filter(|c| caller.sees(Some(&c.workspace_id)))
        .cloned()
        .ok_or_else(|| ControlError::NotFound(format!("config {slug} not found")))
}

/// Refuses a workspace key a change to (or the deletion of) a config that key defaults set by
/// the organisation point at (`limits_set_by` records who set a key's defaults): such a config
/// is forced on those keys' requests, and neither they nor their workspace may rewrite it.
fn check_not_forced(state: &State, caller: &Caller, c: &RouteConfig) -> Result<()> {
    if caller.authority() == Authority::Organisation {
        return Ok(());
    }
    let forced = state.api_keys.values().any(|k| {
        k.limits_set_by == Authority::Organisation
            && k.default_config().is_some_and(|r| r == c.id || r == c.slug)
    });
    if forced {
        return Err(ControlError::Forbidden(format!(
            "config {} is a default the organisation set on a key: only an organisation key can change or delete it",
            c.slug
        )));
    }
    Ok(())
}

/// `POST /configs`.
pub async fn create(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("configs.create")?;
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let config = config_of(
        b.get("config")
            .ok_or_else(|| invalid("config is required"))?,
    )?;
    let is_default = match b.get("is_default").or_else(|| b.get("isDefault")) {
        None => false,
        Some(v) => match v.as_f64() {
            Some(x) if x == 0.0 || x == 1.0 => x == 1.0,
            _ => v
                .as_bool()
                .ok_or_else(|| invalid("is_default must be 0 or 1"))?,
        },
    };
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let c = {
        let state = ctl.ledger.state();
        RouteConfig {
            id: new_id(),
            slug: make_slug("pc-", &name),
            name,
            workspace_id: caller.workspace_for(&state, b.str("workspace_id")?)?,
            config,
            is_default,
            status: "active".into(),
            version_id: new_id(),
            owner_id: Some(caller.key.id.clone()),
            created_at: now,
            updated_at: now,
        }
    };
    let out = json!({"id": c.id, "slug": c.slug, "version_id": c.version_id, "object": "config",
        "success": true, "data": {"id": c.id, "version_id": c.version_id}});
    upsert(command, caller, Entity::Config(c)).await?;
    Ok(out)
}

/// `GET /configs`: the configs the caller sees, in creation order.
pub fn list(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    caller.require("configs.list")?;
    let page = Page::from_query(q, 1000)?;
    let state = ctl.ledger.state();
    let ws = caller.listed_workspace(&state, q)?;
    let mut items: Vec<&RouteConfig> = state
        .configs
        .values()
        .filter(|c| ws.as_ref().is_none_or(|w| &c.workspace_id == w))
        .filter(|c| page.matches(&[&c.name, &c.slug]))
        .collect();
    items.sort_by_key(|c| (c.created_at, c.id.clone()));
    let mut out = page.render(items, |c| views::config(c, &state, false));
    out["success"] = json!(true);
    Ok(out)
}

/// `GET /configs/{slug}`.
pub fn retrieve(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    caller.require("configs.read")?;
    let state = ctl.ledger.state();
    Ok(views::config(&find(&state, caller, slug)?, &state, true))
}

/// `PUT /configs/{slug}`.
pub async fn update(ctl: &Control, caller: &Caller, slug: &str, body: &Value) -> Result<Value> {
    caller.require("configs.update")?;
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let mut c = {
        let state = ctl.ledger.state();
        let c = find(&state, caller, slug)?;
        check_not_forced(&state, caller, &c)?;
        c
    };
    if let Some(n) = b.str("name")? {
        c.name = n.to_owned();
    }
    if let Some(v) = b.get("config") {
        c.config = config_of(v)?;
    }
    if let Some(s) = b.str("status")? {
        c.status = s.to_owned();
    }
    c.version_id = new_id();
    c.updated_at = Millis::now();
    let out =
        json!({"version_id": c.version_id, "success": true, "data": {"version_id": c.version_id}});
    upsert(command, caller, Entity::Config(c)).await?;
    Ok(out)
}

/// `DELETE /configs/{slug}`.
pub async fn delete(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    caller.require("configs.delete")?;
    let command = ctl.ledger.command().await;
    let c = {
        let state = ctl.ledger.state();
        let c = find(&state, caller, slug)?;
        check_not_forced(&state, caller, &c)?;
        c
    };
    remove(command, caller, EntityKind::Config, c.id).await?;
    Ok(json!({}))
}
