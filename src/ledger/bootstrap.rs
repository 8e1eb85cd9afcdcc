//! First start: the organisation, its default workspace and the bootstrap admin key (from
//! `admin_key`, or generated and shown once). Fixed ids, so replicas starting at once agree.

use super::{Ledger, LedgerError};
use crate::crypto;
use crate::domain::*;

/// The id of the bootstrap admin key record.
const BOOTSTRAP_KEY_ID: &str = "admin-bootstrap";

impl Ledger {
    /// Makes sure the organisation, its default workspace and the admin key exist.
    pub async fn bootstrap(&self, admin_key: Option<&str>) -> Result<Option<String>, LedgerError> {
        let command = self.command().await;
        let now = Millis::now();
        let mut changes = Vec::new();
        let (has_org, has_default_ws, bootstrap_key) = {
            let s = command.state();
            (
                s.organisation.is_some(),
                s.workspace(DEFAULT_WORKSPACE_SLUG).is_some(),
                s.api_keys.get(BOOTSTRAP_KEY_ID).cloned(),
            )
        };
        if !has_org {
            // Ids of bootstrap entities are fixed, so replicas starting at once create one each.
            changes.push(Change::Upsert(Entity::Organisation(Organisation {
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"tollgate:organisation")
                    .to_string(),
                name: "default".into(),
                created_at: now,
            })));
        }
        if !has_default_ws {
            changes.push(Change::Upsert(Entity::Workspace(Workspace {
                id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"tollgate:ws-default")
                    .to_string(),
                slug: DEFAULT_WORKSPACE_SLUG.into(),
                name: "Default".into(),
                description: Some("The organisation's default workspace".into()),
                defaults: Default::default(),
                usage_limits: None,
                rate_limits: vec![],
                created_at: now,
                updated_at: now,
            })));
        }
        let mut generated = None;
        let wanted_hash = admin_key.map(crypto::hash_api_key);
        let key = match (&bootstrap_key, wanted_hash) {
            (Some(k), Some(h)) if crypto::hashes_equal(&k.key_hash, &h) => None,
            (Some(_), None) => None,
            (_, Some(h)) => Some((h, admin_key.map(crypto::mask).unwrap_or_default())),
            (None, None) => {
                let secret = crypto::new_api_key();
                let out = (crypto::hash_api_key(&secret), crypto::mask(&secret));
                generated = Some(secret);
                Some(out)
            }
        };
        if key.is_none() {
            changes.extend(
                bootstrap_key
                    .as_ref()
                    .and_then(|k| with_audit_scope(k, now)),
            );
        }
        if let Some((key_hash, masked)) = key {
            changes.push(Change::Upsert(Entity::ApiKey(ApiKey {
                id: BOOTSTRAP_KEY_ID.into(),
                key_hash,
                masked,
                name: "Bootstrap admin key".into(),
                description: Some("Created at first start (TOLLGATE_ADMIN_KEY)".into()),
                kind: ApiKeyType::OrganisationService,
                workspace_id: None,
                user_id: None,
                scopes: crate::domain::scopes::ADMIN_SCOPES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                defaults: Default::default(),
                usage_limits: None,
                rate_limits: vec![],
                limits_set_by: crate::domain::Authority::Organisation,
                alert_emails: vec![],
                rotation_policy: None,
                expires_at: None,
                creation_mode: "auto".into(),
                created_by: None,
                ancestors: Vec::new(),
                created_at: bootstrap_key.as_ref().map_or(now, |k| k.created_at),
                updated_at: now,
            })));
        }
        command.commit(None, changes).await?;
        Ok(generated)
    }
}

/// A bootstrap key from before the audit trail still holding every other admin scope gets
/// `audit_logs.list` too; a key narrowed on purpose is left as it is.
fn with_audit_scope(k: &ApiKey, now: Millis) -> Option<Change> {
    let scope = crate::control::audit_logs::SCOPE;
    let holds = |s: &str| k.scopes.iter().any(|h| h == s);
    let others = crate::domain::scopes::ADMIN_SCOPES
        .iter()
        .filter(|s| **s != scope);
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
    use crate::domain::scopes::ADMIN_SCOPES;

    fn key(scopes: &[&str]) -> ApiKey {
        ApiKey {
            id: BOOTSTRAP_KEY_ID.into(),
            key_hash: "h".into(),
            masked: "m".into(),
            name: "renamed by the admin".into(),
            description: None,
            kind: ApiKeyType::OrganisationService,
            workspace_id: None,
            user_id: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
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
            created_at: Millis(1),
            updated_at: Millis(1),
        }
    }

    #[test]
    fn an_older_full_bootstrap_key_gets_the_audit_scope_and_keeps_the_rest() {
        let older: Vec<&str> = ADMIN_SCOPES
            .iter()
            .copied()
            .filter(|s| *s != crate::control::audit_logs::SCOPE)
            .collect();
        let Some(Change::Upsert(Entity::ApiKey(k))) = with_audit_scope(&key(&older), Millis(9))
        else {
            panic!("the scope is added");
        };
        assert!(k.has_scope(crate::control::audit_logs::SCOPE));
        assert_eq!(k.name, "renamed by the admin");
        assert_eq!(k.scopes.len(), ADMIN_SCOPES.len());
        assert!(with_audit_scope(&key(ADMIN_SCOPES), Millis(9)).is_none());
        assert!(
            with_audit_scope(&key(&older[1..]), Millis(9)).is_none(),
            "a narrowed key is left as it is"
        );
    }
}
