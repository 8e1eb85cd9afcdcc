//! The embedded usage store: one SQLite file in the data dir (`usage.sqlite`, WAL mode), with
//! the tables of `schemas/sqlite/`. One connection writes, owned by a dedicated thread at
//! background priority ([`crate::priority::background_priority`]: aggregation must never take
//! CPU from requests in flight; on a small machine a burst of inserts on a normal-priority thread
//! showed up directly in the gateway's p99); another connection serves analytics reads under a
//! mutex, so a long query never blocks ingestion.
//!
//! # Modules
//! - `ingest`: usage events in, rollups folded, in one transaction.
//! - `query`: the analytics SQL.
//! - `recent`: the last weeks' analytics columns in memory, which answer most queries.
//! - `audit`, `notifications`: the audit trail and the notifier's record.
//! - `positions`: consumers' positions in the logs (each written in the transaction of the rows
//!   it covers).

mod audit;
mod ingest;
mod notifications;
mod positions;
mod query;
mod recent;

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::{Mutex, RwLock};
use rusqlite::Connection;

use crate::domain::{AuditEntry, AuditQuery, Millis, UsageEvent};
use crate::priority::{background_priority, Hurry, Priority};
use crate::store::{
    Bucket, Filter, GroupBy, GroupSeries, LatencyReport, Notification, RollupRow, Stats,
    StoreError, UsageStore,
};
pub use positions::{read_offsets, rewind_offset};

const DDL: &str = include_str!("../../../schemas/sqlite/001_init.sql");
/// The audit trail's table (version 2; `IF NOT EXISTS`, so it applies to older store files too).
const DDL_AUDIT: &str = include_str!("../../../schemas/sqlite/002_audit.sql");
/// `usage_events.cache_write_tokens` (version 3), added to store files that lack it.
const DDL_CACHE_WRITE: &str = include_str!("../../../schemas/sqlite/003_cache_write.sql");

type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// The embedded usage store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: std::sync::mpsc::Sender<WriteJob>,
    /// The writer thread, for readers that wait on it.
    writer_thread: Hurry,
    reader: Arc<Mutex<Connection>>,
    recent: Arc<RwLock<recent::Recent>>,
}

/// Runs write jobs on their own thread at background priority.
fn writer_thread(mut conn: Connection, jobs: std::sync::mpsc::Receiver<WriteJob>, hurry: Hurry) {
    hurry.enter();
    background_priority();
    for job in jobs {
        job(&mut conn);
    }
    hurry.leave();
}

impl SqliteStore {
    /// Opens (creating) the store file and applies the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        private_files(path)?;
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // The log, not this file, is the durable record: a store lost to a power cut is rebuilt
        // from it (its offsets are in the same transactions), so NORMAL sync and infrequent
        // checkpoints are safe and keep ingestion cheap.
        writer.pragma_update(None, "synchronous", "NORMAL")?;
        writer.pragma_update(None, "wal_autocheckpoint", 4_000)?;
        writer.execute_batch(DDL)?;
        writer.execute_batch(DDL_AUDIT)?;
        let has_cache_write: bool = writer.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('usage_events') WHERE name = 'cache_write_tokens'",
            [],
            |r| r.get(0),
        )?;
        if !has_cache_write {
            writer.execute_batch(DDL_CACHE_WRITE)?;
        }
        let reader = Connection::open(path)?;
        let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
        let writer_hurry = Hurry::default();
        let hurry = writer_hurry.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_thread(writer, rx, hurry))?;
        let store = SqliteStore {
            writer: tx,
            writer_thread: writer_hurry,
            reader: Arc::new(Mutex::new(reader)),
            recent: Arc::default(),
        };
        // The first job of the writer thread, so no ingest comes between the load and the rows
        // it appends; until it is done, queries go to SQLite.
        let recent = store.recent.clone();
        let load: WriteJob = Box::new(move |c: &mut Connection| {
            let mut r = recent.write();
            if let Err(e) = r.load(c, Millis::now()) {
                *r = recent::Recent::default();
                tracing::warn!(error = %e, "loading the recent analytics columns failed; analytics read SQLite");
            }
        });
        store
            .writer
            .send(load)
            .map_err(|_| StoreError::WriterStopped)?;
        Ok(store)
    }

    /// Runs `f` on the writer thread at the caller's priority (see [`Priority::apply`]).
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (done, result) = tokio::sync::oneshot::channel();
        let priority = Priority::current();
        let sent = self.writer.send(Box::new(move |c: &mut Connection| {
            priority.apply();
            let _ = done.send(f(c));
        }));
        async move {
            sent.map_err(|_| StoreError::WriterStopped)?;
            result.await.map_err(StoreError::WriterDropped)?
        }
        .boxed()
    }

    /// Runs an analytics query on tokio's blocking pool with the in-memory columns (read-locked)
    /// and the read connection, which it locks only to read SQLite: queries the columns answer
    /// run side by side.
    fn analytics<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Mutex<Connection>, &recent::Recent) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (conn, recent) = (self.reader.clone(), self.recent.clone());
        async move { tokio::task::spawn_blocking(move || f(&conn, &recent.read())).await? }.boxed()
    }

    /// Runs `f` with the read connection on tokio's blocking pool.
    fn blocking<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let conn = conn.clone();
        async move { tokio::task::spawn_blocking(move || f(&mut conn.lock())).await? }.boxed()
    }
}

