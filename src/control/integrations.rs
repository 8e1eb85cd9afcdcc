//! Integrations (shared provider credentials), their workspace provisioning and model provisioning.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::domain::limits::{parse_rate_limits, LimitOwner};
use crate::domain::pricing::Price;
use crate::domain::routing::parse_url;
use crate::domain::*;

/// Checks `configurations`: `custom_host` must be a URL, `custom_headers` an object of strings and
/// `meter_unpriced_at_zero` (meter models without a price at $0 instead of refusing them on paths
/// with a cost budget) a boolean.
fn configurations_of(b: &Body) -> Result<Option<Map<String, Value>>> {
    let Some(c) = b.object("configurations")? else {
        return Ok(None);
    };
    let mut c = c.clone();
    c.retain(|_, v| !v.is_null());
    if let Some(h) = c.get("custom_host") {
        let url = parse_url(h, "configurations.custom_host").map_err(invalid)?;
        c.insert("custom_host".into(), Value::String(url));
    }
    if let Some(h) = c.get("custom_headers") {
        if !h
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string))
        {
            return Err(invalid(
                "configurations.custom_headers must be an object of strings",
            ));
        }
    }
    let flag = crate::proxy::meter::METER_UNPRICED_AT_ZERO;
    if c.get(flag).is_some_and(|v| !v.is_boolean()) {
        return Err(invalid(format!("configurations.{flag} must be a boolean")));
    }
    Ok(Some(c))
}

fn find(state: &State, caller: &Caller, slug: &str) -> Result<Integration> {
    state
        .integration(slug)
        .filter(|i| {
            !i.implicit
                && match (&caller.key.workspace_id, &i.workspace_id) {
                    (None, _) => true,
                    (Some(own), Some(ws)) => own == ws,
                    (Some(own), None) => i.serves_workspace(own),
                }
        })
        .map(|x| (**x).clone())
        .ok_or_else(|| ControlError::NotFound(format!("integration {slug} not found")))
}

/// The scope managing an integration: workspace integrations and organisation ones differ.
fn scope(i: &Integration, action: &str) -> String {
    let family = if i.workspace_id.is_some() {
        "workspace_integrations"
    } else {
        "organisation_integrations"
    };
    format!("{family}.{action}")
}

/// Checks `global_workspace_access` (`{enabled, usage_limits[≤1], rate_limits[≤1]}`) and returns
/// it normalised, budgets stamped with `now`.
fn global_access_of(v: Option<&Value>, now: Millis) -> Result<Option<Value>> {
    let Some(v) = v else { return Ok(None) };
    let g = Body::of(v).map_err(|_| invalid("global_workspace_access must be an object"))?;
    let enabled = g
        .bool("enabled")?
        .ok_or_else(|| invalid("global_workspace_access.enabled is required"))?;
    let usage = new_budget(g.get("usage_limits"), now)
        .map_err(|e| invalid(format!("global_workspace_access.{e}")))?;
    let rate = parse_rate_limits(
        g.get("rate_limits").unwrap_or(&Value::Null),
        LimitOwner::Other,
    )
    .map_err(|e| invalid(format!("global_workspace_access.{e}")))?;
    Ok(Some(
        json!({"enabled": enabled, "usage_limits": usage.map(|u| vec![u]).unwrap_or_default(), "rate_limits": rate}),
    ))
}

/// Provisioning for a workspace created just now: every organisation integration whose
/// `global_workspace_access` is enabled grants it access with those limits and a default provider.
pub fn provision_new_workspace(
    state: &State,
    workspace_id: &str,
    now: Millis,
) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for i in state
        .integrations
        .values()
        .filter(|i| i.workspace_id.is_none() && !i.implicit)
    {
        let Some(g) = i
            .global_workspace_access
            .as_ref()
            .filter(|g| g["enabled"] == true)
        else {
            continue;
        };
        let usage_limits = g["usage_limits"]
            .get(0)
            .map(|u| serde_json::from_value(u.clone()))
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        let rate_limits = serde_json::from_value(g["rate_limits"].clone()).unwrap_or_default();
        let mut i = Integration::clone(i);
        let access = WorkspaceAccess {
            workspace_id: workspace_id.to_owned(),
            enabled: true,
            usage_limits,
            rate_limits,
            created_at: now,
            updated_at: now,
        };
        i.workspaces.insert(workspace_id.to_owned(), access);
        changes.extend(
            default_provider(state, &i, workspace_id, None, now)?
                .map(|p| Change::Upsert(Entity::Provider(p))),
        );
        changes.push(Change::Upsert(Entity::Integration(i)));
    }
    Ok(changes)
}

