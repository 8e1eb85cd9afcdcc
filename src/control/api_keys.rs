//! API keys: organisation service keys (control plane) and workspace service / user keys
//! (data plane with `completions.write`). The secret is returned once, on create.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::crypto;
use crate::domain::limits::LimitOwner;
use crate::domain::scopes::{known, scope_valid_for, DATA_PLANE_SCOPES};
use crate::domain::*;

/// Checks that `caller` may give a key of `kind` exactly `scopes`, the key holding `current`
/// now. A key grants only scopes it holds (keeping ones the key already has is no grant); an
/// organisation key also grants data-plane scopes and scopes Tollgate does not enforce (stored
/// verbatim). Then every scope must be valid for the key's type.
fn check_grant(
    caller: &Caller,
    kind: ApiKeyType,
    scopes: &[String],
    current: &[String],
) -> Result<()> {
    let org = caller.authority() == Authority::Organisation;
    let grantable = |s: &str| {
        current.iter().any(|c| c == s)
            || caller.key.has_scope(s)
            || (org && (DATA_PLANE_SCOPES.contains(&s) || !known(s)))
    };
    if let Some(s) = scopes.iter().find(|s| !grantable(s)) {
        return Err(ControlError::Forbidden(format!(
            "this API key cannot grant the {s} scope: a key grants only scopes it holds itself"
        )));
    }
    match scopes.iter().find(|s| !scope_valid_for(kind, s)) {
        Some(s) => Err(invalid(format!(
            "scope {s} is not valid on {} keys",
            kind.as_str()
        ))),
        None => Ok(()),
    }
}

/// The scope family that manages keys of this type.
/// The scope family of a key type: `<family>.list`, `.read`, ... govern keys of that type.
pub fn family(kind: ApiKeyType) -> &'static str {
    match kind {
        ApiKeyType::OrganisationService => "organisation_service_api_keys",
        ApiKeyType::WorkspaceService => "workspace_service_api_keys",
        ApiKeyType::WorkspaceUser => "workspace_user_api_keys",
    }
}

fn emails_of(b: &Body) -> Result<Option<Vec<String>>> {
    let Some(list) = b.string_list("alert_emails")? else {
        return Ok(None);
    };
    for e in &list {
        let ok = e.split_once('@').is_some_and(|(u, d)| {
            !u.is_empty() && d.contains('.') && !e.contains(char::is_whitespace)
        });
        if !ok {
            return Err(invalid(format!(
                "alert_emails: {e:?} is not an email address"
            )));
        }
    }
    Ok(Some(list))
}

fn defaults_of(
    state: &State,
    workspace_id: Option<&str>,
    b: &Body,
) -> Result<Option<Map<String, Value>>> {
    let Some(d) = b.object("defaults")? else {
        return Ok(None);
    };
    if let Some(cfg) = d.get("config_id").filter(|v| !v.is_null()) {
        let slug = cfg
            .as_str()
            .ok_or_else(|| invalid("defaults.config_id must be a string"))?;
        let found = state
            .config(slug)
            .is_some_and(|c| workspace_id.is_none_or(|w| c.workspace_id == w));
        if !found {
            return Err(invalid(format!(
                "defaults.config_id: config {slug} not found in the key's workspace"
            )));
        }
    }
    if let Some(m) = d.get("metadata").filter(|v| !v.is_null()) {
        if !m
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string))
        {
            return Err(invalid("defaults.metadata must be an object of strings"));
        }
    }
    Ok(Some(d.clone()))
}

