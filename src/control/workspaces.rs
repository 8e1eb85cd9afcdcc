//! Admin workspaces (`/admin/workspaces`).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::domain::limits::{parse_rate_limits, LimitOwner};
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
    let rate_limits = parse_rate_limits(
        b.get("rate_limits").unwrap_or(&Value::Null),
        LimitOwner::Other,
    )
    .map_err(invalid)?;
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
    command.commit(Some(caller.actor()), changes).await?;
    Ok(views::workspace(&ws, &ctl.ledger.state(), false))
}

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
        .collect();
    items.sort_by_key(|w| (w.created_at, w.id.clone()));
    Ok(page.list(
        items
            .into_iter()
            .map(|w| views::workspace(w, &state, false))
            .collect(),
    ))
}

fn find(state: &State, caller: &Caller, id: &str) -> Result<Workspace> {
    state
        .workspace(id)
        .filter(|w| caller.sees(Some(&w.id)))
        .map(|x| (**x).clone())
        .ok_or_else(|| ControlError::NotFound(format!("workspace {id} not found")))
}

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

pub async fn update(ctl: &Control, caller: &Caller, id: &str, body: &Value) -> Result<Value> {
    caller.require("workspaces.update")?;
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let mut w = find(&ctl.ledger.state(), caller, id)?;
    let before = governed(&w);
    if let Some(name) = b.str("name")? {
        if name.trim().is_empty() {
            return Err(invalid("name must not be empty"));
        }
        w.name = name.trim().to_owned();
    }
    if let Some(d) = b.str("description")? {
        w.description = Some(d.to_owned());
    }
    if let Some(d) = defaults_of(&b)? {
        w.defaults = d;
    }
    update_rate_limits(&mut w.rate_limits, b.get("rate_limits"), LimitOwner::Other)?;
    let reset = b.bool("reset_usage")?.unwrap_or(false);
    update_budget(
        &mut w.usage_limits,
        b.0.get("usage_limits"),
        reset,
        Millis::now(),
    )?;
    if governed(&w) != before {
        caller.require_organisation("changing a workspace's limits or defaults")?;
    }
    w.updated_at = Millis::now();
    command
        .commit(
            Some(caller.actor()),
            vec![Change::Upsert(Entity::Workspace(w))],
        )
        .await?;
    Ok(json!({}))
}

pub async fn delete(ctl: &Control, caller: &Caller, id: &str, body: &Value) -> Result<Value> {
    caller.require("workspaces.delete")?;
    caller.require_organisation("deleting a workspace")?;
    let force = body
        .get("force_delete")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let command = ctl.ledger.command().await;
    let changes = {
        let state = ctl.ledger.state();
        let w = find(&state, caller, id)?;
        if w.slug == crate::domain::DEFAULT_WORKSPACE_SLUG {
            return Err(ControlError::Forbidden(
                "the default workspace cannot be deleted".into(),
            ));
        }
        let mut deps: Vec<(EntityKind, String)> = Vec::new();
        deps.extend(
            state
                .api_keys
                .values()
                .filter(|k| k.workspace_id.as_deref() == Some(&w.id))
                .map(|k| (EntityKind::ApiKey, k.id.clone())),
        );
        deps.extend(
            state
                .providers
                .values()
                .filter(|p| p.workspace_id == w.id)
                .map(|p| (EntityKind::Provider, p.id.clone())),
        );
        deps.extend(
            state
                .configs
                .values()
                .filter(|c| c.workspace_id == w.id)
                .map(|c| (EntityKind::Config, c.id.clone())),
        );
        deps.extend(
            state
                .integrations
                .values()
                .filter(|i| i.workspace_id.as_deref() == Some(&w.id))
                .map(|i| (EntityKind::Integration, i.id.clone())),
        );
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
        for i in state
            .integrations
            .values()
            .filter(|i| i.workspaces.contains_key(&w.id))
        {
            let mut i = crate::domain::Integration::clone(i);
            i.workspaces.remove(&w.id);
            changes.push(Change::Upsert(Entity::Integration(i)));
        }
        changes.push(Change::Delete {
            kind: EntityKind::Workspace,
            id: w.id,
        });
        changes
    };
    command.commit(Some(caller.actor()), changes).await?;
    Ok(json!({}))
}
