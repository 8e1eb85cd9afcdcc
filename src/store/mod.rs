//! The usage store port: raw usage events (idempotent on `event_id`) plus rollups, and the
//! analytics queries over them. The embedded adapter is [`sqlite::SqliteStore`]; the distributed
//! one is [`clickhouse::ClickhouseStore`]. Both answer the same [`Filter`]s with the same
//! figures, and both pass the same contract suite (`tests/it/stores.rs`).
//!
//! # Modules
//! - [`query`]: the analytics vocabulary (filters, buckets, groups, stats, latency).
//! - [`audit`]: the audit-trail SQL both adapters share.
//! - [`sqlite`], [`clickhouse`]: the two adapters.

pub mod audit;
pub mod clickhouse;
pub mod query;
pub mod sqlite;

use futures_util::future::BoxFuture;

use crate::domain::{AuditEntry, AuditQuery, Millis, UsageEvent};
pub use audit::{audit_where, AuditArg, AUDIT_COLUMNS, AUDIT_ORDER};
pub use query::{
    latency_report, Bucket, Filter, GroupBy, GroupSeries, Latency, LatencyReport, RollupRow, Stats,
    ROLLUP_DIMENSIONS,
};

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (the embedded store).
    #[error("usage store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store's files or threads could not be set up.
    #[error("usage store i/o: {0}")]
    Io(#[from] std::io::Error),
    /// ClickHouse failed or could not be reached.
    #[error("usage store (clickhouse): {0}")]
    Clickhouse(#[from] ::clickhouse::error::Error),
    /// A blocking read task panicked or was cancelled.
    #[error("usage store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The SQLite writer thread has ended, so it takes no more work.
    #[error("usage store task failed: the store writer has stopped")]
    WriterStopped,
    /// The SQLite writer thread dropped a job without answering (it ended before the answer).
    #[error("usage store task failed: the store writer dropped a job")]
    WriterDropped(#[source] tokio::sync::oneshot::error::RecvError),
    /// The ClickHouse store was asked for without a server to talk to.
    #[error("usage store task failed: clickhouse_url is not set")]
    NoClickhouseUrl,
}

/// One notification of a limit event over one channel.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Notification {
    pub limit_event_id: String,
    pub channel: String,
    pub kind: String,
    pub budget: String,
    pub recipients: String,
    pub status: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub created_at: Millis,
}

/// The usage store.
pub trait UsageStore: Send + Sync + 'static {
    /// Raises the store's background writer to normal priority now, for a reader that waits on
    /// it (see [`Hurry`]); nothing for stores without one.
    fn hurry(&self) {}

    /// Records notifications and that `consumer` has read the limit log up to `next_offset`,
    /// atomically; rows already recorded for an event and channel are kept.
    fn record_notifications(
        &self,
        rows: Vec<Notification>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>>;

    /// The latest notifications, newest first.
    fn notifications(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>>;

    /// Stores events not seen before and folds them into the rollups, and records that `consumer`
    /// has read the log up to `next_offset`, all atomically. Returns how many events were new.
    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>>;

    /// Where `consumer` has read up to (0 when never).
    fn offset(&self, consumer: &str) -> BoxFuture<'static, Result<u64, StoreError>>;

    /// Per-bucket stats over the filter.
    fn series(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<Vec<(Millis, Stats)>, StoreError>>;

    /// Per-bucket latency over the filter, plus the whole range's (first).
    fn latency(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<LatencyReport, StoreError>>;

    /// Per-bucket stats of each group value over the filter (a stacked chart's data), in bucket
    /// order; within a bucket most requests first, as in [`UsageStore::groups`] (whose values
    /// these are: workspace ids for [`GroupBy::Workspace`]). A bucket's rows sum to its
    /// [`UsageStore::series`] row, but for `users` (distinct per group) and `last_seen` (the max).
    fn series_by(
        &self,
        filter: Filter,
        bucket: Bucket,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<GroupSeries, StoreError>>;

    /// Stats per group value, most requests first.
    fn groups(
        &self,
        filter: Filter,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<Vec<(String, Stats)>, StoreError>>;

    /// Records audit rows not recorded before (idempotent on the event id) and that `consumer`
    /// has read the config log up to `next_offset`, atomically. Returns how many were new.
    fn record_audit(
        &self,
        rows: Vec<AuditEntry>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>>;

    /// The audit rows matching the query (how many in all, and the page asked for), newest first.
    fn audit(
        &self,
        query: AuditQuery,
    ) -> BoxFuture<'static, Result<(u64, Vec<AuditEntry>), StoreError>>;

    /// Every rollup row of a grain and dimension.
    fn rollups(
        &self,
        grain: &str,
        dimension: &str,
    ) -> BoxFuture<'static, Result<Vec<RollupRow>, StoreError>>;
}