/// `POST /api-keys/{kind}/{sub}`: a new key of that type; the answer holds its secret, once.
pub async fn create(
    ctl: &Control,
    caller: &Caller,
    kind: &str,
    sub: &str,
    body: &Value,
) -> Result<Value> {
    let kind = ApiKeyType::from_path(kind, sub)
        .ok_or_else(|| invalid(format!("{kind}/{sub} is not a key type (organisation/service, workspace/service, workspace/user)")))?;
    caller.require(&format!("{}.create", family(kind)))?;
    let b = Body::of(body)?;
    if !kind.is_workspace() {
        check_organisation_key(caller, &b)?;
    }
    let name = b.required_str("name")?.trim().to_owned();
    let scopes = b
        .string_list("scopes")?
        .ok_or_else(|| invalid("scopes is required"))?;
    check_grant(caller, kind, &scopes, &[])?;
    let user_id = user_of(kind, &b)?;
    let usage_limits = new_budget(b.get("usage_limits"), Millis::now())?;
    let rate_limits = new_rate_limits(b.get("rate_limits"), LimitOwner::ApiKey)?;
    let alert_emails = emails_of(&b)?.unwrap_or_default();
    let expires_at = b.timestamp("expires_at")?.flatten();
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let secret = crypto::new_api_key();
    let key = {
        let state = ctl.ledger.state();
        let workspace_id = new_key_workspace(&state, caller, kind, &b)?;
        check_depth(caller)?;
        ApiKey {
            id: new_id(),
            key_hash: crypto::hash_api_key(&secret),
            masked: crypto::mask(&secret),
            name,
            description: b.str("description")?.map(str::to_owned),
            kind,
            defaults: defaults_of(&state, workspace_id.as_deref(), &b)?.unwrap_or_default(),
            workspace_id,
            user_id,
            scopes,
            usage_limits,
            rate_limits,
            limits_set_by: caller.authority(),
            alert_emails,
            rotation_policy: b.get("rotation_policy").cloned(),
            expires_at,
            creation_mode: "api".into(),
            created_by: Some(caller.key.id.clone()),
            ancestors: state.chain_from(Some(&caller.key.id)),
            created_at: now,
            updated_at: now,
        }
    };
    let out = json!({"id": key.id, "key": secret, "object": "api-key"});
    upsert(command, caller, Entity::ApiKey(key)).await?;
    Ok(out)
}

/// A new key's `user_id`, which a workspace user key must have.
fn user_of(kind: ApiKeyType, b: &Body) -> Result<Option<String>> {
    let user_id = b.str("user_id")?.map(str::to_owned);
    if kind == ApiKeyType::WorkspaceUser && user_id.is_none() {
        return Err(invalid("user_id is required for workspace user keys"));
    }
    Ok(user_id)
}

/// An organisation key is created with an organisation key, and for no one workspace.
fn check_organisation_key(caller: &Caller, b: &Body) -> Result<()> {
    caller.require_organisation("creating an organisation key")?;
    if b.get("workspace_id").is_some() {
        return Err(invalid(
            "workspace_id is not accepted on an organisation key, which acts on every workspace; to bind a key to a workspace, create a workspace key with POST /v1/api-keys/workspace/service",
        ));
    }
    Ok(())
}

/// The workspace of a new key of `kind`: a workspace key's is named, or the caller's own.
fn new_key_workspace(
    state: &State,
    caller: &Caller,
    kind: ApiKeyType,
    b: &Body,
) -> Result<Option<String>> {
    if !kind.is_workspace() {
        return Ok(None);
    }
    let requested = b.str("workspace_id")?;
    if requested.is_none() && caller.key.workspace_id.is_none() {
        return Err(invalid(
            "workspace_id is required for workspace keys created with an organisation key",
        ));
    }
    caller.workspace_for(state, requested).map(Some)
}

/// Refuses a key [`MAX_KEY_DEPTH`] mints below the organisation's another mint.
fn check_depth(caller: &Caller) -> Result<()> {
    if caller.key.ancestors.len() >= MAX_KEY_DEPTH {
        return Err(ControlError::Forbidden(format!(
            "this key is {MAX_KEY_DEPTH} mints below the organisation's: it cannot mint further keys"
        )));
    }
    Ok(())
}

fn find(state: &State, caller: &Caller, id: &str, action: &str) -> Result<ApiKey> {
    let k = state
        .api_keys
        .get(id)
        .filter(|k| caller.sees(k.workspace_id.as_deref()))
        .map(|x| (**x).clone())
        .ok_or_else(|| ControlError::NotFound(format!("api key {id} not found")))?;
    caller.require(&format!("{}.{action}", family(k.kind)))?;
    Ok(k)
}

