//! Creating providers: a catalog provider on an integration the workspace has been given, or a
//! virtual key (its credential on an implicit integration, and its provider, in one step).

use serde_json::{json, Value};

use super::*;

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
        rate: new_rate_limits(b.get("rate_limits"), LimitOwner::Other)?,
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

/// Where a new provider goes, and what it is called.
struct Placement {
    slug: String,
    name: String,
    integration_id: String,
    workspace_id: String,
}

/// A new provider of `origin` at `at`, with the request's `note` and `limits`, set by the caller.
fn new_provider(
    caller: &Caller,
    b: &Body,
    at: Placement,
    origin: ProviderOrigin,
    limits: Limits,
    now: Millis,
) -> Result<Provider> {
    Ok(Provider {
        id: new_id(),
        slug: at.slug,
        name: at.name,
        note: b.str("note")?.map(str::to_owned),
        integration_id: at.integration_id,
        workspace_id: at.workspace_id,
        origin,
        usage_limits: limits.usage,
        rate_limits: limits.rate,
        limits_set_by: caller.authority(),
        expires_at: limits.expires_at,
        created_at: now,
        updated_at: now,
    })
}

/// `POST /providers`: a workspace's handle on an integration it has been given.
pub(super) async fn provider(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
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
        let at = Placement {
            slug: unique_slug(&state, &b, &workspace_id, &name)?,
            name,
            integration_id: i.id.clone(),
            workspace_id,
        };
        new_provider(caller, &b, at, ProviderOrigin::Catalog, limits, now)?
    };
    let out = json!({"id": p.id, "slug": p.slug, "object": "provider"});
    upsert(command, caller, Entity::Provider(p)).await?;
    Ok(out)
}

/// `POST /virtual-keys`: a credential and its provider in one step.
pub(super) async fn virtual_key(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("virtual_keys.create")?;
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let ai_provider = b.required_str("provider")?.to_owned();
    check_virtual_key_provider(&ai_provider)?;
    let key = b.required_str("key")?;
    let limits = limits_of(&b)?;
    let configurations = virtual_key_configurations(ctl, &b)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let (integration, provider) = {
        let state = ctl.ledger.state();
        let workspace_id = caller.workspace_for(&state, b.str("workspace_id")?)?;
        let at = Placement {
            slug: unique_slug(&state, &b, &workspace_id, &name)?,
            name,
            integration_id: new_id(),
            workspace_id,
        };
        let p = new_provider(caller, &b, at, ProviderOrigin::VirtualKey, limits, now)?;
        let i = implicit_integration(ctl, caller, &p, ai_provider, configurations, key);
        (i, p)
    };
    let out = json!({"id": provider.id, "slug": provider.slug, "object": "virtual-key", "success": true, "data": {"slug": provider.slug}});
    commit(
        command,
        caller,
        vec![
            Change::Upsert(Entity::Integration(integration)),
            Change::Upsert(Entity::Provider(provider)),
        ],
    )
    .await?;
    Ok(out)
}

/// A virtual key carries one key, so only providers whose credential is a key can have one
/// (Bedrock and Vertex take their credentials in an integration's `configurations`).
fn check_virtual_key_provider(ai_provider: &str) -> Result<()> {
    use crate::domain::catalog::{kind, KeyUse};
    match kind(ai_provider) {
        None => Err(invalid(format!(
            "unknown provider {ai_provider:?}; GET /v1/ai-providers lists the supported ones"
        ))),
        Some(k) if k.key == KeyUse::Unused => Err(invalid(format!(
            "a {} credential is not a single key: create an integration with its configurations instead of a virtual key",
            k.name
        ))),
        Some(_) => Ok(()),
    }
}

/// A virtual key's `configurations`, from the request's top-level fields (checked as an
/// integration's are: the host a credential goes to, Azure names).
fn virtual_key_configurations(ctl: &Control, b: &Body) -> Result<Map<String, Value>> {
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
    let hosts = ctl.settings.upstream_private_hosts;
    super::integrations::check_custom_host(&mut configurations, hosts, "custom_host")?;
    super::integrations::check_azure_names(&configurations)?;
    Ok(configurations)
}

/// The implicit, workspace-scoped integration holding virtual key `p`'s credential, sealed.
fn implicit_integration(
    ctl: &Control,
    caller: &Caller,
    p: &Provider,
    ai_provider_id: String,
    configurations: Map<String, Value>,
    key: &str,
) -> Integration {
    let mut i = Integration {
        id: p.integration_id.clone(),
        slug: format!("vk-{}", p.slug),
        name: p.name.clone(),
        description: None,
        ai_provider_id,
        workspace_id: Some(p.workspace_id.clone()),
        key: None,
        secrets: Default::default(),
        configurations,
        allow_all_models: true,
        models: Default::default(),
        workspaces: Default::default(),
        global_workspace_access: None,
        implicit: true,
        credential_set_by: caller.authority(),
        created_at: p.created_at,
        updated_at: p.created_at,
    };
    i.key = Some(ctl.sealer.seal(key, seal_scope(&i), &i.id));
    i
}
