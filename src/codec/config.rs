//! Config events (schema `config_event.v2`; v1 records, before the audit fields, still read):
//! one admin change, the entity as JSON.

use std::sync::OnceLock;

use apache_avro::types::Value;

use super::value::{opt, record, s, Fields};
use super::{CodecError, Family, CONFIG_SCHEMA, CONFIG_SCHEMA_V1};
use crate::domain::*;

fn config_family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(CONFIG_SCHEMA, &[CONFIG_SCHEMA_V1]))
}

fn entity_json(e: &Entity) -> Result<String, serde_json::Error> {
    match e {
        Entity::Organisation(x) => serde_json::to_string(x),
        Entity::Workspace(x) => serde_json::to_string(x),
        Entity::Integration(x) => serde_json::to_string(x),
        Entity::Provider(x) => serde_json::to_string(x),
        Entity::Config(x) => serde_json::to_string(x),
        Entity::ApiKey(x) => serde_json::to_string(x),
        Entity::Policy(x) => serde_json::to_string(x),
    }
}

fn entity_from_json(kind: EntityKind, json: &str) -> Result<Entity, serde_json::Error> {
    Ok(match kind {
        EntityKind::Organisation => Entity::Organisation(serde_json::from_str(json)?),
        EntityKind::Workspace => Entity::Workspace(serde_json::from_str(json)?),
        EntityKind::Integration => Entity::Integration(serde_json::from_str(json)?),
        EntityKind::Provider => Entity::Provider(serde_json::from_str(json)?),
        EntityKind::Config => Entity::Config(serde_json::from_str(json)?),
        EntityKind::ApiKey => Entity::ApiKey(serde_json::from_str(json)?),
        EntityKind::Policy => Entity::Policy(serde_json::from_str(json)?),
    })
}

/// Encodes a config event.
pub fn encode_config(e: &ConfigEvent) -> Result<Vec<u8>, CodecError> {
    let (kind, id, body) = match &e.change {
        Change::Upsert(entity) => (
            entity.kind(),
            entity.id().to_owned(),
            Some(entity_json(entity)?),
        ),
        Change::Delete { kind, id } => (*kind, id.clone(), None),
    };
    let index = EntityKind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u32;
    let fields = vec![
        ("event_id".into(), s(&e.event_id)),
        ("at".into(), Value::TimestampMillis(e.at.0)),
        ("kind".into(), Value::Enum(index, kind.as_str().into())),
        ("entity_id".into(), Value::String(id)),
        ("entity".into(), opt(&body)),
    ];
    let mut fields = fields;
    fields.extend(audit_fields(&e.audit));
    config_family().encode(Value::Record(fields))
}

/// The audit fields of a config event (schema v2).
fn audit_fields(a: &Audit) -> Vec<(String, Value)> {
    let actor = match &a.actor {
        Some(x) => Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("key_id".into(), s(&x.key_id)),
                ("key_name".into(), s(&x.key_name)),
                ("created_by".into(), opt(&x.created_by)),
                ("workspace_id".into(), opt(&x.workspace_id)),
            ])),
        ),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let action = match a.action {
        Some(x) => {
            let index = Action::ALL.iter().position(|y| *y == x).unwrap_or(0) as u32;
            Value::Union(1, Box::new(Value::Enum(index, x.as_str().into())))
        }
        None => Value::Union(0, Box::new(Value::Null)),
    };
    vec![
        ("actor".into(), actor),
        ("action".into(), action),
        ("resource_name".into(), opt(&a.resource_name)),
        ("workspace_id".into(), opt(&a.workspace_id)),
        (
            "changed_fields".into(),
            Value::Array(a.changed_fields.iter().map(|f| s(f)).collect()),
        ),
    ]
}

/// Reads the audit fields of a decoded config event (defaults for a v1 record).
fn audit_from(f: &mut Fields) -> Result<Audit, CodecError> {
    let actor = match f.take("actor")? {
        Value::Record(fields) => {
            let mut r = record(fields);
            Some(Actor {
                key_id: r.string("key_id")?,
                key_name: r.string("key_name")?,
                created_by: r.opt_string("created_by")?,
                workspace_id: r.opt_string("workspace_id")?,
            })
        }
        _ => None,
    };
    let action = match f.take("action")? {
        Value::Enum(_, name) => {
            Some(Action::parse(&name).ok_or(CodecError::Field("action", name))?)
        }
        _ => None,
    };
    let changed_fields = match f.take("changed_fields")? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Audit {
        actor,
        action,
        resource_name: f.opt_string("resource_name")?,
        workspace_id: f.opt_string("workspace_id")?,
        changed_fields,
    })
}

/// Decodes a config event.
pub fn decode_config(bytes: &[u8]) -> Result<ConfigEvent, CodecError> {
    let mut f = record(config_family().decode(bytes)?);
    let kind_name = f.string("kind")?;
    let kind = EntityKind::parse(&kind_name).ok_or(CodecError::Field("kind", kind_name))?;
    let id = f.string("entity_id")?;
    let change = match f.opt_string("entity")? {
        Some(json) => Change::Upsert(entity_from_json(kind, &json)?),
        None => Change::Delete { kind, id },
    };
    Ok(ConfigEvent {
        audit: Box::new(audit_from(&mut f)?),
        event_id: f.string("event_id")?,
        at: Millis(f.long("at")?),
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip() {
        let ws = Workspace {
            id: "w1".into(),
            slug: "ws-a".into(),
            name: "A".into(),
            description: None,
            defaults: Default::default(),
            usage_limits: None,
            rate_limits: vec![],
            created_at: Millis(1),
            updated_at: Millis(2),
        };
        let actor = Actor {
            key_id: "k".into(),
            key_name: "Team key".into(),
            created_by: Some("admin".into()),
            workspace_id: Some("w1".into()),
        };
        let audits = [
            Audit::default(),
            Audit {
                actor: Some(actor),
                action: Some(Action::Updated),
                resource_name: Some("A".into()),
                workspace_id: Some("w1".into()),
                changed_fields: vec!["name".into(), "usage_limits".into()],
            },
        ];
        for audit in audits {
            for change in [
                Change::Upsert(Entity::Workspace(ws.clone())),
                Change::Delete {
                    kind: EntityKind::Workspace,
                    id: "w1".into(),
                },
            ] {
                let e = ConfigEvent {
                    audit: Box::new(audit.clone()),
                    event_id: "e".into(),
                    at: Millis(5),
                    change,
                };
                assert_eq!(decode_config(&encode_config(&e).unwrap()).unwrap(), e);
            }
        }
    }

    #[test]
    fn config_events_written_with_v1_still_decode() {
        let v1 = Family::new(CONFIG_SCHEMA_V1, &[]);
        let fields = vec![
            ("event_id".into(), s("e")),
            ("at".into(), Value::TimestampMillis(5)),
            ("kind".into(), Value::Enum(1, "workspace".into())),
            ("entity_id".into(), s("w1")),
            ("entity".into(), opt(&None)),
        ];
        let bytes = v1.encode(Value::Record(fields)).unwrap();
        assert_ne!(bytes[..10], config_family().header);
        let e = decode_config(&bytes).unwrap();
        assert_eq!(*e.audit, Audit::default());
        assert_eq!(
            e.change,
            Change::Delete {
                kind: EntityKind::Workspace,
                id: "w1".into()
            }
        );
    }
}