/// Refuses unless the caller holds `action` for some key type (list and get check the type's
/// own scope besides).
fn require_any(caller: &Caller, action: &str) -> Result<()> {
    let kinds = [
        ApiKeyType::OrganisationService,
        ApiKeyType::WorkspaceService,
        ApiKeyType::WorkspaceUser,
    ];
    match kinds
        .iter()
        .any(|k| caller.key.has_scope(&format!("{}.{action}", family(*k))))
    {
        true => Ok(()),
        false => Err(ControlError::Forbidden(format!(
            "this API key lacks a *_api_keys.{action} scope"
        ))),
    }
}

/// Whether `caller` may list key `k`: it sees its workspace and holds its type's list scope.
pub fn may_list(caller: &Caller, k: &ApiKey) -> bool {
    caller.sees(k.workspace_id.as_deref())
        && caller.key.has_scope(&format!("{}.list", family(k.kind)))
}

/// `GET /api-keys`: the keys the caller sees and may list, in creation order.
pub fn list(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    require_any(caller, "list")?;
    let page = Page::from_query(q, 100)?;
    let state = ctl.ledger.state();
    let ws = caller.listed_workspace(&state, q)?;
    let now = Millis::now();
    let mut items: Vec<&std::sync::Arc<ApiKey>> = state
        .api_keys
        .values()
        .filter(|k| may_list(caller, k))
        .filter(|k| match &ws {
            Some(w) => k.workspace_id.as_deref() == Some(w.as_str()),
            None => true,
        })
        .filter(|k| {
            page.matches(&[
                &k.name,
                &k.id,
                &k.masked,
                k.workspace_id.as_deref().unwrap_or(""),
            ])
        })
        .collect();
    items.sort_by_key(|k| (k.created_at, k.id.clone()));
    Ok(page.render(items, |k| views::api_key(k, &state, now)))
}

/// `GET /api-keys/{id}`.
pub fn retrieve(ctl: &Control, caller: &Caller, id: &str) -> Result<Value> {
    require_any(caller, "read")?;
    let state = ctl.ledger.state();
    let k = find(&state, caller, id, "read")?;
    Ok(views::api_key(&k, &state, Millis::now()))
}

/// What governs a key besides its scopes (its limits, the defaults governance reads, its
/// expiry, who is alerted): who may change it is decided by [`Caller::govern`].
fn governed(k: &ApiKey) -> impl PartialEq {
    (
        k.usage_limits.clone(),
        k.rate_limits.clone(),
        k.defaults.clone(),
        k.expires_at,
        k.alert_emails.clone(),
    )
}

/// Whether `key` is the key `target` or was minted by it (directly or down a chain): such a
/// key acts for `target`, so it may not lift `target`'s limits either.
fn acts_for(state: &State, key: &ApiKey, target: &str) -> bool {
    let mut at = Some(key.id.as_str());
    // The chain is finite in practice; the bound only guards against a cycle in stored data.
    for _ in 0..64 {
        match at {
            Some(id) if id == target => return true,
            Some(id) => at = state.api_keys.get(id).and_then(|k| k.created_by.as_deref()),
            None => return false,
        }
    }
    false
}

/// Refuses an update that names another workspace than the key's.
fn check_same_workspace(state: &State, b: &Body, k: &ApiKey) -> Result<()> {
    if let Some(w) = b.str("workspace_id")? {
        let same = state
            .workspace(w)
            .is_some_and(|w| k.workspace_id.as_deref() == Some(w.id.as_str()));
        if !same {
            return Err(invalid(
                "a key's workspace_id cannot change; create a new key in the other workspace",
            ));
        }
    }
    Ok(())
}

/// Applies an update's `name` (not empty) and `description`.
fn update_names(b: &Body, k: &mut ApiKey) -> Result<()> {
    if let Some(n) = b.nonempty_str("name")? {
        k.name = n;
    }
    if let Some(d) = b.str("description")? {
        k.description = Some(d.to_owned());
    }
    Ok(())
}

