//! The audit trail in ClickHouse (`audit_log`, a ReplacingMergeTree read with `FINAL`):
//! inserting the entries not stored yet, and paging through them.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::ClickhouseStore;
use crate::domain::{Action, Actor, AuditEntry, AuditQuery, EntityKind, Millis};
use crate::store::{audit_where, AuditArg, StoreError, AUDIT_COLUMNS, AUDIT_ORDER};

/// A row of `audit_log` (empty strings mean none).
#[derive(Row, Serialize, Deserialize)]
struct AuditRow {
    event_id: String,
    ts: i64,
    actor_key_id: String,
    actor_name: String,
    actor_created_by: String,
    actor_workspace_id: String,
    action: String,
    resource_type: String,
    resource_id: String,
    resource_name: String,
    workspace_id: String,
    changed_fields: Vec<String>,
}

fn none_if_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl AuditRow {
    fn new(e: AuditEntry) -> AuditRow {
        let actor = e.actor.unwrap_or_default();
        AuditRow {
            event_id: e.id,
            ts: e.at.0,
            actor_key_id: actor.key_id,
            actor_name: actor.key_name,
            actor_created_by: actor.created_by.unwrap_or_default(),
            actor_workspace_id: actor.workspace_id.unwrap_or_default(),
            action: e.action.as_str().to_owned(),
            resource_type: e.resource_type.as_str().to_owned(),
            resource_id: e.resource_id,
            resource_name: e.resource_name.unwrap_or_default(),
            workspace_id: e.workspace_id.unwrap_or_default(),
            changed_fields: e.changed_fields,
        }
    }

    /// None when the row names an action or kind this version does not know.
    fn entry(self) -> Option<AuditEntry> {
        let actor = (!self.actor_key_id.is_empty()).then(|| Actor {
            key_id: self.actor_key_id,
            key_name: self.actor_name,
            created_by: none_if_empty(self.actor_created_by),
            workspace_id: none_if_empty(self.actor_workspace_id),
        });
        Some(AuditEntry {
            id: self.event_id,
            at: Millis(self.ts),
            actor,
            action: Action::parse(&self.action)?,
            resource_type: EntityKind::parse(&self.resource_type)?,
            resource_id: self.resource_id,
            resource_name: none_if_empty(self.resource_name),
            workspace_id: none_if_empty(self.workspace_id),
            changed_fields: self.changed_fields,
        })
    }
}

impl ClickhouseStore {
    /// Inserts the audit rows whose event ids the table does not have yet, in one `INSERT`;
    /// returns how many.
    pub async fn insert_audit(&self, rows: Vec<AuditEntry>) -> Result<usize, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let have: std::collections::HashSet<String> = self
            .client
            .query("SELECT event_id FROM audit_log WHERE event_id IN (SELECT arrayJoin(?))")
            .bind(ids)
            .fetch_all::<String>()
            .await?
            .into_iter()
            .collect();
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<AuditEntry> = rows
            .into_iter()
            .filter(|r| !have.contains(&r.id) && seen.insert(r.id.clone()))
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let n = fresh.len();
        let mut insert = self.client.insert::<AuditRow>("audit_log").await?;
        for r in fresh {
            insert.write(&AuditRow::new(r)).await?;
        }
        insert.end().await?;
        Ok(n)
    }

    /// The audit rows matching `q`: how many in all, and the page asked for.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<(u64, Vec<AuditEntry>), StoreError> {
        let (cond, args) = audit_where(q);
        let bind = |mut query: clickhouse::query::Query| {
            for a in &args {
                query = match a {
                    AuditArg::Int(v) => query.bind(*v),
                    AuditArg::Str(v) => query.bind(v.as_str()),
                };
            }
            query
        };
        let total: Vec<u64> = bind(self.client.query(&format!(
            "SELECT toUInt64(count()) FROM audit_log FINAL WHERE {cond}"
        )))
        .fetch_all()
        .await?;
        let rows: Vec<AuditRow> = bind(self.client.query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log FINAL WHERE {cond} {AUDIT_ORDER} LIMIT ?, ?"
        )))
        .bind(q.offset)
        .bind(q.limit)
        .fetch_all()
        .await?;
        Ok((
            total.first().copied().unwrap_or(0),
            rows.into_iter().filter_map(AuditRow::entry).collect(),
        ))
    }
}
