//! The distributed usage store: ClickHouse through the `clickhouse` crate, with the DDL in
//! `schemas/clickhouse/` (applied by [`ClickhouseStore::migrate`]).
//!
//! Exactness: the aggregator inserts each batch of new events as one `INSERT` (atomic in
//! ClickHouse), after asking which of the batch's event ids the table already has, so a replayed
//! batch adds nothing. Rollups and per-budget usage are materialized views over those inserts,
//! summed by the engine; queries sum their rows, so merges never change an answer.
//! Works on ClickHouse 18.16 (no row-type validation there: `with_validation(false)`).
//!
//! # Modules
//! - `migrate`: the versioned DDL.
//! - `insert`: usage and limit events in ([`EventRow`], [`LimitRow`]).
//! - `query`: the analytics SQL.
//! - `totals`: budget-window and per-entity totals for the gateway.
//! - `audit`, `notifications`: the audit trail and the notifier's record.
//! - `money`: Decimal(38, 12).

mod audit;
mod insert;
mod migrate;
mod money;
mod notifications;
mod query;
mod totals;

use clickhouse::{Client, Row};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;

use super::{
    latency_report, Bucket, Filter, GroupBy, LatencyReport, Notification, RollupRow, Stats,
    StoreError, UsageStore,
};
use crate::domain::{AuditEntry, AuditQuery, Millis, UsageEvent};
use crate::settings::ClickhouseSettings;
pub use insert::{EventRow, LimitRow};
use money::from_d12;
use notifications::{NotificationRow, OffsetRow};
use query::{bind_all, where_clause, Arg, STATS_COLUMNS};
pub use totals::BudgetUsage;

/// The ClickHouse usage store.
#[derive(Clone)]
pub struct ClickhouseStore {
    client: Client,
}

impl ClickhouseStore {
    /// A client for the configured server and database (nothing is contacted yet).
    pub fn new(s: &ClickhouseSettings) -> Result<ClickhouseStore, StoreError> {
        Ok(ClickhouseStore {
            client: Self::server(s)?.with_database(&s.database),
        })
    }

    fn server(s: &ClickhouseSettings) -> Result<Client, StoreError> {
        let url = s
            .url
            .as_deref()
            .ok_or_else(|| StoreError::Task("clickhouse_url is not set".into()))?;
        let mut c = Client::default()
            .with_url(url)
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        if let Some(u) = &s.user {
            c = c.with_user(u);
        }
        if let Some(p) = &s.password {
            c = c.with_password(p);
        }
        Ok(c)
    }
}

impl UsageStore for ClickhouseStore {
    fn record_audit(
        &self,
        rows: Vec<AuditEntry>,
        _consumer: &str,
        _next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        // Positions live in Kafka's consumer group (committed after this returns), not here.
        let this = self.clone();
        async move { this.insert_audit(rows).await }.boxed()
    }