/// `PUT /api-keys/{id}`: names, scopes (only those the caller may grant), defaults, limits, alerts
/// and expiry (the governed ones with authority over the key).
pub async fn update(ctl: &Control, caller: &Caller, id: &str, body: &Value) -> Result<Value> {
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let k = {
        let state = ctl.ledger.state();
        let mut k = find(&state, caller, id, "update")?;
        let before = governed(&k);
        // Everything `governed` holds: alert emails the organisation set are its too.
        let had_limits = k.usage_limits.is_some()
            || !k.rate_limits.is_empty()
            || !k.defaults.is_empty()
            || k.expires_at.is_some()
            || !k.alert_emails.is_empty();
        check_same_workspace(&state, &b, &k)?;
        update_names(&b, &mut k)?;
        if let Some(s) = b.string_list("scopes")? {
            check_grant(caller, k.kind, &s, &k.scopes)?;
            k.scopes = s;
        }
        if let Some(d) = defaults_of(&state, k.workspace_id.as_deref(), &b)? {
            k.defaults = d;
        }
        update_limits(
            &b,
            &mut k.usage_limits,
            &mut k.rate_limits,
            LimitOwner::ApiKey,
        )?;
        if let Some(e) = emails_of(&b)? {
            k.alert_emails = e;
        }
        if let Some(r) = b.get("rotation_policy") {
            k.rotation_policy = Some(r.clone());
        }
        if let Some(e) = b.timestamp("expires_at")? {
            k.expires_at = e;
        }
        let own = acts_for(&state, &caller.key, &k.id);
        k.limits_set_by =
            caller.govern(own, k.limits_set_by, had_limits, &before, &governed(&k))?;
        k.updated_at = Millis::now();
        k
    };
    upsert(command, caller, Entity::ApiKey(k)).await?;
    Ok(json!({}))
}

/// `DELETE /api-keys/{id}`: never the caller's own key.
pub async fn delete(ctl: &Control, caller: &Caller, id: &str) -> Result<Value> {
    let command = ctl.ledger.command().await;
    let k = find(&ctl.ledger.state(), caller, id, "delete")?;
    if k.id == caller.key.id {
        return Err(ControlError::Forbidden("a key cannot delete itself".into()));
    }
    remove(command, caller, EntityKind::ApiKey, k.id).await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::scopes::ADMIN_SCOPES;
    use crate::domain::state::tests::api_key_fixture;

    fn caller(workspace: Option<&str>, scopes: &[&str]) -> Caller {
        let mut k = api_key_fixture(None);
        k.workspace_id = workspace.map(str::to_owned);
        k.scopes = scopes.iter().map(|s| s.to_string()).collect();
        Caller {
            key: std::sync::Arc::new(k),
        }
    }

    fn list(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scopes_per_key_type() {
        use ApiKeyType::*;
        assert!(!scope_valid_for(
            WorkspaceService,
            "organisation_integrations.update"
        ));
        assert!(!scope_valid_for(WorkspaceUser, "workspaces.create"));
        assert!(scope_valid_for(WorkspaceService, "completions.write"));
        assert!(!scope_valid_for(OrganisationService, "completions.write"));
        assert!(scope_valid_for(OrganisationService, "workspaces.delete"));
        assert!(scope_valid_for(WorkspaceService, "configs.update"));
    }

    #[test]
    fn a_key_grants_only_what_it_holds() {
        let ws = caller(
            Some("ws"),
            &["workspace_service_api_keys.create", "completions.write"],
        );
        let kind = ApiKeyType::WorkspaceService;
        assert!(check_grant(&ws, kind, &list(&["completions.write"]), &[]).is_ok());
        for s in [
            "organisation_integrations.update",
            "configs.read",
            "workspace_users.read",
        ] {
            let e = check_grant(&ws, kind, &list(&[s]), &[]).unwrap_err();
            assert!(matches!(e, ControlError::Forbidden(_)), "{s}: {e}");
        }
        // Keeping a scope the key already has is no grant.
        assert!(check_grant(
            &ws,
            kind,
            &list(&["configs.read"]),
            &list(&["configs.read"])
        )
        .is_ok());
        let org = caller(None, ADMIN_SCOPES);
        assert!(check_grant(
            &org,
            kind,
            &list(&["completions.write", "workspace_users.read"]),
            &[]
        )
        .is_ok());
        let e = check_grant(
            &org,
            kind,
            &list(&["organisation_integrations.update"]),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, ControlError::Invalid(_)), "{e}");
    }
}
