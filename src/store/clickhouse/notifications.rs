//! The notifier's record in ClickHouse: notifications sent, and the notifier's position in the
//! limit log (`consumer_offsets`, latest row wins).

use clickhouse::Row;
use serde::{Deserialize, Serialize};

#[derive(Row, Serialize, Deserialize)]
pub(super) struct NotificationRow {
    pub(super) limit_event_id: String,
    pub(super) channel: String,
    pub(super) kind: String,
    pub(super) budget: String,
    pub(super) recipients: String,
    pub(super) status: String,
    pub(super) attempts: u32,
    pub(super) error: Option<String>,
    pub(super) created_at: i64,
}

#[derive(Row, Serialize)]
pub(super) struct OffsetRow {
    pub(super) consumer: String,
    pub(super) next_offset: u64,
    pub(super) updated_at: u64,
}
