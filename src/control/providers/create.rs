//! Creating providers: a catalog provider on an integration the workspace has been given, or a
//! virtual key (its credential on an implicit integration, and its provider, in one step).

use serde_json::{json, Value};

use super::*;
use crate::domain::limits::parse_rate_limits;

fn unique_slug(state: &State, b: &Body, workspace_id: &str, name: &str) -> Result<String> {
    match b.str("slug")? {
        Some(s) => {
            check_new_slug(s, state.providers.contains_key(s))?;
            if state.provider(s, Some(workspace_id)).is_some() {
                return Err(ControlError::Conflict(format!(
                    "provider slug {s} is taken in that workspace"
                )));
            }
            Ok(s.to_owned())
        }
        None => Ok(make_slug("", name)),
    }
}

struct Limits {
    usage: Option<UsageLimit>,
    rate: Vec<RateLimit>,
    expires_at: Option<Millis>,
}

fn limits_of(b: &Body) -> Result<Limits> {
    Ok(Limits {
        usage: new_budget(b.get("usage_limits"), Millis::now())?,
        rate: parse_rate_limits(
            b.get("rate_limits").unwrap_or(&Value::Null),
            LimitOwner::Other,
        )
        .map_err(invalid)?,
        expires_at: b.timestamp("expires_at")?.flatten(),
    })
}

/// Refuses a workspace key a new provider on an integration where one of its workspace's
/// providers carries limits the organisation set: the new one would reach the same credential
/// without them. (An organisation key may; it sets limits on the new one as it sees fit.)
fn check_no_org_limited_sibling(
    state: &State,
    caller: &Caller,
    integration_id: &str,
    workspace_id: &str,
) -> Result<()> {
    if caller.authority() == Authority::Organisation {
        return Ok(());
    }
    let limited = state.providers.values().find(|p| {
        p.integration_id == integration_id && p.workspace_id == workspace_id && org_limited(p)
    });
    match limited {
        Some(p) => Err(ControlError::Forbidden(format!(
            "provider {} on this integration has limits set by the organisation: another provider on it needs an organisation key",
            p.slug
        ))),
        None => Ok(()),
    }
}

/// `POST /providers`: a workspace's handle on an integration it has been given.
pub async fn create(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("providers.create")?;
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let integration_ref = b.required_str("integration_id")?;
    let limits = limits_of(&b)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let p = {
        let state = ctl.ledger.state();
        let workspace_id = caller.workspace_for(&state, b.str("workspace_id")?)?;
        let i = state
            .integration(integration_ref)
            .filter(|i| !i.implicit)
            .ok_or_else(|| invalid(format!("integration {integration_ref} not found")))?;
        if !i.serves_workspace(&workspace_id) {
            return Err(ControlError::Forbidden(format!(
                "integration {} is not provisioned to this workspace",
                i.slug
            )));
        }
        check_no_org_limited_sibling(&state, caller, &i.id, &workspace_id)?;
        Provider {
            id: new_id(),
            slug: unique_slug(&state, &b, &workspace_id, &name)?,
            name,
            note: b.str("note")?.map(str::to_owned),
            integration_id: i.id.clone(),
            workspace_id,
            origin: ProviderOrigin::Catalog,
            usage_limits: limits.usage,
            rate_limits: limits.rate,
            limits_set_by: caller.authority(),
            expires_at: limits.expires_at,
            created_at: now,
            updated_at: now,
        }
    };
    let out = json!({"id": p.id, "slug": p.slug, "object": "provider"});
    command
        .commit(
            Some(caller.actor()),
            vec![Change::Upsert(Entity::Provider(p))],
        )
        .await?;
    Ok(out)
}

/// `POST /virtual-keys`: a credential and its provider in one step.
pub async fn create_virtual_key(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("virtual_keys.create")?;
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let ai_provider = b.required_str("provider")?.to_owned();
    let key = b.required_str("key")?;
    let limits = limits_of(&b)?;
    let mut configurations = Map::new();
    for (from, to) in [
        ("custom_host", "custom_host"),
        ("apiVersion", "api_version"),
        ("resourceName", "resource_name"),
        ("deploymentName", "deployment_name"),
    ] {
        if let Some(v) = b.str(from)? {
            configurations.insert(to.into(), Value::String(v.to_owned()));
        }
    }
    if let Some(h) = configurations.get("custom_host") {
        let url = crate::domain::routing::parse_url(h, "custom_host").map_err(invalid)?;
        let hosts = ctl.settings.upstream_private_hosts;
        crate::domain::routing::check_private_host(&url, hosts, "custom_host").map_err(invalid)?;
        configurations.insert("custom_host".into(), Value::String(url));
    }
    super::integrations::check_azure_names(&configurations)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let (integration, provider) = {
        let state = ctl.ledger.state();
        let workspace_id = caller.workspace_for(&state, b.str("workspace_id")?)?;
        let slug = unique_slug(&state, &b, &workspace_id, &name)?;
        let mut i = Integration {
            id: new_id(),
            slug: format!("vk-{slug}"),
            name: name.clone(),
            description: None,
            ai_provider_id: ai_provider,
            workspace_id: Some(workspace_id.clone()),
            key: None,
            configurations,
            allow_all_models: true,
            models: Default::default(),
            workspaces: Default::default(),
            global_workspace_access: None,
            implicit: true,
            credential_set_by: caller.authority(),
            created_at: now,
            updated_at: now,
        };
        i.key = Some(ctl.sealer.seal(key, seal_scope(&i), &i.id));
        let p = Provider {
            id: new_id(),
            slug,
            name,
            note: b.str("note")?.map(str::to_owned),
            integration_id: i.id.clone(),
            workspace_id,
            origin: ProviderOrigin::VirtualKey,
            usage_limits: limits.usage,
            rate_limits: limits.rate,
            limits_set_by: caller.authority(),
            expires_at: limits.expires_at,
            created_at: now,
            updated_at: now,
        };
        (i, p)
    };
    let out = json!({"id": provider.id, "slug": provider.slug, "object": "virtual-key", "success": true, "data": {"slug": provider.slug}});
    command
        .commit(
            Some(caller.actor()),
            vec![
                Change::Upsert(Entity::Integration(integration)),
                Change::Upsert(Entity::Provider(provider)),
            ],
        )
        .await?;
    Ok(out)
}
