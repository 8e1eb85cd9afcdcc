//! Integrations (shared provider credentials), their workspace provisioning and model provisioning.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::*;
use crate::domain::limits::{parse_rate_limits, LimitOwner, RateLimit, UsageLimit};
use crate::domain::pricing::Price;
use crate::domain::routing::{check_private_host, parse_url, PrivateHosts};
use crate::domain::*;

use crate::crypto::seal_scope;

/// Checks `configurations`: `custom_host` must be a URL, `custom_headers` an object of strings and
/// `meter_unpriced_at_zero` (meter models without a price at $0 instead of refusing them on paths
/// with a cost budget) a boolean.
fn configurations_of(b: &Body, hosts: PrivateHosts) -> Result<Option<Map<String, Value>>> {
    let Some(c) = b.object("configurations")? else {
        return Ok(None);
    };
    let mut c = c.clone();
    c.retain(|_, v| !v.is_null());
    if let Some(h) = c.get("custom_host") {
        let url = parse_url(h, "configurations.custom_host").map_err(invalid)?;
        check_private_host(&url, hosts, "configurations.custom_host").map_err(invalid)?;
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
    let flag = crate::domain::pricing::METER_UNPRICED_AT_ZERO;
    if c.get(flag).is_some_and(|v| !v.is_boolean()) {
        return Err(invalid(format!("configurations.{flag} must be a boolean")));
    }
    check_azure_names(&c)?;
    Ok(Some(c))
}

/// Refuses a `resource_name` or `deployment_name` that is not a plain name (see [`crate::domain::routing::azure_name_ok`]).
pub fn check_azure_names(c: &Map<String, Value>) -> Result<()> {
    for field in ["resource_name", "deployment_name"] {
        let ok = match c.get(field) {
            None => true,
            Some(v) => v
                .as_str()
                .is_some_and(|s| crate::domain::routing::azure_name_ok(field, s)),
        };
        if !ok {
            let shape = if field == "resource_name" {
                "[A-Za-z0-9-]+"
            } else {
                "[A-Za-z0-9._-]+"
            };
            return Err(invalid(format!("{field} must match ^{shape}$")));
        }
    }
    Ok(())
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

/// The scope to read `i` with: a workspace key reads (its workspace's view of) any integration
/// with `workspace_integrations.*`, as it can never hold an organisation scope; an organisation
/// key reads with the integration's own family.
fn read_scope(caller: &Caller, i: &Integration, action: &str) -> String {
    match caller.authority() {
        Authority::Workspace => format!("workspace_integrations.{action}"),
        Authority::Organisation => scope(i, action),
    }
}

/// Refuses a change of `i` without its scope, and of an organisation integration (shared with
/// other workspaces) by a workspace key whatever its scopes.
fn require_write(caller: &Caller, i: &Integration, action: &str) -> Result<()> {
    caller.require(&scope(i, action))?;
    if i.workspace_id.is_none() {
        caller.require_organisation("changing an organisation integration")?;
    }
    Ok(())
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

/// `global_workspace_access` when "All Workspaces" is on.
fn global_enabled(i: &Integration) -> Option<&Value> {
    i.global_workspace_access
        .as_ref()
        .filter(|g| g["enabled"] == true)
}

/// The limits `global_workspace_access` gives a workspace at `now` (a budget counts from then).
fn global_limits(g: &Value, now: Millis) -> Result<(Option<UsageLimit>, Vec<RateLimit>)> {
    let usage = g["usage_limits"]
        .get(0)
        .map(|u| serde_json::from_value::<UsageLimit>(u.clone()))
        .transpose()
        .map_err(|e| invalid(format!("global_workspace_access.usage_limits: {e}")))?
        .map(|mut u| {
            u.set_at = now;
            u.reset_at = None;
            u
        });
    let rate = serde_json::from_value(g["rate_limits"].clone())
        .map_err(|e| invalid(format!("global_workspace_access.rate_limits: {e}")))?;
    Ok((usage, rate))
}

/// Grants `workspace_id` access with the global limits; returns its default provider, unless
/// `with_provider` is off or the slug is taken there (access is granted all the same: the
/// workspace can add a provider of its own).
fn grant_global(
    state: &State,
    i: &mut Integration,
    workspace_id: &str,
    g: &Value,
    with_provider: bool,
    now: Millis,
) -> Result<Option<Provider>> {
    let (usage_limits, rate_limits) = global_limits(g, now)?;
    let created_at = i.workspaces.get(workspace_id).map_or(now, |a| a.created_at);
    let access = WorkspaceAccess {
        workspace_id: workspace_id.to_owned(),
        enabled: true,
        usage_limits,
        rate_limits,
        created_at,
        updated_at: now,
    };
    i.workspaces.insert(workspace_id.to_owned(), access);
    if !with_provider {
        return Ok(None);
    }
    match default_provider(state, i, workspace_id, None, now) {
        Err(ControlError::Conflict(_)) => Ok(None),
        other => other,
    }
}

/// "All Workspaces": grants every existing workspace not yet enabled (except those in `skip`,
/// which the same call sets itself) access with the global limits.
fn grant_all_existing(
    state: &State,
    i: &mut Integration,
    skip: &BTreeSet<String>,
    with_provider: bool,
    now: Millis,
) -> Result<Vec<Provider>> {
    let Some(g) = global_enabled(i).cloned() else {
        return Ok(Vec::new());
    };
    let mut providers = Vec::new();
    for ws in state.workspaces.keys() {
        if skip.contains(ws) || i.serves_workspace(ws) {
            continue;
        }
        providers.extend(grant_global(state, i, ws, &g, with_provider, now)?);
    }
    Ok(providers)
}

/// "Apply to every workspace where this integration is enabled": sets the global limits on
/// each (except those in `skip`). An identical budget is kept, so its count does not restart.
fn override_existing(i: &mut Integration, skip: &BTreeSet<String>, now: Millis) -> Result<()> {
    let g = i.global_workspace_access.clone().ok_or_else(|| {
        invalid("override_existing_workspaces_access needs global_workspace_access with the limits to apply")
    })?;
    let (usage, rate) = global_limits(&g, now)?;
    for a in i.workspaces.values_mut() {
        if !a.enabled || skip.contains(&a.workspace_id) {
            continue;
        }
        let same = match (&usage, &a.usage_limits) {
            (Some(new), Some(old)) => {
                let mut new = new.clone();
                new.set_at = old.set_at;
                new.reset_at = old.reset_at;
                &new == old
            }
            (None, None) => true,
            _ => false,
        };
        if !same {
            a.usage_limits = usage.clone();
        }
        a.rate_limits = rate.clone();
        a.updated_at = now;
    }
    Ok(())
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
        let Some(g) = global_enabled(i).cloned() else {
            continue;
        };
        let mut i = Integration::clone(i);
        let provider = grant_global(state, &mut i, workspace_id, &g, true, now)?;
        changes.extend(provider.map(|p| Change::Upsert(Entity::Provider(p))));
        changes.push(Change::Upsert(Entity::Integration(i)));
    }
    Ok(changes)
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
    check_new_slug(slug, state.providers.contains_key(slug))?;
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
        limits_set_by: Authority::Organisation,
        expires_at: None,
        created_at: now,
        updated_at: now,
    }))
}

