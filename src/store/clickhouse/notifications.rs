//! The notifier's record in ClickHouse: notifications sent, and the notifier's position in the
//! limit log (`consumer_offsets`, latest row wins).

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::domain::Millis;
use crate::store::{Notification, StoreError};

#[derive(Row, Serialize, Deserialize)]
struct NotificationRow {
    limit_event_id: String,
    channel: String,
    kind: String,
    budget: String,
    recipients: String,
    status: String,
    attempts: u32,
    error: Option<String>,
    created_at: i64,
}

impl From<Notification> for NotificationRow {
    fn from(n: Notification) -> NotificationRow {
        NotificationRow {
            limit_event_id: n.limit_event_id,
            channel: n.channel,
            kind: n.kind,
            budget: n.budget,
            recipients: n.recipients,
            status: n.status,
            attempts: n.attempts,
            error: n.error,
            created_at: n.created_at.0,
        }
    }
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Notification {
        Notification {
            limit_event_id: r.limit_event_id,
            channel: r.channel,
            kind: r.kind,
            budget: r.budget,
            recipients: r.recipients,
            status: r.status,
            attempts: r.attempts,
            error: r.error,
            created_at: Millis(r.created_at),
        }
    }
}

#[derive(Row, Serialize)]
struct OffsetRow {
    consumer: String,
    next_offset: u64,
    updated_at: u64,
}

/// Inserts the notifications not recorded yet (by limit event and channel), then records that
/// `consumer` has read the limit log up to `next_offset`. Two inserts (ClickHouse has no
/// transactions), rows first: a crash between them replays the batch, and the check by limit
/// event and channel keeps the replay from adding rows twice.
pub(super) async fn record(
    c: &Client,
    rows: Vec<Notification>,
    consumer: String,
    next_offset: u64,
) -> Result<(), StoreError> {
    if !rows.is_empty() {
        insert_new(c, rows).await?;
    }
    let mut insert = c.insert::<OffsetRow>("consumer_offsets").await?;
    insert
        .write(&OffsetRow {
            consumer,
            next_offset,
            updated_at: u64::try_from(Millis::now().0).unwrap_or(0),
        })
        .await?;
    insert.end().await?;
    Ok(())
}

/// Inserts the rows whose (limit event, channel) the table does not have yet.
async fn insert_new(c: &Client, rows: Vec<Notification>) -> Result<(), StoreError> {
    let ids: Vec<String> = rows.iter().map(|r| r.limit_event_id.clone()).collect();
    let have: Vec<(String, String)> = c
        .query("SELECT limit_event_id, channel FROM notifications WHERE has(?, limit_event_id)")
        .bind(ids)
        .fetch_all()
        .await?;
    let mut insert = c.insert::<NotificationRow>("notifications").await?;
    for n in rows {
        if have.contains(&(n.limit_event_id.clone(), n.channel.clone())) {
            continue;
        }
        insert.write(&NotificationRow::from(n)).await?;
    }
    insert.end().await?;
    Ok(())
}

/// The latest notifications, newest first.
pub(super) async fn latest(c: &Client, limit: usize) -> Result<Vec<Notification>, StoreError> {
    let rows: Vec<NotificationRow> = c
        .query(
            "SELECT limit_event_id, channel, kind, budget, recipients, status, attempts, error, created_at
             FROM notifications FINAL ORDER BY created_at DESC, limit_event_id, channel LIMIT ?",
        )
        .bind(limit as u64)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(Notification::from).collect())
}

/// Where `consumer` has read up to (0 when never).
pub(super) async fn offset(c: &Client, consumer: String) -> Result<u64, StoreError> {
    let v: Vec<u64> = c
        .query("SELECT argMax(next_offset, updated_at) FROM consumer_offsets WHERE consumer = ? GROUP BY consumer")
        .bind(consumer)
        .fetch_all()
        .await?;
    Ok(v.first().copied().unwrap_or(0))
}
