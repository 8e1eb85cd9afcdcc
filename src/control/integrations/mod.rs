//! Integrations (shared provider credentials): create, read, update and delete. What an
//! integration's `configurations` may hold is in `configurations.rs`, its workspace provisioning
//! in `provisioning.rs`, its model provisioning and pricing in `models.rs`.

mod configurations;
mod models;
mod provisioning;

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::*;
use crate::domain::*;

use crate::crypto::seal_scope;

pub use configurations::{check_azure_names, check_custom_host};
use configurations::{
    check_metering, check_provider, check_reconfigure, configurations_of, seal_secrets,
    take_secrets,
};
pub use models::{delete_models, list_models, update_models};
use provisioning::{default_provider, global_access_of, grant_all_existing};
pub use provisioning::{list_workspaces, provision_new_workspace, update_workspaces};

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

/// Integration `slug`, if the caller may read it.
fn find_to_read(state: &State, caller: &Caller, slug: &str) -> Result<Integration> {
    let i = find(state, caller, slug)?;
    caller.require(&read_scope(caller, &i, "read"))?;
    Ok(i)
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

/// `POST /integrations`: a workspace or organisation integration, with its default providers.
pub async fn create(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let ai_provider_id = b.required_str("ai_provider_id")?.to_owned();
    let mut configurations =
        configurations_of(&b, ctl.settings.upstream_private_hosts)?.unwrap_or_default();
    let secrets = take_secrets(&mut configurations)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let (integration, providers) = {
        let state = ctl.ledger.state();
        let workspace_id = caller.named_workspace(&state, b.str("workspace_id")?)?;
        caller.require(if workspace_id.is_some() {
            "workspace_integrations.create"
        } else {
            "organisation_integrations.create"
        })?;
        check_metering(caller, &Map::new(), &configurations)?;
        let id = new_id();
        let mut i = Integration {
            id: id.clone(),
            slug: new_slug(&state, &b, &name)?,
            name,
            description: b.str("description")?.map(str::to_owned),
            ai_provider_id,
            workspace_id,
            key: None,
            secrets: Default::default(),
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
        seal_secrets(ctl, &mut i, secrets);
        check_provider(&i, true)?;
        let providers = initial_providers(&state, &b, &mut i, now)?;
        (i, providers)
    };
    let (id, slug) = (integration.id.clone(), integration.slug.clone());
    commit(command, caller, with_providers(integration, providers)).await?;
    Ok(json!({"id": id, "slug": slug, "object": "integration"}))
}

/// The slug of a new integration: the request's, if free, or one made from `name`.
fn new_slug(state: &State, b: &Body, name: &str) -> Result<String> {
    match b.str("slug")? {
        Some(s) => {
            check_new_slug(s, state.integrations.contains_key(s))?;
            if state.integrations.values().any(|i| i.slug == s) {
                return Err(ControlError::Conflict(format!(
                    "integration slug {s} is taken"
                )));
            }
            Ok(s.to_owned())
        }
        None => Ok(make_slug("", name)),
    }
}

/// The providers a new integration comes with (unless `create_default_provider` is off): a
/// workspace integration's default provider, or, for an organisation integration with "All
/// Workspaces" on, every workspace's (granting them access).
fn initial_providers(
    state: &State,
    b: &Body,
    i: &mut Integration,
    now: Millis,
) -> Result<Vec<Provider>> {
    let with_provider = b.bool("create_default_provider")?.unwrap_or(true);
    match i.workspace_id.clone() {
        Some(ws) if with_provider => {
            let slug = b.str("default_provider_slug")?;
            Ok(default_provider(state, i, &ws, slug, now)?
                .into_iter()
                .collect())
        }
        Some(_) => Ok(Vec::new()),
        None => grant_all_existing(state, i, &BTreeSet::new(), with_provider, now),
    }
}

/// The changes that write `i` and the providers made for it.
fn with_providers(i: Integration, providers: Vec<Provider>) -> Vec<Change> {
    let mut changes = vec![Change::Upsert(Entity::Integration(i))];
    changes.extend(
        providers
            .into_iter()
            .map(|p| Change::Upsert(Entity::Provider(p))),
    );
    changes
}

/// `GET /integrations`: the integrations the caller sees and may list, in creation order.
pub fn list(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    let page = Page::from_query(q, 100)?;
    let state = ctl.ledger.state();
    let ws = caller.listed_workspace(&state, q)?;
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
        .filter(|i| page.matches(&[&i.name, &i.slug, &i.ai_provider_id]))
        .collect();
    items.sort_by_key(|i| (i.created_at, i.id.clone()));
    Ok(page.render(items, |i| views::integration(i, &state, false)))
}

/// `GET /integrations/{slug}`: a workspace key gets its workspace's view.
pub fn retrieve(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    let state = ctl.ledger.state();
    let i = find_to_read(&state, caller, slug)?;
    Ok(match &caller.key.workspace_id {
        Some(ws) => views::integration_for_workspace(&i, &state, ws),
        None => views::integration(&i, &state, true),
    })
}

/// `PUT /integrations/{slug}`: names, `configurations` and the key.
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
    let mut secrets = Vec::new();
    if let Some(mut c) = configurations_of(&b, ctl.settings.upstream_private_hosts)? {
        secrets = take_secrets(&mut c)?;
        check_reconfigure(caller, &i, &c, new_key.is_some() || !secrets.is_empty())?;
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
    if !secrets.is_empty() {
        seal_secrets(ctl, &mut i, secrets);
        i.credential_set_by = caller.authority();
    }
    check_provider(&i, false)?;
    i.updated_at = Millis::now();
    upsert(command, caller, Entity::Integration(i)).await?;
    Ok(json!({}))
}

/// `DELETE /integrations/{slug}`, with its providers.
pub async fn delete(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    execute(ctl, caller, |state| {
        let i = find(state, caller, slug)?;
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
        Ok(changes)
    })
    .await
}
