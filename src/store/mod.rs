//! The usage store port: raw usage events (idempotent on `event_id`) plus rollups, and the
//! analytics queries over them. The embedded adapter is [`sqlite::SqliteStore`]; the distributed
//! one is ClickHouse. Both answer the same [`Filter`]s with the same figures.

pub mod clickhouse;
pub mod sqlite;

use futures_util::future::BoxFuture;
use rust_decimal::Decimal;

use crate::domain::{AuditEntry, AuditQuery, Metadata, Millis, UsageEvent};

/// Lowers the calling thread to background scheduling (Linux `SCHED_IDLE`): the store's work then
/// runs on CPU time the gateway does not want, and any request-path thread that wakes up preempts
/// it at once. On a busy machine the store falls behind (the log holds every event and
/// `tollgate_store_lag_bytes` shows the gap) rather than taking CPU from live requests.
pub fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised
        // sched_param that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower a store thread's priority");
        }
    }
}

/// A background thread that a waiting reader can hurry. A thread at `SCHED_IDLE` on busy cores
/// may not run for seconds, not even to notice that someone waits for it; so the thread records
/// its kernel id while it runs ([`Hurry::enter`]) and a reader raises it to normal priority from
/// outside ([`Hurry::now`]). The thread goes back to the background by itself, with the next
/// work it does at background priority ([`Priority::apply`]).
#[derive(Clone, Debug, Default)]
pub struct Hurry(std::sync::Arc<std::sync::atomic::AtomicI32>);

impl Hurry {
    /// Called on the thread itself when it starts.
    pub fn enter(&self) {
        #[cfg(target_os = "linux")]
        // SAFETY: gettid has no preconditions.
        self.0.store(
            unsafe { libc::gettid() },
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Called on the thread itself before it ends (its id may be reused afterwards).
    pub fn leave(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Raises the thread to normal priority now (nothing when it is not running).
    pub fn now(&self) {
        #[cfg(target_os = "linux")]
        {
            let tid = self.0.load(std::sync::atomic::Ordering::Relaxed);
            if tid != 0 {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: sched_setscheduler on one of this process's threads, with a valid,
                // initialised sched_param that outlives the call; a failure only leaves it idle.
                unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) };
            }
        }
    }
}

/// A thread's scheduling: the store's threads run in the background, except while working for a
/// reader that waits on them (read-your-writes analytics), when they run at normal priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Background,
    Normal,
}

impl Priority {
    /// The calling thread's.
    pub fn current() -> Priority {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: queries the calling thread's policy; no memory involved.
            if unsafe { libc::sched_getscheduler(0) } == libc::SCHED_IDLE {
                return Priority::Background;
            }
        }
        Priority::Normal
    }

    /// Gives the calling thread this priority (a job handed to another thread carries its
    /// caller's priority with it this way).
    pub fn apply(self) {
        if Priority::current() == self {
            return;
        }
        match self {
            Priority::Background => background_priority(),
            Priority::Normal => {
                #[cfg(target_os = "linux")]
                {
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: as in `background_priority`.
                    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
                    if rc != 0 {
                        tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise a store thread's priority");
                    }
                }
            }
        }
    }
}

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("usage store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("usage store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("usage store (clickhouse): {0}")]
    Clickhouse(#[from] ::clickhouse::error::Error),
    #[error("usage store task failed: {0}")]
    Task(String),
}

/// Which events an analytics query covers. Empty lists mean "any".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub from: Millis,
    pub to: Millis,
    pub workspace_id: Option<String>,
    pub api_key_ids: Vec<String>,
    pub provider_slugs: Vec<String>,
    /// `(ai_provider, model)` pairs.
    pub models: Vec<(String, String)>,
    pub status_codes: Vec<u16>,
    pub metadata: Metadata,
    pub trace_id: Option<String>,
    pub config_ids: Vec<String>,
}

/// Time-series bucket width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    pub fn ms(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }

    /// Minutes for ranges up to 2 hours, hours up to 2 days, days beyond.
    pub fn for_range(from: Millis, to: Millis) -> Bucket {
        let span = to.0 - from.0;
        if span <= 2 * 3_600_000 {
            Bucket::Minute
        } else if span <= 2 * 86_400_000 {
            Bucket::Hour
        } else {
            Bucket::Day
        }
    }
}

