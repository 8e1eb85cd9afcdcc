//! What the aggregator writes: usage events (each batch one atomic `INSERT` of the events not
//! stored yet) and published limit events.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::money::to_d12;
use super::ClickhouseStore;
use crate::domain::UsageEvent;
use crate::store::StoreError;

/// One usage event as stored, with its Kafka position and the budget windows it counted toward.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct EventRow {
    pub event_id: String,
    pub ts: i64,
    pub organisation_id: String,
    pub workspace_id: String,
    pub api_key_id: String,
    pub provider_id: String,
    pub provider_slug: String,
    pub integration_id: String,
    pub ai_provider: String,
    pub department: Option<String>,
    pub user: Option<String>,
    pub metadata_keys: Vec<String>,
    pub metadata_values: Vec<String>,
    pub model: String,
    pub endpoint: String,
    pub status_code: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: i128,
    pub priced: u8,
    pub usage_source: String,
    pub latency_ms: u32,
    pub upstream_latency_ms: u32,
    pub streamed: u8,
    pub attempt_index: u32,
    pub trace_id: String,
    pub config_id: Option<String>,
    pub budgets: Vec<String>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    pub cache_write_tokens: u64,
}

impl EventRow {
    /// The row of an event; `budgets` are `'<budget key>@<window start>'` windows it counts toward.
    pub fn new(e: &UsageEvent, budgets: Vec<String>, partition: i32, offset: i64) -> EventRow {
        let (metadata_keys, metadata_values) = e
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .unzip();
        EventRow {
            event_id: e.event_id.clone(),
            ts: e.at.0,
            organisation_id: e.organisation_id.clone(),
            workspace_id: e.workspace_id.clone(),
            api_key_id: e.api_key_id.clone(),
            provider_id: e.provider_id.clone(),
            provider_slug: e.provider_slug.clone(),
            integration_id: e.integration_id.clone(),
            ai_provider: e.ai_provider.clone(),
            department: e.department.clone(),
            user: e.user.clone(),
            metadata_keys,
            metadata_values,
            model: e.model.clone(),
            endpoint: e.endpoint.as_str().to_owned(),
            status_code: e.status_code,
            // Stored counts are bounded (as the gateway meters them) so ClickHouse's UInt64 sums,
            // which wrap silently, cannot overflow even for older events in a log.
            prompt_tokens: plausible(e.prompt_tokens),
            completion_tokens: plausible(e.completion_tokens),
            cached_tokens: plausible(e.cached_tokens),
            cost_usd: to_d12(e.cost_usd),
            priced: u8::from(e.priced),
            usage_source: e.usage_source.as_str().to_owned(),
            latency_ms: e.latency_ms,
            upstream_latency_ms: e.upstream_latency_ms,
            streamed: u8::from(e.streamed),
            attempt_index: e.attempt_index,
            trace_id: e.trace_id.clone(),
            config_id: e.config_id.clone(),
            budgets,
            kafka_partition: partition,
            kafka_offset: offset,
            cache_write_tokens: plausible(e.cache_write_tokens),
        }
    }
}

/// One published limit event, for dashboards (`limit_events`).
#[derive(Row, Serialize, Debug, Clone)]
pub struct LimitRow {
    pub event_id: String,
    pub ts: i64,
    pub kind: String,
    pub budget: String,
    pub owner_kind: String,
    pub workspace_id: String,
    pub window_start: i64,
    pub budget_type: String,
    pub credit_limit: i128,
    pub used: i128,
}

impl LimitRow {
    /// The row of a published limit event.
    pub fn new(e: &crate::domain::LimitEvent) -> LimitRow {
        LimitRow {
            event_id: e.event_id.clone(),
            ts: e.at.0,
            kind: e.kind.as_str().to_owned(),
            budget: e.budget.clone(),
            owner_kind: e.owner_kind.clone(),
            workspace_id: e.workspace_id.clone().unwrap_or_default(),
            window_start: e.window_start.0,
            budget_type: match e.budget_type {
                crate::domain::limits::BudgetKind::Cost => "cost".into(),
                crate::domain::limits::BudgetKind::Tokens => "tokens".into(),
            },
            credit_limit: to_d12(e.credit_limit),
            used: to_d12(e.used),
        }
    }
}

fn plausible(tokens: u64) -> u64 {
    tokens.min(crate::domain::pricing::MAX_PLAUSIBLE_TOKENS)
}

impl ClickhouseStore {
    /// Of `ids` (events between `from` and `to` ms inclusive), those the table already has.
    async fn existing(
        &self,
        ids: Vec<String>,
        from: i64,
        to: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT event_id FROM usage_events WHERE ts >= ? AND ts <= ? AND event_id IN (SELECT arrayJoin(?))",
            )
            .bind(from)
            .bind(to)
            .bind(ids)
            .fetch_all()
            .await?)
    }

    /// Inserts the rows whose event ids the table does not have yet, in one `INSERT` (one atomic
    /// block for ClickHouse); returns how many.
    pub async fn insert_new(&self, rows: &[EventRow]) -> Result<usize, StoreError> {
        let (Some(from), Some(to)) = (
            rows.iter().map(|r| r.ts).min(),
            rows.iter().map(|r| r.ts).max(),
        ) else {
            return Ok(0);
        };
        let ids = rows.iter().map(|r| r.event_id.clone()).collect();
        let have: std::collections::HashSet<String> =
            self.existing(ids, from, to).await?.into_iter().collect();
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<&EventRow> = rows
            .iter()
            .filter(|r| !have.contains(&r.event_id) && seen.insert(r.event_id.as_str()))
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut insert = self.client.insert::<EventRow>("usage_events").await?;
        for r in &fresh {
            insert.write(r).await?;
        }
        insert.end().await?;
        Ok(fresh.len())
    }

    /// Records published limit events (for dashboards; the topic stays the source of truth).
    pub async fn insert_limit_events(&self, rows: &[LimitRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<LimitRow>("limit_events").await?;
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await?;
        Ok(())
    }
}
