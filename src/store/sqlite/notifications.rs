//! The notifier's record in the embedded store: which limit events were notified over which
//! channel, with the notifier's position in the limit log.

use rusqlite::{params, Connection};

use super::positions::set_offset;
use crate::domain::Millis;
use crate::store::{Notification, StoreError};

pub(super) fn record_notifications(
    conn: &mut Connection,
    rows: &[Notification],
    consumer: &str,
    next: u64,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO notifications VALUES (?,?,?,?,?,?,?,?,?)")?;
        for n in rows {
            insert.execute(params![
                n.limit_event_id,
                n.channel,
                n.kind,
                n.budget,
                n.recipients,
                n.status,
                n.attempts,
                n.error,
                n.created_at.0
            ])?;
        }
        set_offset(&tx, consumer, next)?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn notifications(
    conn: &mut Connection,
    limit: usize,
) -> Result<Vec<Notification>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT limit_event_id, channel, kind, budget, recipients, status, attempts, error, created_at
         FROM notifications ORDER BY created_at DESC, limit_event_id, channel LIMIT ?",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(Notification {
            limit_event_id: r.get(0)?,
            channel: r.get(1)?,
            kind: r.get(2)?,
            budget: r.get(3)?,
            recipients: r.get(4)?,
            status: r.get(5)?,
            attempts: r.get(6)?,
            error: r.get(7)?,
            created_at: Millis(r.get(8)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
