//! The audit trail in the embedded store: recording config changes (idempotent on the event
//! id, with the audit consumer's position) and paging through them.

use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection};

use super::positions::set_offset;
use crate::domain::{AuditEntry, AuditQuery, Millis};
use crate::store::{audit_where, AuditArg, StoreError, AUDIT_COLUMNS, AUDIT_ORDER};

pub(super) fn record_audit(
    conn: &mut Connection,
    rows: &[AuditEntry],
    consumer: &str,
    next: u64,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let mut new = 0;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")?;
        for r in rows {
            let actor = r.actor.as_ref();
            new += insert.execute(params![
                r.id,
                r.at.0,
                actor.map(|a| &a.key_id),
                actor.map(|a| &a.key_name),
                actor.and_then(|a| a.created_by.as_ref()),
                actor.and_then(|a| a.workspace_id.as_ref()),
                r.action.as_str(),
                r.resource_type.as_str(),
                r.resource_id,
                r.resource_name,
                r.workspace_id,
                serde_json::to_string(&r.changed_fields).unwrap_or_else(|_| "[]".into()),
            ])?;
        }
        set_offset(&tx, consumer, next)?;
    }
    tx.commit()?;
    Ok(new)
}

fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let text = |i: usize, v: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {v}").into(),
        )
    };
    let key_id: Option<String> = r.get(2)?;
    let actor = match key_id {
        Some(key_id) => Some(crate::domain::Actor {
            key_id,
            key_name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            created_by: r.get(4)?,
            workspace_id: r.get(5)?,
        }),
        None => None,
    };
    let action: String = r.get(6)?;
    let kind: String = r.get(7)?;
    let changed: String = r.get(11)?;
    Ok(AuditEntry {
        id: r.get(0)?,
        at: Millis(r.get(1)?),
        actor,
        action: crate::domain::Action::parse(&action).ok_or_else(|| text(6, action.clone()))?,
        resource_type: crate::domain::EntityKind::parse(&kind)
            .ok_or_else(|| text(7, kind.clone()))?,
        resource_id: r.get(8)?,
        resource_name: r.get(9)?,
        workspace_id: r.get(10)?,
        changed_fields: serde_json::from_str(&changed).unwrap_or_default(),
    })
}

pub(super) fn audit(
    conn: &mut Connection,
    q: &AuditQuery,
) -> Result<(u64, Vec<AuditEntry>), StoreError> {
    let (cond, args) = audit_where(q);
    let args: Vec<Sql> = args
        .into_iter()
        .map(|a| match a {
            AuditArg::Int(v) => Sql::Integer(v),
            AuditArg::Str(v) => Sql::Text(v),
        })
        .collect();
    let total: i64 = conn.query_row(
        &format!("SELECT count(*) FROM audit_log WHERE {cond}"),
        rusqlite::params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let mut page = args;
    page.push(Sql::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    page.push(Sql::Integer(i64::try_from(q.offset).unwrap_or(i64::MAX)));
    let mut stmt = conn.prepare(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {cond} {AUDIT_ORDER} LIMIT ? OFFSET ?"
    ))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(page.iter()), audit_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((u64::try_from(total).unwrap_or(0), rows))
}
