//! Admin workspaces (`/admin/workspaces`).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::domain::limits::LimitOwner;
use crate::domain::{Change, Entity, EntityKind, Millis, State, Workspace};

fn defaults_of(b: &Body) -> Result<Option<Map<String, Value>>> {
    let Some(d) = b.object("defaults")? else {
        return Ok(None);
    };
    if let Some(m) = d.get("metadata").filter(|m| !m.is_null()) {
        let ok = m
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string));
        if !ok {
            return Err(invalid("defaults.metadata must be an object of strings"));
        }
    }
    Ok(Some(d.clone()))
}

/// `POST /admin/workspaces`: a new workspace, provisioned by the integrations open to all.
pub async fn create(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("workspaces.create")?;
    if caller.key.workspace_id.is_some() {
        return Err(ControlError::Forbidden(
            "workspaces are created with an organisation key".into(),
        ));
    }
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let usage_limits = new_budget(b.get("usage_limits"), Millis::now())?;
    let rate_limits = new_rate_limits(b.get("rate_limits"), LimitOwner::Other)?;
    let command = ctl.ledger.command().await;
    let slug = match b.str("slug")? {
        Some(s) => {
            check_slug(s)?;
            if ctl.ledger.state().workspace(s).is_some() {
                return Err(ControlError::Conflict(format!(
                    "workspace slug {s} is taken"
                )));
            }
            s.to_owned()
        }
        None => make_slug("ws-", &name),
    };
    let now = Millis::now();
    let ws = Workspace {
        id: new_id(),
        slug,
        name,
        description: b.str("description")?.map(str::to_owned),
        defaults: defaults_of(&b)?.unwrap_or_default(),
        usage_limits,
        rate_limits,
        created_at: now,
        updated_at: now,
    };
    let mut changes = vec![Change::Upsert(Entity::Workspace(ws.clone()))];
    changes.extend(super::integrations::provision_new_workspace(
        &ctl.ledger.state(),
        &ws.id,
        now,
    )?);
    commit(command, caller, changes).await?;
    Ok(views::workspace(&ws, &ctl.ledger.state(), false))
}

/// `GET /admin/workspaces`: the workspaces the caller sees, in creation order.
pub fn list(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    caller.require("workspaces.list")?;
    let page = Page::from_query(q, 100)?;
    let exact = q
        .get("exact_name")
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    let name = q.get("name").map(|n| n.to_lowercase());
    let state = ctl.ledger.state();
    let mut items: Vec<&std::sync::Arc<Workspace>> = state
        .workspaces
        .values()
        .filter(|w| caller.sees(Some(&w.id)))
        .filter(|w| match &name {
            None => true,
            Some(n) if exact => w.name.to_lowercase() == *n,
            Some(n) => w.name.to_lowercase().contains(n.as_str()),
        })
        .filter(|w| page.matches(&[&w.name, &w.slug, &w.id]))
        .collect();
    items.sort_by_key(|w| (w.created_at, w.id.clone()));
    Ok(page.render(items, |w| views::workspace(w, &state, false)))
}

fn find(state: &State, caller: &Caller, id: &str) -> Result<Workspace> {
    state
        .workspace(id)
        .filter(|w| caller.sees(Some(&w.id)))
        .map(|x| (**x).clone())
        .ok_or_else(|| ControlError::NotFound(format!("workspace {id} not found")))
}

/// `GET /admin/workspaces/{id}`.
pub fn retrieve(ctl: &Control, caller: &Caller, id: &str) -> Result<Value> {
    caller.require("workspaces.read")?;
    let state = ctl.ledger.state();
    let w = find(&state, caller, id)?;
    Ok(views::workspace(&w, &state, true))
}

/// What governs a workspace's traffic: its limits and defaults (the metadata policies match on)
/// are set by organisation keys only, never by the workspace's own keys.
fn governed(w: &Workspace) -> impl PartialEq {
    (
        w.usage_limits.clone(),
        w.rate_limits.clone(),
        w.defaults.clone(),
    )
}

/// `PUT /admin/workspaces/{id}`: names, and (with an organisation key) limits and defaults.
pub async fn update(ctl: &Control, caller: &Caller, id: &str, body: &Value) -> Result<Value> {
    caller.require("workspaces.update")?;
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let mut w = find(&ctl.ledger.state(), caller, id)?;
    let before = governed(&w);
    if let Some(name) = b.nonempty_str("name")? {
        w.name = name;
    }
    if let Some(d) = b.str("description")? {
        w.description = Some(d.to_owned());
    }
    if let Some(d) = defaults_of(&b)? {
        w.defaults = d;
    }
    update_limits(
        &b,
        &mut w.usage_limits,
        &mut w.rate_limits,
        LimitOwner::Other,
    )?;
    if governed(&w) != before {
        caller.require_organisation("changing a workspace's limits or defaults")?;
    }
    w.updated_at = Millis::now();
    upsert(command, caller, Entity::Workspace(w)).await?;
    Ok(json!({}))
}

/// `DELETE /admin/workspaces/{id}`: refused while it has keys, providers, configs or
/// integrations, unless `force_delete` (then they go with it).
pub async fn delete(ctl: &Control, caller: &Caller, id: &str, body: &Value) -> Result<Value> {
    caller.require("workspaces.delete")?;
    caller.require_organisation("deleting a workspace")?;
    let force = body
        .get("force_delete")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    execute(ctl, caller, |state| {
        let w = find(state, caller, id)?;
        if w.slug == crate::domain::DEFAULT_WORKSPACE_SLUG {
            return Err(ControlError::Forbidden(
                "the default workspace cannot be deleted".into(),
            ));
        }
        let deps = dependents(state, &w.id);
        if !deps.is_empty() && !force {
            return Err(ControlError::Conflict(format!(
                "workspace {} still has {} keys, providers, configs or integrations; delete them or pass force_delete",
                w.slug,
                deps.len()
            )));
        }
        let mut changes: Vec<Change> = deps
            .into_iter()
            .map(|(kind, id)| Change::Delete { kind, id })
            .collect();
        // Remove the workspace from shared integrations' provisioning.
        changes.extend(deprovision(state, &w.id));
        changes.push(Change::Delete {
            kind: EntityKind::Workspace,
            id: w.id,
        });
        Ok(changes)
    })
    .await
}

/// What is deleted with workspace `id` (with `force_delete`): its keys, providers, configs and
/// integrations.
fn dependents(state: &State, id: &str) -> Vec<(EntityKind, String)> {
    let ws = Some(id);
    let mut deps: Vec<(EntityKind, String)> = Vec::new();
    for k in state
        .api_keys
        .values()
        .filter(|k| k.workspace_id.as_deref() == ws)
    {
        deps.push((EntityKind::ApiKey, k.id.clone()));
    }
    for p in state.providers.values().filter(|p| p.workspace_id == id) {
        deps.push((EntityKind::Provider, p.id.clone()));
    }
    for c in state.configs.values().filter(|c| c.workspace_id == id) {
        deps.push((EntityKind::Config, c.id.clone()));
    }
    for i in state
        .integrations
        .values()
        .filter(|i| i.workspace_id.as_deref() == ws)
    {
        deps.push((EntityKind::Integration, i.id.clone()));
    }
    deps
}

/// The shared integrations that provision workspace `id`, without it.
fn deprovision(state: &State, id: &str) -> Vec<Change> {
    state
        .integrations
        .values()
        .filter(|i| i.workspaces.contains_key(id))
        .map(|i| {
            let mut i = crate::domain::Integration::clone(i);
            i.workspaces.remove(id);
            Change::Upsert(Entity::Integration(i))
        })
        .collect()
}