/// The scope a credential is sealed to (its associated data): the owning workspace, or the organisation.
pub fn seal_scope(i: &Integration) -> &str {
    i.workspace_id.as_deref().unwrap_or("organisation")
}

/// A provider auto-created for a workspace that was given an integration.
fn default_provider(
    state: &State,
    i: &Integration,
    workspace_id: &str,
    slug: Option<&str>,
    now: Millis,
) -> Result<Option<Provider>> {
    let slug = slug.unwrap_or(&i.slug);
    check_slug(slug)?;
    if let Some(existing) = state.provider(slug, Some(workspace_id)) {
        if existing.integration_id == i.id {
            return Ok(None);
        }
        return Err(ControlError::Conflict(format!(
            "provider slug {slug} is taken in that workspace"
        )));
    }
    Ok(Some(Provider {
        id: new_id(),
        slug: slug.to_owned(),
        name: i.name.clone(),
        note: Some(format!("Created by provisioning integration {}", i.slug)),
        integration_id: i.id.clone(),
        workspace_id: workspace_id.to_owned(),
        origin: ProviderOrigin::Provisioned,
        usage_limits: None,
        rate_limits: vec![],
        expires_at: None,
        created_at: now,
        updated_at: now,
    }))
}

pub async fn create(core: &Core, caller: &Caller, body: &Value) -> Result<Value> {
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let ai_provider_id = b.required_str("ai_provider_id")?.to_owned();
    let configurations = configurations_of(&b)?.unwrap_or_default();
    let _guard = core.admin_lock.lock().await;
    let now = Millis::now();
    let (integration, provider) = {
        let state = core.state.read();
        let workspace_id = match b.str("workspace_id")? {
            Some(w) => Some(caller.workspace_for(&state, Some(w))?),
            None => caller.key.workspace_id.clone(),
        };
        caller.require(if workspace_id.is_some() {
            "workspace_integrations.create"
        } else {
            "organisation_integrations.create"
        })?;
        let slug = match b.str("slug")? {
            Some(s) => {
                check_slug(s)?;
                if state.integrations.values().any(|i| i.slug == s) {
                    return Err(ControlError::Conflict(format!(
                        "integration slug {s} is taken"
                    )));
                }
                s.to_owned()
            }
            None => make_slug("", &name),
        };
        let id = new_id();
        let mut i = Integration {
            id: id.clone(),
            slug,
            name,
            description: b.str("description")?.map(str::to_owned),
            ai_provider_id,
            workspace_id: workspace_id.clone(),
            key: None,
            configurations,
            allow_all_models: true,
            models: Default::default(),
            workspaces: Default::default(),
            global_workspace_access: global_access_of(b.get("global_workspace_access"), now)?,
            implicit: false,
            created_at: now,
            updated_at: now,
        };
        if let Some(k) = b.str("key")?.filter(|k| !k.is_empty()) {
            i.key = Some(core.sealer.seal(k, seal_scope(&i), &id));
        }
        let provider = match &workspace_id {
            Some(ws) if b.bool("create_default_provider")?.unwrap_or(true) => {
                default_provider(&state, &i, ws, b.str("default_provider_slug")?, now)?
            }
            _ => None,
        };
        (i, provider)
    };
    let (id, slug) = (integration.id.clone(), integration.slug.clone());
    let mut changes = vec![Change::Upsert(Entity::Integration(integration))];
    changes.extend(provider.map(|p| Change::Upsert(Entity::Provider(p))));
    core.commit(changes).await?;
    Ok(json!({"id": id, "slug": slug, "object": "integration"}))
}

pub fn list(core: &Core, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    let page = Page::from_query(q, 100)?;
    let state = core.state.read();
    let ws = caller.workspace_filter(&state, q.get("workspace_id").map(String::as_str))?;
    let kind = q.get("type").map(String::as_str).unwrap_or("all");
    let mut items: Vec<&std::sync::Arc<Integration>> = state
        .integrations
        .values()
        .filter(|i| !i.implicit)
        .filter(|i| match kind {
            "workspace" => i.workspace_id.is_some(),
            "organisation" => i.workspace_id.is_none(),
            _ => true,
        })
        .filter(|i| match &ws {
            None => true,
            Some(ws) => i.serves_workspace(ws),
        })
        .collect();
    items.sort_by_key(|i| (i.created_at, i.id.clone()));
    Ok(page.list(
        items
            .into_iter()
            .map(|i| views::integration(i, &state, false))
            .collect(),
    ))
}