/// Aggregates of one bucket (or of a whole group).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Decimal,
    pub users: u64,
    pub last_seen: Millis,
}

impl Stats {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Latency distribution of a bucket, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub avg: f64,
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
}

impl Latency {
    /// Nearest-rank percentiles of sorted values.
    pub fn of_sorted(v: &[u32]) -> Latency {
        if v.is_empty() {
            return Latency::default();
        }
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let sum: u64 = v.iter().map(|&x| u64::from(x)).sum();
        Latency {
            avg: sum as f64 / v.len() as f64,
            p50: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
        }
    }
}

/// The whole range's latency, then each bucket's.
pub type LatencyReport = (Latency, Vec<(Millis, Latency)>);

/// The latency report of `(ts, latency_ms)` rows in time order: every store computes it here, so
/// both answer with the same percentiles.
pub fn latency_report(rows: Vec<(i64, u32)>, b: Bucket) -> LatencyReport {
    let mut all = Vec::with_capacity(rows.len());
    let mut buckets: Vec<(Millis, Vec<u32>)> = Vec::new();
    for (ts, ms) in rows {
        let bucket = Millis(ts.div_euclid(b.ms()) * b.ms());
        match buckets.last_mut() {
            Some((at, v)) if *at == bucket => v.push(ms),
            _ => buckets.push((bucket, vec![ms])),
        }
        all.push(ms);
    }
    all.sort_unstable();
    let per = buckets
        .into_iter()
        .map(|(at, mut v)| {
            v.sort_unstable();
            (at, Latency::of_sorted(&v))
        })
        .collect();
    (Latency::of_sorted(&all), per)
}

/// What analytics groups by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Model,
    AiProvider,
    Provider,
    ApiKey,
    Workspace,
    StatusCode,
    Config,
    Department,
    /// A metadata key.
    Metadata(String),
}

/// The rollup dimensions.
pub const ROLLUP_DIMENSIONS: [&str; 6] = [
    "api_key",
    "workspace",
    "department",
    "integration",
    "provider",
    "model",
];

/// One rollup row (for SQL users, Grafana and the exactness tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RollupRow {
    pub grain: String,
    pub bucket: Millis,
    pub dimension: String,
    pub value: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Decimal,
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

/// A bound value of an audit query's WHERE clause.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditArg {
    Int(i64),
    Str(String),
}

/// The WHERE clause of an audit query over the `audit_log` table (the same columns in both
/// stores), and its arguments in order. Always a valid clause (`1 = 1` when unfiltered).
pub fn audit_where(q: &AuditQuery) -> (String, Vec<AuditArg>) {
    let mut sql = String::from("1 = 1");
    let mut args = Vec::new();
    if let Some(t) = q.from {
        sql.push_str(" AND ts >= ?");
        args.push(AuditArg::Int(t.0));
    }
    if let Some(t) = q.to {
        sql.push_str(" AND ts <= ?");
        args.push(AuditArg::Int(t.0));
    }
    let texts = [
        ("actor_key_id", q.actor.clone()),
        (
            "resource_type",
            q.resource_type.map(|k| k.as_str().to_owned()),
        ),
        ("resource_id", q.resource_id.clone()),
        ("action", q.action.map(|a| a.as_str().to_owned())),
        ("workspace_id", q.workspace_id.clone()),
    ];
    for (col, v) in texts {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(AuditArg::Str(v));
        }
    }
    (sql, args)
}

/// The columns of `audit_log` in both stores, in the order rows are read.
pub const AUDIT_COLUMNS: &str =
    "event_id, ts, actor_key_id, actor_name, actor_created_by, actor_workspace_id,
    action, resource_type, resource_id, resource_name, workspace_id, changed_fields";

/// How audit rows are ordered: newest first, ties by id (stable pages).
pub const AUDIT_ORDER: &str = "ORDER BY ts DESC, event_id DESC";

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

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn background_priority_makes_the_thread_sched_idle() {
        let policy = std::thread::spawn(|| {
            super::background_priority();
            // SAFETY: queries the calling thread's policy; no memory involved.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: as above, for this (unchanged) test thread.
        assert_ne!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
    }
}