    fn audit(
        &self,
        query: AuditQuery,
    ) -> BoxFuture<'static, Result<(u64, Vec<AuditEntry>), StoreError>> {
        let this = self.clone();
        async move { this.audit_page(&query).await }.boxed()
    }

    fn record_notifications(
        &self,
        rows: Vec<Notification>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let this = self.clone();
        let consumer = consumer.to_owned();
        async move {
            if !rows.is_empty() {
                let ids: Vec<String> = rows.iter().map(|r| r.limit_event_id.clone()).collect();
                let have: Vec<(String, String)> = this
                    .client
                    .query("SELECT limit_event_id, channel FROM notifications WHERE has(?, limit_event_id)")
                    .bind(ids)
                    .fetch_all()
                    .await?;
                let mut insert = this.client.insert::<NotificationRow>("notifications").await?;
                for n in rows {
                    if have.contains(&(n.limit_event_id.clone(), n.channel.clone())) {
                        continue;
                    }
                    insert
                        .write(&NotificationRow {
                            limit_event_id: n.limit_event_id,
                            channel: n.channel,
                            kind: n.kind,
                            budget: n.budget,
                            recipients: n.recipients,
                            status: n.status,
                            attempts: n.attempts,
                            error: n.error,
                            created_at: n.created_at.0,
                        })
                        .await?;
                }
                insert.end().await?;
            }
            let mut insert = this.client.insert::<OffsetRow>("consumer_offsets").await?;
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
        .boxed()
    }

    fn notifications(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let this = self.clone();
        async move {
            let rows: Vec<NotificationRow> = this
                .client
                .query(
                    "SELECT limit_event_id, channel, kind, budget, recipients, status, attempts, error, created_at
                     FROM notifications FINAL ORDER BY created_at DESC, limit_event_id, channel LIMIT ?",
                )
                .bind(limit as u64)
                .fetch_all()
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| Notification {
                    limit_event_id: r.limit_event_id,
                    channel: r.channel,
                    kind: r.kind,
                    budget: r.budget,
                    recipients: r.recipients,
                    status: r.status,
                    attempts: r.attempts,
                    error: r.error,
                    created_at: Millis(r.created_at),
                })
                .collect())
        }
        .boxed()
    }

    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        _consumer: &str,
        _next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        // Positions live in Kafka's consumer group (committed after this returns), not here.
        let this = self.clone();
        async move {
            let rows: Vec<EventRow> = events
                .iter()
                .map(|e| EventRow::new(e, vec![], -1, -1))
                .collect();
            this.insert_new(&rows).await
        }
        .boxed()
    }

    fn offset(&self, consumer: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        let this = self.clone();
        let consumer = consumer.to_owned();
        async move {
            let v: Vec<u64> = this
                .client
                .query("SELECT argMax(next_offset, updated_at) FROM consumer_offsets WHERE consumer = ? GROUP BY consumer")
                .bind(consumer)
                .fetch_all()
                .await?;
            Ok(v.first().copied().unwrap_or(0))
        }
        .boxed()
    }

    fn series(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<Vec<(Millis, Stats)>, StoreError>> {
        let this = self.clone();
        async move {
            let (cond, args) = where_clause(&filter);
            let ms = bucket.ms();
            let sql = format!(
                "SELECT toString(intDiv(ts, {ms}) * {ms}) AS g, {STATS_COLUMNS} FROM usage_events
                 WHERE {cond} GROUP BY g ORDER BY toInt64(g)"
            );
            let rows = this.stats_rows(sql, args).await?;
            Ok(rows
                .iter()
                .map(|r| (Millis(r.g.parse().unwrap_or(0)), r.stats()))
                .collect())
        }
        .boxed()
    }

    fn latency(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<LatencyReport, StoreError>> {
        let this = self.clone();
        async move {
            let (cond, args) = where_clause(&filter);
            let sql = format!("SELECT ts, latency_ms FROM usage_events WHERE {cond} ORDER BY ts");
            let rows: Vec<(i64, u32)> = bind_all(this.client.query(&sql), args).fetch_all().await?;
            Ok(latency_report(rows, bucket))
        }
        .boxed()
    }

    fn groups(
        &self,
        filter: Filter,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<Vec<(String, Stats)>, StoreError>> {
        let this = self.clone();
        async move {
            let (cond, mut args) = where_clause(&filter);
            let col = match &by {
                GroupBy::User => "ifNull(user, '')",
                GroupBy::Model => "model",
                GroupBy::AiProvider => "ai_provider",
                GroupBy::Provider => "provider_slug",
                GroupBy::ApiKey => "api_key_id",
                GroupBy::Workspace => "workspace_id",
                GroupBy::StatusCode => "toString(status_code)",
                GroupBy::Config => "ifNull(config_id, '')",
                GroupBy::Department => "ifNull(department, '')",
                GroupBy::Metadata(_) => "metadata_values[indexOf(metadata_keys, ?)]",
            };
            if let GroupBy::Metadata(k) = &by {
                args.insert(0, Arg::Str(k.clone()));
            }
            let sql = format!(
                "SELECT {col} AS g, {STATS_COLUMNS} FROM usage_events WHERE {cond}
                 GROUP BY g ORDER BY requests DESC, g"
            );
            let rows = this.stats_rows(sql, args).await?;
            Ok(rows.iter().map(|r| (r.g.clone(), r.stats())).collect())
        }
        .boxed()
    }

    fn rollups(
        &self,
        grain: &str,
        dimension: &str,
    ) -> BoxFuture<'static, Result<Vec<RollupRow>, StoreError>> {
        let this = self.clone();
        let (grain, dimension) = (grain.to_owned(), dimension.to_owned());
        async move {
            #[derive(Row, Deserialize)]
            struct R {
                bucket: i64,
                value: String,
                requests: u64,
                errors: u64,
                prompt_tokens: u64,
                completion_tokens: u64,
                cost_usd: i128,
            }
            let rows: Vec<R> = this
                .client
                .query(
                    "SELECT bucket, value, toUInt64(sum(requests)) AS requests, toUInt64(sum(errors)) AS errors,
                       toUInt64(sum(prompt_tokens)) AS prompt_tokens, toUInt64(sum(completion_tokens)) AS completion_tokens,
                       sum(cost_usd) AS cost_usd
                     FROM usage_rollup WHERE grain = ? AND dimension = ?
                     GROUP BY bucket, value ORDER BY bucket, value",
                )
                .bind(&grain)
                .bind(&dimension)
                .fetch_all()
                .await?;
            Ok(rows
                .into_iter()
                .map(|r| RollupRow {
                    grain: grain.clone(),
                    bucket: Millis(r.bucket),
                    dimension: dimension.clone(),
                    value: r.value,
                    requests: r.requests,
                    errors: r.errors,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    cost_usd: from_d12(r.cost_usd),
                })
                .collect())
        }
        .boxed()
    }
}