pub fn retrieve(core: &Core, caller: &Caller, slug: &str) -> Result<Value> {
    let state = core.state.read();
    let i = find(&state, caller, slug)?;
    Ok(views::integration(&i, &state, true))
}

pub async fn update(core: &Core, caller: &Caller, slug: &str, body: &Value) -> Result<Value> {
    let b = Body::of(body)?;
    let _guard = core.admin_lock.lock().await;
    let mut i = find(&core.state.read(), caller, slug)?;
    caller.require(&scope(&i, "update"))?;
    if let Some(n) = b.str("name")? {
        i.name = n.to_owned();
    }
    if let Some(d) = b.str("description")? {
        i.description = Some(d.to_owned());
    }
    if let Some(c) = configurations_of(&b)? {
        i.configurations.extend(c);
    }
    if let Some(k) = b.str("key")?.filter(|k| !k.is_empty()) {
        i.key = Some(core.sealer.seal(k, seal_scope(&i), &i.id));
    }
    i.updated_at = Millis::now();
    core.commit(vec![Change::Upsert(Entity::Integration(i))])
        .await?;
    Ok(json!({}))
}

pub async fn delete(core: &Core, caller: &Caller, slug: &str) -> Result<Value> {
    let _guard = core.admin_lock.lock().await;
    let changes = {
        let state = core.state.read();
        let i = find(&state, caller, slug)?;
        caller.require(&scope(&i, "delete"))?;
        let mut changes: Vec<Change> = state
            .providers
            .values()
            .filter(|p| p.integration_id == i.id)
            .map(|p| Change::Delete {
                kind: EntityKind::Provider,
                id: p.id.clone(),
            })
            .collect();
        changes.push(Change::Delete {
            kind: EntityKind::Integration,
            id: i.id,
        });
        changes
    };
    core.commit(changes).await?;
    Ok(json!({}))
}

/// `PUT /integrations/{slug}/workspaces`: grant or revoke workspaces, with their limits.
pub async fn update_workspaces(
    core: &Core,
    caller: &Caller,
    slug: &str,
    body: &Value,
) -> Result<Value> {
    caller.require("organisation_integrations.update")?;
    let b = Body::of(body)?;
    let _guard = core.admin_lock.lock().await;
    let now = Millis::now();
    let changes = {
        let state = core.state.read();
        let mut i = find(&state, caller, slug)?;
        if i.workspace_id.is_some() {
            return Err(invalid(
                "a workspace-scoped integration cannot be provisioned to other workspaces",
            ));
        }
        let create_default = b.bool("create_default_provider")?.unwrap_or(true);
        let mut providers = Vec::new();
        let items = match b.get("workspaces") {
            None => &Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid("workspaces must be an array")),
        };
        for (n, item) in items.iter().enumerate() {
            let w = Body::of(item)
                .map_err(|_| invalid(format!("workspaces[{n}] must be an object")))?;
            let ws_ref = w
                .required_str("id")
                .map_err(|_| invalid(format!("workspaces[{n}].id is required")))?;
            let ws = state
                .workspace(ws_ref)
                .ok_or_else(|| ControlError::NotFound(format!("workspace {ws_ref} not found")))?;
            let enabled = w.bool("enabled")?.unwrap_or(true);
            let prev = i.workspaces.get(&ws.id).cloned();
            let mut usage_limits = prev.as_ref().and_then(|p| p.usage_limits.clone());
            let reset = w.bool("reset_usage")?.unwrap_or(false);
            update_budget(&mut usage_limits, w.0.get("usage_limits"), reset, now)
                .map_err(|e| invalid(format!("workspaces[{n}]: {e}")))?;
            let rate_limits = match w.get("rate_limits") {
                Some(r) => parse_rate_limits(r, LimitOwner::Other)
                    .map_err(|e| invalid(format!("workspaces[{n}].{e}")))?,
                None => prev
                    .as_ref()
                    .map(|p| p.rate_limits.clone())
                    .unwrap_or_default(),
            };
            i.workspaces.insert(
                ws.id.clone(),
                WorkspaceAccess {
                    workspace_id: ws.id.clone(),
                    enabled,
                    usage_limits,
                    rate_limits,
                    created_at: prev.map_or(now, |p| p.created_at),
                    updated_at: now,
                },
            );
            if enabled && w.bool("create_default_provider")?.unwrap_or(create_default) {
                let slug = w
                    .str("default_provider_slug")?
                    .or(b.str("default_provider_slug")?);
                providers.extend(default_provider(&state, &i, &ws.id, slug, now)?);
            }
        }
        if let Some(g) = global_access_of(b.get("global_workspace_access"), now)? {
            i.global_workspace_access = Some(g);
        }
        i.updated_at = now;
        let mut changes = vec![Change::Upsert(Entity::Integration(i))];
        changes.extend(
            providers
                .into_iter()
                .map(|p| Change::Upsert(Entity::Provider(p))),
        );
        changes
    };
    core.commit(changes).await?;
    Ok(json!({}))
}

