//! First start: the organisation, its default workspace and the bootstrap admin key (from
//! `admin_key`, or generated and shown once). Fixed ids, so replicas starting at once agree.

use super::{Ledger, LedgerError};
use crate::crypto;
use crate::domain::scopes::{ADMIN_SCOPES, AUDIT_LOGS_LIST};
use crate::domain::*;

/// The id of the bootstrap admin key record.
const BOOTSTRAP_KEY_ID: &str = "admin-bootstrap";

impl Ledger {
    /// Makes sure the organisation, its default workspace and the admin key exist. Returns the
    /// admin key when one was generated (no `admin_key` given and none stored yet).
    pub async fn bootstrap(&self, admin_key: Option<&str>) -> Result<Option<String>, LedgerError> {
        let command = self.command().await;
        let now = Millis::now();
        let (has_org, has_default_ws, stored_key) = {
            let s = command.state();
            (
                s.organisation.is_some(),
                s.workspace(DEFAULT_WORKSPACE_SLUG).is_some(),
                s.api_keys.get(BOOTSTRAP_KEY_ID).cloned(),
            )
        };
        let mut changes = Vec::new();
        if !has_org {
            changes.push(organisation(now));
        }
        if !has_default_ws {
            changes.push(default_workspace(now));
        }
        let (key, generated) = wanted_key(stored_key.as_deref(), admin_key);
        match key {
            Some((key_hash, masked)) => {
                let created_at = stored_key.as_ref().map_or(now, |k| k.created_at);
                changes.push(admin_api_key(key_hash, masked, created_at, now));
            }
            None => changes.extend(stored_key.as_ref().and_then(|k| with_audit_scope(k, now))),
        }
        command.commit(None, changes).await?;
        Ok(generated)
    }
}

// Ids of bootstrap entities are fixed, so replicas starting at once create one each.

fn organisation(now: Millis) -> Change {
    Change::Upsert(Entity::Organisation(Organisation {
        id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"tollgate:organisation").to_string(),
        name: "default".into(),
        created_at: now,
    }))
}

fn default_workspace(now: Millis) -> Change {
    Change::Upsert(Entity::Workspace(Workspace {
        id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"tollgate:ws-default").to_string(),
        slug: DEFAULT_WORKSPACE_SLUG.into(),
        name: "Default".into(),
        description: Some("The organisation's default workspace".into()),
        defaults: Default::default(),
        usage_limits: None,
        rate_limits: vec![],
        created_at: now,
        updated_at: now,
    }))
}

/// The admin key's hash and mask to store, if the stored one is missing or differs from
/// `admin_key`; and the secret when one is generated (no key given, none stored).
fn wanted_key(
    stored: Option<&ApiKey>,
    admin_key: Option<&str>,
) -> (Option<(String, String)>, Option<String>) {
    match (stored, admin_key.map(crypto::hash_api_key)) {
        (Some(k), Some(h)) if crypto::hashes_equal(&k.key_hash, &h) => (None, None),
        (Some(_), None) => (None, None),
        (_, Some(h)) => (
            Some((h, admin_key.map(crypto::mask).unwrap_or_default())),
            None,
        ),
        (None, None) => {
            let secret = crypto::new_api_key();
            let key = (crypto::hash_api_key(&secret), crypto::mask(&secret));
            (Some(key), Some(secret))
        }
    }
}

fn admin_api_key(key_hash: String, masked: String, created_at: Millis, now: Millis) -> Change {
    Change::Upsert(Entity::ApiKey(ApiKey {
        id: BOOTSTRAP_KEY_ID.into(),
        key_hash,
        masked,
        name: "Bootstrap admin key".into(),
        description: Some("Created at first start (TOLLGATE_ADMIN_KEY)".into()),
        kind: ApiKeyType::OrganisationService,
        workspace_id: None,
        user_id: None,
        scopes: ADMIN_SCOPES.iter().map(|s| s.to_string()).collect(),
        defaults: Default::default(),
        usage_limits: None,
        rate_limits: vec![],
        limits_set_by: Authority::Organisation,
        alert_emails: vec![],
        rotation_policy: None,
        expires_at: None,
        creation_mode: "auto".into(),
        created_by: None,
        ancestors: Vec::new(),
        created_at,
        updated_at: now,
    }))
}

/// A bootstrap key from before the audit trail still holding every other admin scope gets
/// `audit_logs.list` too; a key narrowed on purpose is left as it is.
fn with_audit_scope(k: &ApiKey, now: Millis) -> Option<Change> {
    let scope = AUDIT_LOGS_LIST;
    let holds = |s: &str| k.scopes.iter().any(|h| h == s);
    let others = ADMIN_SCOPES.iter().filter(|s| **s != scope);
    if holds(scope) || !others.into_iter().all(|s| holds(s)) {
        return None;
    }
    let mut k = k.clone();
    k.scopes.push(scope.to_owned());
    k.updated_at = now;
    Some(Change::Upsert(Entity::ApiKey(k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bootstrap key as first stored, renamed by the admin and holding `scopes`.
    fn key(scopes: &[&str]) -> ApiKey {
        let Change::Upsert(Entity::ApiKey(mut k)) =
            admin_api_key("h".into(), "m".into(), Millis(1), Millis(1))
        else {
            unreachable!("admin_api_key upserts a key")
        };
        k.name = "renamed by the admin".into();
        k.description = None;
        k.scopes = scopes.iter().map(|s| s.to_string()).collect();
        k
    }

    #[test]
    fn an_older_full_bootstrap_key_gets_the_audit_scope_and_keeps_the_rest() {
        let older: Vec<&str> = ADMIN_SCOPES
            .iter()
            .copied()
            .filter(|s| *s != AUDIT_LOGS_LIST)
            .collect();
        let Some(Change::Upsert(Entity::ApiKey(k))) = with_audit_scope(&key(&older), Millis(9))
        else {
            panic!("the scope is added");
        };
        assert!(k.has_scope(AUDIT_LOGS_LIST));
        assert_eq!(k.name, "renamed by the admin");
        assert_eq!(k.scopes.len(), ADMIN_SCOPES.len());
        assert!(with_audit_scope(&key(ADMIN_SCOPES), Millis(9)).is_none());
        assert!(
            with_audit_scope(&key(&older[1..]), Millis(9)).is_none(),
            "a narrowed key is left as it is"
        );
    }
}
