//! The audit trail: who made an admin change and what it did, decided when the change is
//! committed (from the state before it) and carried on its config event, so the audit rows the
//! stores keep outlive compaction of the config topic. An audit row never holds the entity
//! itself (sealed credentials, key hashes): only its id, name, workspace and the names of the
//! top-level fields that changed.

use serde::{Deserialize, Serialize};

use super::entities::ApiKey;
use super::events::{Change, ConfigEvent, Entity, EntityKind};
use super::time::Millis;

/// The key that made a change, as it was then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub key_id: String,
    pub key_name: String,
    /// The key that created the actor's key (none for the bootstrap key).
    pub created_by: Option<String>,
    /// The actor's workspace (none for an organisation key).
    pub workspace_id: Option<String>,
}

impl Actor {
    /// The actor for changes made with `key`.
    pub fn of(key: &ApiKey) -> Actor {
        Actor {
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            created_by: key.created_by.clone(),
            workspace_id: key.workspace_id.clone(),
        }
    }
}

/// What a change did to its entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Created, Action::Updated, Action::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The audit facts of one config event. Events written before actors were recorded have the
/// default: no actor, no action (read as an update or a deletion), nothing else.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// None: the system (bootstrap) or an event from before actors were recorded.
    pub actor: Option<Actor>,
    pub action: Option<Action>,
    /// The entity's name (for a deletion, its name before).
    pub resource_name: Option<String>,
    /// The workspace the change happened in: the entity's, else the actor's.
    pub workspace_id: Option<String>,
    /// For an update: the top-level fields whose values changed (names only, never values).
    pub changed_fields: Vec<String>,
}

/// Fields every update changes, which say nothing about what was done.
const BOOKKEEPING_FIELDS: [&str; 1] = ["updated_at"];

/// The audit facts of `change` made by `actor`, `before` being the entity's state before it.
pub fn audit_of(before: Option<&Entity>, change: &Change, actor: Option<&Actor>) -> Audit {
    let (action, after) = match change {
        Change::Delete { .. } => (Action::Deleted, None),
        Change::Upsert(e) if before.is_some() => (Action::Updated, Some(e)),
        Change::Upsert(e) => (Action::Created, Some(e)),
    };
    let described = after.or(before);
    let changed_fields = match (before, after) {
        (Some(b), Some(a)) => changed_fields(b, a),
        _ => Vec::new(),
    };
    Audit {
        actor: actor.cloned(),
        action: Some(action),
        resource_name: described.map(|e| e.name().to_owned()),
        workspace_id: described
            .and_then(Entity::workspace_id)
            .or_else(|| actor.and_then(|a| a.workspace_id.clone())),
        changed_fields,
    }
}

/// The names of the top-level fields whose values differ, sorted.
fn changed_fields(before: &Entity, after: &Entity) -> Vec<String> {
    let (Ok(b), Ok(a)) = (before.to_json(), after.to_json()) else {
        return Vec::new();
    };
    let (Some(b), Some(a)) = (b.as_object(), a.as_object()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !BOOKKEEPING_FIELDS.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// One row of the audit log, as the stores keep it and `GET /v1/audit-logs` serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// The config event's id.
    pub id: String,
    pub at: Millis,
    pub actor: Option<Actor>,
    pub action: Action,
    pub resource_type: EntityKind,
    pub resource_id: String,
    pub resource_name: Option<String>,
    pub workspace_id: Option<String>,
    pub changed_fields: Vec<String>,
}

impl AuditEntry {
    /// The row of a config event. For events from before audit facts were recorded, an upsert
    /// reads as an update and the name and workspace come from the entity.
    pub fn of(e: &ConfigEvent) -> AuditEntry {
        let (kind, id, entity) = match &e.change {
            Change::Upsert(x) => (x.kind(), x.id().to_owned(), Some(x)),
            Change::Delete { kind, id } => (*kind, id.clone(), None),
        };
        let fallback = if entity.is_some() {
            Action::Updated
        } else {
            Action::Deleted
        };
        AuditEntry {
            id: e.event_id.clone(),
            at: e.at,
            actor: e.audit.actor.clone(),
            action: e.audit.action.unwrap_or(fallback),
            resource_type: kind,
            resource_id: id,
            resource_name: e
                .audit
                .resource_name
                .clone()
                .or_else(|| entity.map(|x| x.name().to_owned())),
            workspace_id: e
                .audit
                .workspace_id
                .clone()
                .or_else(|| entity.and_then(Entity::workspace_id)),
            changed_fields: e.audit.changed_fields.clone(),
        }
    }
}

/// Which audit rows a query wants; `None` means any. Newest first, `offset` rows skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditQuery {
    /// Inclusive.
    pub from: Option<Millis>,
    /// Inclusive.
    pub to: Option<Millis>,
    pub actor: Option<String>,
    pub resource_type: Option<EntityKind>,
    pub resource_id: Option<String>,
    pub action: Option<Action>,
    pub workspace_id: Option<String>,
    pub offset: u64,
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Workspace;

    fn ws(name: &str) -> Entity {
        Entity::Workspace(Workspace {
            id: "w1".into(),
            slug: "ws-a".into(),
            name: name.into(),
            description: None,
            defaults: Default::default(),
            usage_limits: None,
            rate_limits: vec![],
            created_at: Millis(1),
            updated_at: Millis(2),
        })
    }

    #[test]
    fn action_and_changed_fields_come_from_the_state_before() {
        let actor = Actor {
            key_id: "k".into(),
            key_name: "n".into(),
            created_by: Some("c".into()),
            workspace_id: None,
        };
        let created = audit_of(None, &Change::Upsert(ws("A")), Some(&actor));
        assert_eq!(created.action, Some(Action::Created));
        assert_eq!(created.workspace_id.as_deref(), Some("w1"));
        assert_eq!(created.actor.as_ref(), Some(&actor));
        let mut renamed = ws("B");
        if let Entity::Workspace(w) = &mut renamed {
            w.updated_at = Millis(9);
        }
        let updated = audit_of(Some(&ws("A")), &Change::Upsert(renamed), Some(&actor));
        assert_eq!(updated.action, Some(Action::Updated));
        assert_eq!(updated.changed_fields, vec!["name".to_owned()]);
        let delete = Change::Delete {
            kind: EntityKind::Workspace,
            id: "w1".into(),
        };
        let deleted = audit_of(Some(&ws("A")), &delete, None);
        assert_eq!(deleted.action, Some(Action::Deleted));
        assert_eq!(deleted.resource_name.as_deref(), Some("A"));
        assert!(deleted.actor.is_none());
    }

    #[test]
    fn old_events_read_as_updates_and_deletions() {
        let e = ConfigEvent {
            event_id: "e".into(),
            at: Millis(5),
            change: Change::Upsert(ws("A")),
            audit: Default::default(),
        };
        let row = AuditEntry::of(&e);
        assert_eq!(row.action, Action::Updated);
        assert_eq!(row.resource_name.as_deref(), Some("A"));
        assert_eq!(row.workspace_id.as_deref(), Some("w1"));
    }
}