pub fn list_workspaces(core: &Core, caller: &Caller, slug: &str) -> Result<Value> {
    let state = core.state.read();
    let i = find(&state, caller, slug)?;
    let items: Vec<Value> = i
        .workspaces
        .values()
        .filter(|a| caller.sees(Some(&a.workspace_id)))
        .map(|a| views::workspace_access(&i, a, &state))
        .collect();
    Ok(json!({
        "object": "list", "total": items.len(), "workspaces": items, "data": [],
        "global_workspace_access": i.global_workspace_access,
    }))
}

/// `PUT /integrations/{slug}/models`: the allow-list and custom pricing.
pub async fn update_models(
    core: &Core,
    caller: &Caller,
    slug: &str,
    body: &Value,
) -> Result<Value> {
    let b = Body::of(body)?;
    let _guard = core.admin_lock.lock().await;
    let mut i = find(&core.state.read(), caller, slug)?;
    caller.require(&scope(&i, "update"))?;
    let now = Millis::now();
    if let Some(all) = b.bool("allow_all_models")? {
        i.allow_all_models = all;
    }
    let items = match b.get("models") {
        None => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("models must be an array")),
    };
    for (n, item) in items.iter().enumerate() {
        let m = Body::of(item).map_err(|_| invalid(format!("models[{n}] must be an object")))?;
        let slug = m
            .required_str("slug")
            .map_err(|_| invalid(format!("models[{n}].slug is required")))?;
        let enabled = m
            .bool("enabled")?
            .ok_or_else(|| invalid(format!("models[{n}].enabled is required")))?;
        let pricing_config = m.get("pricing_config").cloned();
        if let Some(p) = &pricing_config {
            if Price::from_pricing_config(p).is_none() {
                return Err(invalid(format!(
                    "models[{n}].pricing_config needs pay_as_you_go.request_token.price or response_token.price (US cents per token)"
                )));
            }
        }
        let prev = i.models.get(slug);
        let entry = ModelEntry {
            slug: slug.to_owned(),
            enabled,
            is_custom: m.bool("is_custom")?.unwrap_or(false),
            is_finetune: m.bool("is_finetune")?.unwrap_or(false),
            base_model_slug: m.str("base_model_slug")?.map(str::to_owned),
            pricing_config: pricing_config.or_else(|| prev.and_then(|p| p.pricing_config.clone())),
            created_at: prev.map_or(now, |p| p.created_at),
            updated_at: now,
        };
        i.models.insert(slug.to_owned(), entry);
    }
    i.updated_at = now;
    core.commit(vec![Change::Upsert(Entity::Integration(i))])
        .await?;
    Ok(json!({}))
}

pub fn list_models(core: &Core, caller: &Caller, slug: &str) -> Result<Value> {
    let state = core.state.read();
    let i = find(&state, caller, slug)?;
    let models: Vec<Value> = i.models.values().map(views::model_entry).collect();
    Ok(
        json!({"object": "list", "total": models.len(), "allow_all_models": i.allow_all_models, "models": models, "data": []}),
    )
}

pub async fn delete_models(core: &Core, caller: &Caller, slug: &str, slugs: &str) -> Result<Value> {
    let _guard = core.admin_lock.lock().await;
    let mut i = find(&core.state.read(), caller, slug)?;
    caller.require(&scope(&i, "update"))?;
    for s in slugs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        i.models.remove(s);
    }
    i.updated_at = Millis::now();
    core.commit(vec![Change::Upsert(Entity::Integration(i))])
        .await?;
    Ok(json!({}))
}
