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

use clickhouse::Client;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{
    Bucket, Filter, GroupBy, GroupSeries, LatencyReport, Notification, RollupRow, Stats,
    StoreError, UsageStore,
};
use crate::domain::{AuditEntry, AuditQuery, Millis, UsageEvent};
use crate::settings::ClickhouseSettings;
pub use insert::{EventRow, LimitRow};
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
        let url = s.url.as_deref().ok_or(StoreError::NoClickhouseUrl)?;
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
        let (c, consumer) = (self.client.clone(), consumer.to_owned());
        async move { notifications::record(&c, rows, consumer, next_offset).await }.boxed()
    }

    fn notifications(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        let c = self.client.clone();
        async move { notifications::latest(&c, limit).await }.boxed()
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
        let (c, consumer) = (self.client.clone(), consumer.to_owned());
        async move { notifications::offset(&c, consumer).await }.boxed()
    }

    fn series(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<Vec<(Millis, Stats)>, StoreError>> {
        let c = self.client.clone();
        async move { query::series(&c, &filter, bucket).await }.boxed()
    }

    fn latency(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<LatencyReport, StoreError>> {
        let c = self.client.clone();
        async move { query::latency(&c, &filter, bucket).await }.boxed()
    }

    fn series_by(
        &self,
        filter: Filter,
        bucket: Bucket,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<GroupSeries, StoreError>> {
        let c = self.client.clone();
        async move { query::series_by(&c, &filter, bucket, &by).await }.boxed()
    }

    fn groups(
        &self,
        filter: Filter,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<Vec<(String, Stats)>, StoreError>> {
        let c = self.client.clone();
        async move { query::groups(&c, &filter, &by).await }.boxed()
    }

    fn rollups(
        &self,
        grain: &str,
        dimension: &str,
    ) -> BoxFuture<'static, Result<Vec<RollupRow>, StoreError>> {
        let c = self.client.clone();
        let (grain, dimension) = (grain.to_owned(), dimension.to_owned());
        async move { query::rollups(&c, &grain, &dimension).await }.boxed()
    }
}