pub async fn create(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let ai_provider_id = b.required_str("ai_provider_id")?.to_owned();
    let configurations =
        configurations_of(&b, ctl.settings.upstream_private_hosts)?.unwrap_or_default();
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let (integration, providers) = {
        let state = ctl.ledger.state();
        let workspace_id = match b.str("workspace_id")? {
            Some(w) => Some(caller.workspace_for(&state, Some(w))?),
            None => caller.key.workspace_id.clone(),
        };
        caller.require(if workspace_id.is_some() {
            "workspace_integrations.create"
        } else {
            "organisation_integrations.create"
        })?;
        check_metering(caller, &Map::new(), &configurations)?;
        let slug = match b.str("slug")? {
            Some(s) => {
                check_new_slug(s, state.integrations.contains_key(s))?;
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
            credential_set_by: caller.authority(),
            created_at: now,
            updated_at: now,
        };
        if let Some(k) = b.str("key")?.filter(|k| !k.is_empty()) {
            i.key = Some(ctl.sealer.seal(k, seal_scope(&i), &id));
        }
        let with_provider = b.bool("create_default_provider")?.unwrap_or(true);
        let providers = match &workspace_id {
            Some(ws) if with_provider => {
                default_provider(&state, &i, ws, b.str("default_provider_slug")?, now)?
                    .into_iter()
                    .collect()
            }
            Some(_) => Vec::new(),
            None => grant_all_existing(&state, &mut i, &BTreeSet::new(), with_provider, now)?,
        };
        (i, providers)
    };
    let (id, slug) = (integration.id.clone(), integration.slug.clone());
    let mut changes = vec![Change::Upsert(Entity::Integration(integration))];
    changes.extend(
        providers
            .into_iter()
            .map(|p| Change::Upsert(Entity::Provider(p))),
    );
    command.commit(Some(caller.actor()), changes).await?;
    Ok(json!({"id": id, "slug": slug, "object": "integration"}))
}

pub fn list(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    let page = Page::from_query(q, 100)?;
    let state = ctl.ledger.state();
    let ws = caller.workspace_filter(&state, q.get("workspace_id").map(String::as_str))?;
    let kind = q.get("type").map(String::as_str).unwrap_or("all");
    let families = [
        "organisation_integrations.list",
        "workspace_integrations.list",
    ];
    if !families.iter().any(|f| caller.key.has_scope(f)) {
        return Err(ControlError::Forbidden(
            "this API key lacks the organisation_integrations.list or workspace_integrations.list scope".into(),
        ));
    }
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
        .filter(|i| caller.key.has_scope(&read_scope(caller, i, "list")))
        .collect();
    items.sort_by_key(|i| (i.created_at, i.id.clone()));
    Ok(page.list(
        items
            .into_iter()
            .map(|i| views::integration(i, &state, false))
            .collect(),
    ))
}

pub fn retrieve(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    let state = ctl.ledger.state();
    let i = find(&state, caller, slug)?;
    caller.require(&read_scope(caller, &i, "read"))?;
    Ok(match &caller.key.workspace_id {
        Some(ws) => views::integration_for_workspace(&i, &state, ws),
        None => views::integration(&i, &state, true),
    })
}

pub async fn update(ctl: &Control, caller: &Caller, slug: &str, body: &Value) -> Result<Value> {
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let mut i = find(&ctl.ledger.state(), caller, slug)?;
    require_write(caller, &i, "update")?;
    if let Some(n) = b.str("name")? {
        i.name = n.to_owned();
    }
    if let Some(d) = b.str("description")? {
        i.description = Some(d.to_owned());
    }
    let new_key = b.str("key")?.filter(|k| !k.is_empty());
    if let Some(c) = configurations_of(&b, ctl.settings.upstream_private_hosts)? {
        check_reconfigure(caller, &i, &c, new_key.is_some())?;
        check_metering(caller, &i.configurations, &c)?;
        let before = i.configurations.clone();
        i.configurations.extend(c);
        if i.configurations != before {
            i.credential_set_by = caller.authority();
        }
    }
    if let Some(k) = new_key {
        i.key = Some(ctl.sealer.seal(k, seal_scope(&i), &i.id));
        i.credential_set_by = caller.authority();
    }
    i.updated_at = Millis::now();
    command
        .commit(
            Some(caller.actor()),
            vec![Change::Upsert(Entity::Integration(i))],
        )
        .await?;
    Ok(json!({}))
}

/// Refuses a workspace key's change of `meter_unpriced_at_zero` (from `current` by `c`): it
/// decides whether unpriced models count against cost budgets, which the organisation may have
/// set on the workspace, so it is the organisation's to set.
fn check_metering(
    caller: &Caller,
    current: &Map<String, Value>,
    c: &Map<String, Value>,
) -> Result<()> {
    let flag = crate::domain::pricing::METER_UNPRICED_AT_ZERO;
    let was = current.get(flag).and_then(Value::as_bool).unwrap_or(false);
    match c.get(flag).and_then(Value::as_bool) {
        Some(now) if now != was => caller.require_organisation(&format!(
            "setting configurations.{flag} (what cost budgets count)"
        )),
        _ => Ok(()),
    }
}

/// What of an integration's model provisioning decides what is metered and at what price (the
/// allow-list and every entry without its timestamps): changed with an organisation key only
/// ([`require_pricing_authority`]).
fn metered_models(i: &Integration) -> impl PartialEq {
    let entries: Vec<_> = i
        .models
        .values()
        .map(|m| {
            (
                m.slug.clone(),
                m.enabled,
                m.is_custom,
                m.is_finetune,
                m.base_model_slug.clone(),
                m.pricing_config.clone(),
            )
        })
        .collect();
    (i.allow_all_models, entries)
}

/// Refuses a workspace key's change of the allow-list or pricing (`before` → `after`): zero
/// prices, a cheaper base model or a lifted allow-list would stop organisation-set cost budgets
/// counting. Simplest and safe: these are the organisation's, on every integration.
fn require_pricing_authority(
    caller: &Caller,
    before: &Integration,
    after: &Integration,
) -> Result<()> {
    if metered_models(before) == metered_models(after) {
        return Ok(());
    }
    caller.require_organisation("changing an integration's allowed models or pricing")
}

/// Refuses a workspace key's change of `configurations` (to `c`) that could send a stored
/// credential elsewhere unless it gives the key in the same update (`with_key`): any change of
/// custom_host, and any change at all to a credential the organisation entered (the Azure URL
/// is built from resource_name and deployment_name, for instance).
fn check_reconfigure(
    caller: &Caller,
    i: &Integration,
    c: &Map<String, Value>,
    with_key: bool,
) -> Result<()> {
    if with_key || caller.authority() == Authority::Organisation {
        return Ok(());
    }
    let changed = |k: &str| c.get(k).is_some_and(|v| i.configurations.get(k) != Some(v));
    if changed("custom_host") {
        return Err(ControlError::Forbidden(
            "a workspace key that changes custom_host must give the integration's key in the same update: a stored credential never goes to a host it was not set for".into(),
        ));
    }
    let org_credential = i.key.is_some() && i.credential_set_by == Authority::Organisation;
    if org_credential && c.keys().any(|k| changed(k)) {
        return Err(ControlError::Forbidden(
            "this integration's key was entered with an organisation key: a workspace key that changes its configurations must give the key in the same update".into(),
        ));
    }
    Ok(())
}

pub async fn delete(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    let command = ctl.ledger.command().await;
    let changes = {
        let state = ctl.ledger.state();
        let i = find(&state, caller, slug)?;
        require_write(caller, &i, "delete")?;
        let providers: Vec<&std::sync::Arc<Provider>> = state
            .providers
            .values()
            .filter(|p| p.integration_id == i.id)
            .collect();
        // Its providers go with it, and their limits: the same authority as deleting each.
        for p in &providers {
            super::providers::check_removable(caller, p)?;
        }
        let mut changes: Vec<Change> = providers
            .iter()
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
    command.commit(Some(caller.actor()), changes).await?;
    Ok(json!({}))
}

/// `PUT /integrations/{slug}/workspaces`: grant or revoke workspaces, with their limits.
pub async fn update_workspaces(
    ctl: &Control,
    caller: &Caller,
    slug: &str,
    body: &Value,
) -> Result<Value> {
    caller.require("organisation_integrations.update")?;
    caller.require_organisation("changing an integration's workspace provisioning")?;
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let changes = {
        let state = ctl.ledger.state();
        let mut i = find(&state, caller, slug)?;
        if i.workspace_id.is_some() {
            return Err(invalid(
                "a workspace-scoped integration cannot be provisioned to other workspaces",
            ));
        }
        let create_default = b.bool("create_default_provider")?.unwrap_or(true);
        let mut providers = Vec::new();
        let mut explicit = BTreeSet::new();
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
            explicit.insert(ws.id.clone());
            let prev = i.workspaces.get(&ws.id).cloned();
            let mut usage_limits = prev.as_ref().and_then(|p| p.usage_limits.clone());
            let reset = w.bool("reset_usage")?.unwrap_or(false);
            update_budget(&mut usage_limits, w.0.get("usage_limits"), reset, now)
                .map_err(|e| invalid(format!("workspaces[{n}]: {e}")))?;
            let mut rate_limits = prev
                .as_ref()
                .map(|p| p.rate_limits.clone())
                .unwrap_or_default();
            update_rate_limits(&mut rate_limits, w.get("rate_limits"), LimitOwner::Other)
                .map_err(|e| invalid(format!("workspaces[{n}]: {e}")))?;
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
        let global = global_access_of(b.get("global_workspace_access"), now)?;
        let all_on = global.as_ref().is_some_and(|g| g["enabled"] == true);
        if let Some(g) = global {
            i.global_workspace_access = Some(g);
        }
        if all_on {
            providers.extend(grant_all_existing(
                &state,
                &mut i,
                &explicit,
                create_default,
                now,
            )?);
        }
        let override_flag = match b.bool("override_existing_workspaces_access")? {
            Some(f) => Some(f),
            None => b.bool("override_existing_workspace_access")?,
        };
        if override_flag == Some(true) {
            override_existing(&mut i, &explicit, now)?;
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
    command.commit(Some(caller.actor()), changes).await?;
    Ok(json!({}))
}

pub fn list_workspaces(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    let state = ctl.ledger.state();
    let i = find(&state, caller, slug)?;
    caller.require(&read_scope(caller, &i, "read"))?;
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
    ctl: &Control,
    caller: &Caller,
    slug: &str,
    body: &Value,
) -> Result<Value> {
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let mut i = find(&ctl.ledger.state(), caller, slug)?;
    require_write(caller, &i, "update")?;
    let before = i.clone();
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
            if let Err(why) = Price::parse_pricing_config(p) {
                return Err(invalid(format!("models[{n}].pricing_config: {why}")));
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
    require_pricing_authority(caller, &before, &i)?;
    i.updated_at = now;
    command
        .commit(
            Some(caller.actor()),
            vec![Change::Upsert(Entity::Integration(i))],
        )
        .await?;
    Ok(json!({}))
}

pub fn list_models(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    let state = ctl.ledger.state();
    let i = find(&state, caller, slug)?;
    caller.require(&read_scope(caller, &i, "read"))?;
    let models: Vec<Value> = i.models.values().map(views::model_entry).collect();
    Ok(
        json!({"object": "list", "total": models.len(), "allow_all_models": i.allow_all_models, "models": models, "data": []}),
    )
}

pub async fn delete_models(
    ctl: &Control,
    caller: &Caller,
    slug: &str,
    slugs: &str,
) -> Result<Value> {
    let command = ctl.ledger.command().await;
    let mut i = find(&ctl.ledger.state(), caller, slug)?;
    require_write(caller, &i, "update")?;
    let before = i.clone();
    for s in slugs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        i.models.remove(s);
    }
    require_pricing_authority(caller, &before, &i)?;
    i.updated_at = Millis::now();
    command
        .commit(
            Some(caller.actor()),
            vec![Change::Upsert(Entity::Integration(i))],
        )
        .await?;
    Ok(json!({}))
}