/// Creates the store file 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files the
/// database file's mode), and narrows the mode of files an older version left wider.
fn private_files(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        crate::files::private_dir(dir)?;
    }
    drop(crate::files::private_file(path)?);
    for ext in ["sqlite-wal", "sqlite-shm"] {
        let side = path.with_extension(ext);
        if side.exists() {
            crate::files::narrow(&side, 0o600)?;
        }
    }
    Ok(())
}

impl UsageStore for SqliteStore {
    fn hurry(&self) {
        self.writer_thread.now();
    }

    fn record_audit(
        &self,
        rows: Vec<AuditEntry>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        let consumer = consumer.to_owned();
        self.write(move |c| audit::record_audit(c, &rows, &consumer, next_offset))
    }

    fn audit(
        &self,
        query: AuditQuery,
    ) -> BoxFuture<'static, Result<(u64, Vec<AuditEntry>), StoreError>> {
        Self::blocking(&self.reader, move |c| audit::audit(c, &query))
    }

    fn record_notifications(
        &self,
        rows: Vec<Notification>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let consumer = consumer.to_owned();
        self.write(move |c| notifications::record_notifications(c, &rows, &consumer, next_offset))
    }

    fn notifications(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Notification>, StoreError>> {
        Self::blocking(&self.reader, move |c| {
            notifications::notifications(c, limit)
        })
    }

    fn ingest(
        &self,
        events: Vec<UsageEvent>,
        consumer: &str,
        next_offset: u64,
    ) -> BoxFuture<'static, Result<usize, StoreError>> {
        let consumer = consumer.to_owned();
        let recent = self.recent.clone();
        self.write(move |c| ingest::ingest(c, &recent, &events, &consumer, next_offset))
    }

    fn offset(&self, consumer: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        let consumer = consumer.to_owned();
        self.write(move |c| positions::offset(c, &consumer))
    }

    fn series(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<Vec<(Millis, Stats)>, StoreError>> {
        self.analytics(move |c, recent| query::series(c, recent, &filter, bucket))
    }

    fn latency(
        &self,
        filter: Filter,
        bucket: Bucket,
    ) -> BoxFuture<'static, Result<LatencyReport, StoreError>> {
        self.analytics(move |c, recent| query::latency(c, recent, &filter, bucket))
    }

    fn series_by(
        &self,
        filter: Filter,
        bucket: Bucket,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<GroupSeries, StoreError>> {
        self.analytics(move |c, recent| query::series_by(c, recent, &filter, bucket, &by))
    }

    fn groups(
        &self,
        filter: Filter,
        by: GroupBy,
    ) -> BoxFuture<'static, Result<Vec<(String, Stats)>, StoreError>> {
        self.analytics(move |c, recent| query::groups(c, recent, &filter, &by))
    }

    fn rollups(
        &self,
        grain: &str,
        dimension: &str,
    ) -> BoxFuture<'static, Result<Vec<RollupRow>, StoreError>> {
        let (grain, dimension) = (grain.to_owned(), dimension.to_owned());
        Self::blocking(&self.reader, move |c| query::rollups(c, &grain, &dimension))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_usage;

    fn event(minute: i64, key: &str, cost: &str, status: u16) -> UsageEvent {
        let mut e = sample_usage();
        e.at = Millis(1_735_689_600_000 + minute * 60_000);
        e.api_key_id = key.into();
        e.cost_usd = cost.parse().unwrap();
        e.status_code = status;
        e
    }

    #[tokio::test]
    async fn ingest_is_idempotent_and_rollups_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("u.sqlite")).unwrap();
        let a = event(0, "k1", "0.000000000001", 200);
        let b = event(0, "k1", "1.1", 500);
        let c = event(61, "k2", "2.25", 200);
        assert_eq!(
            store
                .ingest(vec![a.clone(), b.clone()], "agg", 10)
                .await
                .unwrap(),
            2
        );
        // A replay of the same events plus one new one: only the new one counts.
        assert_eq!(store.ingest(vec![a, b, c], "agg", 20).await.unwrap(), 1);
        assert_eq!(store.offset("agg").await.unwrap(), 20);
        assert_eq!(store.offset("other").await.unwrap(), 0);
        let minute = store.rollups("minute", "api_key").await.unwrap();
        assert_eq!(minute.len(), 2);
        assert_eq!(minute[0].cost_usd.to_string(), "1.100000000001");
        assert_eq!((minute[0].requests, minute[0].errors), (2, 1));
        let day = store.rollups("day", "department").await.unwrap();
        assert_eq!(day.len(), 1);
        assert_eq!(day[0].cost_usd.to_string(), "3.350000000001");
        let f = Filter {
            from: Millis(0),
            to: Millis(i64::MAX),
            ..Default::default()
        };
        let g = store.groups(f.clone(), GroupBy::ApiKey).await.unwrap();
        assert_eq!(g[0].0, "k1");
        assert_eq!(g[0].1.requests, 2);
        let s = store.series(f.clone(), Bucket::Hour).await.unwrap();
        assert_eq!(s.len(), 2);
        let mut by_dept = f.clone();
        by_dept
            .metadata
            .insert("department".into(), "engineering".into());
        assert_eq!(
            store
                .groups(by_dept.clone(), GroupBy::Metadata("department".into()))
                .await
                .unwrap()[0]
                .1
                .requests,
            3
        );
        by_dept.metadata.insert("department".into(), "sales".into());
        assert!(store
            .series(by_dept, Bucket::Hour)
            .await
            .unwrap()
            .is_empty());
    }

    /// Sums of cost over many events go past an i64 of picodollars ($9.2 M) and stay exact.
    #[tokio::test]
    async fn cost_sums_past_nine_million_dollars_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("u.sqlite")).unwrap();
        let big = |m| vec![event(m, "k1", "4000000.000000000001", 200)];
        // Two events in one batch, one in the next: both ways of adding to a rollup cell.
        store
            .ingest([big(0), big(1)].concat(), "agg", 10)
            .await
            .unwrap();
        store.ingest(big(2), "agg", 20).await.unwrap();
        let f = Filter {
            from: Millis(0),
            to: Millis(i64::MAX),
            ..Default::default()
        };
        let total = "12000000.000000000003";
        let g = store.groups(f.clone(), GroupBy::ApiKey).await.unwrap();
        assert_eq!(g[0].1.cost_usd.to_string(), total);
        let s = store.series(f, Bucket::Day).await.unwrap();
        assert_eq!(s[0].1.cost_usd.to_string(), total);
        // The rollup cells of that day hold their maximum, $9.2 M, rather than wrap.
        let day = store.rollups("day", "api_key").await.unwrap();
        assert_eq!(day[0].cost_usd, query::from_pico(i64::MAX));
        let minute = store.rollups("minute", "api_key").await.unwrap();
        assert_eq!(minute[2].cost_usd.to_string(), "4000000.000000000001");
    }
}
