//! The audit-trail SQL both stores share: the `audit_log` columns, their order, and the WHERE
//! clause of an [`AuditQuery`] with its arguments (each store binds them its own way).

use crate::domain::AuditQuery;

/// A bound value of an audit query's WHERE clause.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditArg {
    Int(i64),
    Str(String),
}

/// The WHERE clause of an audit query over the `audit_log` table (the same columns in both
/// stores), and its arguments in order. Always a valid clause (`1 = 1` when unfiltered).
pub fn audit_where(q: &AuditQuery) -> (String, Vec<AuditArg>) {
    let mut sql = String::from("1 = 1");
    let mut args = Vec::new();
    if let Some(t) = q.from {
        sql.push_str(" AND ts >= ?");
        args.push(AuditArg::Int(t.0));
    }
    if let Some(t) = q.to {
        sql.push_str(" AND ts <= ?");
        args.push(AuditArg::Int(t.0));
    }
    let texts = [
        ("actor_key_id", q.actor.clone()),
        (
            "resource_type",
            q.resource_type.map(|k| k.as_str().to_owned()),
        ),
        ("resource_id", q.resource_id.clone()),
        ("action", q.action.map(|a| a.as_str().to_owned())),
        ("workspace_id", q.workspace_id.clone()),
    ];
    for (col, v) in texts {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(AuditArg::Str(v));
        }
    }
    (sql, args)
}

/// The columns of `audit_log` in both stores, in the order rows are read.
pub const AUDIT_COLUMNS: &str =
    "event_id, ts, actor_key_id, actor_name, actor_created_by, actor_workspace_id,
    action, resource_type, resource_id, resource_name, workspace_id, changed_fields";

/// How audit rows are ordered: newest first, ties by id (stable pages).
pub const AUDIT_ORDER: &str = "ORDER BY ts DESC, event_id DESC";
